/**
 * Resource arithmetic shared by the provider (to show values at preview time)
 * and the agent (to write them into cgroups).
 */

const EIGHT_GIB = 8 * 1024 ** 3;

/** The smallest cpu.shares a container gets, so a tiny container still runs. */
export const MIN_CPU_SHARES = 10;
export const MAX_CPU_SHARES = 1024;

/**
 * Computes cpu.shares in proportion to memory, as Garden does: a container
 * with 8 GiB or more gets the full 1024, smaller ones a linear share of it.
 * Shares are a guaranteed minimum proportion under contention, not a cap.
 */
export function cpuSharesForMemory(memoryBytes: number): number {
  const proportional = Math.floor((MAX_CPU_SHARES * memoryBytes) / EIGHT_GIB);
  return Math.max(MIN_CPU_SHARES, Math.min(proportional, MAX_CPU_SHARES));
}

/**
 * Converts cgroup v1 cpu.shares (2..262144) to cgroup v2 cpu.weight
 * (1..10000) with the linear mapping that runc and crun use, so a container
 * gets the same proportion on either kind of cell.
 */
export function cpuWeightForShares(shares: number): number {
  return 1 + Math.floor(((shares - 2) * 9999) / 262142);
}

/** Converts a cgroup v2 cpu.weight back to cpu.shares, the inverse of cpuWeightForShares, rounded to the nearest share. */
export function cpuSharesForWeight(weight: number): number {
  return Math.round(((weight - 1) * 262142) / 9999) + 2;
}

/** The host id that container root maps to: the largest valid 32-bit id. */
export const MAPPED_ROOT_ID = 4294967294;

/**
 * Renders a uid_map or gid_map for an unprivileged container: container 0
 * becomes host 4294967294 and every other id maps to itself, so image files
 * owned by ordinary users keep their owners while root is mapped away.
 * The kernel accepts a multi-line map only as a single write().
 */
export function unprivilegedIdMap(): string {
  return `0 ${MAPPED_ROOT_ID} 1\n1 1 ${MAPPED_ROOT_ID - 1}\n`;
}

/** Maps an id inside an unprivileged container to the id seen on the cell. */
export function hostIdFor(containerId: number): number {
  return containerId === 0 ? MAPPED_ROOT_ID : containerId;
}
