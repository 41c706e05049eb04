import assert from "node:assert/strict";

import { validateContainerInputs } from "../../provider/src/common/container-spec";
import { cpuSharesForMemory, cpuSharesForWeight, cpuWeightForShares, hostIdFor, unprivilegedIdMap } from "../../provider/src/common/resources";
import { formatByteSize, parseByteSize } from "../../provider/src/common/units";

const GIB = 1024 ** 3;
const base = { image: "rootfs.tar", command: ["/bin/true"] };

function reasonFor(inputs: Record<string, unknown>, property: string): string {
  const result = validateContainerInputs(inputs);
  assert.equal(result.ok, false, "expected a validation failure");
  const failure = !result.ok ? result.failures.find((entry) => entry.property === property) : undefined;
  assert.ok(failure, `no failure for ${property}`);
  return failure.reason;
}

describe("container input validation", function () {
  it("accepts minimal inputs and applies defaults", function () {
    const result = validateContainerInputs(base);
    assert.ok(result.ok);
    assert.equal(result.spec.memory, 256 * 1024 * 1024);
    assert.equal(result.spec.workingDir, "/");
    assert.equal(result.spec.user, "0");
    assert.deepEqual(result.spec.env, {});
  });

  it("names a memory value that is not a size", function () {
    const reason = reasonFor({ ...base, memory: "12XB" }, "memory");
    assert.match(reason, /memory "12XB" is not a size/);
    assert.match(reason, /"512MiB"/);
  });

  it("names a negative disk quota", function () {
    assert.match(reasonFor({ ...base, diskQuota: -5 }, "diskQuota"), /diskQuota -5 is negative: give a positive size/);
    assert.match(reasonFor({ ...base, diskQuota: "-1G" }, "diskQuota"), /diskQuota "-1G" is negative/);
  });

  it("rejects memory below the minimum", function () {
    assert.match(reasonFor({ ...base, memory: "1KiB" }, "memory"), /below the minimum/);
  });

  it("rejects an empty command", function () {
    assert.match(reasonFor({ ...base, command: [] }, "command"), /command is empty/);
  });

  it("rejects a relative working directory", function () {
    assert.match(reasonFor({ ...base, workingDir: "tmp" }, "workingDir"), /absolute path/);
  });

  it("rejects a working directory with ..", function () {
    assert.match(reasonFor({ ...base, workingDir: "/tmp/../etc" }, "workingDir"), /without ".."/);
  });

  it("rejects a working directory under /proc", function () {
    assert.match(reasonFor({ ...base, workingDir: "/proc/self/fd/3" }, "workingDir"), /must not be under \/proc/);
  });

  it("rejects an invalid env name", function () {
    assert.match(reasonFor({ ...base, env: { "1BAD": "x" } }, "env.1BAD"), /env name "1BAD" is invalid/);
  });

  it("rejects an invalid hostname", function () {
    assert.match(reasonFor({ ...base, hostname: "-bad-" }, "hostname"), /hostname must be/);
  });

  it("rejects a malformed user", function () {
    assert.match(reasonFor({ ...base, user: "1000:abc" }, "user"), /UID:GID/);
  });

  it("names unknown inputs", function () {
    assert.match(reasonFor({ ...base, memroy: "1G" }, "memroy"), /unknown input "memroy"/);
  });

  it("reports a missing image", function () {
    assert.match(reasonFor({ command: ["/bin/true"] }, "image"), /image is required/);
  });
});

describe("byte sizes", function () {
  const cases: [string | number, number | undefined][] = [
    ["512MiB", 512 * 1024 ** 2],
    ["512Mi", 512 * 1024 ** 2],
    ["2G", 2 * GIB],
    ["1.5GiB", 1.5 * GIB],
    ["1GB", 1000 ** 3],
    ["100", 100],
    [4096, 4096],
    ["12XB", undefined],
    ["-1G", undefined],
    [-1, undefined],
    ["", undefined],
    [1.5, undefined],
  ];
  for (const [input, expected] of cases) {
    it(`parses ${JSON.stringify(input)}`, function () {
      assert.equal(parseByteSize(input), expected);
    });
  }

  it("formats with the largest exact binary unit", function () {
    assert.equal(formatByteSize(64 * 1024 ** 2), "64MiB");
    assert.equal(formatByteSize(3 * GIB), "3GiB");
    assert.equal(formatByteSize(1000), "1000B");
  });
});

describe("cpu shares", function () {
  const cases: [number, number][] = [
    [8 * GIB, 1024],
    [16 * GIB, 1024],
    [4 * GIB, 512],
    [2.66 * GIB, 340],
    [5.33 * GIB, 682],
    [256 * 1024 ** 2, 32],
    [64 * 1024 ** 2, 10],
    [4 * 1024 ** 2, 10],
  ];
  for (const [memory, shares] of cases) {
    it(`gives ${shares} shares for ${formatByteSize(Math.round(memory))}`, function () {
      assert.equal(cpuSharesForMemory(memory), shares);
    });
  }

  it("maps shares to cgroup v2 weights and back", function () {
    assert.equal(cpuWeightForShares(2), 1);
    assert.equal(cpuWeightForShares(1024), 39);
    assert.equal(cpuWeightForShares(262144), 10000);
    for (const shares of [10, 32, 341, 682, 1024]) {
      // The v2 scale is coarser, so the round trip lands within one weight step (about 26 shares).
      assert.ok(Math.abs(cpuSharesForWeight(cpuWeightForShares(shares)) - shares) <= 27, `shares ${shares}`);
    }
  });
});

describe("id maps", function () {
  it("maps container root away and every other id to itself", function () {
    assert.equal(unprivilegedIdMap(), "0 4294967294 1\n1 1 4294967293\n");
  });

  it("translates container ids to cell ids", function () {
    assert.equal(hostIdFor(0), 4294967294);
    assert.equal(hostIdFor(1000), 1000);
  });
});
