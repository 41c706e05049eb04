/**
 * The image store: each image is unpacked once per cell into
 * images/<hex>/rootfs, read-only to containers and shared by all of them,
 * with ownership shifted so that image root (uid 0) becomes host 4294967294,
 * the id that container root maps to.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { constants as fsConstants, createReadStream, promises as fs } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";

import { CELL_PATHS } from "../../common/protocol";
import { MAPPED_ROOT_ID } from "../../common/resources";
import { AgentFailure } from "../errors";
import { exists } from "../files";
import { withLock } from "../lock";
import { unpackLayer } from "./unpack";

const run = promisify(execFile);

const DIGEST_PATTERN = /^sha256:([0-9a-f]{64})$/;

export function digestHex(digest: string): string {
  const match = DIGEST_PATTERN.exec(digest);
  if (!match) throw new AgentFailure("INVALID_REQUEST", "parse image digest", `image digest ${JSON.stringify(digest)} is not sha256:<64 hex digits>`);
  return match[1];
}

/**
 * Returns the rootfs that a container's overlay uses as its lower layer. Unprivileged
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

/**
 * Moves an archive uploaded by a non-root login user into the image store.
 * The file is opened without following symlinks, so a link planted under
 * /tmp cannot make the agent copy a file of the cell's root.
 */
async function takeUserUpload(source: string, archive: string): Promise<void> {
  const resolved = path.resolve(source);
  if (!resolved.startsWith(CELL_PATHS.userUploadPrefix) || resolved.includes("/", CELL_PATHS.userUploadPrefix.length)) {
    throw new AgentFailure("INVALID_REQUEST", "take uploaded image", `upload path ${JSON.stringify(source)} must be a file named ${CELL_PATHS.userUploadPrefix}*`);
  }
  const input = await fs.open(resolved, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW).catch((error: Error) => {
    throw new AgentFailure("IMAGE_MISSING", "take uploaded image", `cannot open the uploaded image ${resolved}: ${error.message}`);
  });
  try {
    if (!(await input.stat()).isFile()) throw new AgentFailure("IMAGE_INVALID", "take uploaded image", `${resolved} is not a regular file`);
    await fs.writeFile(archive, input.createReadStream(), { mode: 0o600 });
  } finally {
    await input.close();
    await fs.rm(resolved, { force: true });
  }
}

async function sha256File(file: string): Promise<string> {
  const { createHash } = await import("node:crypto");
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Imports the uploaded archive for digest. Safe to repeat; concurrent imports of one digest run once. */
export async function importImage(digest: string, source?: string): Promise<void> {
  const hex = digestHex(digest);
  await withLock(`image-${hex}`, async () => {
    if (await hasImage(digest)) {
      if (source) await fs.rm(source, { force: true });
      return;
    }
    const archive = incomingArchive(digest);
    if (source) await takeUserUpload(source, archive);
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

/**
 * Unpacks a plain rootfs tarball, or an OCI image layout archive (oci-layout,
 * index.json, blobs/sha256/...) layer by layer. Both go through the
 * rootfs-confined extractor, which also shifts image root to the mapped id.
 */
async function unpackArchive(archive: string, rootfs: string, staging: string): Promise<void> {
  // Listing only reads the archive, so GNU tar is safe to use here.
  const { stdout } = await run("tar", ["-tf", archive], { maxBuffer: 256 * 1024 * 1024 });
  const names = new Set(stdout.split("\n").map((entry) => entry.replace(/^\.\//, "")));
  if (!names.has("oci-layout") || !names.has("index.json")) {
    await unpackLayer(archive, rootfs, { shiftRootTo: MAPPED_ROOT_ID, whiteouts: false });
    return;
  }

  const layout = path.join(staging, "oci");
  await fs.mkdir(layout, { mode: 0o700 });
  await unpackLayer(archive, layout, { whiteouts: false });

  const index = JSON.parse(await readRegularFile(layout, "index.json"));
  const manifestDescriptor = index.manifests?.[0];
  if (!manifestDescriptor) throw new Error("index.json lists no manifest");
  const manifest = JSON.parse(await readRegularFile(layout, blobName(manifestDescriptor.digest)));
  for (const layer of manifest.layers ?? []) {
    const blob = blobName(layer.digest);
    if (!(await regularFile(layout, blob))) throw new Error(`layer ${layer.digest} is missing from the archive or is not a regular file`);
    if ((await sha256File(path.join(layout, blob))) !== digestHex(layer.digest)) throw new Error(`layer ${layer.digest} does not match its digest`);
    await unpackLayer(path.join(layout, blob), rootfs, { shiftRootTo: MAPPED_ROOT_ID, whiteouts: true });
  }
  await fs.rm(layout, { recursive: true, force: true });
}

function blobName(digest: string): string {
  return path.join("blobs", "sha256", digestHex(digest));
}

/**
 * True when the name is a regular file inside the unpacked layout. A symlink
 * planted in the archive would otherwise make the agent read a cell file.
 */
async function regularFile(root: string, name: string): Promise<boolean> {
  let current = root;
  for (const segment of name.split("/")) {
    current = path.join(current, segment);
    const stat = await fs.lstat(current).catch(() => undefined);
    if (!stat || stat.isSymbolicLink()) return false;
  }
  return (await fs.lstat(current)).isFile();
}

async function readRegularFile(root: string, name: string): Promise<string> {
  if (!(await regularFile(root, name))) throw new Error(`${name} is missing from the OCI archive or is not a regular file`);
  const handle = await fs.open(path.join(root, name), fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  try {
    return await handle.readFile("utf8");
  } finally {
    await handle.close();
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
