// Network policies and published ports on a real local cell through the real
// agent: simulated containers on one bridge may only reach each other where a
// policy allows it, and published ports work from outside, from the cell
// itself and from containers (hairpin).
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";

import type { CellNetworkSettings, NetworkPolicyState, SecurityGroupRule } from "../../provider/src/common/network-state";
import { closeAllCellSessions, type CellSession } from "../../provider/src/transport/pool";
import { createCell, type Cell } from "../helpers/cell";
import { inNetns, probe, probeOne, SimulatedNetwork, type SimulatedContainer } from "../helpers/netsim";
import { sessionFor } from "../helpers/session";

const INDEX = 41;
const OUT = (host: number) => `100.64.${INDEX}.${host}`;
const SERVICE_PORTS = [80, 5432, 5433, 5434];
const CELL_PORT = 18080;

describe("network policies on a local cell", function () {
  this.timeout(120_000);
  let cell: Cell;
  let session: CellSession;
  let net: SimulatedNetwork;
  let web: SimulatedContainer;
  let db1: SimulatedContainer;
  let db2: SimulatedContainer;
  let networkDir: string;

  const policy: NetworkPolicyState = {
    id: "web-to-db",
    source: { container: "web" },
    destination: { label: { key: "app", value: "db" } },
    protocol: "tcp",
    ports: { from: 5432, to: 5433 },
  };

  function writeState(relative: string, value: unknown): void {
    const file = path.join(networkDir, relative);
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, JSON.stringify(value));
  }

  function attach(container: SimulatedContainer): void {
    writeState(`containers/${container.id}.json`, container.attachment);
  }

  function putGroup(name: string, rules: SecurityGroupRule[]) {
    return session.agent.call("securityGroup.put", { name, rules });
  }

  async function tcp(from: SimulatedContainer, host: string, port: number): Promise<string> {
    return (await probeOne(from.netns, { kind: "tcp", host, port })).result;
  }

  before(async function () {
    cell = await createCell("t-pol");
    session = await sessionFor(cell);
    networkDir = path.join(cell.stateDir, "lib", "network");
    net = new SimulatedNetwork({ prefix: "t-pol", cellNetns: cell.netns, bridge: "polbr", index: INDEX });
    await net.createBridge();
    web = await net.addContainer("web", { securityGroups: ["web-egress"], labels: { app: "web" } });
    db1 = await net.addContainer("db-1", { labels: { app: "db" } });
    db2 = await net.addContainer("db-2", { securityGroups: ["db-egress"], labels: { app: "db" } });
    db1.attachment.ports = [{ protocol: "tcp", containerPort: 80, cellPort: CELL_PORT }];
    await net.addOutside([OUT(2)]);
    for (const container of [web, db1, db2]) {
      await net.startServer(container.netns, container.id, { tcp: SERVICE_PORTS, udp: [5432] });
      attach(container);
    }
    const settings: CellNetworkSettings = { bridge: "polbr", subnet: net.subnet, gateway: net.gateway, defaultSecurityGroups: [] };
    writeState("settings.json", settings);
    await putGroup("web-egress", [{ protocol: "all", destination: "0.0.0.0/0" }]);
  });

  after(async function () {
    await closeAllCellSessions();
    await net?.cleanup();
    await cell?.remove();
  });

  describe("between containers", function () {
    afterEach(async function () {
      await session.agent.call("policy.delete", { id: policy.id });
      await session.agent.call("policy.delete", { id: "web-to-db-udp" });
    });

    it("blocks containers without a policy", async function () {
      // web may send anywhere outside, yet other containers stay closed to it.
      assert.equal(await tcp(web, db1.attachment.address, 5432), "refused");
      assert.equal(await tcp(db1, web.attachment.address, 80), "refused");
    });

    it("allows the policy's port range", async function () {
      await session.agent.call("policy.put", policy);
      const results = await probe(web.netns, [
        { kind: "tcp", host: db1.attachment.address, port: 5432 },
        { kind: "tcp", host: db2.attachment.address, port: 5433 },
        { kind: "tcp", host: db1.attachment.address, port: 5434 },
        { kind: "tcp", host: db1.attachment.address, port: 80 },
      ]);
      assert.deepEqual(results.map((entry) => entry.result), ["open", "open", "refused", "refused"]);
      // The greeting travels back on the connection, so replies pass, unmasqueraded.
      assert.equal(results[0].greeting, `hello db-1 from ${web.attachment.address}`);
    });

    it("is directional", async function () {
      await session.agent.call("policy.put", policy);
      assert.equal(await tcp(db1, web.attachment.address, 5432), "refused");
      assert.equal(await tcp(db1, db2.attachment.address, 5432), "refused");
    });

    it("keeps tcp and udp apart", async function () {
      await session.agent.call("policy.put", policy);
      assert.notEqual((await probeOne(web.netns, { kind: "udp", host: db1.attachment.address, port: 5432 })).result, "reply");
      await session.agent.call("policy.put", { ...policy, id: "web-to-db-udp", protocol: "udp", destination: { container: "db-1" }, ports: { from: 5432, to: 5432 } });
      assert.equal((await probeOne(web.netns, { kind: "udp", host: db1.attachment.address, port: 5432 })).result, "reply");
      assert.notEqual((await probeOne(web.netns, { kind: "udp", host: db2.attachment.address, port: 5432 })).result, "reply");
    });

    it("cuts open connections when the policy goes", async function () {
      await session.agent.call("policy.put", policy);
      const client = await net.startClient(web.netns, db1.attachment.address, 5432);
      await client.waitFor(/data tick/);
      assert.deepEqual(await session.agent.call("policy.delete", { id: policy.id }), { existed: true });
      assert.match(await client.waitFor(/closed \S+/, 5000), /closed (ECONNRESET|close|EPIPE)/);
      assert.equal(await tcp(web, db1.attachment.address, 5432), "refused");
    });

    it("reports drift of a policy", async function () {
      const stored = await session.agent.call("policy.put", policy);
      assert.deepEqual(stored, { ...policy, enforced: true });
      const removed = await cell.exec(["nft", "delete", "element", "inet", "cellfleet", "policy_allow", `{ ${web.attachment.address} . ${db2.attachment.address} . tcp . 5432-5433 }`]);
      assert.equal(removed.code, 0, removed.stderr);
      const observed = await session.agent.call("policy.inspect", { id: policy.id });
      assert.equal(observed?.enforced, false);
      assert.match(observed?.drift ?? "", /tcp 5432-5433 from container web \(198\.19\.41\.2\) to container db-2 \(198\.19\.41\.4\) is not enforced/);
      assert.equal(await session.agent.call("policy.inspect", { id: "missing" }), null);
    });

    it("rejects a reversed port range", async function () {
      await assert.rejects(session.agent.call("policy.put", { ...policy, ports: { from: 5433, to: 5432 } }), /policy web-to-db: ports .* must be \{ from, to \} with 1 <= from <= to <= 65535/);
    });

    it("fails closed without bridge netfilter", async function () {
      await session.agent.call("policy.put", policy);
      assert.equal(await tcp(web, db1.attachment.address, 5432), "open");
      await inNetns(cell.netns, ["ip", "link", "set", "polbr", "type", "bridge", "nf_call_iptables", "0"]);
      await inNetns(cell.netns, ["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"]);
      try {
        // Bridged frames now skip the inet hooks; the bridge table must stop them instead.
        await session.agent.call("policy.put", policy);
        assert.notEqual(await tcp(web, db1.attachment.address, 5432), "open");
        assert.notEqual(await tcp(db1, web.attachment.address, 80), "open");
      } finally {
        await inNetns(cell.netns, ["ip", "link", "set", "polbr", "type", "bridge", "nf_call_iptables", "1"]);
        await session.agent.call("policy.put", policy);
      }
      assert.equal(await tcp(web, db1.attachment.address, 5432), "open");
    });
  });

  describe("published ports", function () {
    it("reaches the container from outside", async function () {
      const reply = await probeOne(net.outsideNetns, { kind: "tcp", host: net.cellOutsideAddress, port: CELL_PORT });
      assert.equal(reply.result, "open");
      assert.equal(reply.greeting, `hello db-1 from ${OUT(2)}`);
    });

    it("keeps other container ports closed from outside", async function () {
      await inNetns(net.outsideNetns, ["ip", "route", "replace", net.subnet, "via", net.cellOutsideAddress]);
      assert.notEqual((await probeOne(net.outsideNetns, { kind: "tcp", host: db1.attachment.address, port: 80 })).result, "open");
      assert.equal((await probeOne(net.outsideNetns, { kind: "tcp", host: net.cellOutsideAddress, port: CELL_PORT + 1 })).result, "refused");
    });

    it("reaches the container from the cell itself", async function () {
      for (const host of ["127.0.0.1", net.cellOutsideAddress, net.gateway]) {
        const reply = await probeOne(cell.netns, { kind: "tcp", host, port: CELL_PORT });
        assert.equal(reply.result, "open", `from the cell to ${host}:${CELL_PORT}`);
      }
    });

    it("hairpins from another container", async function () {
      for (const host of [net.cellOutsideAddress, net.gateway]) {
        const reply = await probeOne(web.netns, { kind: "tcp", host, port: CELL_PORT });
        assert.equal(reply.result, "open", `from web to ${host}:${CELL_PORT}`);
        // Masquerade makes db-1 send its replies through the cell, which undoes the DNAT.
        assert.equal(reply.greeting, `hello db-1 from ${net.gateway}`);
      }
    });

    it("hairpins to the container's own port", async function () {
      await putGroup("db-egress", [{ protocol: "tcp", destination: net.gateway, ports: String(CELL_PORT) }]);
      assert.equal(await tcp(db2, net.gateway, CELL_PORT), "open");
      db1.attachment.securityGroups = ["db-egress"];
      attach(db1);
      await putGroup("db-egress", [{ protocol: "tcp", destination: net.gateway, ports: String(CELL_PORT) }]);
      assert.equal(await tcp(db1, net.gateway, CELL_PORT), "open");
    });

    it("needs egress permission for the cell port", async function () {
      await putGroup("db-egress", []);
      assert.equal(await tcp(db2, net.gateway, CELL_PORT), "refused");
    });
  });
});
