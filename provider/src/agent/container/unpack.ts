/**
 * Unpacks one container image layer (a tar archive, optionally gzip
 * compressed) into an image rootfs, treating the archive as hostile.
 *
 * Every filesystem call works relative to a directory fd. Each entry's
 * parent directory is opened with openat2(RESOLVE_IN_ROOT), so "..",
 * absolute paths and symlinks planted by this or an earlier layer resolve
 * inside the rootfs, as they would in a chroot. The entry itself is then
 * created with *at calls that never follow a symlink in its last component.
 * Callers must not unpack into the same rootfs concurrently.
 */
import { closeSync, createReadStream, fchmodSync, fchownSync, futimesSync, openSync, constants as fsConstants, writeSync } from "node:fs";
import { Readable } from "node:stream";
import { createGunzip } from "node:zlib";
import { extract as createExtract, type Extract, type Header } from "tar-stream";

import {
  AT_REMOVEDIR,
  AT_SYMLINK_NOFOLLOW,
  type FileName,
  O_CLOEXEC,
  O_CREAT,
  O_DIRECTORY,
  O_EXCL,
  O_NOFOLLOW,
  O_NONBLOCK,
  O_PATH,
  O_RDONLY,
  O_WRONLY,
  RESOLVE_IN_ROOT,
  RESOLVE_NO_MAGICLINKS,
  S_IFDIR,
  S_IFIFO,
  S_IFMT,
  fchownat,
  isErrno,
  linkat,
  mkdirat,
  mknodat,
  openat,
  openat2,
  readDirectory,
  statMode,
  symlinkat,
  unlinkat,
  utimensat,
} from "../fsat";

export interface UnpackOptions {
  /** Host id that image uid 0 and gid 0 become, such as 4294967294. Other ids are kept. Without it, all ids are kept. */
  shiftRootTo?: number;
  /**
   * Whether OCI whiteouts apply. Then ".wh.NAME" deletes NAME of earlier
   * layers, ".wh..wh..opq" empties its directory of them, and neither is
   * written. When false, such names are unpacked as ordinary entries.
   */
  whiteouts: boolean;
}

export interface UnpackResult {
  /** Archive entries read, without the PAX and GNU long-name headers that belong to them. */
  entries: number;
  /** Character and block device entries, which are skipped because a container must not get host devices from its image. */
  devicesSkipped: number;
}

/** A failure on one archive entry, naming the entry as written in the archive. */
export class LayerEntryError extends Error {
  constructor(
    readonly entry: string,
    cause: unknown,
  ) {
    super(`unpack layer: entry ${JSON.stringify(entry)}: ${messageOf(cause)}`, { cause });
  }
}

/** Unpacks the layer at a path or from a stream into rootDir, which must exist. */
export async function unpackLayer(layer: NodeJS.ReadableStream | string, rootDir: string, options: UnpackOptions): Promise<UnpackResult> {
  if (options.shiftRootTo !== undefined && !isValidId(options.shiftRootTo)) {
    throw new Error(`unpack layer: shiftRootTo ${options.shiftRootTo} is not an id between 0 and 4294967294`);
  }
  let rootFd: number;
  try {
    rootFd = openSync(rootDir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  } catch (error) {
    throw new Error(`unpack layer: open root directory ${JSON.stringify(rootDir)}: ${messageOf(error)}`, { cause: error });
  }

  try {
    const writer = new LayerWriter(rootFd, options);
    await forEachEntry(layer, (entry) => writer.apply(entry));
    writer.applyDirectoryMetadata();
    return writer.result();
  } finally {
    closeSync(rootFd);
  }
}

// ---------------------------------------------------------------------------
// Reading the archive

type Entry = Extract extends AsyncIterable<infer T> ? T : never;

/** An error from reading or decompressing the layer, as opposed to parsing the tar stream. */
class ArchiveReadError extends Error {}

/** Compression formats that OCI layers may use but this module does not read, by magic number. */
const UNSUPPORTED_COMPRESSION = [
  { name: "zstd", magic: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]) },
  { name: "xz", magic: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) },
  { name: "bzip2", magic: Buffer.from("BZh") },
];
const GZIP_MAGIC = Buffer.from([0x1f, 0x8b]);
const MAGIC_LENGTH = Math.max(GZIP_MAGIC.length, ...UNSUPPORTED_COMPRESSION.map((format) => format.magic.length));

