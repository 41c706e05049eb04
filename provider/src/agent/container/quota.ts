/**
 * Disk quotas for a container's read-write layer. The layer lives on a
 * sparse file of exactly the quota's size, formatted ext4 and loop-mounted,
 * so writing past the quota fails with ENOSPC. This works on any cell with
 * loop devices, whatever filesystem /var/lib/cellfleet is on.
 */
import { execFile } from "node:child_process";
import { promises as fs } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";

import { AgentFailure } from "../errors";

const run = promisify(execFile);

export async function quotaSupport(): Promise<"loop-ext4" | "none"> {
  try {
    await fs.access("/dev/loop-control");
    await run("mkfs.ext4", ["-V"]);
    return "loop-ext4";
  } catch {
    return "none";
  }
}

/** Creates and mounts a size-limited filesystem at mountPoint. */
export async function mountQuotaFilesystem(imageFile: string, mountPoint: string, bytes: number): Promise<void> {
  if ((await quotaSupport()) === "none") {
    throw new AgentFailure(
      "QUOTA_UNSUPPORTED",
      "create disk quota",
      "this cell cannot enforce diskQuota: it needs /dev/loop-control and mkfs.ext4 (e2fsprogs); install them or remove diskQuota",
    );
  }
  const handle = await fs.open(imageFile, "w", 0o600);
  try {
    await handle.truncate(bytes);
  } finally {
    await handle.close();
  }
  // No reserved blocks: the whole quota is the container's. No journal: the
  // layer is scratch space that Delete discards.
  await run("mkfs.ext4", ["-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "root_owner=0:0", imageFile]);
  await fs.mkdir(mountPoint, { recursive: true, mode: 0o711 });
  await run("mount", ["-o", "loop,nodev,nosuid", imageFile, mountPoint]);
  // ext4 puts lost+found at the top; the overlay layers live in subdirectories, so it stays out of the container's view.
  await fs.chmod(mountPoint, 0o711);
}

/** Unmounts the quota filesystem if it is mounted; the loop device is released with it (autoclear). */
export async function unmountQuotaFilesystem(mountPoint: string): Promise<void> {
  const mounts = await fs.readFile("/proc/self/mountinfo", "utf8");
  const mounted = mounts.split("\n").some((line) => line.split(" ")[4] === path.resolve(mountPoint));
  if (mounted) await run("umount", [mountPoint]);
}
