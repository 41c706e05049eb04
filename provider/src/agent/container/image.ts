/**
 * The image store: each image is unpacked once per cell into
 * images/<hex>/rootfs, read-only to containers and shared by all of them,
 * with ownership shifted so that image root (uid 0) becomes host 4294967294,
 * the id that container root maps to.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createReadStream, promises as fs } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";

import { CELL_PATHS } from "../../common/protocol";
import { MAPPED_ROOT_ID } from "../../common/resources";
import { AgentFailure } from "../errors";
import { exists } from "../files";
import { withLock } from "../lock";

const run = promisify(execFile);

const DIGEST_PATTERN = /^sha256:([0-9a-f]{64})$/;

export function digestHex(digest: string): string {
  const match = DIGEST_PATTERN.exec(digest);
  if (!match) throw new AgentFailure("INVALID_REQUEST", "parse image digest", `image digest ${JSON.stringify(digest)} is not sha256:<64 hex digits>`);
  return match[1];
}

/**
 * The rootfs a container's overlay uses as its lower layer. Unprivileged
 * containers get the copy with ids shifted; privileged ones have no user
 * namespace and get a copy with the image's own ids.
 */
export function imageRootfs(digest: string, privileged = false): string {
  return path.join(CELL_PATHS.images, digestHex(digest), privileged ? "rootfs-privileged" : "rootfs");
}

export function incomingArchive(digest: string): string {
  return path.join(CELL_PATHS.incoming, `${digestHex(digest)}.tar`);
}

export async function hasImage(digest: string): Promise<boolean> {
  return exists(imageRootfs(digest));
}

