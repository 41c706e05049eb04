/**
 * Starts a container's first process through a chain of small processes,
 * because Node cannot create a user namespace itself: it is multithreaded,
 * so unshare(CLONE_NEWUSER) fails with EINVAL, and fork() through koffi
 * kills the child before it runs.
 *
 *   sh (joins the cgroups, waits, records the exit status)
 *    └─ nsenter --user=<holder's namespace>
 *        └─ unshare --mount --uts --ipc --net --pid --fork --kill-child
 *            └─ node agent.js init  ──execve──▶  workload (pid 1 inside)
 *
 * A holder process (`unshare --user sleep`) creates the user namespace first,
 * so the agent can write its id maps before anything execs inside it: a
 * process that execs in a user namespace without a uid_map loses all its
 * capabilities there.
 */
import { ChildProcess, spawn } from "node:child_process";
import { promises as fs, openSync, closeSync, readlinkSync } from "node:fs";
import { Readable, Writable } from "node:stream";

import { unprivilegedIdMap } from "../../common/resources";
import { InitReport, InitSpec } from "./init-spec";

const NAMESPACE_WAIT_MS = 5_000;
const INIT_TIMEOUT_MS = 30_000;

export interface LaunchRequest {
  spec: InitSpec;
  cgroupProcsFiles: string[];
  stdoutPath: string;
  stderrPath: string;
  exitStatusPath: string;
  /** The agent bundle that runs as the init. */
  agentScript: string;
  /**
   * Runs once the workload's pid is known and before it may exec, for setup
   * done from outside the container, such as attaching its network. A
   * failure here aborts the start.
   */
  beforeExec?: (pid: number) => Promise<void>;
}

export interface LaunchResult {
  /** The sh that waits for the container, on the cell. */
  reaperPid: number;
  /** The workload, by its pid on the cell. */
  pid: number;
}

/** Reads field 22 of /proc/PID/stat, the start time, so a recycled pid is never mistaken for ours. */
export async function processStartTime(pid: number): Promise<string | undefined> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8");
    // The command name in field 2 may contain spaces; fields after it are plain.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

