// The quickstart stack through the real Pulumi CLI against a local cell:
// up, a preview that finds nothing to change, drift found by refresh, a
// converging up, and a destroy that leaves nothing on the cell. The program
// runs inline through the Automation API; refresh and destroy run the CLI
// directly, because neither needs the program.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

import type { Stack } from "@pulumi/pulumi/automation";

import { closeAllCellSessions } from "../../provider/src/transport/pool";
import { configureForCell, quickstartStack } from "../../scripts/quickstart-stack";
import { createCell, type Cell } from "../helpers/cell";
import { testImagePath } from "../helpers/session";

const run = promisify(execFile);
const PASSPHRASE = "cellfleet-e2e";
const SECRET_TOKEN = "demo-token-not-a-real-secret";

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

describe("quickstart stack through the Pulumi CLI", function () {
  this.timeout(300_000);
  let cell: Cell;
  let stateDir: string;
  let stack: Stack;
  let containerId: string;
  let firstPid: number;

  async function pulumi(args: string[]): Promise<CliResult> {
    try {
      const { stdout, stderr } = await run("pulumi", [...args, "--stack", "e2e", "--non-interactive"], {
        cwd: stateDir,
        env: { ...process.env, PULUMI_BACKEND_URL: `file://${stateDir}`, PULUMI_CONFIG_PASSPHRASE: PASSPHRASE, PULUMI_SKIP_UPDATE_CHECK: "true" },
        maxBuffer: 16 * 1024 * 1024,
      });
      return { code: 0, stdout, stderr };
    } catch (error) {
      const failure = error as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof failure.code === "number" ? failure.code : -1, stdout: failure.stdout ?? "", stderr: failure.stderr ?? "" };
    }
  }

  async function containersOnCell(): Promise<string[]> {
    const result = await cell.exec(["ls", "/var/lib/cellfleet/containers"]);
    return result.stdout.split(/\s+/).filter(Boolean);
  }

  before(async function () {
    cell = await createCell("t-e2e");
    stateDir = mkdtempSync(path.join(os.tmpdir(), "cellfleet-e2e-state-"));
    stack = await quickstartStack({ workDir: stateDir, stackName: "e2e", backendUrl: `file://${stateDir}`, passphrase: PASSPHRASE });
    await configureForCell(stack, cell, readFileSync(cell.privateKeyPath, "utf8"), testImagePath());
  });

  after(async function () {
    await closeAllCellSessions();
    await cell?.remove();
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  it("creates a running container with up", async function () {
    const result = await stack.up();
    assert.equal(result.summary.result, "succeeded");
    assert.equal(result.outputs.status.value, "running");
    containerId = result.outputs.containerId.value as string;
    firstPid = result.outputs.pid.value as number;
    assert.match(containerId, /^hello-[0-9a-f]{8}$/);
    assert.deepEqual(await containersOnCell(), [containerId]);
  });

  it("runs the workload as the image's app user", async function () {
    const status = await cell.exec(["grep", "^Uid:", `/proc/${firstPid}/status`]);
    assert.match(status.stdout, /^Uid:\s+1000\s/);
  });

  it("keeps the secret env value out of the state", async function () {
    // The state file on disk, not `stack export`, which the Automation API runs with --show-secrets.
    const stateFile = path.join(stateDir, ".pulumi", "stacks", "cellfleet-quickstart", "e2e.json");
    const state = readFileSync(stateFile, "utf8");
    assert.ok(state.includes("API_TOKEN"), "the env of the container is in the state");
    assert.ok(state.includes("ciphertext"), "no secret is encrypted in the state");
    const index = state.indexOf(SECRET_TOKEN);
    assert.equal(index, -1, `the secret appears in clear in the state: ...${state.slice(Math.max(0, index - 300), index + 50)}`);
  });

  it("previews no changes after up", async function () {
    const preview = await stack.preview({ expectNoChanges: true });
    assert.deepEqual(Object.keys(preview.changeSummary).sort(), ["same"]);
  });

  it("refreshes through the CLI with exit code 0", async function () {
    const result = await pulumi(["refresh", "--yes"]);
    assert.equal(result.code, 0, result.stderr || result.stdout);
    assert.doesNotMatch(result.stdout, new RegExp(SECRET_TOKEN));
  });

  it("shows a container killed on the cell as drift", async function () {
    await cell.exec(["kill", "-9", String(firstPid)]);
    const preview = await stack.preview({ refresh: true });
    assert.equal(preview.changeSummary.replace, 1, JSON.stringify(preview.changeSummary));
  });

  it("fails a preview that expects no changes when there is drift", async function () {
    await assert.rejects(stack.preview({ refresh: true, expectNoChanges: true }), /no changes were expected for preview but changes were proposed/);
  });

  it("converges with up after drift", async function () {
    const result = await stack.up({ refresh: true });
    assert.equal(result.outputs.status.value, "running");
    assert.notEqual(result.outputs.pid.value, firstPid);
    const replacement = result.outputs.containerId.value as string;
    assert.notEqual(replacement, containerId);
    assert.deepEqual(await containersOnCell(), [replacement]);
  });

  it("destroys through the CLI and leaves nothing on the cell", async function () {
    const result = await pulumi(["destroy", "--yes"]);
    assert.equal(result.code, 0, result.stderr || result.stdout);
    assert.deepEqual(await containersOnCell(), []);
    const cgroups = await cell.exec(["sh", "-c", `ls /sys/fs/cgroup/memory/${cell.cgroupParent} | grep -c '^hello-' || true`]);
    assert.equal(cgroups.stdout.trim(), "0");
  });
});
