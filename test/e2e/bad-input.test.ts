// Bad input stops `pulumi up` with a message that names the value and the
// fix, and nothing changes on the cell. Each case runs the quickstart
// program through the real CLI on a stack of its own.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";

import { CommandError, type Stack } from "@pulumi/pulumi/automation";

import { closeAllCellSessions } from "../../provider/src/transport/pool";
import { configureForCell, quickstartStack } from "../../scripts/quickstart-stack";
import { createCell, type Cell } from "../helpers/cell";
import { testImagePath } from "../helpers/session";

const PASSPHRASE = "cellfleet-e2e";

interface BadInputCase {
  name: string;
  config: Record<string, { value: string; secret?: boolean }>;
  expected: RegExp[];
}

describe("bad input through the Pulumi CLI", function () {
  this.timeout(300_000);
  let cell: Cell;
  let stateDir: string;

  const cases: BadInputCase[] = [
    {
      name: "memory that is not a size",
      config: { memory: { value: "12XB" } },
      expected: [/memory "12XB" is not a size/, /"512MiB"/],
    },
    {
      name: "negative disk quota",
      config: { diskQuota: { value: "-1G" } },
      expected: [/diskQuota "-1G" is negative/],
    },
    {
      name: "missing image file",
      config: { image: { value: "/nonexistent/cellfleet-image.tar" } },
      expected: [/image file "\/nonexistent\/cellfleet-image.tar" not found/, /fix the path/],
    },
    {
      name: "unreachable cell",
      // Nothing listens on this port of the test cell, so every dial is refused.
      config: { port: { value: "2222" }, dialRetries: { value: "1" } },
      expected: [/ECONNREFUSED/, /2 attempts/, /:2222/],
    },
    {
      name: "wrong host key",
      config: { hostKey: { value: "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" } },
      expected: [/host key/i, /SHA256:[A-Za-z0-9+/]{43}/, /does not match/],
    },
  ];

  before(async function () {
    cell = await createCell("t-bad");
    stateDir = mkdtempSync(path.join(os.tmpdir(), "cellfleet-bad-state-"));
  });

  after(async function () {
    await closeAllCellSessions();
    await cell?.remove();
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  for (const [index, testCase] of cases.entries()) {
    it(`rejects ${testCase.name}`, async function () {
      const stack: Stack = await quickstartStack({ workDir: stateDir, stackName: `bad-${index}`, backendUrl: `file://${stateDir}`, passphrase: PASSPHRASE });
      await configureForCell(stack, cell, readFileSync(cell.privateKeyPath, "utf8"), testImagePath());
      await stack.setAllConfig(testCase.config);

      const failure = await stack.up().then(
        () => undefined,
        (error: unknown) => error,
      );
      assert.ok(failure instanceof CommandError, `pulumi up did not fail: ${String(failure)}`);
      const text = failure.message;
      for (const pattern of testCase.expected) assert.match(text, pattern);
      assert.doesNotMatch(text, /BEGIN OPENSSH PRIVATE KEY/);

      const containers = await cell.exec(["sh", "-c", "ls /var/lib/cellfleet/containers 2>/dev/null | wc -l"]);
      assert.equal(containers.stdout.trim(), "0", "a container was created on the cell");
    });
  }
});
