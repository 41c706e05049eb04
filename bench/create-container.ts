// Benchmark: time to create one container on a local cell, cellfleet's agent
// against runc on the same machine, in the same run, from the same busybox
// rootfs. Prints the medians and their ratio.
//
//   node dist/bench/create-container.js [runs]
//
// cellfleet is timed inside the agent (the container.create request, from
// reading the request to the workload's execve) and from the provider (the
// RPC round trip over SSH). runc is timed as the whole `runc run --detach`
// command, which includes its own process start-up.
import { execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

import { ensureImageOnCell, imageDigest } from "../provider/src/plugin/resources/container/image";
import { closeAllCellSessions, getCellSession } from "../provider/src/transport/pool";
import { createCell } from "../test/helpers/cell";
import { cellConfigFor, testImagePath } from "../test/helpers/session";

const run = promisify(execFile);

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

async function benchCellfleet(runs: number): Promise<{ agent: number[]; roundTrip: number[] }> {
  const cell = await createCell("b-create");
  const agent: number[] = [];
  const roundTrip: number[] = [];
  try {
    // The agent logs "container.create #N done in X ms" for each request; its log reaches this callback.
    const log = (line: string) => {
      const match = /container\.create #\d+ done in (\d+) ms/.exec(line);
      if (match) agent.push(Number(match[1]));
    };
    const session = await getCellSession(cellConfigFor(cell), { log });
    const digest = await imageDigest(testImagePath());
    await ensureImageOnCell(session, testImagePath(), digest);
    for (let index = 0; index < runs; index++) {
      const id = `bench-${index}`;
      const started = process.hrtime.bigint();
      await session.agent.call("container.create", { id, imageDigest: digest, spec: { command: ["/bin/sleep", "600"], memory: 64 * 1024 * 1024 } });
      roundTrip.push(Number(process.hrtime.bigint() - started) / 1e6);
      await session.agent.call("container.delete", { id });
    }
  } finally {
    await closeAllCellSessions();
    await cell.remove();
  }
  return { agent, roundTrip };
}

async function benchRunc(runs: number): Promise<number[]> {
  const bundle = mkdtempSync(path.join(os.tmpdir(), "cellfleet-bench-runc-"));
  const times: number[] = [];
  try {
    mkdirSync(path.join(bundle, "rootfs"));
    await run("tar", ["-xf", testImagePath(), "-C", path.join(bundle, "rootfs"), "--numeric-owner"]);
    await run("runc", ["spec"], { cwd: bundle });
    const spec = JSON.parse(readFileSync(path.join(bundle, "config.json"), "utf8"));
    spec.process.terminal = false;
    spec.process.args = ["/bin/sleep", "600"];
    // The same memory limit as the cellfleet containers.
    spec.linux.resources = { ...spec.linux.resources, memory: { limit: 64 * 1024 * 1024 } };
    writeFileSync(path.join(bundle, "config.json"), JSON.stringify(spec));
    for (let index = 0; index < runs; index++) {
      const id = `cellfleet-bench-${process.pid}-${index}`;
      const started = process.hrtime.bigint();
      // The detached container keeps any inherited pipes open, so runc gets no stdio to wait on.
      const runc = spawn("runc", ["run", "--detach", "--bundle", bundle, id], { stdio: "ignore" });
      const [code] = (await once(runc, "exit")) as [number | null];
      if (code !== 0) throw new Error(`runc run exited with code ${code}`);
      times.push(Number(process.hrtime.bigint() - started) / 1e6);
      await run("runc", ["delete", "--force", id]);
    }
  } finally {
    rmSync(bundle, { recursive: true, force: true });
  }
  return times;
}

async function main(): Promise<void> {
  const runs = Number(process.argv[2] ?? 15);
  const cellfleet = await benchCellfleet(runs);
  const runc = await benchRunc(runs);
  const format = (values: number[]) => `median ${median(values).toFixed(1)} ms (min ${Math.min(...values).toFixed(1)}, max ${Math.max(...values).toFixed(1)})`;
  process.stdout.write(`runs: ${runs}\n`);
  process.stdout.write(`cellfleet container.create in the agent: ${format(cellfleet.agent)}\n`);
  process.stdout.write(`cellfleet container.create over SSH: ${format(cellfleet.roundTrip)}\n`);
  process.stdout.write(`runc run --detach:                   ${format(runc)}\n`);
  process.stdout.write(`ratio cellfleet / runc: ${(median(cellfleet.roundTrip) / median(runc)).toFixed(2)}\n`);
}

main().catch((error) => {
  process.stderr.write(`benchmark failed: ${(error as Error).stack ?? error}\n`);
  process.exit(1);
});
