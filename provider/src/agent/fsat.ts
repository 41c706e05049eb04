/**
 * Filesystem calls relative to a directory fd (the *at family and openat2),
 * which Node does not offer. They let the agent write into a directory tree
 * it does not trust, such as an image rootfs, with path resolution done and
 * confined by the kernel. Loaded through koffi, like ./libc.
 */
import koffi from "koffi";
import { constants as fsConstants } from "node:fs";
import { constants as osConstants } from "node:os";

import { SyscallError } from "./libc";

const libc = koffi.load("libc.so.6");

/** openat2 has no glibc wrapper. Its number is 437 in both asm/unistd_64.h (x86_64) and asm-generic/unistd.h (arm64). */
const OPENAT2_SYSCALL: Record<string, number> = { x64: 437, arm64: 437 };
const OPENAT2_ATTEMPTS = 64;

/** Open flags that Node's fs.constants lacks. Each has the same value on x86_64 and arm64. */
export const O_PATH = 0o10000000;
export const O_CLOEXEC = 0o2000000;
export const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_DIRECTORY, O_NONBLOCK } = fsConstants;

export const AT_SYMLINK_NOFOLLOW = 0x100;
export const AT_REMOVEDIR = 0x200;
export const AT_EMPTY_PATH = 0x1000;

/** Resolve flags of struct open_how (linux/openat2.h). */
export const RESOLVE_NO_XDEV = 0x01;
export const RESOLVE_NO_MAGICLINKS = 0x02;
export const RESOLVE_NO_SYMLINKS = 0x04;
export const RESOLVE_BENEATH = 0x08;
export const RESOLVE_IN_ROOT = 0x10;

export const S_IFMT = fsConstants.S_IFMT;
export const S_IFDIR = fsConstants.S_IFDIR;
export const S_IFIFO = fsConstants.S_IFIFO;

const STATX_TYPE = 0x1;
const STATX_MODE = 0x2;
const STATX_BUFFER_SIZE = 256;
const STATX_MODE_OFFSET = 28;

const syscallFn = libc.func("long syscall(long number, ...)");
const openatFn = libc.func("int openat(int dirfd, const char *path, int flags, ...)");
const mkdiratFn = libc.func("int mkdirat(int dirfd, const char *path, uint32_t mode)");
const symlinkatFn = libc.func("int symlinkat(const char *target, int dirfd, const char *path)");
const linkatFn = libc.func("int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags)");
const mknodatFn = libc.func("int mknodat(int dirfd, const char *path, uint32_t mode, uint64_t dev)");
const fchownatFn = libc.func("int fchownat(int dirfd, const char *path, uint32_t uid, uint32_t gid, int flags)");
const unlinkatFn = libc.func("int unlinkat(int dirfd, const char *path, int flags)");
const utimensatFn = libc.func("int utimensat(int dirfd, const char *path, const void *times, int flags)");
const statxFn = libc.func("int statx(int dirfd, const char *path, int flags, uint32_t mask, void *buffer)");
const getdents64Fn = libc.func("long getdents64(int fd, void *buffer, size_t length)");

/**
 * A file name as a string, or as raw bytes for names read back from the
 * disk, which need not be valid UTF-8.
 */
export type FileName = string | Buffer;

function cString(name: FileName): string | Buffer {
  return typeof name === "string" ? name : Buffer.concat([name, Buffer.from([0])]);
}

function quote(name: FileName): string {
  return JSON.stringify(typeof name === "string" ? name : name.toString("utf8"));
}

function check(result: number | bigint, call: () => string): number {
  const value = Number(result);
  if (value < 0) throw new SyscallError(call(), koffi.errno());
  return value;
}

/** Checks whether error is a failed call with one of the given errno names, such as "ENOENT". */
export function isErrno(error: unknown, ...names: (keyof typeof osConstants.errno)[]): boolean {
  return error instanceof SyscallError && names.some((name) => osConstants.errno[name] === error.errno);
}

/**
 * Opens path relative to dirFd under the rules of openat2(2). With
 * RESOLVE_IN_ROOT, dirFd acts as the root directory for this lookup, so
 * "..", absolute paths and symlinks in path cannot leave it.
 */
