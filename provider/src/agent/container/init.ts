/**
 * The container init: the last runtime code before the workload. It runs as
 * `node agent.js init` inside fresh user, mount, UTS, IPC, network and PID
 * namespaces (created by util-linux nsenter and unshare, see launcher.ts) as
 * root of the user namespace, which is host uid 4294967294 on the cell.
 *
 * The steps below are in the order the kernel requires. Each is one named
 * function, and the reason for its place in the order is above the call.
 */
import { closeSync, existsSync, openSync, readSync, lstatSync, mkdirSync, readFileSync, readlinkSync, statSync, symlinkSync, writeFileSync, writeSync } from "node:fs";
import path from "node:path";

import * as libc from "../libc";
import { allCapabilityNumbers, keptCapabilityMask } from "./capabilities";
import { GO_FD, InitReport, InitSpec, SPEC_FD, STATUS_FD } from "./init-spec";
import { buildFilter, encodeFilter } from "./seccomp";

const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const CLOSE_RANGE_CLOEXEC = 1 << 2;

/**
 * Device nodes bound from the cell into every container's /dev, when the
 * cell has them. The container's devices cgroup allows exactly these.
 */
const DEVICE_NODES = ["null", "zero", "full", "random", "urandom", "tty", "tty0", "tty1", "fuse", "net/tun"];

/** /proc entries that reach kernel settings: a write there would change the whole cell. */
const READ_ONLY_PROC_PATHS = ["sys", "sysrq-trigger", "irq", "bus", "fs"];

/** /proc entries that leak kernel memory or other tenants' data; they read empty. */
const MASKED_PROC_FILES = ["kcore", "keys", "timer_list", "sched_debug", "kallsyms", "latency_stats"];
const MASKED_PROC_DIRECTORIES = ["acpi", "scsi"];

/** /sys directories with firmware tables and other cell-wide data; they read empty. */
const MASKED_SYS_DIRECTORIES = ["firmware"];

class InitStepError extends Error {
  constructor(
    readonly step: string,
    cause: unknown,
  ) {
    super(`${step}: ${(cause as Error).message ?? String(cause)}`, { cause });
  }
}

function runStep<T>(name: string, action: () => T): T {
  try {
    return action();
  } catch (error) {
    throw new InitStepError(name, error);
  }
}

function report(message: InitReport): void {
  writeSync(STATUS_FD, `${JSON.stringify(message)}\n`);
}

/** Entry point of `agent.js init`. Never returns: it execs the workload or exits 1. */
export function runInit(): never {
  let spec: InitSpec;
  try {
    spec = JSON.parse(readFileSync(SPEC_FD, "utf8")) as InitSpec;
    closeSync(SPEC_FD);
  } catch (error) {
    process.stderr.write(`cellfleet init: reading the spec from fd ${SPEC_FD} failed: ${(error as Error).message}\n`);
    process.exit(1);
  }
  try {
    startContainer(spec);
  } catch (error) {
    const step = error instanceof InitStepError ? error.step : "start container";
    const message = error instanceof InitStepError ? String((error.cause as Error)?.message ?? error.cause) : (error as Error).message;
    try {
      report({ failed: { step, message } });
    } finally {
      process.stderr.write(`cellfleet init: ${step} failed: ${message}\n`);
    }
    process.exit(1);
  }
}

