/**
 * Local image archives: their digest, and their upload to a cell's image
 * store, which keeps each image once by digest.
 */
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, promises as fs } from "node:fs";
import path from "node:path";

import { CELL_PATHS } from "../../../common/protocol";
import type { CellSession } from "../../../transport/pool";

const digestCache = new Map<string, { key: string; digest: Promise<string> }>();

/** Resolves an image path the way the user wrote it: relative paths start at the Pulumi program's directory. */
export function resolveImagePath(image: string): string {
  return path.resolve(process.cwd(), image);
}

/** Explains why an image path is unusable, or returns undefined when it is a readable file. */
export async function describeImageProblem(image: string): Promise<string | undefined> {
  const resolved = resolveImagePath(image);
  try {
    const stat = await fs.stat(resolved);
    if (!stat.isFile()) return `image ${JSON.stringify(image)} (${resolved}) is not a file: give the path of a rootfs tarball or an OCI image archive`;
    await fs.access(resolved, fs.constants.R_OK);
    return undefined;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      return `image file ${JSON.stringify(image)} not found (looked at ${resolved}): build it first or fix the path`;
    }
    return `image file ${JSON.stringify(image)} cannot be read (${code ?? (error as Error).message}): check its permissions`;
  }
}

/** Computes "sha256:<hex>" of the archive, once per file version per process. */
export async function imageDigest(image: string): Promise<string> {
  const resolved = resolveImagePath(image);
  const stat = await fs.stat(resolved);
  const key = `${stat.size}:${stat.mtimeMs}`;
  const cached = digestCache.get(resolved);
  if (cached?.key === key) return cached.digest;
  const digest = (async () => {
    const hash = createHash("sha256");
    for await (const chunk of createReadStream(resolved)) hash.update(chunk as Buffer);
    return `sha256:${hash.digest("hex")}`;
  })();
  digestCache.set(resolved, { key, digest });
  return digest;
}

/** Makes sure the cell has the image, uploading and importing it when it does not. */
export async function ensureImageOnCell(session: CellSession, image: string, digest: string): Promise<void> {
  const { present } = await session.agent.call("image.has", { digest });
  if (present) return;
  const hex = digest.slice("sha256:".length);
  if (session.connection.sudoPrefix === "") {
    await session.connection.upload(resolveImagePath(image), path.posix.join(CELL_PATHS.incoming, `${hex}.tar`), 0o600);
    await session.agent.call("image.import", { digest });
    return;
  }
  // A non-root login user cannot write the image store, so the archive goes
  // to /tmp under an unguessable name, and the agent, as root, moves it in.
  const source = `${CELL_PATHS.userUploadPrefix}${hex.slice(0, 16)}-${randomBytes(8).toString("hex")}.tar`;
  await session.connection.upload(resolveImagePath(image), source, 0o600);
  await session.agent.call("image.import", { digest, source });
}