async function sha256File(file: string): Promise<string> {
  const { createHash } = await import("node:crypto");
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Imports the uploaded archive for digest. Safe to repeat; concurrent imports of one digest run once. */
export async function importImage(digest: string): Promise<void> {
  const hex = digestHex(digest);
  await withLock(`image-${hex}`, async () => {
    if (await hasImage(digest)) return;
    const archive = incomingArchive(digest);
    if (!(await exists(archive))) {
      throw new AgentFailure("IMAGE_MISSING", "find uploaded image", `no archive for ${digest} at ${archive}: upload it first`);
    }
    const actual = await sha256File(archive);
    if (actual !== hex) {
      await fs.rm(archive, { force: true });
      throw new AgentFailure("IMAGE_INVALID", "verify image digest", `the uploaded archive hashes to sha256:${actual}, not ${digest}; upload it again`);
    }

    const staging = path.join(CELL_PATHS.images, `.staging-${hex}-${randomBytes(4).toString("hex")}`);
    const rootfs = path.join(staging, "rootfs");
    await fs.mkdir(rootfs, { recursive: true, mode: 0o755 });
    try {
      await unpackArchive(archive, rootfs, staging);
      await shiftOwnership(rootfs, 0, MAPPED_ROOT_ID);
      // Containers run as mapped ids and must be able to reach their lower layer.
      await fs.chmod(staging, 0o755);
      await fs.rename(staging, path.join(CELL_PATHS.images, hex));
    } catch (error) {
      await fs.rm(staging, { recursive: true, force: true });
      throw error instanceof AgentFailure ? error : new AgentFailure("IMAGE_INVALID", "unpack image", (error as Error).message, { cause: error });
    }
    await fs.rm(archive, { force: true });
  });
}

/** Makes the privileged copy of an imported image by copying it and shifting ids back. */
export async function ensurePrivilegedRootfs(digest: string): Promise<string> {
  const hex = digestHex(digest);
  const target = imageRootfs(digest, true);
  await withLock(`image-${hex}`, async () => {
    if (await exists(target)) return;
    const staging = `${target}.staging-${randomBytes(4).toString("hex")}`;
    try {
      await run("cp", ["-a", imageRootfs(digest), staging]);
      await shiftOwnership(staging, MAPPED_ROOT_ID, 0);
      await fs.rename(staging, target);
    } catch (error) {
      await fs.rm(staging, { recursive: true, force: true });
      throw new AgentFailure("IMAGE_INVALID", "prepare privileged rootfs", (error as Error).message, { cause: error });
    }
  });
  return target;
}

async function listEntries(archive: string): Promise<string[]> {
  const { stdout } = await run("tar", ["-tf", archive], { maxBuffer: 256 * 1024 * 1024 });
  return stdout.split("\n").filter(Boolean);
}

/**
 * Unpacks a plain rootfs tarball, or an OCI image layout archive (index.json,
 * blobs/sha256/...) layer by layer. GNU tar runs as root with
 * --numeric-owner so ownership comes from the archive, not the cell's
 * /etc/passwd.
 */
async function unpackArchive(archive: string, rootfs: string, staging: string): Promise<void> {
  const entries = await listEntries(archive);
  const normalized = new Set(entries.map((entry) => entry.replace(/^\.\//, "")));
  if (!normalized.has("oci-layout") || !normalized.has("index.json")) {
    await extractLayer(archive, rootfs);
    return;
  }

  const layout = path.join(staging, "oci");
  await fs.mkdir(layout);
  await run("tar", ["-xf", archive, "-C", layout, "--no-same-owner", "--no-same-permissions"]);
  const index = JSON.parse(await fs.readFile(path.join(layout, "index.json"), "utf8"));
  const manifestDescriptor = index.manifests?.[0];
  if (!manifestDescriptor) throw new Error("index.json lists no manifest");
  const manifest = JSON.parse(await fs.readFile(blobPath(layout, manifestDescriptor.digest), "utf8"));
  for (const layer of manifest.layers ?? []) {
    const blob = blobPath(layout, layer.digest);
    if ((await sha256File(blob)) !== digestHex(layer.digest)) throw new Error(`layer ${layer.digest} does not match its digest`);
    await applyWhiteouts(blob, rootfs);
    await extractLayer(blob, rootfs, ["--exclude=.wh.*", "--exclude=*/.wh.*"]);
  }
  await fs.rm(layout, { recursive: true, force: true });
}

function blobPath(layout: string, digest: string): string {
  return path.join(layout, "blobs", "sha256", digestHex(digest));
}

async function extractLayer(archive: string, rootfs: string, extra: string[] = []): Promise<void> {
  // GNU tar refuses members with ".." and strips leading "/" by default.
  // NOTE: it still follows a symlink that an earlier member planted as a
  // parent directory; a resolver confined to the rootfs would close that.
  await run("tar", ["-xf", archive, "-C", rootfs, "--numeric-owner", "--same-permissions", "--same-owner", ...extra], {
    maxBuffer: 64 * 1024 * 1024,
  });
}

/**
 * Applies OCI whiteouts of one layer to the layers below it, before the
 * layer itself is extracted: ".wh.NAME" deletes NAME, ".wh..wh..opq"
 * empties its directory.
 */
async function applyWhiteouts(layer: string, rootfs: string): Promise<void> {
  for (const entry of await listEntries(layer)) {
    const relative = path.posix.normalize(entry.replace(/^\.?\//, ""));
    if (relative.startsWith("..")) throw new Error(`layer entry ${JSON.stringify(entry)} points outside the rootfs`);
    const base = path.posix.basename(relative);
    if (!base.startsWith(".wh.")) continue;
    const directory = path.join(rootfs, path.posix.dirname(relative));
    if (base === ".wh..wh..opq") {
      for (const child of await fs.readdir(directory).catch(() => [])) await fs.rm(path.join(directory, child), { recursive: true, force: true });
    } else {
      await fs.rm(path.join(directory, base.slice(".wh.".length)), { recursive: true, force: true });
    }
  }
}

/**
 * Changes owner id `from` to `to` throughout a tree, for users and groups.
 * chown clears setuid and setgid bits on Linux even for root, so those modes
 * are restored afterwards.
 */
async function shiftOwnership(rootfs: string, from: number, to: number): Promise<void> {
  const pending = [rootfs];
  while (pending.length > 0) {
    const current = pending.pop()!;
    const stat = await fs.lstat(current);
    const uid = stat.uid === from ? to : stat.uid;
    const gid = stat.gid === from ? to : stat.gid;
    if (uid !== stat.uid || gid !== stat.gid) {
      await fs.lchown(current, uid, gid);
      if (!stat.isSymbolicLink() && (stat.mode & 0o6000) !== 0) await fs.chmod(current, stat.mode & 0o7777);
    }
    if (stat.isDirectory()) {
      for (const child of await fs.readdir(current)) pending.push(path.join(current, child));
    }
  }
}
