// Benchmark: the cost of security group rules on one cell, in the same run.
//
//   node dist/bench/ruleset.js [rules] [runs]
//
// 1. Apply time: render the whole ruleset for one container bound to a group
//    of RULES tcp rules and apply it with one `nft -f -`, RUNS times, each
//    time replacing a ruleset of 1 rule.
// 2. Connection rate: sequential TCP connections (connect, read the greeting,
//    reset) from a simulated container to an outside listener for 3 s, RUNS
//    times, through no cellfleet tables, through a ruleset of 1 rule, and
//    through a ruleset of RULES rules. The allowing rule is the same in both
//    rulesets, so the difference is the cost of the set size.
//
// Everything runs in network namespaces this script creates and removes.
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

import { ExecConntrackRunner } from "../provider/src/agent/network/conntrack";
import { ExecNftRunner } from "../provider/src/agent/network/nft";
import { renderRuleset } from "../provider/src/agent/network/ruleset";
import { RulesEngine } from "../provider/src/agent/network/rules-engine";
import type { SecurityGroupRule } from "../provider/src/common/network-state";
import { inNetns, SimulatedNetwork } from "../test/helpers/netsim";

const run = promisify(execFile);
const CELL_NETNS = "b-rs-cell";
const INDEX = 61;
const LISTENER = `100.64.${INDEX}.2`;
const RATE_SECONDS = 3;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** Returns `count` rules: the one that allows the listener, then distinct addresses and port ranges in 100.96.0.0/12. */
function rules(count: number): SecurityGroupRule[] {
  const list: SecurityGroupRule[] = [{ protocol: "tcp", destination: LISTENER, ports: "80" }];
  for (let index = 0; list.length < count; index++) {
    const destination = `100.${96 + (index >> 16)}.${(index >> 8) & 255}.${index & 255}`;
    const port = 1000 + (index % 5000);
    list.push({ protocol: "tcp", destination, ports: index % 3 === 0 ? `${port}-${port + 10}` : String(port) });
  }
  return list;
}

// Opens connections one after another until the time is up and prints how many completed.
const RATE_SCRIPT = `
const net = require("net");
const [host, port, seconds] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const deadline = Date.now() + seconds * 1000;
let done = 0;
const next = () => {
  if (Date.now() >= deadline) { process.stdout.write(String(done / seconds)); return; }
  const socket = net.connect({ host, port });
  socket.once("data", () => { done++; socket.resetAndDestroy(); next(); });
  socket.on("error", (error) => { process.stderr.write(String(error)); process.exit(1); });
};
next();
`;

async function connectionRate(netns: string): Promise<number> {
  const output = await inNetns(netns, [process.execPath, "-e", RATE_SCRIPT, LISTENER, "80", String(RATE_SECONDS)]);
  return Number(output);
}

async function main(): Promise<void> {
  const ruleCount = Number(process.argv[2] ?? 10_000);
  const runs = Number(process.argv[3] ?? 5);
  const root = mkdtempSync(path.join(os.tmpdir(), "cellfleet-bench-rules-"));
  await run("ip", ["netns", "add", CELL_NETNS]);
  const net = new SimulatedNetwork({ prefix: "b-rs", cellNetns: CELL_NETNS, bridge: "rsbr", index: INDEX });
  try {
    await net.createBridge();
    const container = await net.addContainer("bench-1", { securityGroups: ["bench"] });
    await net.addOutside([LISTENER]);
    await net.startServer(net.outsideNetns, "outside", { tcp: [80] });
    // Without cellfleet's masquerade the outside needs a route back to the containers.
    await inNetns(net.outsideNetns, ["ip", "route", "add", net.subnet, "via", net.cellOutsideAddress]);

    const nft = new ExecNftRunner({ command: ["ip", "netns", "exec", CELL_NETNS, "nft"] });
    const engine = new RulesEngine({
      root,
      nft,
      conntrack: new ExecConntrackRunner({ command: ["ip", "netns", "exec", CELL_NETNS, "conntrack"] }),
      lock: (action) => action(),
      bridgeNetfilter: async () => true,
      log: () => undefined,
    });
    mkdirSync(path.join(root, "containers"), { recursive: true });
    writeFileSync(path.join(root, "settings.json"), JSON.stringify({ bridge: "rsbr", subnet: net.subnet, gateway: net.gateway, defaultSecurityGroups: [] }));
    writeFileSync(path.join(root, "containers", "bench-1.json"), JSON.stringify(container.attachment));

    const rates: Record<string, number[]> = { "no cellfleet tables": [], "1 rule": [], [`${ruleCount} rules`]: [] };
    for (let index = 0; index < runs; index++) rates["no cellfleet tables"].push(await connectionRate(container.netns));

    // Small and large rulesets alternate, so that drift over the run (conntrack
    // entries, caches, other load) affects both alike.
    const small = rules(1);
    const big = rules(ruleCount);
    const renderMs: number[] = [];
    const applyMs: number[] = [];
    let elements = 0;
    for (let index = 0; index < runs; index++) {
      await engine.putSecurityGroup({ name: "bench", rules: small });
      rates["1 rule"].push(await connectionRate(container.netns));

      writeFileSync(path.join(root, "groups", "bench.json"), JSON.stringify(big));
      const state = await engine.loadState();
      if (!state) throw new Error("the benchmark's network state is missing");
      const started = process.hrtime.bigint();
      const transaction = renderRuleset(state);
      const rendered = process.hrtime.bigint();
      await nft.apply(transaction);
      const applied = process.hrtime.bigint();
      renderMs.push(Number(rendered - started) / 1e6);
      applyMs.push(Number(applied - rendered) / 1e6);
      elements = transaction.operations.filter((operation) => operation.object.kind === "element").length;
      rates[`${ruleCount} rules`].push(await connectionRate(container.netns));
    }

    console.log(`machine: ${os.cpus().length} cores, ${os.cpus()[0]?.model ?? "unknown CPU"}, Linux ${os.release()}`);
    console.log(`apply ${ruleCount} rules (${elements} set elements), median of ${runs}: render ${median(renderMs).toFixed(0)} ms, nft -f ${median(applyMs).toFixed(0)} ms, total ${median(renderMs.map((value, index) => value + applyMs[index])).toFixed(0)} ms`);
    for (const [name, values] of Object.entries(rates)) {
      console.log(`tcp connections per second through ${name}, median of ${runs} x ${RATE_SECONDS} s: ${median(values).toFixed(0)} (runs: ${values.map((value) => value.toFixed(0)).join(", ")})`);
    }
  } finally {
    await net.cleanup();
    await run("ip", ["netns", "delete", CELL_NETNS]).catch(() => undefined);
    rmSync(root, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
