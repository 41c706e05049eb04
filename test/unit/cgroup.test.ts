// cgroup v2 files, checked against a directory laid out like a v2
// hierarchy. Machines running the suite may be cgroup v1 only, so the v2
// path would otherwise go untested.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";

import { cgroupDirectories, createCgroup, detectCgroupVersion, readLimits, writeLimits } from "../../provider/src/agent/container/cgroup";
import { cpuWeightForShares } from "../../provider/src/common/resources";

describe("cgroup v2 limits", function () {
  let root: string;

  beforeEach(function () {
    root = mkdtempSync(path.join(os.tmpdir(), "cellfleet-cgroup2-"));
    writeFileSync(path.join(root, "cgroup.controllers"), "cpu memory pids\n");
  });

  afterEach(function () {
    rmSync(root, { recursive: true, force: true });
  });

  it("detects a v2 hierarchy", async function () {
    assert.equal(await detectCgroupVersion(root), 2);
  });

  it("enables controllers in every ancestor", async function () {
    await createCgroup(2, "cellfleet-test", "c1", { memoryBytes: 64 * 1024 * 1024, cpuShares: 341 }, root);
    assert.equal(readFileSync(path.join(root, "cgroup.subtree_control"), "utf8"), "+memory +cpu +pids");
    assert.equal(readFileSync(path.join(root, "cellfleet-test", "cgroup.subtree_control"), "utf8"), "+memory +cpu +pids");
  });

  it("writes memory, weight and OOM group", async function () {
    await createCgroup(2, "cellfleet-test", "c1", { memoryBytes: 64 * 1024 * 1024, cpuShares: 341 }, root);
    const [directory] = cgroupDirectories(2, "cellfleet-test", "c1", root);
    assert.equal(readFileSync(path.join(directory, "memory.max"), "utf8"), String(64 * 1024 * 1024));
    assert.equal(readFileSync(path.join(directory, "cpu.weight"), "utf8"), String(cpuWeightForShares(341)));
    assert.equal(readFileSync(path.join(directory, "memory.oom.group"), "utf8"), "1");
    assert.equal(readFileSync(path.join(directory, "memory.swap.max"), "utf8"), "0");
  });

  it("reads back the limits it wrote", async function () {
    const cgroup = await createCgroup(2, "cellfleet-test", "c1", { memoryBytes: 64 * 1024 * 1024, cpuShares: 682 }, root);
    await writeLimits(cgroup, { memoryBytes: 128 * 1024 * 1024, cpuShares: 682 });
    const limits = await readLimits(cgroup);
    assert.equal(limits?.memoryBytes, 128 * 1024 * 1024);
    // The v2 weight scale is coarser than shares, so the round trip lands within one weight step.
    assert.ok(Math.abs((limits?.cpuShares ?? 0) - 682) <= 27, `shares ${limits?.cpuShares}`);
  });
});
