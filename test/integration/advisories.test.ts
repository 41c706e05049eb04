// Regression tests for the classes of flaws found in other container
// runtimes, each an attack planted in an image or request.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

import { validateContainerInputs } from "../../provider/src/common/container-spec";
import { ensureImageOnCell, imageDigest } from "../../provider/src/plugin/resources/container/image";
import { closeAllCellSessions, type CellSession } from "../../provider/src/transport/pool";
import { createCell, type Cell } from "../helpers/cell";
import { buildVariantImage } from "../helpers/probe-image";
import { sessionFor, testImagePath } from "../helpers/session";

const MIB = 1024 * 1024;

function sha256(file: string): string {
  return createHash("sha256").update(readFileSync(file)).digest("hex");
}

async function waitForLog(cell: Cell, id: string, marker: string, timeoutMs = 20_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = (await cell.exec(["cat", `/var/lib/cellfleet/containers/${id}/stdout.log`])).stdout;
    if (text.includes(marker)) return text;
    if (Date.now() > deadline) throw new Error(`container ${id} never printed ${JSON.stringify(marker)}: ${text}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe("runtime advisory regressions", function () {
  this.timeout(120_000);
  let cell: Cell;
  let session: CellSession;

  async function importImage(file: string): Promise<string> {
    const digest = await imageDigest(file);
    await ensureImageOnCell(session, file, digest);
    return digest;
  }

  before(async function () {
    cell = await createCell("t-adv");
    session = await sessionFor(cell);
  });

  after(async function () {
    await closeAllCellSessions();
    await cell?.remove();
  });

  it("leaves the runtime binaries unwritable (CVE-2019-5736 class)", async function () {
    const node = (await cell.exec(["sh", "-c", "readlink -f $(command -v node)"])).stdout.trim();
    const nodeBefore = sha256(node);
    const digest = await importImage(testImagePath());
    const attack = [
      "for p in /proc/[0-9]*; do",
      '  if ( echo overwritten > "$p/exe" ) 2>/dev/null; then echo "wrote $p/exe"; fi',
      "done",
      'echo "attack: done"',
    ].join("\n");
    await session.agent.call("container.create", { id: "exe-1", imageDigest: digest, spec: { command: ["/bin/sh", "-c", attack], memory: 64 * MIB } });
    const log = await waitForLog(cell, "exe-1", "attack: done");
    assert.doesNotMatch(log, /wrote/);
    assert.equal(sha256(node), nodeBefore, "the Node.js binary changed");
    const bundle = await cell.exec(["sh", "-c", "cat /var/lib/cellfleet/agent/*/manifest.json 2>/dev/null; sha256sum /var/lib/cellfleet/agent/*/agent.js"]);
    assert.equal(bundle.code, 0, bundle.stderr);
    await session.agent.call("container.delete", { id: "exe-1" });
  });

  it("passes no runtime descriptor to the workload (CVE-2024-21626 class)", async function () {
    // sleep, not a shell: a shell may close descriptors itself and hide a leak.
    const digest = await importImage(testImagePath());
    const created = await session.agent.call("container.create", { id: "fd-1", imageDigest: digest, spec: { command: ["/bin/sleep", "600"], memory: 64 * MIB } });
    const fds = await cell.exec(["ls", `/proc/${created.pid}/fd`]);
    assert.deepEqual(fds.stdout.trim().split(/\s+/).sort(), ["0", "1", "2"]);
    await session.agent.call("container.delete", { id: "fd-1" });
  });

  it("refuses a working directory under /proc (CVE-2024-21626 class)", function () {
    const result = validateContainerInputs({ image: "x.tar", command: ["/bin/true"], workingDir: "/proc/self/fd/7" });
    assert.equal(result.ok, false);
    assert.match(!result.ok ? result.failures[0].reason : "", /workingDir .* under \/proc/);
  });

  it("refuses an image whose /proc is a symlink (CVE-2021-30465 class)", async function () {
    const image = await buildVariantImage("symlink-proc", ["proc"], [{ path: "proc", symlinkTo: "/etc" }]);
    const digest = await importImage(image);
    await assert.rejects(
      session.agent.call("container.create", { id: "swap-1", imageDigest: digest, spec: { command: ["/bin/true"], memory: 64 * MIB } }),
      /mount \/proc.*"\/proc" in the image is not a directory/,
    );
  });

  it("uses the real /dev/null even when the image fakes one (CVE-2025-31133 class)", async function () {
    const image = await buildVariantImage("fake-dev-null", [], [{ path: "dev/null", symlinkTo: "../etc/passwd" }]);
    const digest = await importImage(image);
    const check = 'echo "null: $(stat -c %t:%T /dev/null)"; echo "keys: $(wc -c < /proc/keys)"; echo "check: done"';
    await session.agent.call("container.create", { id: "null-1", imageDigest: digest, spec: { command: ["/bin/sh", "-c", check], memory: 64 * MIB } });
    const log = await waitForLog(cell, "null-1", "check: done");
    assert.match(log, /null: 1:3/);
    assert.match(log, /keys: 0/);
    await session.agent.call("container.delete", { id: "null-1" });
  });

  it("gives no inheritable capabilities (CVE-2022-29162 class)", async function () {
    const digest = await importImage(testImagePath());
    const check = 'grep -E "^Cap(Inh|Amb)" /proc/self/status; su app -s /bin/sh -c "grep -E \'^Cap(Inh|Prm|Eff)\' /proc/self/status"; echo "check: done"';
    await session.agent.call("container.create", { id: "inh-1", imageDigest: digest, spec: { command: ["/bin/sh", "-c", check], memory: 64 * MIB } });
    const log = await waitForLog(cell, "inh-1", "check: done");
    const lines = log.split("\n").filter((line) => line.startsWith("Cap"));
    assert.ok(lines.length >= 2, log);
    for (const line of lines.filter((entry) => !entry.startsWith("CapPrm") && !entry.startsWith("CapEff"))) assert.match(line, /:\s+0+$/, line);
    await session.agent.call("container.delete", { id: "inh-1" });
  });

  it("adds a container's own denied system calls to the baseline", async function () {
    const digest = await importImage(testImagePath());
    const check = 'if linux32 true 2>/dev/null; then echo "personality: allowed"; else echo "personality: denied"; fi; echo "check: done"';
    await session.agent.call("container.create", { id: "deny-0", imageDigest: digest, spec: { command: ["/bin/sh", "-c", check], memory: 64 * MIB } });
    await session.agent.call("container.create", {
      id: "deny-1",
      imageDigest: digest,
      spec: { command: ["/bin/sh", "-c", check], memory: 64 * MIB, seccompDeny: ["personality"] },
    });
    assert.match(await waitForLog(cell, "deny-0", "check: done"), /personality: allowed/);
    assert.match(await waitForLog(cell, "deny-1", "check: done"), /personality: denied/);
    await session.agent.call("container.delete", { id: "deny-0" });
    await session.agent.call("container.delete", { id: "deny-1" });
  });

  it("keeps cgroupfs out of reach (CVE-2022-0492 and CVE-2023-25809 classes)", async function () {
    const digest = await importImage(testImagePath());
    const check = [
      "mkdir -p /tmp/cg",
      'if mount -t cgroup -o memory cgroup /tmp/cg 2>/dev/null; then echo "cgroup_mount: ok"; else echo "cgroup_mount: denied"; fi',
      'if mount -t cgroup2 none /tmp/cg 2>/dev/null; then echo "cgroup2_mount: ok"; else echo "cgroup2_mount: denied"; fi',
      'if ( echo 1 > /sys/fs/cgroup/release_agent ) 2>/dev/null; then echo "release_agent: written"; else echo "release_agent: denied"; fi',
      'echo "check: done"',
    ].join("\n");
    await session.agent.call("container.create", { id: "cg-1", imageDigest: digest, spec: { command: ["/bin/sh", "-c", check], memory: 64 * MIB } });
    const log = await waitForLog(cell, "cg-1", "check: done");
    assert.match(log, /cgroup_mount: denied/);
    assert.match(log, /cgroup2_mount: denied/);
    assert.match(log, /release_agent: denied/);
    await session.agent.call("container.delete", { id: "cg-1" });
  });
});
