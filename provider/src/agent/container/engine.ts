/**
 * The container lifecycle on a cell: create, inspect, delete, list. Every
 * operation converges the cell towards the request and is safe to repeat;
 * a create that fails part-way removes what it made.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { constants as fsConstants, promises as fs } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";

import { containerInputsSchema, type ContainerSpec } from "../../common/container-spec";
import type { PortMapping } from "../../common/network-state";
import { CELL_PATHS, ContainerObservation, CreateContainerParams } from "../../common/protocol";
import { cpuSharesForMemory, MAPPED_ROOT_ID } from "../../common/resources";
import { AgentFailure, step } from "../errors";
import { exists, readJson, writeFileAtomic } from "../files";
import { withLock } from "../lock";
import { type NetworkRequest, plumbing } from "../network/plumbing";
import { cellSettings } from "../settings";
import * as cgroups from "./cgroup";
import { ensurePrivilegedRootfs, hasImage, imageRootfs } from "./image";
import { launchContainer, processStartTime } from "./launcher";
import { mountQuotaFilesystem, unmountQuotaFilesystem } from "./quota";

const run = promisify(execFile);

const ID_PATTERN = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** The agent's record of a container, kept in containers/<id>/state.json. */
interface ContainerRecord {
  id: string;
  requestHash: string;
  imageDigest: string;
  spec: Omit<ContainerSpec, "image">;
  hostname: string;
  uid: number;
  gid: number;
  startedAt: string;
  reaperPid: number;
  reaperStartTime: string;
  pid: number;
  pidStartTime: string;
  cgroup: cgroups.ContainerCgroup;
  quota?: { bytes: number; imageFile: string; mountPoint: string };
  /** The container's network when it has one; the attachment file under network/containers/ contains the rest. */
  network?: { address: string; hostInterface: string; ports: PortMapping[] };
}

function containerDirectory(id: string): string {
  return path.join(CELL_PATHS.containers, id);
}

function validateId(id: string): void {
  if (!ID_PATTERN.test(id)) {
    throw new AgentFailure("INVALID_REQUEST", "validate container id", `container id ${JSON.stringify(id)} must be 1 to 63 lowercase letters, digits or hyphens`);
  }
}

/** A create request after validation, with every default filled in. */
interface ValidRequest {
  id: string;
  imageDigest: string;
  spec: Omit<ContainerSpec, "image">;
  /** Cell network settings; not part of the request hash, because they belong to the cell. */
  network?: NetworkRequest;
}

function hashRequest(params: ValidRequest): string {
  return createHash("sha256").update(JSON.stringify([params.imageDigest, params.spec])).digest("hex");
}

/** Creates the container, or adopts it when this exact request already ran (a retried Create). */
export async function createContainer(params: CreateContainerParams): Promise<ContainerObservation> {
  validateId(params.id);
  const parsed = containerInputsSchema.omit({ image: true }).safeParse(params.spec);
  if (!parsed.success) {
    throw new AgentFailure("INVALID_REQUEST", "validate container spec", parsed.error.issues.map((issue) => `${issue.path.join(".")}: ${issue.message}`).join("; "));
  }

  const request = { id: params.id, imageDigest: params.imageDigest, spec: parsed.data, network: params.network };
  return withLock(`container-${params.id}`, async () => {
    const existing = await readRecord(params.id);
    if (existing) {
      if (existing.requestHash !== hashRequest(request)) {
        throw new AgentFailure("CONTAINER_EXISTS", "check for an existing container", `container ${params.id} already exists with a different spec; delete it first`);
      }
      return observe(existing);
    }
    const record = await buildContainer(request);
    return observe(record);
  });
}

