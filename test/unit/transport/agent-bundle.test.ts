import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { bundleDigest, loadAgentBundle, providerPackageRoot } from "../../../provider/src/transport/agent-bundle";
import { checkNode, parseNodeMajor } from "../../../provider/src/transport/agent-install";
import { CellTransportError } from "../../../provider/src/transport/errors";
import type { CellConnection } from "../../../provider/src/transport/ssh";
import { shellQuote } from "../../../provider/src/transport/shell";

function sha256(data: string | Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

describe("loadAgentBundle", () => {
  let dir: string;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "cellfleet-bundle-"));
    writeFileSync(join(dir, "agent.js"), "console.log('agent');\n");
    writeFileSync(join(dir, "koffi.node"), Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
  });

  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  function writeManifest(files: unknown): void {
    writeFileSync(join(dir, "manifest.json"), JSON.stringify({ files }));
  }

  it("reads files and computes the digest", () => {
    const agentHash = sha256("console.log('agent');\n");
    const koffiHash = sha256(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
    writeManifest([
      { name: "koffi.node", sha256: koffiHash },
      { name: "agent.js", sha256: agentHash },
    ]);

    const bundle = loadAgentBundle(dir);

    assert.equal(bundle.digest, sha256(`agent.js ${agentHash}\nkoffi.node ${koffiHash}\n`));
    assert.deepEqual(
      bundle.files.map((file) => [file.name, file.localPath, file.sha256, file.mode]),
      [
        ["koffi.node", join(dir, "koffi.node"), koffiHash, 0o644],
        ["agent.js", join(dir, "agent.js"), agentHash, 0o644],
      ],
    );
  });

  it("digest ignores manifest order", () => {
    const a = { name: "agent.js", sha256: "a".repeat(64) };
    const b = { name: "koffi.node", sha256: "b".repeat(64) };
    assert.equal(bundleDigest([a, b]), bundleDigest([b, a]));
  });

  it("rejects a file that differs from the manifest", () => {
    writeManifest([{ name: "agent.js", sha256: "0".repeat(64) }]);
    assert.throws(() => loadAgentBundle(dir), /agent\.js has sha256 [0-9a-f]{64}, but .*manifest\.json lists 0{64}: run `npm run build`/);
  });

  it("rejects a missing manifest", () => {
    assert.throws(() => loadAgentBundle(dir), /manifest\.json not found: run `npm run build`/);
  });

  it("rejects a missing listed file", () => {
    writeManifest([
      { name: "agent.js", sha256: sha256("console.log('agent');\n") },
      { name: "absent.node", sha256: "1".repeat(64) },
    ]);
    assert.throws(() => loadAgentBundle(dir), /absent\.node could not be read/);
  });

  const invalid: [string, unknown, RegExp][] = [
    ["path in name", [{ name: "../agent.js", sha256: "a".repeat(64) }], /files\.0\.name: a file name must be a plain name/],
    ["dot file", [{ name: ".hidden", sha256: "a".repeat(64) }], /files\.0\.name/],
    ["uppercase hash", [{ name: "agent.js", sha256: "A".repeat(64) }], /files\.0\.sha256: sha256 must be 64 lowercase hex digits/],
    ["no files", [], /the manifest lists no files/],
    ["no agent.js", [{ name: "koffi.node", sha256: "a".repeat(64) }], /does not list agent\.js/],
    [
      "duplicate",
      [
        { name: "agent.js", sha256: "a".repeat(64) },
        { name: "agent.js", sha256: "a".repeat(64) },
      ],
      /lists agent\.js twice/,
    ],
  ];
  for (const [name, files, pattern] of invalid) {
    it(`rejects manifest with ${name}`, () => {
      writeManifest(files);
      assert.throws(() => loadAgentBundle(dir), pattern);
    });
  }
});

describe("providerPackageRoot", () => {
  it("finds the provider package from dist", () => {
    // This test file runs from <repo>/dist/test/unit/transport/.
    const repo = resolve(__dirname, "../../../..");
    assert.equal(providerPackageRoot(__dirname), join(repo, "provider"));
  });
});

describe("parseNodeMajor", () => {
  const cases: [string, number | undefined][] = [
    ["v20.11.1\n", 20],
    ["v18.0.0", 18],
    ["v8.17.0", 8],
    ["20.11.1", undefined],
    ["", undefined],
  ];
  for (const [output, expected] of cases) {
    it(`parses ${JSON.stringify(output)}`, () => {
      assert.equal(parseNodeMajor(output), expected);
    });
  }
});

describe("shellQuote", () => {
  it("leaves safe words alone", () => {
    assert.equal(shellQuote("/var/lib/cellfleet/agent"), "/var/lib/cellfleet/agent");
  });

  it("quotes spaces and quotes", () => {
    assert.equal(shellQuote("a b"), "'a b'");
    assert.equal(shellQuote("it's"), `'it'\\''s'`);
    assert.equal(shellQuote("$(id)"), "'$(id)'");
    assert.equal(shellQuote(""), "''");
  });
});

describe("checkNode", () => {
  function fakeConnection(result: { code: number; stdout?: string; stderr?: string }, sudoPrefix = "") {
    const commands: string[] = [];
    const connection = {
      label: "deploy@198.18.0.2:22",
      sudoPrefix,
      config: { user: "deploy" },
      exec: async (command: string) => {
        commands.push(command);
        return { code: result.code, stdout: Buffer.from(result.stdout ?? ""), stderr: Buffer.from(result.stderr ?? "") };
      },
    };
    return { connection: connection as unknown as CellConnection, commands };
  }

  it("returns the version", async () => {
    const { connection, commands } = fakeConnection({ code: 0, stdout: "welcome to the cell\nv20.11.1\n" }, "sudo -n ");
    assert.equal(await checkNode(connection), "v20.11.1");
    assert.deepEqual(commands, ["command -v node >/dev/null 2>&1 || exit 127; sudo -n node --version"]);
  });

  it("reports a missing node", async () => {
    const { connection } = fakeConnection({ code: 127 });
    await assert.rejects(checkNode(connection), {
      message:
        "cell deploy@198.18.0.2:22 has no Node.js 18 or newer (found no node on PATH): install the nodejs package on the cell",
    });
  });

  it("reports an old node", async () => {
    const { connection } = fakeConnection({ code: 0, stdout: "v16.20.2\n" });
    await assert.rejects(checkNode(connection), (error: unknown) => {
      assert.ok(error instanceof CellTransportError);
      assert.equal(error.step, "check Node.js");
      assert.equal(
        error.message,
        "cell deploy@198.18.0.2:22 has no Node.js 18 or newer (found v16.20.2): install the nodejs package on the cell",
      );
      return true;
    });
  });

  it("explains a sudo password prompt", async () => {
    const { connection } = fakeConnection({ code: 1, stderr: "sudo: a password is required\n" }, "sudo -n ");
    await assert.rejects(checkNode(connection), /sudo needs a password or does not allow it .* allow user deploy to run node through sudo without a password, or connect as root/);
  });
});
