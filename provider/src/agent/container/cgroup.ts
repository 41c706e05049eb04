/**
 * Container cgroups on cgroup v1 (one hierarchy per controller) and v2 (one
 * unified hierarchy). Every container gets a cgroup under the cell's parent,
 * so limits apply and every process it ever starts can be found and killed.
 */
import { promises as fs } from "node:fs";
import path from "node:path";

import { cpuSharesForWeight, cpuWeightForShares } from "../../common/resources";

export const CGROUP_ROOT = "/sys/fs/cgroup";

/**
 * The v1 controllers a container joins: memory and cpu carry limits, pids
 * lists every process, devices enforces the device allowlist.
 */
const V1_CONTROLLERS = ["memory", "cpu", "pids", "devices"] as const;

/**
 * Devices a container may open, as cgroup v1 rules "type major:minor
 * access": the null, zero, full, random and urandom nodes, tty, the console
 * ttys 0 and 1, ptmx and the pseudo-terminals, fuse and tun. Everything else
 * is denied, also device nodes that a privileged container could mknod.
 */
export const DEVICE_RULES = [
  "c 1:3 rwm",
  "c 1:5 rwm",
  "c 1:7 rwm",
  "c 1:8 rwm",
  "c 1:9 rwm",
  "c 5:0 rwm",
  "c 4:0 rwm",
  "c 4:1 rwm",
  "c 5:2 rwm",
  "c 136:* rwm",
  "c 10:229 rwm",
  "c 10:200 rwm",
];
const V2_CONTROLLERS = ["memory", "cpu", "pids"] as const;

export interface CgroupLimits {
  memoryBytes: number;
  cpuShares: number;
}

export interface ContainerCgroup {
  version: 1 | 2;
  /** Directories of this container's cgroup, one per v1 hierarchy or one for v2. */
  directories: string[];
}

/** Detects the cgroup version from the mounted hierarchy; hybrid cells count as v1 because controllers live there. */
export async function detectCgroupVersion(root = CGROUP_ROOT): Promise<1 | 2> {
  try {
    await fs.access(path.join(root, "cgroup.controllers"));
    return 2;
  } catch {
    return 1;
  }
}

export function cgroupDirectories(version: 1 | 2, parent: string, id: string, root = CGROUP_ROOT): string[] {
  if (version === 2) return [path.join(root, parent, id)];
  return V1_CONTROLLERS.map((controller) => path.join(root, controller, parent, id));
}

/**
 * Enables the controllers a container needs in every ancestor, as v2
 * requires: a controller is usable in a cgroup only when its parent lists it
 * in cgroup.subtree_control.
 */
async function enableV2Controllers(root: string, parent: string): Promise<void> {
  const request = V2_CONTROLLERS.map((controller) => `+${controller}`).join(" ");
  let directory = root;
  for (const segment of ["", ...parent.split("/").filter(Boolean)]) {
    directory = segment ? path.join(directory, segment) : directory;
    if (segment) await fs.mkdir(directory, { recursive: true });
    await fs.writeFile(path.join(directory, "cgroup.subtree_control"), request);
  }
}

async function writeValue(directory: string, file: string, value: string | number): Promise<void> {
  try {
    await fs.writeFile(path.join(directory, file), String(value));
  } catch (error) {
    throw new Error(`write ${JSON.stringify(String(value))} to ${path.join(directory, file)}: ${(error as Error).message}`, { cause: error });
  }
}

/** Creates the container's cgroup and writes its limits before any container process exists. */
export async function createCgroup(
  version: 1 | 2,
  parent: string,
  id: string,
  limits: CgroupLimits,
  root = CGROUP_ROOT,
): Promise<ContainerCgroup> {
  const directories = cgroupDirectories(version, parent, id, root);
  if (version === 2) await enableV2Controllers(root, parent);
  for (const directory of directories) await fs.mkdir(directory, { recursive: true });
  const cgroup: ContainerCgroup = { version, directories };
  await writeLimits(cgroup, limits);
  if (version === 1) {
    const devices = directories[V1_CONTROLLERS.indexOf("devices")];
    await writeValue(devices, "devices.deny", "a");
    for (const rule of DEVICE_RULES) await writeValue(devices, "devices.allow", rule);
  } else {
    // One OOM kill takes down the whole container rather than one process of it.
    await writeValue(directories[0], "memory.oom.group", 1);
    // NOTE: cgroup v2 has no device files; the allowlist rests on /dev
    // holding only the nodes above and on user namespaces forbidding mknod.
    // An eBPF device program would also cover privileged containers.
  }
  return cgroup;
}