function startContainer(spec: InitSpec): never {
  // The host /proc is still mounted here, so /proc/self names this process
  // by its pid on the cell, which the agent needs to watch the workload.
  report({ pid: runStep("read own pid on the cell", readCellPid) });

  // Mount events must not travel back to the cell: unshare already made the
  // tree private, and this repeats it so the init never depends on that flag.
  runStep("make mounts private", makeMountsPrivate);

  runStep("mount overlay rootfs", () => mountOverlayRootfs(spec));

  runStep("mount /proc", () => mountProc(spec.rootfs.merged));

  // /sys is read-only as a whole: nothing in it is a container's to change.
  runStep("mount /sys read-only", () => mountSysReadOnly(spec.rootfs.merged));

  runStep("populate /dev", () => populateDev(spec.rootfs.merged));

  // Must follow populateDev: masking binds the container's own /dev/null.
  runStep("mask sensitive /proc and /sys paths", () => maskPaths(spec.rootfs.merged));

  runStep("make kernel settings in /proc read-only", () => makeProcPathsReadOnly(spec.rootfs.merged));

  // The network namespace starts with lo down; programs expect localhost to work.
  runStep("bring up loopback", () => libc.setInterfaceUp("lo"));

  runStep("set hostname", () => libc.sethostname(spec.hostname));

  // After this no cell path is reachable: the old root is detached, not just hidden.
  runStep("pivot_root into rootfs", () => pivotIntoRootfs(spec.rootfs.merged));

  // Resolved after pivot_root so that only the container's own files are
  // considered, and before dropping privileges so errors are clear.
  const executable = runStep("resolve executable", () => resolveExecutable(spec.command[0], spec.env.PATH ?? DEFAULT_PATH));

  // Needs CAP_SETPCAP, which setresuid to a non-root user would remove.
  runStep("drop capabilities from the bounding set", () => dropBoundingCapabilities(spec.privileged));

  // Inheritable capabilities must be empty: a non-empty set would survive
  // execve into programs that carry file capabilities.
  runStep("clear ambient capabilities", () => libc.prctl(libc.PR.CAP_AMBIENT, libc.PR.CAP_AMBIENT_CLEAR_ALL));

  // setuid and file-capability binaries in the image must not raise privileges.
  runStep("set no_new_privs", () => libc.prctl(libc.PR.SET_NO_NEW_PRIVS, 1));

  runStep("switch user", () => switchUser(spec.uid, spec.gid, spec.groups, spec.privileged));

  // Set after switching users, so a directory the user cannot enter fails here.
  runStep("enter working directory", () => enterWorkingDirectory(spec.workingDir));

  // Every descriptor above stderr is marked close-on-exec, so no agent or
  // runtime descriptor reaches the workload, yet the status pipe stays
  // usable to report a failed execve.
  runStep("close inherited descriptors", () => libc.closeRange(3, 0xffffffff, CLOSE_RANGE_CLOEXEC));

  // Node marks its stdio close-on-exec, so without this the workload would
  // start with no stdin, stdout or stderr at all.
  runStep("set up stdio", prepareStdio);

  // The agent attaches the network from outside while the steps above run;
  // the workload must not start before its interfaces exist.
  runStep("wait for the agent", waitForGo);

  // Last before execve: the filter denies calls that the steps above make,
  // such as mount and pivot_root.
  runStep("install seccomp filter", () => libc.installSeccompFilter(encodeFilter(buildFilter({ privileged: spec.privileged, extraDenied: spec.seccompDeny }))));

  const envp = Object.entries({ PATH: DEFAULT_PATH, HOME: spec.uid === 0 ? "/root" : "/", ...spec.env }).map(
    ([name, value]) => `${name}=${value}`,
  );
  report({ exec: true });
  return runStep("execve workload", () => libc.execve(executable, spec.command, envp));
}

/**
 * Gives the workload the container's own /dev/null as stdin, and the log
 * files the launcher opened as stdout and stderr.
 */
function prepareStdio(): void {
  const devNull = openSync("/dev/null", "r");
  libc.dup2(devNull, 0);
  closeSync(devNull);
  libc.clearCloseOnExec(0);
  libc.clearCloseOnExec(1);
  libc.clearCloseOnExec(2);
}

function waitForGo(): void {
  const buffer = Buffer.alloc(16);
  let received = "";
  for (;;) {
    const count = readSync(GO_FD, buffer, 0, buffer.length, null);
    if (count === 0) throw new Error("the agent closed the start pipe without a go; it aborted the start");
    received += buffer.subarray(0, count).toString("utf8");
    if (received.includes("\n")) break;
  }
  if (received.trim() !== "go") throw new Error(`unexpected message ${JSON.stringify(received.trim())} on the start pipe`);
  closeSync(GO_FD);
}