async function forEachEntry(layer: NodeJS.ReadableStream | string, visit: (entry: Entry) => Promise<void>): Promise<void> {
  const source = typeof layer === "string" ? createReadStream(layer) : layer;
  // NOTE: tar-stream decodes names as UTF-8, so a name that is not valid
  // UTF-8 is written with U+FFFD in place of its invalid bytes.
  const extract = createExtract();
  const feeding = feed(decompress(source as AsyncIterable<Buffer | string>), extract);
  let lastEntry: string | undefined;
  let complete = false;
  try {
    for await (const entry of extract) {
      lastEntry = entry.header.name;
      await visit(entry);
    }
    complete = true;
  } catch (error) {
    if (error instanceof LayerEntryError) throw error;
    const where = lastEntry === undefined ? "" : ` after entry ${JSON.stringify(lastEntry)}`;
    const failure = error instanceof ArchiveReadError ? "read archive" : "invalid tar archive";
    throw new Error(`unpack layer: ${failure}${where}: ${messageOf(error)}`, { cause: error });
  } finally {
    extract.destroy();
    // A source that stalls would otherwise keep the feeding loop waiting for data after a failure.
    if (!complete) (source as Partial<Readable>).destroy?.();
    await feeding;
  }
}

/**
 * Writes the decompressed layer into the tar parser with backpressure. A
 * read error destroys the parser with it, so the entry loop rejects with it.
 */
async function feed(chunks: AsyncIterable<Buffer>, extract: Extract): Promise<void> {
  try {
    for await (const chunk of chunks) {
      if (extract.destroying) return;
      if (!extract.write(chunk)) await drainedOrClosed(extract);
    }
    extract.end(undefined);
  } catch (error) {
    extract.destroy(new ArchiveReadError(messageOf(error), { cause: error }));
  }
}

function drainedOrClosed(extract: Extract): Promise<void> {
  if (extract.destroying) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      extract.off("drain", done);
      extract.off("close", done);
      resolve();
    };
    extract.on("drain", done);
    extract.on("close", done);
  });
}

/** Yields the layer's tar bytes, gunzipping it when it starts with the gzip magic number. */
async function* decompress(source: AsyncIterable<Buffer | string>): AsyncGenerator<Buffer> {
  const iterator = source[Symbol.asyncIterator]();
  try {
    const head: Buffer[] = [];
    let headLength = 0;
    let ended = false;
    while (headLength < MAGIC_LENGTH && !ended) {
      const next = await iterator.next();
      if (next.done) {
        ended = true;
      } else {
        const chunk = Buffer.from(next.value);
        head.push(chunk);
        headLength += chunk.length;
      }
    }
    async function* replay(): AsyncGenerator<Buffer> {
      yield* head;
      while (!ended) {
        const next = await iterator.next();
        if (next.done) return;
        yield Buffer.from(next.value);
      }
    }

    const start = Buffer.concat(head);
    const unsupported = UNSUPPORTED_COMPRESSION.find((format) => start.subarray(0, format.magic.length).equals(format.magic));
    if (unsupported) throw new Error(`the layer is ${unsupported.name}-compressed, and only gzip and uncompressed layers are supported`);
    if (start.subarray(0, GZIP_MAGIC.length).equals(GZIP_MAGIC)) {
      yield* gunzip(replay());
    } else {
      yield* replay();
    }
  } finally {
    await iterator.return?.(undefined);
  }
}

async function* gunzip(chunks: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const compressed = Readable.from(chunks);
  const decompressor = createGunzip();
  compressed.on("error", (error) => decompressor.destroy(error));
  compressed.pipe(decompressor);
  try {
    for await (const chunk of decompressor) yield chunk as Buffer;
  } finally {
    compressed.destroy();
    decompressor.destroy();
  }
}

// ---------------------------------------------------------------------------
// Entry names and metadata

