// Memory and CPU limits under real load on a local cell: a container that
// exceeds its memory is destroyed and reported, and CPU shares divide one
// contended CPU in proportion to memory.
import assert from "node:assert/strict";

import type { ContainerObservation } from "../../provider/src/common/protocol";
import { cpuSharesForMemory } from "../../provider/src/common/resources";
import { ensureImageOnCell, imageDigest } from "../../provider/src/plugin/resources/container/image";
import { closeAllCellSessions, type CellSession } from "../../provider/src/transport/pool";
import { createCell, type Cell } from "../helpers/cell";
import { sessionFor, testImagePath } from "../helpers/session";

const MIB = 1024 * 1024;
const GROW_FOREVER = "awk 'BEGIN { s = \"x\"; while (1) s = s s }'";
/** 8/3 GiB and 16/3 GiB, which give 341 and 682 shares. */
const SMALL_MEMORY = 2863311531;
const LARGE_MEMORY = 5726623062;
/** Measured spread of the ratio on a 2-core machine was within 3 %; the bound leaves room for noisy CI neighbours. */
const RATIO_TOLERANCE = 0.15;

async function pollUntil(session: CellSession, id: string, predicate: (observed: ContainerObservation | null) => boolean, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const observed = await session.agent.call("container.inspect", { id });
    if (predicate(observed)) return observed;
    if (Date.now() > deadline) throw new Error(`container ${id} did not reach the expected state: ${JSON.stringify(observed)}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

async function cpuTicks(cell: Cell, pid: number): Promise<number> {
  const stat = (await cell.exec(["cat", `/proc/${pid}/stat`])).stdout;
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime and stime are fields 14 and 15 of /proc/PID/stat, counted from 1.
  return Number(fields[11]) + Number(fields[12]);
}

describe("memory and CPU limits under load", function () {
  this.timeout(120_000);
  let cell: Cell;
  let session: CellSession;
  let digest: string;

  before(async function () {
    cell = await createCell("t-res");
    session = await sessionFor(cell);
    digest = await imageDigest(testImagePath());
    await ensureImageOnCell(session, testImagePath(), digest);
  });

  after(async function () {
    await closeAllCellSessions();
    await cell?.remove();
  });

  it("reports a container killed by its memory limit", async function () {
    await session.agent.call("container.create", { id: "oom-1", imageDigest: digest, spec: { command: ["/bin/sh", "-c", `exec ${GROW_FOREVER}`], memory: 32 * MIB } });
    const observed = await pollUntil(session, "oom-1", (state) => state?.status === "stopped");
    assert.equal(observed?.reason, "killed by the kernel for exceeding its memory limit");
  });

  it("destroys the whole container when one process exceeds the limit", async function () {
    const created = await session.agent.call("container.create", {
      id: "oom-2",
      imageDigest: digest,
      spec: { command: ["/bin/sh", "-c", `${GROW_FOREVER} & exec sleep 600`], memory: 32 * MIB },
    });
    const observed = await pollUntil(session, "oom-2", (state) => state?.status === "stopped");
    assert.equal(observed?.reason, "killed by the kernel for exceeding its memory limit");
    const procs = await cell.exec(["cat", `/sys/fs/cgroup/memory/${cell.cgroupParent}/oom-2/cgroup.procs`]);
    assert.equal(procs.stdout.trim(), "", "processes of the container survived");
    const gone = await cell.exec(["test", "-e", `/proc/${created.pid}`]);
    assert.notEqual(gone.code, 0, "the workload survived");
  });

  it("divides a contended CPU in proportion to shares", async function () {
    assert.equal(cpuSharesForMemory(SMALL_MEMORY), 341);
    assert.equal(cpuSharesForMemory(LARGE_MEMORY), 682);
    const busy = ["/bin/sh", "-c", "exec taskset -c 0 sh -c 'while :; do :; done'"];
    const small = await session.agent.call("container.create", { id: "cpu-small", imageDigest: digest, spec: { command: busy, memory: SMALL_MEMORY } });
    const large = await session.agent.call("container.create", { id: "cpu-large", imageDigest: digest, spec: { command: busy, memory: LARGE_MEMORY } });
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const before = [await cpuTicks(cell, small.pid), await cpuTicks(cell, large.pid)];
    await new Promise((resolve) => setTimeout(resolve, 4000));
    const after = [await cpuTicks(cell, small.pid), await cpuTicks(cell, large.pid)];
    const ratio = (after[1] - before[1]) / (after[0] - before[0]);
    const expected = 682 / 341;
    process.stdout.write(`      measured CPU time ratio ${ratio.toFixed(3)} (expected ${expected.toFixed(3)})\n`);
    assert.ok(Math.abs(ratio - expected) / expected <= RATIO_TOLERANCE, `ratio ${ratio.toFixed(3)} is more than ${RATIO_TOLERANCE * 100} % from ${expected}`);
    await session.agent.call("container.delete", { id: "cpu-small" });
    await session.agent.call("container.delete", { id: "cpu-large" });
  });
});