async function startUserNamespaceHolder(): Promise<ChildProcess> {
  const holder = spawn("unshare", ["--user", "--", "sleep", "3600"], { stdio: "ignore" });
  const ownNamespace = readlinkSync("/proc/self/ns/user");
  const deadline = Date.now() + NAMESPACE_WAIT_MS;
  // The holder's pid exists before unshare(2) runs; maps written then would
  // target the cell's own namespace, so wait until the namespace differs.
  for (;;) {
    if (holder.exitCode !== null) throw new Error(`unshare --user exited with code ${holder.exitCode}`);
    try {
      if (readlinkSync(`/proc/${holder.pid}/ns/user`) !== ownNamespace) return holder;
    } catch {
      // /proc entry not there yet.
    }
    if (Date.now() > deadline) {
      holder.kill("SIGKILL");
      throw new Error(`the user namespace holder (pid ${holder.pid}) did not unshare within ${NAMESPACE_WAIT_MS} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** Writes each map in a single write(2): the kernel rejects a multi-line map written line by line. */
async function writeIdMaps(pid: number): Promise<void> {
  const map = unprivilegedIdMap();
  await fs.writeFile(`/proc/${pid}/uid_map`, map);
  await fs.writeFile(`/proc/${pid}/gid_map`, map);
}

const UNSHARE = "unshare --mount --uts --ipc --net --pid --fork --kill-child --propagation private --";

/**
 * The reaper shell. It joins the cgroups first, so every later process,
 * including the workload, is limited and can be found. It then waits for
 * the container and records how it ended. A privileged container has no
 * user namespace to enter, so its holder argument is empty.
 */
const CHAIN_SCRIPT = [
  'status_file="$1"; holder="$2"; node="$3"; agent="$4"; shift 4',
  'for procs in "$@"; do echo $$ > "$procs" || exit 125; done',
  'if [ -n "$holder" ]; then',
  `  nsenter --user="/proc/$holder/ns/user" -- ${UNSHARE} "$node" "$agent" init`,
  "else",
  `  ${UNSHARE} "$node" "$agent" init`,
  "fi",
  'code=$?',
  'echo "$code" > "$status_file.tmp" && mv "$status_file.tmp" "$status_file"',
].join("\n");

/**
 * Launches the container and waits until the workload has been exec'd.
 * On failure everything started here is killed; the caller removes cgroups.
 */
export async function launchContainer(request: LaunchRequest): Promise<LaunchResult> {
  const holder = request.spec.privileged ? undefined : await startUserNamespaceHolder();
  let chain: ChildProcess | undefined;
  try {
    if (holder) await writeIdMaps(holder.pid!);

    const stdout = openSync(request.stdoutPath, "a", 0o600);
    const stderr = openSync(request.stderrPath, "a", 0o600);
    try {
      chain = spawn(
        "/bin/sh",
        ["-c", CHAIN_SCRIPT, "cellfleet-reaper", request.exitStatusPath, holder ? String(holder.pid) : "", process.execPath, request.agentScript, ...request.cgroupProcsFiles],
        {
          // The container outlives this agent: its own session, no shared pipes except the two below.
          detached: true,
          stdio: ["ignore", stdout, stderr, "pipe", "pipe", "pipe"],
          env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" },
        },
      );
    } finally {
      closeSync(stdout);
      closeSync(stderr);
    }

    const specPipe = chain.stdio[3] as Writable;
    const goPipe = (chain.stdio as unknown as Writable[])[5];
    // An init that fails closes its pipes, and its failure is read from the
    // status pipe. So a write error here (EPIPE) must not crash the agent.
    for (const pipe of [specPipe, goPipe, chain.stdio[4] as Readable]) pipe.on("error", () => undefined);
    specPipe.end(JSON.stringify(request.spec));
    const pid = await readInitReports(chain.stdio[4] as Readable, chain, async (workloadPid) => {
      await request.beforeExec?.(workloadPid);
      goPipe.end("go\n");
    });
    chain.unref();
    return { reaperPid: chain.pid!, pid };
  } catch (error) {
    if (chain?.pid) {
      try {
        process.kill(-chain.pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
    throw error;
  } finally {
    // The namespace lives on in the container's processes; the holder was only needed to write the maps.
    holder?.kill("SIGKILL");
  }
}

async function readInitReports(status: Readable, chain: ChildProcess, onPid: (pid: number) => Promise<void>): Promise<number> {
  const deadline = Date.now() + INIT_TIMEOUT_MS;
  let buffer = "";
  let ended = false;
  status.setEncoding("utf8");
  status.on("data", (chunk: string) => (buffer += chunk));
  status.on("close", () => (ended = true));

  const reports = (): InitReport[] =>
    buffer
      .split("\n")
      .filter((line) => line.trim())
      .map((line) => JSON.parse(line) as InitReport);

  // The reaper chain keeps its own copies of the status pipe, so EOF never
  // comes from a successful execve. Instead the init announces the execve,
  // and the agent watches the workload's /proc/PID/exe leave the Node binary.
  const node = await fs.stat(process.execPath);
  let released = false;
  for (;;) {
    const received = reports();
    const failure = received.find((report): report is Extract<InitReport, { failed: unknown }> => "failed" in report);
    if (failure) throw Object.assign(new Error(failure.failed.message), { initStep: failure.failed.step });
    const pidReport = received.find((report): report is Extract<InitReport, { pid: number }> => "pid" in report);
    if (pidReport && !released) {
      released = true;
      await onPid(pidReport.pid);
    }
    const announced = received.some((report) => "exec" in report);
    if (pidReport && announced) {
      const exe = await fs.stat(`/proc/${pidReport.pid}/exe`).catch(() => undefined);
      // A vanished process or a new executable both mean the init is gone; inspect reports which.
      if (!exe || exe.ino !== node.ino || exe.dev !== node.dev) {
        status.destroy();
        return pidReport.pid;
      }
    }
    if (ended && chain.exitCode !== null) {
      throw new Error(`the container init exited with code ${chain.exitCode} before the workload started; see the container's stderr log`);
    }
    if (Date.now() > deadline) throw new Error(`the container init did not start the workload within ${INIT_TIMEOUT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}
