// The renderer's output against the real nft and kernel, in a network
// namespace of this test's own: it applies, lists back without drift,
// replaces itself atomically, and a failing transaction changes nothing.
import assert from "node:assert/strict";

import { readLiveRuleset, securityGroupDrift, structuralDrift } from "../../provider/src/agent/network/drift";
import { ExecNftRunner, NftError, Transaction } from "../../provider/src/agent/network/nft";
import { BRIDGE_TABLE, computeAllowLists, INET_TABLE, renderRuleset } from "../../provider/src/agent/network/ruleset";
import type { NetworkState } from "../../provider/src/common/network-state";
import { sh } from "../helpers/netsim";

const NETNS = "t-nft";

function state(): NetworkState {
  return {
    settings: { bridge: "nftbr", subnet: "198.19.51.0/24", gateway: "198.19.51.1", defaultSecurityGroups: ["dns"] },
    containers: [
      { id: "web-1", address: "198.19.51.2", hostInterface: "nfth2", securityGroups: ["web"], ports: [{ protocol: "tcp", containerPort: 80, cellPort: 18080 }], labels: { app: "web" } },
      { id: "db-1", address: "198.19.51.3", hostInterface: "nfth3", securityGroups: [], ports: [], labels: { app: "db" } },
    ],
    securityGroups: {
      dns: [{ protocol: "udp", destination: "0.0.0.0/0", ports: "53" }],
      web: [
        { protocol: "tcp", destination: "100.64.51.0/24, 100.64.52.10-100.64.52.20", ports: "80, 443, 8000-8080", log: true },
        { protocol: "tcp", destination: "100.64.51.0/25", ports: "80-90" },
        { protocol: "icmp", destination: "100.64.51.0/24", type: -1, code: -1 },
        { protocol: "all", destination: "100.64.53.7" },
      ],
    },
    policies: [{ id: "p", source: { container: "web-1" }, destination: { label: { key: "app", value: "db" } }, protocol: "tcp", ports: { from: 5432, to: 5432 } }],
  };
}

describe("nft ruleset in a namespace", function () {
  this.timeout(60_000);
  const nft = new ExecNftRunner({ command: ["ip", "netns", "exec", NETNS, "nft"] });

  before(async function () {
    await sh(["ip", "netns", "add", NETNS]);
  });

  after(async function () {
    await sh(["ip", "netns", "delete", NETNS]).catch(() => undefined);
  });

  async function live() {
    return readLiveRuleset(await nft.list([INET_TABLE, BRIDGE_TABLE]));
  }

  it("applies and lists back without drift", async function () {
    const desired = renderRuleset(state());
    await nft.apply(desired);
    const current = await live();
    assert.deepEqual(structuralDrift(desired, current), []);
    const lists = computeAllowLists(state());
    assert.deepEqual(securityGroupDrift("web", state().securityGroups.web, lists, ["dns"], current), []);
    assert.deepEqual(securityGroupDrift("dns", state().securityGroups.dns, lists, ["dns"], current), []);
  });

  it("replaces the previous tables whole", async function () {
    const changed = state();
    changed.securityGroups.web = [{ protocol: "tcp", destination: "100.64.51.9", ports: "22" }];
    changed.containers.pop();
    changed.policies = [];
    const desired = renderRuleset(changed);
    await nft.apply(desired);
    const listing = await sh(["ip", "netns", "exec", NETNS, "nft", "list", "set", "inet", "cellfleet", "egress_tcp_log"]);
    assert.doesNotMatch(listing, /elements/);
    assert.deepEqual(structuralDrift(desired, await live()), []);
  });

  it("names a deleted element as drift", async function () {
    await nft.apply(renderRuleset(state()));
    await sh(["ip", "netns", "exec", NETNS, "nft", "delete", "element", "inet", "cellfleet", "egress_tcp_log", "{ 198.19.51.2 . 100.64.52.10-100.64.52.20 . 443 }"]);
    const reasons = securityGroupDrift("web", state().securityGroups.web, computeAllowLists(state()), ["dns"], await live());
    assert.equal(reasons.length, 1);
    assert.match(reasons[0], /^rules\[0\] \(tcp to "100.64.51.0\/24, 100.64.52.10-100.64.52.20" ports "80, 443, 8000-8080"\) is not enforced for container web-1/);
  });

  it("names an element added by hand as drift", async function () {
    await nft.apply(renderRuleset(state()));
    await sh(["ip", "netns", "exec", NETNS, "nft", "add", "element", "inet", "cellfleet", "egress_tcp", "{ 198.19.51.2 . 100.64.60.1 . 22 }"]);
    const reasons = securityGroupDrift("web", state().securityGroups.web, computeAllowLists(state()), ["dns"], await live());
    assert.match(reasons.join("\n"), /set egress_tcp allows container web-1 more than its groups do/);
  });

  it("changes nothing when a transaction fails", async function () {
    const desired = renderRuleset(state());
    await nft.apply(desired);
    const failing = renderRuleset(state());
    // Two overlapping elements make the kernel refuse the whole transaction.
    failing.add({ kind: "element", table: INET_TABLE, set: "egress_all", key: ["198.19.51.3", { prefix: { addr: "100.64.0.0", len: 16 } }] });
    failing.add({ kind: "element", table: INET_TABLE, set: "egress_all", key: ["198.19.51.3", "100.64.1.1"] });
    await assert.rejects(nft.apply(failing), (error: NftError) => error.code === "EXISTS");
    assert.deepEqual(structuralDrift(desired, await live()), []);
  });

  it("reports a syntax error with its class", async function () {
    const broken = new Transaction().add({ kind: "table", family: "inet", name: "t_nft_broken" }).add({ kind: "chain", table: { family: "inet", name: "t_nft_broken" }, name: "entry" });
    broken.add({ kind: "rule", table: { family: "inet", name: "t_nft_broken" }, chain: "entry", rule: "ip saddr frobnicate accept" });
    await assert.rejects(nft.apply(broken), (error: NftError) => error.code === "SYNTAX" || error.code === "FAILED");
    const tables = await sh(["ip", "netns", "exec", NETNS, "nft", "list", "tables"]);
    assert.doesNotMatch(tables, /t_nft_broken/);
  });
});
