// The layer unpacker against hostile archives. Each test unpacks into
// BASE/arena/root and checks that BASE contains nothing new and that the canary
// file BASE/canary is unchanged. Every attack is aimed so that an escape
// would land inside BASE, never elsewhere on the host. Needs root, because
// the unpacker sets owners.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, promises as fs, type Stats } from "node:fs";
import path from "node:path";
import { Readable } from "node:stream";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";

import { pack as createPack, type Header } from "tar-stream";

import { splitEntryPath, unpackLayer, type UnpackOptions } from "../../provider/src/agent/container/unpack";
import { testImagePath } from "../helpers/session";

const run = promisify(execFile);

const MAPPED_ROOT = 4294967294;
const FIXED_MTIME = new Date("2021-03-04T05:06:07Z");
const CANARY_TEXT = "canary: must never change\n";

type Member = Partial<Header> & { name: string; content?: string | Buffer };

/** Builds an uncompressed tar archive with tar-stream. Members default to root-owned files with FIXED_MTIME. */
async function buildTar(members: Member[]): Promise<Buffer> {
  const pack = createPack();
  const chunks: Buffer[] = [];
  const finished = new Promise<void>((resolve, reject) => {
    pack.on("data", (chunk: unknown) => chunks.push(chunk as Buffer));
    pack.on("end", () => resolve());
    pack.on("error", reject);
  });
  for (const { content, ...header } of members) {
    await new Promise<void>((resolve, reject) => {
      pack.entry({ uid: 0, gid: 0, mtime: FIXED_MTIME, ...header }, content ?? "", (error) => (error ? reject(error) : resolve()));
    });
  }
  pack.finalize();
  await finished;
  return Buffer.concat(chunks);
}

/** Encodes one 512-byte header in the GNU format, which tar-stream cannot write. */
function gnuHeader(name: string, typeflag: string, size: number): Buffer {
  const block = Buffer.alloc(512);
  block.write(name, 0, 100, "utf8");
  block.write("0000644\0", 100);
  block.write("0000000\0", 108);
  block.write("0000000\0", 116);
  block.write(size.toString(8).padStart(11, "0") + "\0", 124);
  block.write(Math.floor(FIXED_MTIME.getTime() / 1000).toString(8).padStart(11, "0") + "\0", 136);
  block.write(" ".repeat(8), 148);
  block.write(typeflag, 156);
  block.write("ustar  \0", 257);
  const checksum = block.reduce((sum, byte) => sum + byte, 0);
  block.write(checksum.toString(8).padStart(6, "0") + "\0 ", 148);
  return block;
}