const WHITEOUT_PREFIX = ".wh.";
const OPAQUE_WHITEOUT = ".wh..wh..opq";
const MAX_ID = 0xfffffffe;

/**
 * Splits an entry name into path components below the root. Leading "/"
 * and "./", empty and "." components are dropped, and ".." is applied
 * lexically but stops at the root, as in a chroot, so "../x" and "/x" both
 * name "x" in the rootfs.
 */
export function splitEntryPath(name: string): string[] {
  if (name.includes("\0")) throw new Error("the name contains a NUL byte");
  const parts: string[] = [];
  for (const part of name.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return parts;
}

function isValidId(id: number): boolean {
  return Number.isSafeInteger(id) && id >= 0 && id <= MAX_ID;
}

function paxRecords(header: Header): Record<string, string> {
  return (header.pax ?? {}) as Record<string, string>;
}

/** Returns the entry's uid or gid, preferring the PAX record, which can carry ids too large for the octal header field. */
function headerId(header: Header, key: "uid" | "gid"): number {
  const record = paxRecords(header)[key];
  const id = record === undefined ? header[key] : /^\d+$/.test(record) ? Number(record) : NaN;
  if (!isValidId(id)) throw new Error(`${key} ${JSON.stringify(record ?? header[key])} is not an id between 0 and 4294967294`);
  return id;
}

/** Returns the modification time in seconds since the epoch, with the PAX fraction when present, or undefined when unusable. */
function headerMtime(header: Header): number | undefined {
  const record = paxRecords(header).mtime;
  const seconds = record !== undefined && /^-?\d+(\.\d+)?$/.test(record) ? Number(record) : header.mtime.getTime() / 1000;
  return Number.isFinite(seconds) ? seconds : undefined;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function isDirectoryMode(mode: number): boolean {
  return (mode & S_IFMT) === S_IFDIR;
}

/** Resolve flags for every lookup from the root fd. Magic links such as /proc/self/root must never be followed. */
const CONFINED = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;

// ---------------------------------------------------------------------------
// Writing entries

interface DirectoryMetadata {
  mode: number;
  mtime?: number;
}

class LayerWriter {
  private entries = 0;
  private devicesSkipped = 0;
  /** Paths this layer wrote, with all their ancestors. Whiteouts apply to earlier layers only, so these survive them. */
  private readonly written = new Set<string>();
  /** Directory modes and mtimes, applied after all entries so that read-only directories still receive their children. */
  private readonly directories = new Map<string, DirectoryMetadata>();

  constructor(
    private readonly rootFd: number,
    private readonly options: UnpackOptions,
  ) {}

  result(): UnpackResult {
    return { entries: this.entries, devicesSkipped: this.devicesSkipped };
  }

  async apply(entry: Entry): Promise<void> {
    this.entries++;
    try {
      await this.applyEntry(entry.header, entry);
    } catch (error) {
      throw new LayerEntryError(entry.header.name, error);
    } finally {
      // tar-stream stalls on the next entry until this one's data is consumed.
      entry.resume();
    }
  }

  private async applyEntry(header: Header, data: AsyncIterable<unknown>): Promise<void> {
    const parts = splitEntryPath(header.name);
    if (header.linkname?.includes("\0")) throw new Error("the link target contains a NUL byte");
    if (this.options.whiteouts && parts.length > 0 && parts[parts.length - 1].startsWith(WHITEOUT_PREFIX)) {
      this.applyWhiteout(parts);
      return;
    }
    if (parts.length === 0 && header.type !== "directory") {
      throw new Error(`the entry names the root directory, which a ${header.type ?? "non-directory"} entry cannot replace`);
    }

    switch (header.type) {
      case "directory":
        this.writeDirectory(parts, header);
        return;
      case "file":
      case "contiguous-file":
        await this.writeFile(parts, header, data);
        return;
      case "symlink":
        this.writeSymlink(parts, header);
        return;
      case "link":
        this.writeHardLink(parts, header);
        return;
      case "fifo":
        this.writeFifo(parts, header);
        return;
      case "character-device":
      case "block-device":
        this.devicesSkipped++;
        return;
      default:
        throw new Error("unsupported entry type: tar-stream does not recognise its typeflag, as with GNU sparse files and volume headers");
    }
  }

  private owner(header: Header): { uid: number; gid: number } {
    const shift = (id: number) => (id === 0 && this.options.shiftRootTo !== undefined ? this.options.shiftRootTo : id);
    return { uid: shift(headerId(header, "uid")), gid: shift(headerId(header, "gid")) };
  }

  private markWritten(parts: string[]): void {
    for (let depth = parts.length; depth > 0; depth--) {
      const path = parts.slice(0, depth).join("/");
      if (this.written.has(path)) return;
      this.written.add(path);
    }
  }

  private writeDirectory(parts: string[], header: Header): void {
    const { uid, gid } = this.owner(header);
    if (parts.length === 0) {
      fchownSync(this.rootFd, uid, gid);
    } else {
      this.inParent(parts, (parentFd, name) => {
        makeDirectory(parentFd, name);
        fchownat(parentFd, name, uid, gid, AT_SYMLINK_NOFOLLOW);
      });
    }
    this.directories.set(parts.join("/"), { mode: header.mode & 0o7777, mtime: headerMtime(header) });
    this.markWritten(parts);
  }

  // NOTE: extended attributes (PAX SCHILY.xattr records, such as
  // security.capability) are not applied, so files lose file capabilities.
  private async writeFile(parts: string[], header: Header, data: AsyncIterable<unknown>): Promise<void> {
    const { uid, gid } = this.owner(header);
    const mtime = headerMtime(header);
    const parentFd = this.openParent(parts);
    try {
      const name = parts[parts.length - 1];
      // Replacing the old entry rather than opening it keeps a planted
      // symlink or hard link from redirecting the write.
      removeTree(parentFd, name);
      const fd = openat(parentFd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600);
      try {
        for await (const chunk of data) writeFully(fd, chunk as Buffer);
        // chown clears setuid and setgid bits, so the mode comes after it.
        fchownSync(fd, uid, gid);
        fchmodSync(fd, header.mode & 0o7777);
        if (mtime !== undefined) futimesSync(fd, mtime, mtime);
      } finally {
        closeSync(fd);
      }
    } finally {
      closeSync(parentFd);
    }
    this.markWritten(parts);
  }

  private writeSymlink(parts: string[], header: Header): void {
    // The target text is stored unchanged, because it is resolved only inside the container's root, or here through openat2(RESOLVE_IN_ROOT).
    const target = header.linkname ?? "";
    if (target === "") throw new Error("the symlink target is empty");
    const { uid, gid } = this.owner(header);
    const mtime = headerMtime(header);
    this.inParent(parts, (parentFd, name) => {
      removeTree(parentFd, name);
      symlinkat(target, parentFd, name);
      fchownat(parentFd, name, uid, gid, AT_SYMLINK_NOFOLLOW);
      if (mtime !== undefined) utimensat(parentFd, name, mtime, mtime, AT_SYMLINK_NOFOLLOW);
    });
    this.markWritten(parts);
  }

  private writeHardLink(parts: string[], header: Header): void {
    const targetParts = splitEntryPath(header.linkname ?? "");
    if (targetParts.length === 0) throw new Error(`the hard link target ${JSON.stringify(header.linkname)} names the root directory`);
    if (targetParts.join("/") === parts.join("/")) return;

    // The target is looked up like any entry, so it cannot name a file outside the rootfs.
    const targetParentFd = this.openDirectory(targetParts.slice(0, -1), O_PATH);
    try {
      const targetName = targetParts[targetParts.length - 1];
      if (isDirectoryMode(statMode(targetParentFd, targetName, AT_SYMLINK_NOFOLLOW))) {
        throw new Error(`the hard link target ${JSON.stringify(header.linkname)} is a directory`);
      }
      this.inParent(parts, (parentFd, name) => {
        removeTree(parentFd, name);
        // Without AT_SYMLINK_FOLLOW, a symlink target is linked itself and never followed.
        linkat(targetParentFd, targetName, parentFd, name, 0);
      });
    } finally {
      closeSync(targetParentFd);
    }
    this.markWritten(parts);
  }

  private writeFifo(parts: string[], header: Header): void {
    const { uid, gid } = this.owner(header);
    const mtime = headerMtime(header);
    this.inParent(parts, (parentFd, name) => {
      removeTree(parentFd, name);
      mknodat(parentFd, name, S_IFIFO | 0o600);
      // O_NONBLOCK opens a FIFO for reading without waiting for a writer.
      const fd = openat(parentFd, name, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
      try {
        fchownSync(fd, uid, gid);
        fchmodSync(fd, header.mode & 0o7777);
        if (mtime !== undefined) futimesSync(fd, mtime, mtime);
      } finally {
        closeSync(fd);
      }
    });
    this.markWritten(parts);
  }

  // -------------------------------------------------------------------------
  // Whiteouts

  private applyWhiteout(parts: string[]): void {
    const name = parts[parts.length - 1];
    const parentParts = parts.slice(0, -1);
    if (name === OPAQUE_WHITEOUT) {
      this.clearDirectory(parentParts);
      return;
    }
    // Other ".wh..wh." names are AUFS bookkeeping (such as .wh..wh.plnk) with no meaning in a plain rootfs.
    if (name.startsWith(WHITEOUT_PREFIX + WHITEOUT_PREFIX)) return;
    const target = name.slice(WHITEOUT_PREFIX.length);
    if (target === "" || target === "." || target === "..") throw new Error(`the whiteout ${JSON.stringify(name)} names no file`);

    const parentFd = this.openExistingDirectory(parentParts, O_PATH);
    if (parentFd === undefined) return;
    try {
      this.removeFromEarlierLayers(parentFd, target, [...parentParts, target].join("/"));
    } finally {
      closeSync(parentFd);
    }
  }

  private clearDirectory(parts: string[]): void {
    const fd = this.openExistingDirectory(parts, O_RDONLY);
    if (fd === undefined) return;
    try {
      for (const child of readDirectory(fd)) {
        this.removeFromEarlierLayers(fd, child, [...parts, child.toString("utf8")].join("/"));
      }
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Removes the entry name in the directory open at parentFd, except what
   * this layer wrote. A directory that this layer wrote into keeps the
   * entries of this layer and loses the rest.
   */
  private removeFromEarlierLayers(parentFd: number, name: FileName, path: string): void {
    if (!this.written.has(path)) {
      removeTree(parentFd, name);
      return;
    }
    let mode: number;
    try {
      mode = statMode(parentFd, name, AT_SYMLINK_NOFOLLOW);
    } catch (error) {
      if (isErrno(error, "ENOENT")) return;
      throw error;
    }
    if (!isDirectoryMode(mode)) return;
    const fd = openat(parentFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    try {
      for (const child of readDirectory(fd)) this.removeFromEarlierLayers(fd, child, `${path}/${child.toString("utf8")}`);
    } finally {
      closeSync(fd);
    }
  }

  // -------------------------------------------------------------------------
  // Directory lookups, all confined to the root fd

  /** Opens the directory at parts below the root, resolving every component with RESOLVE_IN_ROOT. */
  private openDirectory(parts: string[], flags: number): number {
    return openat2(this.rootFd, parts.length === 0 ? "." : parts.join("/"), flags | O_DIRECTORY | O_CLOEXEC, CONFINED);
  }

  private openExistingDirectory(parts: string[], flags: number): number | undefined {
    try {
      return this.openDirectory(parts, flags);
    } catch (error) {
      if (isErrno(error, "ENOENT", "ENOTDIR")) return undefined;
      throw error;
    }
  }

  private inParent(parts: string[], action: (parentFd: number, name: string) => void): void {
    const parentFd = this.openParent(parts);
    try {
      action(parentFd, parts[parts.length - 1]);
    } finally {
      closeSync(parentFd);
    }
  }

  /**
   * Opens the parent directory of the entry at parts as an O_PATH fd,
   * creating missing ancestors as tar does, because archives may omit
   * directory entries. Created ancestors are owned by image root and get
   * mode 0755.
   */
  private openParent(parts: string[]): number {
    const parentParts = parts.slice(0, -1);
    try {
      return this.openDirectory(parentParts, O_PATH);
    } catch (error) {
      if (!isErrno(error, "ENOENT")) throw error;
    }

    const rootId = this.options.shiftRootTo ?? 0;
    for (let depth = 1; depth <= parentParts.length; depth++) {
      const ancestor = parentParts.slice(0, depth);
      const existing = this.openExistingDirectory(ancestor, O_PATH);
      if (existing !== undefined) {
        closeSync(existing);
        continue;
      }
      const name = ancestor[ancestor.length - 1];
      const path = ancestor.join("/");
      const fd = this.openDirectory(ancestor.slice(0, -1), O_PATH);
      try {
        mkdirat(fd, name, 0o700);
        fchownat(fd, name, rootId, rootId, AT_SYMLINK_NOFOLLOW);
      } catch (error) {
        // The lookup failed with ENOENT, so an existing entry here is a symlink whose target is missing in the rootfs.
        if (isErrno(error, "EEXIST")) throw new Error(`the parent ${JSON.stringify(path)} is a symlink to a missing directory`, { cause: error });
        throw error;
      } finally {
        closeSync(fd);
      }
      if (!this.directories.has(path)) this.directories.set(path, { mode: 0o755 });
      this.markWritten(ancestor);
    }
    return this.openDirectory(parentParts, O_PATH);
  }

  /**
   * Applies the deferred directory modes and mtimes, deepest first. A path
   * that a later entry of the layer turned into something other than a
   * directory, or removed, is skipped.
   */
  applyDirectoryMetadata(): void {
    const paths = [...this.directories.keys()].sort((a, b) => depthOf(b) - depthOf(a));
    for (const path of paths) {
      const metadata = this.directories.get(path)!;
      try {
        const fd = path === "" ? this.rootFd : this.openDirectoryNoFollow(path.split("/"));
        if (fd === undefined) continue;
        try {
          fchmodSync(fd, metadata.mode);
          if (metadata.mtime !== undefined) futimesSync(fd, metadata.mtime, metadata.mtime);
        } finally {
          if (fd !== this.rootFd) closeSync(fd);
        }
      } catch (error) {
        throw new LayerEntryError(path === "" ? "./" : `${path}/`, error);
      }
    }
  }

  private openDirectoryNoFollow(parts: string[]): number | undefined {
    const parentFd = this.openExistingDirectory(parts.slice(0, -1), O_PATH);
    if (parentFd === undefined) return undefined;
    try {
      return openat(parentFd, parts[parts.length - 1], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    } catch (error) {
      if (isErrno(error, "ENOENT", "ENOTDIR", "ELOOP")) return undefined;
      throw error;
    } finally {
      closeSync(parentFd);
    }
  }
}

function depthOf(path: string): number {
  return path === "" ? -1 : path.split("/").length;
}

/** Creates a directory, or keeps an existing one. Any other entry at name is replaced, never followed. */
function makeDirectory(parentFd: number, name: string): void {
  try {
    mkdirat(parentFd, name, 0o700);
    return;
  } catch (error) {
    if (!isErrno(error, "EEXIST")) throw error;
  }
  if (isDirectoryMode(statMode(parentFd, name, AT_SYMLINK_NOFOLLOW))) return;
  removeTree(parentFd, name);
  mkdirat(parentFd, name, 0o700);
}

/**
 * Removes name from the directory open at parentFd, with its contents if it
 * is a directory. A symlink is removed itself, and no step follows one, so
 * the walk cannot leave the tree.
 */
function removeTree(parentFd: number, name: FileName): void {
  try {
    unlinkat(parentFd, name);
    return;
  } catch (error) {
    if (isErrno(error, "ENOENT")) return;
    if (!isErrno(error, "EISDIR")) throw error;
  }
  const fd = openat(parentFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  try {
    for (const child of readDirectory(fd)) removeTree(fd, child);
  } finally {
    closeSync(fd);
  }
  unlinkat(parentFd, name, AT_REMOVEDIR);
}

function writeFully(fd: number, chunk: Buffer): void {
  for (let offset = 0; offset < chunk.length; ) offset += writeSync(fd, chunk, offset);
}
