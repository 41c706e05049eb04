// The traffic example through the real Pulumi CLI on a local cell: a
// security group from a CF rules file, two containers and a policy that
// lets only the frontend reach the backend. A ruleset flushed by hand shows
// as drift, and `pulumi up` restores it.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";

import { LocalWorkspace, type Stack } from "@pulumi/pulumi/automation";

import { traffic } from "../../examples/traffic";
import { closeAllCellSessions } from "../../provider/src/transport/pool";
import { createCell, type Cell } from "../helpers/cell";
import { testImagePath } from "../helpers/session";

describe("traffic stack through the Pulumi CLI", function () {
  this.timeout(300_000);
  let cell: Cell;
  let stateDir: string;
  let stack: Stack;
  let outputs: Record<string, unknown>;

  /** Opens a TCP connection from inside a container's network namespace; true when it connects. */
  async function connects(fromPid: number, address: string, port: number): Promise<boolean> {
    const script = `require("net").connect(${port}, "${address}").on("connect", () => process.exit(0)).on("error", () => process.exit(1)); setTimeout(() => process.exit(2), 2000);`;
    const result = await cell.exec(["nsenter", `--net=/proc/${fromPid}/ns/net`, "node", "-e", script]);
    return result.code === 0;
  }

  async function pidOf(name: "backend" | "frontend"): Promise<number> {
    const state = JSON.parse(readFileSync(path.join(stateDir, ".pulumi", "stacks", "cellfleet-traffic", "t.json"), "utf8"));
    const resource = state.checkpoint.latest.resources.find((entry: { urn: string }) => entry.urn.endsWith(`::${name}`));
    return resource.outputs.pid as number;
  }

  before(async function () {
    cell = await createCell("t-traf");
    stateDir = mkdtempSync(path.join(os.tmpdir(), "cellfleet-traffic-state-"));
    stack = await LocalWorkspace.createOrSelectStack(
      { stackName: "t", projectName: "cellfleet-traffic", program: async () => traffic() },
      {
        workDir: stateDir,
        envVars: { PULUMI_BACKEND_URL: `file://${stateDir}`, PULUMI_CONFIG_PASSPHRASE: "cellfleet-e2e", PULUMI_SKIP_UPDATE_CHECK: "true" },
        projectSettings: { name: "cellfleet-traffic", runtime: "nodejs" },
      },
    );
    await stack.setAllConfig({
      host: { value: cell.host },
      port: { value: String(cell.port) },
      privateKey: { value: readFileSync(cell.privateKeyPath, "utf8"), secret: true },
      hostKey: { value: cell.hostPublicKey },
      image: { value: testImagePath() },
    });
  });

  after(async function () {
    await stack?.destroy().catch(() => undefined);
    await closeAllCellSessions();
    await cell?.remove();
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  it("creates the group, containers and policy", async function () {
    const result = await stack.up();
    assert.equal(result.summary.result, "succeeded");
    outputs = Object.fromEntries(Object.entries(result.outputs).map(([name, output]) => [name, output.value]));
    assert.match(String(outputs.backendAddress), /^\d+\.\d+\.\d+\.\d+$/);
    assert.equal(outputs.securityGroup, "public-web");
  });

  it("lets the frontend reach the backend on the policy port", async function () {
    assert.equal(await connects(await pidOf("frontend"), String(outputs.backendAddress), 8080), true);
  });

  it("keeps the backend from reaching the frontend", async function () {
    assert.equal(await connects(await pidOf("backend"), String(outputs.frontendAddress), 8080), false);
  });

  it("previews no changes after up", async function () {
    const preview = await stack.preview({ diff: true });
    assert.deepEqual(Object.keys(preview.changeSummary).sort(), ["same"], preview.stdout);
  });

  it("shows a ruleset flushed by hand as drift", async function () {
    const flushed = await cell.exec(["nft", "flush", "table", "inet", "cellfleet"]);
    assert.equal(flushed.code, 0, flushed.stderr);
    const preview = await stack.preview({ refresh: true });
    assert.ok((preview.changeSummary.update ?? 0) >= 1, JSON.stringify(preview.changeSummary));
  });

  it("restores the ruleset with up", async function () {
    const result = await stack.up({ refresh: true });
    outputs = Object.fromEntries(Object.entries(result.outputs).map(([name, output]) => [name, output.value]));
    assert.equal(await connects(await pidOf("frontend"), String(outputs.backendAddress), 8080), true);
    const preview = await stack.preview({ refresh: true, expectNoChanges: true });
    assert.deepEqual(Object.keys(preview.changeSummary).sort(), ["same"]);
  });

  it("destroys everything", async function () {
    await stack.destroy();
    const containers = await cell.exec(["sh", "-c", "ls /var/lib/cellfleet/containers | wc -l"]);
    assert.equal(containers.stdout.trim(), "0");
    const groups = await cell.exec(["sh", "-c", "ls /var/lib/cellfleet/network/groups 2>/dev/null | wc -l"]);
    assert.equal(groups.stdout.trim(), "0");
  });
});