function padded(data: Buffer): Buffer {
  return Buffer.concat([data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
}

/** Builds a GNU tar archive with one regular file whose name travels in a ././@LongLink record. */
function gnuLongNameTar(name: string, content: string): Buffer {
  const nameData = Buffer.from(name + "\0");
  const data = Buffer.from(content);
  return Buffer.concat([
    gnuHeader("././@LongLink", "L", nameData.length),
    padded(nameData),
    gnuHeader(name.slice(0, 99), "0", data.length),
    padded(data),
    Buffer.alloc(1024),
  ]);
}

interface Sandbox {
  base: string;
  arena: string;
  root: string;
  canary: string;
  /** Scratch space for inputs such as archives on disk, which the unpacker never writes to. */
  inputs: string;
  canaryStat: Stats;
  /** Mode, owner and mtime of BASE and the arena, which a directory entry resolving to them would change. */
  parentStats: string[];
}

async function createSandbox(): Promise<Sandbox> {
  const base = await fs.mkdtemp("/tmp/cellfleet-unpack-");
  const arena = path.join(base, "arena");
  const root = path.join(arena, "root");
  const canary = path.join(base, "canary");
  const inputs = path.join(base, "inputs");
  await fs.mkdir(root, { recursive: true });
  await fs.mkdir(inputs);
  await fs.writeFile(canary, CANARY_TEXT, { mode: 0o644 });
  return { base, arena, root, canary, inputs, canaryStat: await fs.lstat(canary), parentStats: await directoryStats(base, arena) };
}

async function directoryStats(...directories: string[]): Promise<string[]> {
  const result: string[] = [];
  for (const directory of directories) {
    const stat = await fs.lstat(directory);
    result.push(`${directory}: mode ${stat.mode.toString(8)}, owner ${stat.uid}:${stat.gid}, mtime ${stat.mtimeMs}`);
  }
  return result;
}

/** Asserts that nothing was created, removed or changed outside the root. */
async function assertConfined(sandbox: Sandbox): Promise<void> {
  assert.deepEqual(await fs.readdir(sandbox.arena), ["root"], "the arena holds only the root");
  assert.deepEqual((await fs.readdir(sandbox.base)).sort(), ["arena", "canary", "inputs"], "the sandbox holds nothing new");
  assert.deepEqual(await directoryStats(sandbox.base, sandbox.arena), sandbox.parentStats, "the sandbox and arena directories are unchanged");
  const canary = await fs.lstat(sandbox.canary);
  assert.ok(canary.isFile(), "the canary is still a regular file");
  assert.equal(await fs.readFile(sandbox.canary, "utf8"), CANARY_TEXT, "the canary content is unchanged");
  assert.equal(canary.nlink, 1, "the canary has no new hard link");
  assert.equal(canary.ino, sandbox.canaryStat.ino, "the canary was not replaced");
  assert.equal(canary.mode, sandbox.canaryStat.mode, "the canary mode is unchanged");
  assert.equal(canary.uid, sandbox.canaryStat.uid, "the canary owner is unchanged");
  assert.equal(canary.mtimeMs, sandbox.canaryStat.mtimeMs, "the canary mtime is unchanged");
}

async function unpack(sandbox: Sandbox, members: Member[], options: UnpackOptions = { whiteouts: true }) {
  return unpackLayer(Readable.from([await buildTar(members)]), sandbox.root, options);
}

function inRoot(sandbox: Sandbox, ...parts: string[]): string {
  return path.join(sandbox.root, ...parts);
}

async function readText(file: string): Promise<string> {
  return fs.readFile(file, "utf8");
}

describe("image layer unpacking", function () {
  let sandbox: Sandbox;

  before(function () {
    if (process.getuid?.() !== 0) this.skip();
  });

  beforeEach(async function () {
    sandbox = await createSandbox();
  });

  afterEach(async function () {
    if (sandbox) await fs.rm(sandbox.base, { recursive: true, force: true });
  });

  describe("entry paths", function () {
    it("normalises leading and dot components", function () {
      const cases: [string, string[]][] = [
        ["./etc/passwd", ["etc", "passwd"]],
        ["/etc//passwd/", ["etc", "passwd"]],
        ["../../escape", ["escape"]],
        ["a/../../b", ["b"]],
        ["a/./b/..", ["a"]],
        [".", []],
        ["", []],
      ];
      for (const [name, expected] of cases) assert.deepEqual(splitEntryPath(name), expected, `path of ${JSON.stringify(name)}`);
    });

    it("rejects names with a NUL byte", function () {
      assert.throws(() => splitEntryPath("etc/pass\0wd"), /NUL byte/);
    });
  });

  describe("path traversal", function () {
    it("keeps ../ members inside", async function () {
      await unpack(sandbox, [
        { name: "../escape", content: "one" },
        { name: "../../canary", content: "two" },
        { name: "a/../../../escape2", content: "three" },
      ]);

      assert.equal(await readText(inRoot(sandbox, "escape")), "one");
      assert.equal(await readText(inRoot(sandbox, "canary")), "two");
      assert.equal(await readText(inRoot(sandbox, "escape2")), "three");
      await assertConfined(sandbox);
    });

    it("keeps .. directory entries inside", async function () {
      await unpack(sandbox, [
        { name: "..", type: "directory", mode: 0o700, uid: 1234, gid: 1234 },
        { name: "../..", type: "directory", mode: 0o700, uid: 1234, gid: 1234 },
        { name: "a/../../..", type: "directory", mode: 0o700, uid: 1234, gid: 1234 },
      ]);

      const root = await fs.lstat(sandbox.root);
      assert.equal(root.mode & 0o7777, 0o700, "the entries name the root itself");
      assert.equal(`${root.uid}:${root.gid}`, "1234:1234");
      await assertConfined(sandbox);
    });

    it("lands absolute members inside", async function () {
      await unpack(sandbox, [{ name: `${sandbox.base}/absolute`, content: "abs" }]);

      assert.equal(await readText(inRoot(sandbox, sandbox.base, "absolute")), "abs");
      await assertConfined(sandbox);
    });

    it("confines symlinked parents in one layer", async function () {
      await unpack(sandbox, [
        { name: "evil", type: "symlink", linkname: "/" },
        // Through "evil" this names BASE/pwned on the host if the symlink were followed there.
        { name: `evil${sandbox.base}/pwned`, content: "absolute" },
        { name: "up", type: "symlink", linkname: "../.." },
        { name: "up/pwned2", content: "relative" },
        { name: "a/b/deep", type: "symlink", linkname: "../../../.." },
        { name: "a/b/deep/pwned3", content: "deep" },
      ]);

      assert.equal(await fs.readlink(inRoot(sandbox, "evil")), "/");
      assert.equal(await readText(inRoot(sandbox, sandbox.base, "pwned")), "absolute");
      assert.equal(await readText(inRoot(sandbox, "pwned2")), "relative");
      assert.equal(await readText(inRoot(sandbox, "pwned3")), "deep");
      await assertConfined(sandbox);
    });

    it("confines symlinks from an earlier layer", async function () {
      await unpack(sandbox, [
        { name: "evil", type: "symlink", linkname: "/" },
        { name: "up", type: "symlink", linkname: "../.." },
      ]);
      await fs.symlink(sandbox.base, inRoot(sandbox, "planted"));

      await unpack(sandbox, [
        // The first member also creates BASE's path inside the root, where "planted" then resolves.
        { name: `evil${sandbox.base}/pwned`, content: "absolute" },
        { name: "up/pwned2", content: "relative" },
        { name: "planted/pwned3", content: "planted" },
      ]);

      assert.equal(await readText(inRoot(sandbox, sandbox.base, "pwned")), "absolute");
      assert.equal(await readText(inRoot(sandbox, "pwned2")), "relative");
      assert.equal(await readText(inRoot(sandbox, sandbox.base, "pwned3")), "planted");
      await assertConfined(sandbox);
    });

    it("confines a directory swapped for a symlink", async function () {
      await unpack(sandbox, [
        { name: "d", type: "directory" },
        { name: "d/f", content: "old" },
        { name: "d", type: "symlink", linkname: "../.." },
        { name: "d/pwned", content: "swapped" },
      ]);

      assert.ok((await fs.lstat(inRoot(sandbox, "d"))).isSymbolicLink(), "d became a symlink");
      assert.equal(await readText(inRoot(sandbox, "pwned")), "swapped");
      await assertConfined(sandbox);
    });

    it("rejects a symlink named .", async function () {
      for (const name of [".", "./", "/"]) {
        await assert.rejects(unpack(sandbox, [{ name, type: "symlink", linkname: "../.." }]), /entry "[./]*": the entry names the root directory/, `symlink named ${name}`);
      }
      assert.ok((await fs.lstat(sandbox.root)).isDirectory(), "the root is still a directory");
      await assertConfined(sandbox);
    });

    it("replaces a symlinked directory entry", async function () {
      await unpack(sandbox, [
        { name: "dir", type: "symlink", linkname: "../.." },
        { name: "dir", type: "directory", mode: 0o700 },
      ]);

      const dir = await fs.lstat(inRoot(sandbox, "dir"));
      assert.ok(dir.isDirectory(), "the symlink was replaced by a directory");
      assert.equal(dir.mode & 0o7777, 0o700);
      await assertConfined(sandbox);
    });
  });

  describe("links", function () {
    it("resolves hard link targets inside", async function () {
      await unpack(sandbox, [
        { name: "canary", content: "inside" },
        { name: `${sandbox.base}/canary`, content: "inside, absolute" },
        { name: "relative", type: "link", linkname: "../../canary" },
        { name: "absolute", type: "link", linkname: `${sandbox.base}/canary` },
      ]);

      const relative = await fs.lstat(inRoot(sandbox, "relative"));
      assert.equal(relative.ino, (await fs.lstat(inRoot(sandbox, "canary"))).ino, "../../canary names canary in the root");
      const absolute = await fs.lstat(inRoot(sandbox, "absolute"));
      assert.equal(absolute.ino, (await fs.lstat(inRoot(sandbox, sandbox.base, "canary"))).ino, "the absolute target is in the root");
      await assertConfined(sandbox);
    });

    it("rejects a hard link to a missing target", async function () {
      await assert.rejects(unpack(sandbox, [{ name: "link", type: "link", linkname: "../../canary" }]), /^Error: unpack layer: entry "link": statx\("canary"\): ENOENT/);
      await assertConfined(sandbox);
    });

    it("links a symlink itself", async function () {
      await unpack(sandbox, [
        { name: "symlink", type: "symlink", linkname: "../../canary" },
        { name: "hardlink", type: "link", linkname: "symlink" },
      ]);

      const hardlink = await fs.lstat(inRoot(sandbox, "hardlink"));
      assert.ok(hardlink.isSymbolicLink(), "the hard link is the symlink inode");
      assert.equal(hardlink.ino, (await fs.lstat(inRoot(sandbox, "symlink"))).ino);
      assert.equal(await fs.readlink(inRoot(sandbox, "hardlink")), "../../canary");
      await assertConfined(sandbox);

      await unpack(sandbox, [{ name: "hardlink", content: "replaced" }]);
      assert.equal(await readText(inRoot(sandbox, "hardlink")), "replaced");
      await assertConfined(sandbox);
    });

    it("rejects a hard link to a directory", async function () {
      await assert.rejects(
        unpack(sandbox, [
          { name: "d", type: "directory" },
          { name: "link", type: "link", linkname: "d" },
        ]),
        /entry "link": the hard link target "d" is a directory/,
      );
      await assertConfined(sandbox);
    });

    it("replaces a symlink, never writes through", async function () {
      await fs.symlink(sandbox.canary, inRoot(sandbox, "absolute"));
      await fs.symlink("../../canary", inRoot(sandbox, "relative"));

      await unpack(sandbox, [
        { name: "absolute", content: "new absolute" },
        { name: "relative", content: "new relative" },
        { name: "same-layer", type: "symlink", linkname: sandbox.canary },
        { name: "same-layer", content: "new same layer", mode: 0o600 },
      ]);

      for (const [name, text] of [
        ["absolute", "new absolute"],
        ["relative", "new relative"],
        ["same-layer", "new same layer"],
      ]) {
        const stat = await fs.lstat(inRoot(sandbox, name));
        assert.ok(stat.isFile(), `${name} is a regular file`);
        assert.equal(await readText(inRoot(sandbox, name)), text);
      }
      await assertConfined(sandbox);
    });

    it("keeps symlink targets as written", async function () {
      const long = `/${"t".repeat(150)}/${"u".repeat(150)}`;
      await unpack(sandbox, [
        { name: "busybox-link", type: "symlink", linkname: "/bin/busybox" },
        { name: "long-link", type: "symlink", linkname: long },
      ]);

      assert.equal(await fs.readlink(inRoot(sandbox, "busybox-link")), "/bin/busybox");
      assert.equal(await fs.readlink(inRoot(sandbox, "long-link")), long);
      await assertConfined(sandbox);
    });
  });

  describe("whiteouts", function () {
    it("removes entries of earlier layers", async function () {
      await unpack(sandbox, [
        { name: "x", content: "x" },
        { name: "keep", content: "keep" },
        { name: "d/y", content: "y" },
        { name: "d/z/deep", content: "deep" },
      ]);

      await unpack(sandbox, [
        { name: ".wh.x" },
        { name: "d/.wh.z" },
        { name: "missing/.wh.nothing" },
      ]);

      assert.deepEqual((await fs.readdir(sandbox.root)).sort(), ["d", "keep"]);
      assert.deepEqual(await fs.readdir(inRoot(sandbox, "d")), ["y"]);
      await assertConfined(sandbox);
    });

    it("writes whiteouts as files when disabled", async function () {
      await unpack(sandbox, [{ name: "x", content: "x" }]);
      await unpack(sandbox, [{ name: ".wh.x" }], { whiteouts: false });

      assert.deepEqual((await fs.readdir(sandbox.root)).sort(), [".wh.x", "x"]);
      await assertConfined(sandbox);
    });

    it("removes a symlink, not its target", async function () {
      await unpack(sandbox, [
        { name: "canary", content: "inside" },
        { name: "link", type: "symlink", linkname: "../.." },
        { name: "link2", type: "symlink", linkname: "../.." },
      ]);

      await unpack(sandbox, [
        { name: ".wh.link" },
        // Through link2 this names BASE/canary on the host if the symlink were followed there.
        { name: "link2/.wh.canary" },
      ]);

      assert.deepEqual(await fs.readdir(sandbox.root), ["link2"]);
      await assertConfined(sandbox);
    });

    it("keeps whiteouts naming ../x inside", async function () {
      await unpack(sandbox, [{ name: "canary", content: "inside" }]);

      await unpack(sandbox, [{ name: "../../.wh.canary" }, { name: "../.wh.root" }]);

      assert.deepEqual(await fs.readdir(sandbox.root), []);
      await assertConfined(sandbox);
    });

    it("keeps this layer's entries in an opaque directory", async function () {
      await unpack(sandbox, [
        { name: "d/a", content: "a" },
        { name: "d/b/c", content: "c" },
        { name: "d/b/old", content: "old" },
        { name: "other", content: "other" },
      ]);

      await unpack(sandbox, [
        { name: "d", type: "directory" },
        { name: "d/b", type: "directory" },
        { name: "d/b/new", content: "new" },
        { name: "d/n1", content: "n1" },
        { name: "d/.wh..wh..opq" },
        { name: "d/n2", content: "n2" },
      ]);

      assert.deepEqual((await fs.readdir(inRoot(sandbox, "d"))).sort(), ["b", "n1", "n2"]);
      assert.deepEqual(await fs.readdir(inRoot(sandbox, "d", "b")), ["new"]);
      assert.equal(await readText(inRoot(sandbox, "other")), "other");
      await assertConfined(sandbox);
    });

    it("applies whiteouts to earlier layers only", async function () {
      await unpack(sandbox, [
        { name: "x", content: "this layer" },
        { name: ".wh.x" },
      ]);

      assert.equal(await readText(inRoot(sandbox, "x")), "this layer");
      await assertConfined(sandbox);
    });
  });

  describe("metadata", function () {
    it("shifts root and keeps other ids", async function () {
      await unpack(
        sandbox,
        [
          { name: "bin", type: "directory", mode: 0o755 },
          { name: "bin/su", mode: 0o4755, content: "setuid" },
          { name: "sg", mode: 0o2755, gid: 50, content: "setgid" },
          { name: "home/app", type: "directory", uid: 1000, gid: 1000, mode: 0o750 },
          { name: "home/app/f", uid: 1000, gid: 1000, content: "app" },
          { name: "link", type: "symlink", linkname: "bin/su" },
          { name: "big", uid: 0, gid: 0, pax: { uid: "3000000", gid: "3000001" }, content: "pax ids" },
        ],
        { whiteouts: true, shiftRootTo: MAPPED_ROOT },
      );

      const owner = async (name: string) => {
        const stat = await fs.lstat(inRoot(sandbox, name));
        return `${stat.uid}:${stat.gid}`;
      };
      assert.equal(await owner("bin"), `${MAPPED_ROOT}:${MAPPED_ROOT}`);
      assert.equal(await owner("bin/su"), `${MAPPED_ROOT}:${MAPPED_ROOT}`);
      assert.equal((await fs.lstat(inRoot(sandbox, "bin/su"))).mode & 0o7777, 0o4755, "the setuid bit survives chown");
      assert.equal(await owner("sg"), `${MAPPED_ROOT}:50`);
      assert.equal((await fs.lstat(inRoot(sandbox, "sg"))).mode & 0o7777, 0o2755, "the setgid bit survives chown");
      assert.equal(await owner("home"), `${MAPPED_ROOT}:${MAPPED_ROOT}`, "an implicit parent belongs to image root");
      assert.equal(await owner("home/app"), "1000:1000");
      assert.equal(await owner("home/app/f"), "1000:1000");
      assert.equal(await owner("link"), `${MAPPED_ROOT}:${MAPPED_ROOT}`, "the symlink itself is chowned");
      assert.equal(await owner("big"), "3000000:3000001", "PAX ids override the header");
      await assertConfined(sandbox);
    });

    it("keeps root ids without a shift", async function () {
      await unpack(sandbox, [{ name: "f", content: "f", uid: 0, gid: 0 }]);

      const stat = await fs.lstat(inRoot(sandbox, "f"));
      assert.equal(`${stat.uid}:${stat.gid}`, "0:0");
      await assertConfined(sandbox);
    });

    it("applies directory modes after children", async function () {
      await unpack(sandbox, [
        { name: "ro", type: "directory", mode: 0o555 },
        { name: "ro/f", content: "f" },
        { name: "ro/sub", type: "directory", mode: 0o500 },
        { name: "ro/sub/g", content: "g" },
        // tar-stream's pack replaces a zero mode with its default, so 0o400 stands for a mode without write and search bits.
        { name: "locked", type: "directory", mode: 0o400 },
        { name: "locked/h", content: "h" },
      ]);

      const mode = async (name: string) => (await fs.lstat(inRoot(sandbox, name))).mode & 0o7777;
      assert.equal(await mode("ro"), 0o555);
      assert.equal(await mode("ro/sub"), 0o500);
      assert.equal(await mode("locked"), 0o400);
      assert.equal(await readText(inRoot(sandbox, "ro/sub/g")), "g");
      assert.equal(await readText(inRoot(sandbox, "locked/h")), "h");
      for (const name of ["ro", "ro/sub", "locked", "ro/f"]) {
        assert.equal((await fs.lstat(inRoot(sandbox, name))).mtimeMs, FIXED_MTIME.getTime(), `mtime of ${name}`);
      }
      await assertConfined(sandbox);
    });

    it("creates fifos and skips devices", async function () {
      const result = await unpack(sandbox, [
        { name: "pipe", type: "fifo", mode: 0o640 },
        { name: "null", type: "character-device", devmajor: 1, devminor: 3 },
        { name: "sda", type: "block-device", devmajor: 8, devminor: 0 },
      ]);

      assert.deepEqual(result, { entries: 3, devicesSkipped: 2 });
      const pipe = await fs.lstat(inRoot(sandbox, "pipe"));
      assert.ok(pipe.isFIFO(), "pipe is a FIFO");
      assert.equal(pipe.mode & 0o7777, 0o640);
      assert.deepEqual(await fs.readdir(sandbox.root), ["pipe"]);
      await assertConfined(sandbox);
    });
  });

  describe("archive formats", function () {
    it("reads gzip from a path and a stream", async function () {
      const archive = gzipSync(await buildTar([{ name: "etc/hostname", content: "gzip\n" }]));
      const file = path.join(sandbox.inputs, "layer.tar.gz");
      await fs.writeFile(file, archive);

      assert.deepEqual(await unpackLayer(file, sandbox.root, { whiteouts: true }), { entries: 1, devicesSkipped: 0 });
      assert.equal(await readText(inRoot(sandbox, "etc/hostname")), "gzip\n");
      await fs.rm(inRoot(sandbox, "etc"), { recursive: true });
      await unpackLayer(Readable.from([archive.subarray(0, 1), archive.subarray(1)]), sandbox.root, { whiteouts: true });
      assert.equal(await readText(inRoot(sandbox, "etc/hostname")), "gzip\n");
      await assertConfined(sandbox);
    });

    it("rejects zstd layers by name", async function () {
      const zstd = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(100)]);
      await assert.rejects(unpackLayer(Readable.from([zstd]), sandbox.root, { whiteouts: true }), /^Error: unpack layer: read archive: the layer is zstd-compressed/);
      await assertConfined(sandbox);
    });

    it("rejects a truncated archive", async function () {
      const archive = await buildTar([{ name: "big", content: Buffer.alloc(4096, 1) }]);
      await assert.rejects(unpackLayer(Readable.from([archive.subarray(0, 1024)]), sandbox.root, { whiteouts: true }), /^Error: unpack layer: entry "big": Unexpected end of data/);
      await assertConfined(sandbox);
    });

    it("rejects a missing archive file", async function () {
      await assert.rejects(unpackLayer(path.join(sandbox.inputs, "missing.tar"), sandbox.root, { whiteouts: true }), /^Error: unpack layer: read archive: ENOENT/);
    });

    it("reads PAX and GNU long names", async function () {
      const paxName = `d/${"n".repeat(120)}/${"m".repeat(140)}`;
      const gnuName = `g/${"x".repeat(130)}`;
      await unpack(sandbox, [
        { name: paxName, content: "pax" },
        { name: "hard", type: "link", linkname: paxName },
      ]);
      await unpackLayer(Readable.from([gnuLongNameTar(gnuName, "gnu")]), sandbox.root, { whiteouts: true });

      assert.equal(await readText(inRoot(sandbox, paxName)), "pax");
      assert.equal(await readText(inRoot(sandbox, "hard")), "pax");
      assert.equal(await readText(inRoot(sandbox, gnuName)), "gnu");
      await assertConfined(sandbox);
    });

    it("rejects a NUL byte in a PAX path", async function () {
      await assert.rejects(unpack(sandbox, [{ name: "x", pax: { path: "a\0b" }, content: "x" }]), /null byte/);
      assert.deepEqual(await fs.readdir(sandbox.root), []);
      await assertConfined(sandbox);
    });

    it("names the entry and call on failure", async function () {
      await assert.rejects(
        unpack(sandbox, [
          { name: "a", content: "file" },
          { name: "a/b", content: "under a file" },
        ]),
        /^Error: unpack layer: entry "a\/b": openat2\("a"\): ENOTDIR \(errno 20\)$/,
      );
    });
  });

  describe("resources", function () {
    it("closes every file descriptor", async function () {
      const openDescriptors = async () => (await fs.readdir("/proc/self/fd")).length;
      const before = await openDescriptors();

      await unpack(sandbox, [
        { name: "d/a", content: "a" },
        { name: "d/l", type: "symlink", linkname: "a" },
        { name: "d/h", type: "link", linkname: "d/a" },
        { name: "p", type: "fifo" },
      ]);
      await unpack(sandbox, [{ name: "d/.wh..wh..opq" }, { name: ".wh.p" }]);
      await assert.rejects(unpack(sandbox, [{ name: "x", type: "link", linkname: "d" }]), /is a directory/);
      await assert.rejects(unpackLayer(Readable.from([Buffer.alloc(700, 1)]), sandbox.root, { whiteouts: true }), /invalid tar archive/);

      assert.equal(await openDescriptors(), before);
    });
  });

  describe("round trips", function () {
    it("reproduces a busybox-like tree", async function () {
      const source = path.join(sandbox.inputs, "tree");
      await buildBusyboxLikeTree(source);

      await unpackLayer(Readable.from([await packDirectory(source)]), sandbox.root, { whiteouts: true });

      assert.deepEqual(await snapshot(sandbox.root), await snapshot(source));
      await assertConfined(sandbox);
    });

    it("matches GNU tar on the busybox image", async function () {
      const image = testImagePath("busybox-rootfs.tar");
      if (!existsSync(image)) this.skip();
      const expected = path.join(sandbox.inputs, "gnu");
      await fs.mkdir(expected);
      await run("tar", ["-xf", image, "-C", expected, "--numeric-owner", "--same-owner", "--same-permissions"]);

      await unpackLayer(image, sandbox.root, { whiteouts: true });

      assert.deepEqual(await snapshot(sandbox.root), await snapshot(expected));
      await assertConfined(sandbox);
    });
  });
});