/** Writes memory and CPU limits; used at creation and to change a running container. */
export async function writeLimits(cgroup: ContainerCgroup, limits: CgroupLimits): Promise<void> {
  if (cgroup.version === 1) {
    const [memory, cpu] = cgroup.directories;
    // memsw must stay >= the memory limit at every moment, so the order of the two writes depends on the direction.
    const current = Number((await readText(path.join(memory, "memory.limit_in_bytes"))) ?? 0);
    const files = limits.memoryBytes < current ? ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"] : ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"];
    for (const file of files) {
      // Without swap accounting memsw is absent; where it exists, swap must not extend the limit.
      const write = writeValue(memory, file, limits.memoryBytes);
      await (file.startsWith("memory.memsw") ? write.catch(() => undefined) : write);
    }
    await writeValue(cpu, "cpu.shares", limits.cpuShares);
  } else {
    const [directory] = cgroup.directories;
    await writeValue(directory, "memory.max", limits.memoryBytes);
    await writeValue(directory, "memory.swap.max", 0).catch(() => undefined);
    await writeValue(directory, "cpu.weight", cpuWeightForShares(limits.cpuShares));
  }
}

/** Lists the cgroup.procs files that a new process writes its pid to, to join the container's cgroups. */
export function procsFiles(cgroup: ContainerCgroup): string[] {
  return cgroup.directories.map((directory) => path.join(directory, "cgroup.procs"));
}

async function readText(file: string): Promise<string | undefined> {
  try {
    return (await fs.readFile(file, "utf8")).trim();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
}

/** Reads the limits really in force, for drift detection. Undefined when the cgroup is gone. */
export async function readLimits(cgroup: ContainerCgroup): Promise<CgroupLimits | undefined> {
  if (cgroup.version === 1) {
    const [memory, cpu] = cgroup.directories;
    const memoryBytes = await readText(path.join(memory, "memory.limit_in_bytes"));
    const cpuShares = await readText(path.join(cpu, "cpu.shares"));
    if (memoryBytes === undefined || cpuShares === undefined) return undefined;
    return { memoryBytes: Number(memoryBytes), cpuShares: Number(cpuShares) };
  }
  const [directory] = cgroup.directories;
  const memoryMax = await readText(path.join(directory, "memory.max"));
  const weight = await readText(path.join(directory, "cpu.weight"));
  if (memoryMax === undefined || weight === undefined) return undefined;
  return {
    memoryBytes: memoryMax === "max" ? Number.MAX_SAFE_INTEGER : Number(memoryMax),
    cpuShares: cpuSharesForWeight(Number(weight)),
  };
}

/** True when the kernel killed a process of this container for exceeding its memory limit. */
export async function wasOomKilled(cgroup: ContainerCgroup): Promise<boolean> {
  const file =
    cgroup.version === 1 ? path.join(cgroup.directories[0], "memory.oom_control") : path.join(cgroup.directories[0], "memory.events");
  const text = await readText(file);
  const match = text ? /^oom_kill (\d+)$/m.exec(text) : null;
  return match !== null && Number(match[1]) > 0;
}

/** Lists every process in the container's cgroups. */
export async function listProcesses(cgroup: ContainerCgroup): Promise<number[]> {
  const pids = new Set<number>();
  for (const file of procsFiles(cgroup)) {
    const text = await readText(file);
    for (const line of text?.split("\n") ?? []) if (line) pids.add(Number(line));
  }
  return [...pids];
}

/**
 * Kills every process in the container and waits until none is left. The
 * loop repeats because a process may fork between the read and the kill;
 * cgroup v2's cgroup.kill closes that race in the kernel where available.
 */
export async function killAll(cgroup: ContainerCgroup, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  if (cgroup.version === 2) {
    await writeValue(cgroup.directories[0], "cgroup.kill", 1).catch(() => undefined);
  }
  for (;;) {
    const pids = await listProcesses(cgroup);
    if (pids.length === 0) return;
    for (const pid of pids) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
    if (Date.now() > deadline) {
      throw new Error(`processes ${pids.join(", ")} still in ${cgroup.directories[0]} after ${timeoutMs} ms of SIGKILL`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Removes the container's cgroup directories; the cgroups must be empty. */
export async function removeCgroup(cgroup: ContainerCgroup): Promise<void> {
  for (const directory of cgroup.directories) {
    // The kernel may report EBUSY for a moment after the last process exits, until it is reaped.
    for (let attempt = 1; ; attempt++) {
      try {
        await fs.rmdir(directory);
        break;
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === "ENOENT") break;
        if (code !== "EBUSY" || attempt >= 100) {
          throw new Error(`remove cgroup ${directory}: ${(error as Error).message}`, { cause: error });
        }
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
  }
}