async function buildContainer(params: ValidRequest): Promise<ContainerRecord> {
  const { id, spec, imageDigest } = params;
  if (!(await hasImage(imageDigest))) {
    throw new AgentFailure("IMAGE_MISSING", "find image", `image ${imageDigest} is not on this cell; import it first`);
  }
  const settings = await cellSettings();
  const directory = containerDirectory(id);
  const layer = path.join(directory, "layer");
  const lower = spec.privileged ? await step("prepare privileged rootfs", "IMAGE_INVALID", () => ensurePrivilegedRootfs(imageDigest)) : imageRootfs(imageDigest);
  // Container root owns its read-write layer: host root for privileged containers, the mapped root id otherwise.
  const layerOwner = spec.privileged ? 0 : MAPPED_ROOT_ID;
  let cgroup: cgroups.ContainerCgroup | undefined;
  let quota: ContainerRecord["quota"];
  let network: ContainerRecord["network"];

  try {
    // Decided before anything is made, so a spec that needs a network fails early on a cell without one.
    const networked = await step("check container network", "INVALID_REQUEST", () => plumbing().planned(id, params.network, spec));

    await step("create container directory", "INTERNAL", async () => {
      // 0711: the container init runs as the mapped root id and must traverse to its layers, but not list them.
      await fs.mkdir(directory, { mode: 0o711 });
      await fs.chmod(directory, 0o711);
    });

    if (spec.diskQuota !== undefined) {
      quota = { bytes: spec.diskQuota, imageFile: path.join(directory, "disk.img"), mountPoint: layer };
      const { bytes, imageFile, mountPoint } = quota;
      await step("create disk quota filesystem", "QUOTA_UNSUPPORTED", () => mountQuotaFilesystem(imageFile, mountPoint, bytes));
    } else {
      await fs.mkdir(layer, { mode: 0o711 });
    }

    await step("create read-write layer", "INTERNAL", async () => {
      for (const name of ["upper", "work"]) {
        await fs.mkdir(path.join(layer, name), { mode: 0o755 });
        await fs.chown(path.join(layer, name), layerOwner, layerOwner);
      }
      await fs.mkdir(path.join(directory, "rootfs"), { mode: 0o755 });
    });

    const { uid, gid } = await step("resolve user", "INVALID_REQUEST", () => resolveUser(lower, spec.user));
    const limits = { memoryBytes: spec.memory, cpuShares: cpuSharesForMemory(spec.memory) };
    cgroup = await step("create cgroup", "CGROUP_FAILED", () => cgroups.createCgroup(settings.cgroupVersion, settings.cgroupParent, id, limits));

    const hostname = spec.hostname ?? id;
    const launched = await step("start container", "CONTAINER_START_FAILED", async () => {
      try {
        return await launchContainer({
          spec: {
            id,
            rootfs: { lower: [lower], upper: path.join(layer, "upper"), work: path.join(layer, "work"), merged: path.join(directory, "rootfs") },
            hostname,
            command: spec.command,
            env: spec.env,
            workingDir: spec.workingDir,
            uid,
            gid,
            groups: [gid],
            privileged: spec.privileged,
            seccompDeny: spec.seccompDeny,
          },
          cgroupProcsFiles: cgroups.procsFiles(cgroup!),
          stdoutPath: path.join(directory, "stdout.log"),
          stderrPath: path.join(directory, "stderr.log"),
          exitStatusPath: path.join(directory, "exit-status"),
          agentScript: process.argv[1],
          // The workload waits for this: it must not run before its interface, limits and rules exist.
          beforeExec: networked
            ? async (pid) => {
                const attachment = await plumbing().attach({ id, pid, network: params.network, spec });
                if (attachment) network = { address: attachment.address, hostInterface: attachment.hostInterface, ports: attachment.ports };
              }
            : undefined,
        });
      } catch (error) {
        if (error instanceof AgentFailure) throw error;
        const initStep = (error as { initStep?: string }).initStep;
        throw new AgentFailure("CONTAINER_START_FAILED", initStep ? `container init: ${initStep}` : "start container", (error as Error).message, { cause: error });
      }
    });

    const record: ContainerRecord = {
      id,
      requestHash: hashRequest(params),
      imageDigest,
      spec,
      hostname,
      uid,
      gid,
      startedAt: new Date().toISOString(),
      reaperPid: launched.reaperPid,
      reaperStartTime: (await processStartTime(launched.reaperPid)) ?? "",
      pid: launched.pid,
      pidStartTime: (await processStartTime(launched.pid)) ?? "",
      cgroup,
      quota,
      network,
    };
    await step("write container state", "INTERNAL", () => writeFileAtomic(path.join(directory, "state.json"), JSON.stringify(record, null, 2)));
    return record;
  } catch (error) {
    // All or nothing: a half-built container would otherwise hold a cgroup, a loop device and disk space.
    await removeContainerResources(id, cgroup, quota).catch(() => undefined);
    throw error;
  }
}

async function readRecord(id: string): Promise<ContainerRecord | undefined> {
  return readJson<ContainerRecord>(path.join(containerDirectory(id), "state.json"));
}

/**
 * Resolves "UID", "UID:GID" or a name from the image's /etc/passwd. The file
 * is opened with O_NOFOLLOW below a directory checked the same way, so an
 * image cannot point the agent at a file on the cell.
 */
