// A cell that cannot enforce a disk quota refuses it rather than ignoring
// it. The missing loop device is injected by stubbing the access check.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, promises as fsPromises, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";

import sinon from "sinon";

import { mountQuotaFilesystem, quotaSupport } from "../../provider/src/agent/container/quota";
import { AgentFailure } from "../../provider/src/agent/errors";

describe("disk quota support", function () {
  let directory: string;

  beforeEach(function () {
    directory = mkdtempSync(path.join(os.tmpdir(), "cellfleet-quota-"));
  });

  afterEach(function () {
    sinon.restore();
    rmSync(directory, { recursive: true, force: true });
  });

  it("reports none without loop devices", async function () {
    sinon.stub(fsPromises, "access").rejects(Object.assign(new Error("ENOENT"), { code: "ENOENT" }));
    assert.equal(await quotaSupport(), "none");
  });

  it("refuses a quota it cannot enforce", async function () {
    sinon.stub(fsPromises, "access").rejects(Object.assign(new Error("ENOENT"), { code: "ENOENT" }));
    const image = path.join(directory, "disk.img");
    await assert.rejects(mountQuotaFilesystem(image, path.join(directory, "layer"), 32 * 1024 * 1024), (error: unknown) => {
      assert.ok(error instanceof AgentFailure);
      assert.equal(error.code, "QUOTA_UNSUPPORTED");
      assert.match(error.message, /cannot enforce diskQuota.*remove diskQuota/);
      return true;
    });
    assert.equal(existsSync(image), false, "a disk image was created for a refused quota");
  });
});