function readCellPid(): number {
  return Number(readlinkSync("/proc/self"));
}

function makeMountsPrivate(): void {
  libc.mount(null, "/", null, libc.MS.REC | libc.MS.PRIVATE);
}

function mountOverlayRootfs(spec: InitSpec): void {
  const { lower, upper, work, merged } = spec.rootfs;
  // userxattr: inside a user namespace overlayfs may only keep its metadata in user.* xattrs.
  const options = `lowerdir=${lower.join(":")},upperdir=${upper},workdir=${work},userxattr`;
  libc.mount("overlay", merged, "overlay", libc.MS.NODEV, options);
}

/**
 * Creates a mount point directly under the rootfs. An existing entry must be
 * a real directory: a symlink planted in the image (say /proc -> /etc) would
 * otherwise redirect the mount to wherever the link points.
 */
function mountPointInRootfs(rootfs: string, name: string): string {
  const target = path.join(rootfs, name);
  let stat;
  try {
    stat = lstatSync(target);
  } catch {
    mkdirSync(target, { mode: 0o755 });
    return target;
  }
  if (!stat.isDirectory() || stat.isSymbolicLink()) {
    throw new Error(`${JSON.stringify("/" + name)} in the image is not a directory, refusing to mount over it`);
  }
  return target;
}

function mountProc(rootfs: string): void {
  const target = mountPointInRootfs(rootfs, "proc");
  libc.mount("proc", target, "proc", libc.MS.NOSUID | libc.MS.NODEV | libc.MS.NOEXEC);
}

function mountSysReadOnly(rootfs: string): void {
  const target = mountPointInRootfs(rootfs, "sys");
  libc.mount("sysfs", target, "sysfs", libc.MS.RDONLY | libc.MS.NOSUID | libc.MS.NODEV | libc.MS.NOEXEC);
}

function populateDev(rootfs: string): void {
  const dev = mountPointInRootfs(rootfs, "dev");
  libc.mount("tmpfs", dev, "tmpfs", libc.MS.NOSUID | libc.MS.NOEXEC, "mode=755,size=65536k");

  // mknod is not allowed in a user namespace, so device nodes are bind mounts
  // of the cell's own nodes. The targets are files in the fresh tmpfs above.
  for (const name of DEVICE_NODES) {
    if (!existsSync(`/dev/${name}`)) continue;
    const target = path.join(dev, name);
    mkdirSync(path.dirname(target), { recursive: true, mode: 0o755 });
    writeFileSync(target, "", { mode: 0o666 });
    libc.mount(`/dev/${name}`, target, null, libc.MS.BIND);
  }

  mkdirSync(path.join(dev, "pts"), { mode: 0o755 });
  libc.mount("devpts", path.join(dev, "pts"), "devpts", libc.MS.NOSUID | libc.MS.NOEXEC, "newinstance,ptmxmode=0666,mode=0620");
  symlinkSync("pts/ptmx", path.join(dev, "ptmx"));

  mkdirSync(path.join(dev, "shm"), { mode: 0o1777 });
  libc.mount("shm", path.join(dev, "shm"), "tmpfs", libc.MS.NOSUID | libc.MS.NODEV | libc.MS.NOEXEC, "mode=1777,size=65536k");

  symlinkSync("/proc/self/fd", path.join(dev, "fd"));
  symlinkSync("/proc/self/fd/0", path.join(dev, "stdin"));
  symlinkSync("/proc/self/fd/1", path.join(dev, "stdout"));
  symlinkSync("/proc/self/fd/2", path.join(dev, "stderr"));
}

/**
 * Binds the container's /dev/null over sensitive /proc files and an empty
 * read-only tmpfs over sensitive directories. The node is
 * checked first: binding a swapped-in symlink or regular file would mask
 * with something writable (runc CVE-2025-31133).
 */
