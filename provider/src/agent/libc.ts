/**
 * The libc calls the agent needs and Node does not offer: mounts,
 * pivot_root, capabilities, credentials and execve. Loaded through koffi, so
 * the agent ships no native code of its own.
 */
import koffi from "koffi";
import { constants as osConstants } from "node:os";

const libc = koffi.load("libc.so.6");

/** Syscall numbers for calls that glibc does not wrap. */
const SYSCALLS: Record<string, { pivotRoot: number; capget: number; capset: number }> = {
  x64: { pivotRoot: 155, capget: 125, capset: 126 },
  arm64: { pivotRoot: 41, capget: 90, capset: 91 },
};

export const MS = {
  RDONLY: 0x1,
  NOSUID: 0x2,
  NODEV: 0x4,
  NOEXEC: 0x8,
  REMOUNT: 0x20,
  BIND: 0x1000,
  REC: 0x4000,
  PRIVATE: 0x40000,
  SLAVE: 0x80000,
} as const;

export const MNT_DETACH = 0x2;

export const PR = {
  SET_PDEATHSIG: 1,
  CAPBSET_READ: 23,
  CAPBSET_DROP: 24,
  SET_NO_NEW_PRIVS: 38,
  GET_NO_NEW_PRIVS: 39,
  CAP_AMBIENT: 47,
  CAP_AMBIENT_CLEAR_ALL: 4,
} as const;

const mountFn = libc.func("int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)");
const umount2Fn = libc.func("int umount2(const char *target, int flags)");
const chdirFn = libc.func("int chdir(const char *path)");
const sethostnameFn = libc.func("int sethostname(const char *name, size_t len)");
const prctlFn = libc.func("int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)");
const setresuidFn = libc.func("int setresuid(uint32_t ruid, uint32_t euid, uint32_t suid)");
const setresgidFn = libc.func("int setresgid(uint32_t rgid, uint32_t egid, uint32_t sgid)");
const setgroupsFn = libc.func("int setgroups(size_t size, const uint32_t *list)");
const dup2Fn = libc.func("int dup2(int oldfd, int newfd)");
const closeRangeFn = libc.func("int close_range(unsigned int first, unsigned int last, int flags)");
const execveFn = libc.func("int execve(const char *path, const char **argv, const char **envp)");
const syscallFn = libc.func("long syscall(long number, ...)");
const umaskFn = libc.func("uint32_t umask(uint32_t mask)");
const socketFn = libc.func("int socket(int domain, int type, int protocol)");
const ioctlFn = libc.func("int ioctl(int fd, unsigned long request, ...)");
const closeFn = libc.func("int close(int fd)");
const fcntlFn = libc.func("int fcntl(int fd, int cmd, ...)");

const F_SETFD = 2;

const sockFprog = koffi.struct("sock_fprog", { len: "uint16_t", filter: "void *" });
const prctlSeccompFn = libc.func("int prctl(int option, unsigned long mode, sock_fprog *program, unsigned long arg4, unsigned long arg5)");
const PR_SET_SECCOMP = 22;
const SECCOMP_MODE_FILTER = 2;

/** A failed libc call, named by the call and its quoted arguments, with errno decoded. */
export class SyscallError extends Error {
  constructor(
    readonly call: string,
    readonly errno: number,
  ) {
    super(`${call}: ${errnoName(errno)}`);
  }
}

function errnoName(errno: number): string {
  const entry = Object.entries(osConstants.errno).find(([, value]) => value === errno);
  return entry ? `${entry[0]} (errno ${errno})` : `errno ${errno}`;
}

function check(result: number | bigint, call: string): void {
  if (Number(result) < 0) throw new SyscallError(call, koffi.errno());
}

function syscallNumbers() {
  const numbers = SYSCALLS[process.arch];
  if (!numbers) throw new Error(`the agent has no syscall table for architecture ${process.arch}`);
  return numbers;
}

export function mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null = null): void {
  check(mountFn(source, target, fstype, flags, data), `mount(${JSON.stringify(source)}, ${JSON.stringify(target)}, ${JSON.stringify(fstype)}, 0x${flags.toString(16)})`);
}

export function umount2(target: string, flags: number): void {
  check(umount2Fn(target, flags), `umount2(${JSON.stringify(target)})`);
}

export function pivotRoot(newRoot: string, putOld: string): void {
  const result = syscallFn(syscallNumbers().pivotRoot, "str", newRoot, "str", putOld);
  check(result, `pivot_root(${JSON.stringify(newRoot)}, ${JSON.stringify(putOld)})`);
}

