/**
 * The Linux capabilities a container keeps. Numbers are the kernel's
 * (include/uapi/linux/capability.h).
 */
import { readFileSync } from "node:fs";

export const CAPABILITY_NUMBERS: Record<string, number> = {
  CAP_CHOWN: 0,
  CAP_DAC_OVERRIDE: 1,
  CAP_DAC_READ_SEARCH: 2,
  CAP_FOWNER: 3,
  CAP_FSETID: 4,
  CAP_KILL: 5,
  CAP_SETGID: 6,
  CAP_SETUID: 7,
  CAP_SETPCAP: 8,
  CAP_LINUX_IMMUTABLE: 9,
  CAP_NET_BIND_SERVICE: 10,
  CAP_NET_BROADCAST: 11,
  CAP_NET_ADMIN: 12,
  CAP_NET_RAW: 13,
  CAP_IPC_LOCK: 14,
  CAP_IPC_OWNER: 15,
  CAP_SYS_MODULE: 16,
  CAP_SYS_RAWIO: 17,
  CAP_SYS_CHROOT: 18,
  CAP_SYS_PTRACE: 19,
  CAP_SYS_PACCT: 20,
  CAP_SYS_ADMIN: 21,
  CAP_SYS_BOOT: 22,
  CAP_SYS_NICE: 23,
  CAP_SYS_RESOURCE: 24,
  CAP_SYS_TIME: 25,
  CAP_SYS_TTY_CONFIG: 26,
  CAP_MKNOD: 27,
  CAP_LEASE: 28,
  CAP_AUDIT_WRITE: 29,
  CAP_AUDIT_CONTROL: 30,
  CAP_SETFCAP: 31,
  CAP_MAC_OVERRIDE: 32,
  CAP_MAC_ADMIN: 33,
  CAP_SYSLOG: 34,
  CAP_WAKE_ALARM: 35,
  CAP_BLOCK_SUSPEND: 36,
  CAP_AUDIT_READ: 37,
  CAP_PERFMON: 38,
  CAP_BPF: 39,
  CAP_CHECKPOINT_RESTORE: 40,
};

/** Capabilities that Garden removes from every container: each grants reach into the kernel or other tenants. */
export const DROPPED_CAPABILITIES = [
  "CAP_DAC_READ_SEARCH",
  "CAP_LINUX_IMMUTABLE",
  "CAP_NET_BROADCAST",
  "CAP_NET_ADMIN",
  "CAP_IPC_LOCK",
  "CAP_IPC_OWNER",
  "CAP_SYS_MODULE",
  "CAP_SYS_RAWIO",
  "CAP_SYS_PTRACE",
  "CAP_SYS_PACCT",
  "CAP_SYS_BOOT",
  "CAP_SYS_NICE",
  "CAP_SYS_RESOURCE",
  "CAP_SYS_TIME",
  "CAP_SYS_TTY_CONFIG",
  "CAP_LEASE",
  "CAP_AUDIT_CONTROL",
  "CAP_MAC_OVERRIDE",
  "CAP_MAC_ADMIN",
  "CAP_SYSLOG",
  "CAP_WAKE_ALARM",
  "CAP_BLOCK_SUSPEND",
  // Newer than Garden's list: each splits a power out of CAP_SYS_ADMIN, so an
  // unprivileged container must not have them either.
  "CAP_PERFMON",
  "CAP_BPF",
  "CAP_CHECKPOINT_RESTORE",
] as const;

/** Reads the kernel's highest capability number. Capabilities above 40 are unknown to this table and always dropped. */
export function lastCapability(): number {
  try {
    return Number(readFileSync("/proc/sys/kernel/cap_last_cap", "utf8").trim());
  } catch {
    return 40;
  }
}

/** Computes the mask of capabilities a container keeps. CAP_SYS_ADMIN is kept only for privileged containers. */
export function keptCapabilityMask(privileged: boolean): bigint {
  const dropped = new Set<number>(DROPPED_CAPABILITIES.map((name) => CAPABILITY_NUMBERS[name]));
  if (!privileged) dropped.add(CAPABILITY_NUMBERS.CAP_SYS_ADMIN);
  let mask = 0n;
  for (const number of Object.values(CAPABILITY_NUMBERS)) {
    if (!dropped.has(number)) mask |= 1n << BigInt(number);
  }
  return mask;
}

/** Lists every capability number of the running kernel, for dropping from the bounding set. */
export function allCapabilityNumbers(): number[] {
  return Array.from({ length: lastCapability() + 1 }, (_, index) => index);
}
