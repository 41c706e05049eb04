import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";

import { FakeConntrackRunner } from "../../provider/src/agent/network/conntrack";
import { FakeNftRunner, NftError } from "../../provider/src/agent/network/nft";
import { INET_TABLE } from "../../provider/src/agent/network/ruleset";
import { RulesEngine } from "../../provider/src/agent/network/rules-engine";
import { AgentFailure } from "../../provider/src/agent/errors";

const address = (text: string) => text.split(".").reduce((sum, octet) => sum * 256 + Number(octet), 0);

describe("rules engine", function () {
  let root: string;
  let nft: FakeNftRunner;
  let conntrack: FakeConntrackRunner;
  let engine: RulesEngine;
  const logs: string[] = [];

  function write(relative: string, value: unknown): void {
    const file = path.join(root, relative);
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, JSON.stringify(value));
  }

  beforeEach(function () {
    root = mkdtempSync(path.join(os.tmpdir(), "cellfleet-rules-"));
    nft = new FakeNftRunner();
    conntrack = new FakeConntrackRunner();
    engine = new RulesEngine({ root, nft, conntrack, lock: (action) => action(), bridgeNetfilter: async () => true, log: (message) => logs.push(message) });
    write("settings.json", { bridge: "cfbr0", subnet: "10.254.0.0/24", gateway: "10.254.0.1", defaultSecurityGroups: [] });
    write("containers/web-1.json", { id: "web-1", address: "10.254.0.2", hostInterface: "cfv-web1", securityGroups: ["web"], ports: [], labels: {} });
  });

  afterEach(function () {
    rmSync(root, { recursive: true, force: true });
  });

  it("applies nothing before settings exist", async function () {
    rmSync(path.join(root, "settings.json"));
    const observed = await engine.putSecurityGroup({ name: "web", rules: [{ protocol: "tcp", destination: "192.0.2.1", ports: "80" }] });
    assert.equal(nft.applied.length, 0);
    assert.equal(observed.enforced, true);
    assert.ok(existsSync(path.join(root, "groups", "web.json")));
  });

  it("stores a group and applies it", async function () {
    const observed = await engine.putSecurityGroup({ name: "web", rules: [{ protocol: "tcp", destination: "192.0.2.1", ports: "80, 443" }] });
    assert.deepEqual(observed, { name: "web", rules: [{ protocol: "tcp", destination: "192.0.2.1", ports: "80, 443" }], enforced: true });
    assert.equal(nft.applied.length, 1);
    assert.match(nft.applied[0].render(), /add element inet cellfleet egress_tcp \{ 10.254.0.2 . 192.0.2.1 . 80, 10.254.0.2 . 192.0.2.1 . 443 \}/);
  });

  it("rejects invalid rules before touching anything", async function () {
    await assert.rejects(
      engine.putSecurityGroup({ name: "web", rules: [{ protocol: "tcp", destination: "192.0.2.1", ports: "443-80" }] }),
      (error: AgentFailure) => error.code === "INVALID_REQUEST" && /security group web: rules\[0\]\.ports "443-80" is a reversed range/.test(error.message),
    );
    assert.equal(nft.applied.length, 0);
    assert.equal(existsSync(path.join(root, "groups", "web.json")), false);
  });

  it("rejects a group name that is not a file name", async function () {
    await assert.rejects(engine.putSecurityGroup({ name: "../x", rules: [] }), /security group name "..\/x" is invalid/);
  });

  it("puts the old group back when nft fails", async function () {
    await engine.putSecurityGroup({ name: "web", rules: [{ protocol: "tcp", destination: "192.0.2.1", ports: "80" }] });
    nft.failNextApply(new NftError("UNSUPPORTED", "nft -f (apply the ruleset) failed: Operation not supported"));
    await assert.rejects(
      engine.putSecurityGroup({ name: "web", rules: [{ protocol: "tcp", destination: "192.0.2.1", ports: "22" }] }),
      (error: AgentFailure) => error.code === "UNSUPPORTED_CELL" && error.step === "apply ruleset",
    );
    assert.deepEqual(JSON.parse(readFileSync(path.join(root, "groups", "web.json"), "utf8")), [{ protocol: "tcp", destination: "192.0.2.1", ports: "80" }]);
  });

  it("revokes connections that lost their rule", async function () {
    await engine.putSecurityGroup({ name: "web", rules: [{ protocol: "tcp", destination: "192.0.2.1", ports: "80, 443" }] });
    const base = { protocolName: "tcp", protocol: 6, source: address("10.254.0.2"), destination: address("192.0.2.1"), sourcePort: 40000 };
    conntrack.entries = [
      { ...base, destinationPort: 80 },
      { ...base, destinationPort: 443 },
    ];
    await engine.putSecurityGroup({ name: "web", rules: [{ protocol: "tcp", destination: "192.0.2.1", ports: "443" }] });
    assert.deepEqual(conntrack.entries.map((entry) => entry.destinationPort), [443]);
    assert.match(logs.join("\n"), /revoked 1 connection/);
  });

  it("reports a deleted element as drift", async function () {
    await engine.putSecurityGroup({ name: "web", rules: [{ protocol: "tcp", destination: "192.0.2.1", ports: "80, 443" }] });
    assert.equal(nft.deleteElement(INET_TABLE, "egress_tcp", (element) => element.key[2] === 443), 1);
    const observed = await engine.inspectSecurityGroup({ name: "web" });
    assert.equal(observed?.enforced, false);
    assert.match(observed?.drift ?? "", /rules\[0\] \(tcp to "192.0.2.1" ports "80, 443"\) is not enforced for container web-1/);
  });

  it("reports a deleted rule as drift", async function () {
    await engine.putSecurityGroup({ name: "web", rules: [] });
    assert.equal(nft.deleteRules(INET_TABLE, "from_containers", (rule) => rule.comment === "IPv6, which containers do not have"), 1);
    const observed = await engine.inspectSecurityGroup({ name: "web" });
    assert.match(observed?.drift ?? "", /chain from_containers lacks the rule "IPv6, which containers do not have"/);
  });

  it("returns null for a group that does not exist", async function () {
    assert.equal(await engine.inspectSecurityGroup({ name: "nope" }), null);
    assert.deepEqual(await engine.deleteSecurityGroup({ name: "nope" }), { existed: false });
  });

  it("stores and deletes a policy", async function () {
    write("containers/db-1.json", { id: "db-1", address: "10.254.0.3", hostInterface: "cfv-db1", securityGroups: [], ports: [], labels: { app: "db" } });
    const policy = { id: "p1", source: { container: "web-1" }, destination: { label: { key: "app", value: "db" } }, protocol: "tcp" as const, ports: { from: 5432, to: 5432 } };
    assert.deepEqual(await engine.putPolicy(policy), { ...policy, enforced: true });
    assert.match(nft.applied[nft.applied.length - 1].render(), /policy_allow \{ 10.254.0.2 . 10.254.0.3 . 6 . 5432 \}/);
    assert.deepEqual(await engine.deletePolicy({ id: "p1" }), { existed: true });
    assert.doesNotMatch(nft.applied[nft.applied.length - 1].render(), /add element inet cellfleet policy_allow/);
  });

  it("rejects a policy with both selectors", async function () {
    const policy = { id: "p1", source: { container: "web-1", label: { key: "a", value: "b" } }, destination: { container: "db-1" }, protocol: "tcp" as const, ports: { from: 1, to: 2 } };
    await assert.rejects(engine.putPolicy(policy as never), /policy p1: source must be \{ container: ID \} or \{ label: \{ key, value \} \}/);
  });
});