export function openat2(dirFd: number, path: FileName, flags: number, resolve: number, mode = 0): number {
  const number = OPENAT2_SYSCALL[process.arch];
  if (number === undefined) throw new Error(`the agent has no openat2 syscall number for architecture ${process.arch}`);
  const how = Buffer.alloc(24);
  how.writeBigUInt64LE(BigInt(flags), 0);
  how.writeBigUInt64LE(BigInt(mode), 8);
  how.writeBigUInt64LE(BigInt(resolve), 16);
  const cPath = cString(path);
  for (let attempt = 1; ; attempt++) {
    const result = Number(syscallFn(number, "int", dirFd, "const char *", cPath, "void *", how, "size_t", how.length));
    if (result >= 0) return result;
    const errno = koffi.errno();
    // With RESOLVE_IN_ROOT the kernel returns EAGAIN when a rename anywhere on
    // the system raced with a ".." step. The openat2(2) manual page recommends a retry.
    if (errno !== osConstants.errno.EAGAIN || attempt === OPENAT2_ATTEMPTS) throw new SyscallError(`openat2(${quote(path)})`, errno);
  }
}

export function openat(dirFd: number, path: FileName, flags: number, mode = 0): number {
  return check(openatFn(dirFd, cString(path), flags, "uint32_t", mode), () => `openat(${quote(path)})`);
}

export function mkdirat(dirFd: number, path: FileName, mode: number): void {
  check(mkdiratFn(dirFd, cString(path), mode), () => `mkdirat(${quote(path)})`);
}

export function symlinkat(target: string, dirFd: number, path: FileName): void {
  check(symlinkatFn(target, dirFd, cString(path)), () => `symlinkat(${JSON.stringify(target)}, ${quote(path)})`);
}

/** Creates a hard link. Without AT_SYMLINK_FOLLOW in flags, a symlink at oldPath is linked itself, not its target. */
export function linkat(oldDirFd: number, oldPath: FileName, newDirFd: number, newPath: FileName, flags = 0): void {
  check(linkatFn(oldDirFd, cString(oldPath), newDirFd, cString(newPath), flags), () => `linkat(${quote(oldPath)}, ${quote(newPath)})`);
}

export function mknodat(dirFd: number, path: FileName, mode: number, device = 0): void {
  check(mknodatFn(dirFd, cString(path), mode, device), () => `mknodat(${quote(path)})`);
}

export function fchownat(dirFd: number, path: FileName, uid: number, gid: number, flags: number): void {
  check(fchownatFn(dirFd, cString(path), uid, gid, flags), () => `fchownat(${quote(path)}, ${uid}, ${gid})`);
}

export function unlinkat(dirFd: number, path: FileName, flags = 0): void {
  check(unlinkatFn(dirFd, cString(path), flags), () => `unlinkat(${quote(path)})`);
}

/** Sets access and modification times, given in seconds since the epoch with a fraction. */
export function utimensat(dirFd: number, path: FileName, atime: number, mtime: number, flags: number): void {
  const times = Buffer.alloc(32);
  [atime, mtime].forEach((seconds, index) => {
    const whole = Math.floor(seconds);
    times.writeBigInt64LE(BigInt(whole), index * 16);
    times.writeBigInt64LE(BigInt(Math.min(999_999_999, Math.round((seconds - whole) * 1e9))), index * 16 + 8);
  });
  check(utimensatFn(dirFd, cString(path), times, flags), () => `utimensat(${quote(path)})`);
}

/** Returns st_mode (file type and permission bits) of path, through statx(2). */
export function statMode(dirFd: number, path: FileName, flags: number): number {
  const buffer = Buffer.alloc(STATX_BUFFER_SIZE);
  check(statxFn(dirFd, cString(path), flags, STATX_TYPE | STATX_MODE, buffer), () => `statx(${quote(path)})`);
  return buffer.readUInt16LE(STATX_MODE_OFFSET);
}

/**
 * Lists the names in the directory open at fd (not an O_PATH fd), without
 * "." and "..", as raw bytes.
 */
export function readDirectory(fd: number): Buffer[] {
  const names: Buffer[] = [];
  const buffer = Buffer.alloc(64 * 1024);
  for (;;) {
    const length = check(getdents64Fn(fd, buffer, buffer.length), () => `getdents64(${fd})`);
    if (length === 0) return names;
    // struct linux_dirent64: u64 d_ino, s64 d_off, u16 d_reclen, u8 d_type, then the NUL-terminated name.
    for (let offset = 0; offset < length; ) {
      const recordLength = buffer.readUInt16LE(offset + 16);
      const nameStart = offset + 19;
      const nameEnd = buffer.indexOf(0, nameStart);
      const name = Buffer.from(buffer.subarray(nameStart, nameEnd));
      if (!(name.length === 1 && name[0] === 0x2e) && !(name.length === 2 && name[0] === 0x2e && name[1] === 0x2e)) names.push(name);
      offset += recordLength;
    }
  }
}