function maskPaths(rootfs: string): void {
  const devNull = path.join(rootfs, "dev/null");
  const stat = lstatSync(devNull);
  const rdev = stat.rdev;
  // Linux encodes device numbers with the major above the low 8 bits of the minor.
  if (!stat.isCharacterDevice() || ((rdev >> 8) & 0xfff) !== 1 || (rdev & 0xff) !== 3) {
    throw new Error(`${devNull} is not the character device 1:3`);
  }
  for (const name of MASKED_PROC_FILES) {
    const target = path.join(rootfs, "proc", name);
    if (existsSync(target)) libc.mount(devNull, target, null, libc.MS.BIND);
  }
  const maskedDirectories = [...MASKED_PROC_DIRECTORIES.map((name) => path.join("proc", name)), ...MASKED_SYS_DIRECTORIES.map((name) => path.join("sys", name))];
  for (const name of maskedDirectories) {
    const target = path.join(rootfs, name);
    if (existsSync(target) && statSync(target).isDirectory()) {
      libc.mount("tmpfs", target, "tmpfs", libc.MS.RDONLY | libc.MS.NOSUID | libc.MS.NODEV | libc.MS.NOEXEC, "size=0");
    }
  }
}

function makeProcPathsReadOnly(rootfs: string): void {
  // A read-only remount of a bind mount must repeat the locked flags of the
  // proc mount (nosuid, nodev, noexec): in a user namespace the kernel
  // refuses a remount that would clear them.
  const locked = libc.MS.NOSUID | libc.MS.NODEV | libc.MS.NOEXEC;
  for (const name of READ_ONLY_PROC_PATHS) {
    const target = path.join(rootfs, "proc", name);
    if (!existsSync(target)) continue;
    libc.mount(target, target, null, libc.MS.BIND | libc.MS.REC);
    libc.mount(null, target, null, libc.MS.BIND | libc.MS.REMOUNT | libc.MS.RDONLY | locked);
  }
}

/**
 * Enters the rootfs with pivot_root(".", "."), which stacks the old root
 * under the new one, then detaches the old root. Unlike chroot, no path
 * from the cell remains reachable through "..".
 */
function pivotIntoRootfs(rootfs: string): void {
  libc.chdir(rootfs);
  libc.pivotRoot(".", ".");
  libc.umount2(".", libc.MNT_DETACH);
  libc.chdir("/");
}

/**
 * Enters the working directory and checks that it is inside the rootfs:
 * the kernel reports a directory outside the current root with the prefix
 * "(unreachable)", which a leaked descriptor of the cell would produce.
 */
function enterWorkingDirectory(directory: string): void {
  libc.chdir(directory);
  const actual = process.cwd();
  if (actual.startsWith("(unreachable)") || !actual.startsWith("/")) {
    throw new Error(`working directory ${JSON.stringify(directory)} resolves outside the rootfs (${JSON.stringify(actual)})`);
  }
}

function resolveExecutable(program: string, searchPath: string): string {
  const candidates = program.includes("/") ? [program] : searchPath.split(":").filter(Boolean).map((dir) => path.join(dir, program));
  for (const candidate of candidates) {
    try {
      const stat = statSync(candidate);
      if (stat.isFile() && (stat.mode & 0o111) !== 0) return candidate;
    } catch {
      // Not in this directory; try the next.
    }
  }
  throw new Error(`executable ${JSON.stringify(program)} not found in the image (searched ${candidates.join(", ")})`);
}

function dropBoundingCapabilities(privileged: boolean): void {
  const kept = keptCapabilityMask(privileged);
  for (const number of allCapabilityNumbers()) {
    if ((kept & (1n << BigInt(number))) === 0n) libc.prctl(libc.PR.CAPBSET_DROP, number);
  }
}

/**
 * Switches to the workload's user. For root the kept capabilities stay
 * effective and permitted; for any other user setresuid clears them, as it
 * does for ordinary processes. The inheritable set is emptied either way.
 */
function switchUser(uid: number, gid: number, groups: number[], privileged: boolean): void {
  libc.setgroups(groups);
  libc.setresgid(gid);
  libc.setresuid(uid);
  const kept = uid === 0 ? keptCapabilityMask(privileged) : 0n;
  libc.capset(kept, kept, 0n);
}