async function resolveUser(rootfs: string, user: string): Promise<{ uid: number; gid: number }> {
  const numeric = /^(\d+)(?::(\d+))?$/.exec(user);
  let result: { uid: number; gid: number } | undefined;
  if (numeric) {
    result = { uid: Number(numeric[1]), gid: numeric[2] !== undefined ? Number(numeric[2]) : Number(numeric[1]) };
  } else {
    const etc = await fs.lstat(path.join(rootfs, "etc")).catch(() => undefined);
    if (!etc?.isDirectory()) throw new Error(`user ${JSON.stringify(user)} cannot be looked up: the image has no /etc directory`);
    const handle = await fs.open(path.join(rootfs, "etc", "passwd"), fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW).catch(() => undefined);
    if (!handle) throw new Error(`user ${JSON.stringify(user)} cannot be looked up: the image has no regular /etc/passwd`);
    try {
      for (const line of (await handle.readFile("utf8")).split("\n")) {
        const fields = line.split(":");
        if (fields[0] === user && fields.length >= 4) result = { uid: Number(fields[2]), gid: Number(fields[3]) };
      }
    } finally {
      await handle.close();
    }
    if (!result) throw new Error(`user ${JSON.stringify(user)} is not in the image's /etc/passwd: use a listed name or a numeric "UID:GID"`);
  }
  for (const id of [result.uid, result.gid]) {
    // Container ids above 4294967293 have no mapping to the cell.
    if (!Number.isInteger(id) || id < 0 || id >= MAPPED_ROOT_ID) throw new Error(`id ${id} in user ${JSON.stringify(user)} is outside 0..${MAPPED_ROOT_ID - 1}`);
  }
  return result;
}

async function alive(pid: number, startTime: string): Promise<boolean> {
  return pid > 0 && (await processStartTime(pid)) === startTime;
}

async function readHostname(pid: number): Promise<string | undefined> {
  try {
    const { stdout } = await run("nsenter", [`--target=${pid}`, "--uts", "--", "uname", "-n"]);
    return stdout.trim();
  } catch {
    return undefined;
  }
}