/** Builds a small rootfs with every entry type that container images use, with fixed owners, modes and mtimes. */
async function buildBusyboxLikeTree(top: string): Promise<void> {
  const at = (name: string) => path.join(top, name);
  for (const dir of ["bin", "etc", "home/app", "tmp", "var/empty", "usr/share/ro"]) await fs.mkdir(at(dir), { recursive: true });
  await fs.writeFile(at("bin/busybox"), Buffer.alloc(200_000, 0x7f));
  await fs.chmod(at("bin/busybox"), 0o755);
  await fs.writeFile(at("bin/su"), "setuid helper");
  await fs.chmod(at("bin/su"), 0o4755);
  for (const applet of ["sh", "ls", "cat"]) await fs.symlink("/bin/busybox", at(`bin/${applet}`));
  await fs.link(at("bin/busybox"), at("bin/busybox.hard"));
  await fs.writeFile(at("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n");
  await fs.writeFile(at("etc/shadow"), "root:*:1::::::\n", { mode: 0o600 });
  await fs.chmod(at("etc/shadow"), 0o600);
  await fs.symlink("../bin/busybox", at("etc/relative-link"));
  await fs.writeFile(at("home/app/.profile"), "export PS1='$ '\n");
  await fs.chown(at("home/app"), 1000, 1000);
  await fs.chown(at("home/app/.profile"), 1000, 1000);
  await fs.chmod(at("tmp"), 0o1777);
  await run("mkfifo", ["-m", "0620", at("tmp/fifo")]);
  await fs.writeFile(at("usr/share/ro/file"), "read only");
  await fs.writeFile(at("empty-file"), "");
  await fs.chmod(at("usr/share/ro"), 0o555);

  for (const entry of await walk(top)) await fs.lutimes(path.join(top, entry), FIXED_MTIME, FIXED_MTIME);
  await fs.lutimes(top, FIXED_MTIME, FIXED_MTIME);
}

/** Lists all paths below top, relative to it, parents before children, sorted. */
async function walk(top: string): Promise<string[]> {
  const result: string[] = [];
  const visit = async (relative: string) => {
    for (const name of (await fs.readdir(path.join(top, relative))).sort()) {
      const child = relative === "" ? name : `${relative}/${name}`;
      result.push(child);
      if ((await fs.lstat(path.join(top, child))).isDirectory()) await visit(child);
    }
  };
  await visit("");
  return result;
}

/** Packs the tree at top with tar-stream, as an image builder would, recording hard links and owners. */
async function packDirectory(top: string): Promise<Buffer> {
  const members: Member[] = [{ name: "./", type: "directory", mode: 0o755, mtime: FIXED_MTIME }];
  const firstPathOfInode = new Map<number, string>();
  for (const name of await walk(top)) {
    const full = path.join(top, name);
    const stat = await fs.lstat(full);
    const header = { name, mode: stat.mode & 0o7777, uid: stat.uid, gid: stat.gid, mtime: stat.mtime };
    if (stat.isDirectory()) {
      members.push({ ...header, type: "directory" });
    } else if (stat.isSymbolicLink()) {
      members.push({ ...header, type: "symlink", linkname: await fs.readlink(full) });
    } else if (stat.isFIFO()) {
      members.push({ ...header, type: "fifo" });
    } else if (stat.nlink > 1 && firstPathOfInode.has(stat.ino)) {
      members.push({ ...header, type: "link", linkname: firstPathOfInode.get(stat.ino) });
    } else {
      firstPathOfInode.set(stat.ino, name);
      members.push({ ...header, content: await fs.readFile(full) });
    }
  }
  return buildTar(members);
}

/**
 * Describes every entry below top: type, mode, owner, mtime, size, content
 * hash or symlink target, and which entries share an inode.
 */
async function snapshot(top: string): Promise<Record<string, string>> {
  const result: Record<string, string> = {};
  const inodes = new Map<number, string>();
  for (const name of await walk(top)) {
    const full = path.join(top, name);
    const stat = await fs.lstat(full);
    const type = stat.isDirectory() ? "dir" : stat.isSymbolicLink() ? "symlink" : stat.isFIFO() ? "fifo" : stat.isFile() ? "file" : "other";
    let detail = "";
    if (stat.isSymbolicLink()) detail = `-> ${await fs.readlink(full)}`;
    if (stat.isFile()) detail = `sha256 ${createHash("sha256").update(await fs.readFile(full)).digest("hex")}`;
    const sharedWith = stat.nlink > 1 && !stat.isDirectory() ? inodes.get(stat.ino) : undefined;
    if (!inodes.has(stat.ino)) inodes.set(stat.ino, name);
    const size = stat.isDirectory() ? "" : ` size ${stat.size}`;
    result[name] = `${type} ${(stat.mode & 0o7777).toString(8)} ${stat.uid}:${stat.gid} mtime ${stat.mtimeMs}${size} ${detail}${sharedWith ? ` same inode as ${sharedWith}` : ""}`;
  }
  return result;
}