export function chdir(path: string): void {
  check(chdirFn(path), `chdir(${JSON.stringify(path)})`);
}

export function sethostname(name: string): void {
  check(sethostnameFn(name, Buffer.byteLength(name)), `sethostname(${JSON.stringify(name)})`);
}

export function prctl(option: number, arg2 = 0, arg3 = 0, arg4 = 0, arg5 = 0): number {
  const result = prctlFn(option, arg2, arg3, arg4, arg5);
  check(result, `prctl(${option}, ${arg2})`);
  return result;
}

export function setresuid(uid: number): void {
  check(setresuidFn(uid, uid, uid), `setresuid(${uid})`);
}

export function setresgid(gid: number): void {
  check(setresgidFn(gid, gid, gid), `setresgid(${gid})`);
}

export function setgroups(gids: number[]): void {
  check(setgroupsFn(gids.length, gids.length > 0 ? gids : null), `setgroups(${JSON.stringify(gids)})`);
}

export function dup2(oldFd: number, newFd: number): void {
  check(dup2Fn(oldFd, newFd), `dup2(${oldFd}, ${newFd})`);
}

export function closeRange(first: number, last: number, flags = 0): void {
  check(closeRangeFn(first, last, flags), `close_range(${first}, ${last}, ${flags})`);
}

/**
 * Installs a seccomp filter on the calling thread. The thread that calls
 * execve keeps it, and every process the workload starts inherits it.
 */
export function installSeccompFilter(program: Buffer): void {
  const instructions = program.length / 8;
  check(prctlSeccompFn(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, { len: instructions, filter: program }, 0, 0), `prctl(PR_SET_SECCOMP, ${instructions} instructions)`);
}

/** Clears FD_CLOEXEC so the descriptor survives execve. */
export function clearCloseOnExec(fd: number): void {
  check(fcntlFn(fd, F_SETFD, "int", 0), `fcntl(${fd}, F_SETFD, 0)`);
}

export function umask(mask: number): number {
  return umaskFn(mask);
}

/** Replaces the process image. Returns only by throwing. */
export function execve(path: string, argv: string[], envp: string[]): never {
  execveFn(path, [...argv, null], [...envp, null]);
  throw new SyscallError(`execve(${JSON.stringify(path)})`, koffi.errno());
}

const LINUX_CAPABILITY_VERSION_3 = 0x20080522;

/**
 * Sets the effective, permitted and inheritable capability sets of the
 * calling thread, each given as a 64-bit mask.
 */
export function capset(effective: bigint, permitted: bigint, inheritable: bigint): void {
  const header = Buffer.alloc(8);
  header.writeUInt32LE(LINUX_CAPABILITY_VERSION_3, 0);
  header.writeInt32LE(0, 4);
  const data = Buffer.alloc(24);
  const words = [effective, permitted, inheritable];
  words.forEach((mask, index) => {
    data.writeUInt32LE(Number(mask & 0xffffffffn), index * 4);
    data.writeUInt32LE(Number((mask >> 32n) & 0xffffffffn), 12 + index * 4);
  });
  const result = syscallFn(syscallNumbers().capset, "void *", header, "void *", data);
  check(result, "capset");
}

const AF_INET = 2;
const SOCK_DGRAM = 2;
const SIOCGIFFLAGS = 0x8913;
const SIOCSIFFLAGS = 0x8914;
const IFF_UP = 0x1;

/** Brings a network interface up, as `ip link set NAME up` does, without running a binary. */
export function setInterfaceUp(name: string): void {
  const fd = socketFn(AF_INET, SOCK_DGRAM, 0);
  check(fd, "socket(AF_INET, SOCK_DGRAM)");
  try {
    // struct ifreq: a 16-byte name followed by a union whose first member here is short ifr_flags.
    const request = Buffer.alloc(40);
    request.write(name, 0, 15, "utf8");
    check(ioctlFn(fd, SIOCGIFFLAGS, "void *", request), `ioctl(SIOCGIFFLAGS, ${JSON.stringify(name)})`);
    request.writeUInt16LE(request.readUInt16LE(16) | IFF_UP, 16);
    check(ioctlFn(fd, SIOCSIFFLAGS, "void *", request), `ioctl(SIOCSIFFLAGS, ${JSON.stringify(name)})`);
  } finally {
    closeFn(fd);
  }
}