async function stopReason(record: ContainerRecord): Promise<string> {
  if (await cgroups.wasOomKilled(record.cgroup).catch(() => false)) return "killed by the kernel for exceeding its memory limit";
  const statusFile = path.join(containerDirectory(record.id), "exit-status");
  // The reaper writes the status just after the workload exits; a read in
  // between would wrongly report the container as killed from outside.
  const deadline = Date.now() + 2_000;
  while (!(await exists(statusFile)) && (await alive(record.reaperPid, record.reaperStartTime)) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const status = await fs.readFile(statusFile, "utf8").catch(() => undefined);
  if (status === undefined) return "its processes are gone and no exit status was recorded (killed from outside?)";
  const code = Number(status.trim());
  return code > 128 ? `killed by signal ${code - 128}` : `exited with code ${code}`;
}

/** Reads what is on the cell now: the workload process, cgroup values, the container's hostname. */
async function observe(record: ContainerRecord): Promise<ContainerObservation> {
  let running = await alive(record.pid, record.pidStartTime);
  // The kernel's OOM killer on cgroup v1 kills one process, not the whole
  // container. A container that went over its limit is destroyed here, so it
  // never runs on half-killed. cgroup v2 does this itself (memory.oom.group).
  // NOTE: on v1 this happens at the next read, not at the moment of the OOM.
  if (running && (await cgroups.wasOomKilled(record.cgroup).catch(() => false))) {
    await cgroups.killAll(record.cgroup);
    await waitForReaped(record.pid, record.pidStartTime);
    running = false;
  }

  const limits = await cgroups.readLimits(record.cgroup);
  const observation: ContainerObservation = {
    id: record.id,
    status: running ? "running" : "stopped",
    pid: running ? record.pid : 0,
    startedAt: record.startedAt,
    imageDigest: record.imageDigest,
    memoryBytes: limits?.memoryBytes ?? 0,
    cpuShares: limits?.cpuShares ?? 0,
    diskQuotaBytes: record.quota?.bytes,
    hostname: record.hostname,
    command: record.spec.command,
    env: record.spec.env,
    workingDir: record.spec.workingDir,
    user: record.spec.user,
  };
  if (record.network) await observeNetwork(record, running, observation);

  if (!running) {
    observation.reason = await stopReason(record);
    return observation;
  }

  // A workload may exec other programs and change its own environment, so
  // command and env are reported as started. The hostname can only change
  // from outside, because the container lacks CAP_SYS_ADMIN.
  const hostname = await readHostname(record.pid);
  if (hostname) observation.hostname = hostname;
  return observation;
}

/**
 * Adds the address and ports to an observation. A running container whose
 * veth, eth0 address or bandwidth limits are gone is reported without an
 * address, which the provider shows as drift. A stopped container has lost
 * its veth with its network namespace, so only its ports are reported.
 */
async function observeNetwork(record: ContainerRecord, running: boolean, observation: ContainerObservation): Promise<void> {
  const inspection = await plumbing().inspect(record.id, running ? record.pid : undefined);
  if (!inspection) {
    process.stderr.write(`${new Date().toISOString()} container ${record.id}: its network attachment file is missing\n`);
    return;
  }
  observation.ports = inspection.attachment.ports;
  if (!running) return;
  if (inspection.drift.length) {
    process.stderr.write(`${new Date().toISOString()} container ${record.id}: network drift: ${inspection.drift.join("; ")}\n`);
    return;
  }
  observation.address = inspection.attachment.address;
}

/** Writes new memory and CPU limits into the running container's cgroups. */
export async function updateContainer(params: { id: string; memory: number }): Promise<ContainerObservation> {
  validateId(params.id);
  const parsed = containerInputsSchema.shape.memory.safeParse(params.memory);
  if (!parsed.success) throw new AgentFailure("INVALID_REQUEST", "validate memory", parsed.error.issues.map((issue) => issue.message).join("; "));
  return withLock(`container-${params.id}`, async () => {
    const record = await readRecord(params.id);
    if (!record) throw new AgentFailure("INVALID_REQUEST", "find container", `container ${params.id} does not exist on this cell`);
    const limits = { memoryBytes: parsed.data, cpuShares: cpuSharesForMemory(parsed.data) };
    await step("write cgroup limits", "CGROUP_FAILED", () => cgroups.writeLimits(record.cgroup, limits));
    const updated: ContainerRecord = { ...record, spec: { ...record.spec, memory: parsed.data }, requestHash: "" };
    updated.requestHash = hashRequest({ id: record.id, imageDigest: record.imageDigest, spec: updated.spec });
    await step("write container state", "INTERNAL", () => writeFileAtomic(path.join(containerDirectory(record.id), "state.json"), JSON.stringify(updated, null, 2)));
    return observe(updated);
  });
}

export async function inspectContainer(id: string): Promise<ContainerObservation | null> {
  validateId(id);
  const record = await readRecord(id);
  return record ? observe(record) : null;
}

/**
 * Waits until a killed process has been reaped. A process leaves its cgroup
 * when it exits but stays in /proc until its parent collects it, and Delete
 * promises that no process of the container remains.
 */
async function waitForReaped(pid: number, startTime: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((await processStartTime(pid)) === startTime) {
    if (Date.now() > deadline) throw new Error(`process ${pid} was killed but not reaped within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Kills every process, then removes cgroups, the quota filesystem and the container directory. */
async function removeContainerResources(
  id: string,
  cgroup: cgroups.ContainerCgroup | undefined,
  quota: ContainerRecord["quota"],
  processes: { pid: number; startTime: string }[] = [],
): Promise<void> {
  if (cgroup) {
    // Killing the workload first ends its PID namespace in one step, and lets
    // each parent in the launch chain reap its child and exit in order, which
    // is much faster than waiting for the cell's init to reap orphans.
    const workload = processes[0];
    if (workload?.startTime && (await processStartTime(workload.pid)) === workload.startTime) {
      try {
        process.kill(workload.pid, "SIGKILL");
      } catch {
        // Exited on its own in the meantime.
      }
    }
    await step("kill container processes", "CGROUP_FAILED", () => cgroups.killAll(cgroup));
    await step("wait for container processes to be reaped", "INTERNAL", async () => {
      for (const { pid, startTime } of processes) if (startTime) await waitForReaped(pid, startTime);
    });
    await step("remove cgroup", "CGROUP_FAILED", () => cgroups.removeCgroup(cgroup));
  }
  // After the processes: the veth pair went away with the container's network namespace, and no packet can start a new connection.
  await step("detach network", "INTERNAL", () => plumbing().detach(id));
  // The overlay and /proc mounts lived in the container's own mount namespace and went with its last process.
  if (quota) await step("unmount disk quota filesystem", "INTERNAL", () => unmountQuotaFilesystem(quota.mountPoint));
  await step("remove container directory", "INTERNAL", () => fs.rm(containerDirectory(id), { recursive: true, force: true }));
}

export async function deleteContainer(id: string): Promise<{ existed: boolean }> {
  validateId(id);
  return withLock(`container-${id}`, async () => {
    const record = await readRecord(id);
    const directoryExists = await exists(containerDirectory(id));
    if (!record && !directoryExists) return { existed: false };
    if (record) {
      const processes = [
        { pid: record.pid, startTime: record.pidStartTime },
        { pid: record.reaperPid, startTime: record.reaperStartTime },
      ];
      await removeContainerResources(id, record.cgroup, record.quota, processes);
    } else {
      // A create that crashed before writing its state: remove whatever it left, found by name.
      const settings = await cellSettings();
      const cgroup = { version: settings.cgroupVersion, directories: cgroups.cgroupDirectories(settings.cgroupVersion, settings.cgroupParent, id) };
      const quota = { bytes: 0, imageFile: "", mountPoint: path.join(containerDirectory(id), "layer") };
      await removeContainerResources(id, cgroup, quota);
    }
    return { existed: true };
  });
}

export async function listContainers(): Promise<{ ids: string[] }> {
  const entries = await fs.readdir(CELL_PATHS.containers).catch(() => [] as string[]);
  return { ids: entries.filter((entry) => ID_PATTERN.test(entry)).sort() };
}
