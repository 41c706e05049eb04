// Container networking on a real local cell through the real agent: the
// bridge, addresses, veth pairs, masquerade towards an "outside world"
// namespace, IPv6 being off, drift, cleanup on delete and the repair of a
// create that was interrupted.
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import path from "node:path";

import type { ContainerAttachment } from "../../provider/src/common/network-state";
import type { ContainerObservation, CreateContainerParams } from "../../provider/src/common/protocol";
import { interfaceNames } from "../../provider/src/agent/network/veth";
import { ensureImageOnCell, imageDigest } from "../../provider/src/plugin/resources/container/image";
import { closeAllCellSessions, type CellSession } from "../../provider/src/transport/pool";
import { createCell, type Cell } from "../helpers/cell";
import { type BackgroundProcess, connect, createOutsideWorld, type OutsideWorld, runIn, startGreeter } from "../helpers/outside-world";
import { sessionFor, testImagePath } from "../helpers/session";

const SUBNET = "10.254.0.0/22";
const GATEWAY = "10.254.0.1";
const NETWORK = { subnet: SUBNET, defaultSecurityGroups: [] };
const OUTSIDE_INDEX = 201;
const GREETER_PORT = 7000;
const CLOSED_PORT = 7001;

// Prints the container's own view of its network, greets the outside world
// once, then stays up so the cell side can be inspected.
function probeScript(outside: string): string {
  return [
    'echo "interfaces: $(ls /sys/class/net | tr "\\n" " ")"',
    'echo "inet6: $(wc -l < /proc/net/if_inet6)"',
    'echo "address: $(ip -4 -o address show dev eth0 | awk "{ print \\$4 }")"',
    'echo "route: $(ip -4 route show default)"',
    'echo "mtu: $(cat /sys/class/net/eth0/mtu)"',
    `echo "egress: $(echo | nc -w 3 ${outside} ${GREETER_PORT} | head -n 1)"`,
    'echo "done: yes"',
    "exec sleep 600",
  ].join("\n");
}

function parseProbe(text: string): Map<string, string> {
  const values = new Map<string, string>();
  for (const line of text.split("\n")) {
    const separator = line.indexOf(": ");
    if (separator > 0) values.set(line.slice(0, separator), line.slice(separator + 2).trim());
  }
  return values;
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe("container networking on a local cell", function () {
  this.timeout(120_000);
  let cell: Cell;
  let session: CellSession;
  let digest: string;
  let outside: OutsideWorld;
  const servers: BackgroundProcess[] = [];
  const created = new Set<string>();

  function networkDir(...parts: string[]): string {
    return path.join(cell.stateDir, "lib", "network", ...parts);
  }

  /** Creates a container with the test's network settings, or with none when network is null. */
  async function create(id: string, spec: CreateContainerParams["spec"], network: CreateContainerParams["network"] | null = NETWORK): Promise<ContainerObservation> {
    created.add(id);
    return session.agent.call("container.create", { id, imageDigest: digest, spec, network: network ?? undefined });
  }

  async function remove(id: string): Promise<void> {
    await session.agent.call("container.delete", { id });
    created.delete(id);
  }

  async function cellLinks(): Promise<string[]> {
    const result = await cell.exec(["ip", "-o", "link", "show"]);
    return result.stdout
      .split("\n")
      .map((line) => line.split(": ")[1]?.split("@")[0])
      .filter((name): name is string => Boolean(name));
  }

  async function conntrackLines(address: string): Promise<string[]> {
    const result = await cell.exec(["conntrack", "-L", "-f", "ipv4"]);
    return result.stdout.split("\n").filter((line) => new RegExp(`=${address.replace(/\./g, "\\.")}\\s`).test(`${line} `));
  }

  before(async function () {
    cell = await createCell("t-net");
    session = await sessionFor(cell);
    digest = await imageDigest(testImagePath());
    await ensureImageOnCell(session, testImagePath(), digest);
    outside = await createOutsideWorld(cell, OUTSIDE_INDEX);
    servers.push(await startGreeter({ netns: outside.netns }, "outside", GREETER_PORT));
    servers.push(await startGreeter({ netns: outside.netns }, "closed", CLOSED_PORT));
    // Egress is rejected unless a group allows it; this one allows only the greeter.
    await session.agent.call("securityGroup.put", { name: "to-greeter", rules: [{ protocol: "tcp", destination: outside.address, ports: String(GREETER_PORT) }] });
  });

  after(async function () {
    for (const server of servers) server.stop();
    for (const id of created) await session?.agent.call("container.delete", { id }).catch(() => undefined);
    await outside?.remove();
    await closeAllCellSessions();
    await cell?.remove();
  });

  describe("settings", function () {
    it("rejects a subnet overlapping a cell route", async function () {
      await assert.rejects(create("net-overlap", { command: ["/bin/sleep", "600"] }, { subnet: "198.18.0.0/16", defaultSecurityGroups: [] }), (error: Error) => {
        assert.match(error.message, /containerSubnet 198\.18\.0\.0\/16 overlaps the cell's route "198\.18\.\d+\.0\/30 dev cfc-t-net/);
        assert.match(error.message, /net-overlap/);
        return true;
      });
      created.delete("net-overlap");
      assert.equal(existsSync(networkDir("settings.json")), false, "a rejected subnet must not be stored");
    });

    it("rejects a spec that needs a network without one", async function () {
      await assert.rejects(create("net-none", { command: ["/bin/sleep", "600"], ports: [{ containerPort: 80 }] }, null), /sets ports, but the cell has no container network/);
      created.delete("net-none");
    });
  });

  describe("attached container", function () {
    let container: ContainerObservation;
    let probe: Map<string, string>;
    let attachment: ContainerAttachment;
    const id = "net-1";

    before(async function () {
      container = await create(id, { command: ["/bin/sh", "-c", probeScript(outside.address)], securityGroups: ["to-greeter"], labels: { app: "probe" } });
      const log = `/var/lib/cellfleet/containers/${id}/stdout.log`;
      const text = await waitFor("the probe output", async () => {
        const result = await cell.exec(["cat", log]);
        return result.stdout.includes("done: yes") ? result.stdout : undefined;
      });
      probe = parseProbe(text);
      attachment = JSON.parse(readFileSync(networkDir("containers", `${id}.json`), "utf8")) as ContainerAttachment;
    });

    it("stores the cell settings", function () {
      const settings = JSON.parse(readFileSync(networkDir("settings.json"), "utf8"));
      assert.deepEqual(settings, { bridge: "cfbr0", subnet: SUBNET, gateway: GATEWAY, defaultSecurityGroups: [] });
    });

    it("gets the first free address", function () {
      assert.equal(container.address, "10.254.0.2");
      assert.equal(probe.get("address"), "10.254.0.2/22");
    });

    it("routes via the gateway", function () {
      assert.match(probe.get("route") ?? "", new RegExp(`^default via ${GATEWAY.replace(/\./g, "\\.")} dev eth0`));
    });

    it("has only lo and eth0", function () {
      assert.equal(probe.get("interfaces"), "eth0 lo");
    });

    it("has no IPv6 address", function () {
      assert.equal(probe.get("inet6"), "0");
    });

    it("has IPv6 disabled in its namespace", async function () {
      for (const scope of ["all", "default", "eth0"]) {
        const value = await runIn({ pid: container.pid }, ["cat", `/proc/sys/net/ipv6/conf/${scope}/disable_ipv6`]);
        assert.equal(value.trim(), "1", `net.ipv6.conf.${scope}.disable_ipv6`);
      }
    });

    it("matches the bridge MTU", async function () {
      const bridgeMtu = (await cell.exec(["cat", "/sys/class/net/cfbr0/mtu"])).stdout.trim();
      assert.equal(probe.get("mtu"), bridgeMtu);
    });

    it("has its veth on the bridge", async function () {
      const master = await cell.exec(["readlink", `/sys/class/net/${attachment.hostInterface}/master`]);
      assert.match(master.stdout.trim(), /\/cfbr0$/);
      assert.equal(attachment.hostInterface, interfaceNames(id).host);
    });

    it("records the attachment for the rules engine", function () {
      assert.deepEqual(
        { id: attachment.id, address: attachment.address, securityGroups: attachment.securityGroups, ports: attachment.ports, labels: attachment.labels },
        { id, address: "10.254.0.2", securityGroups: ["to-greeter"], ports: [], labels: { app: "probe" } },
      );
    });

    it("reaches the outside through masquerade", function () {
      assert.equal(probe.get("egress"), `hello outside from ${outside.cellAddress}`);
    });

    it("is rejected where no group allows", async function () {
      const result = await connect({ pid: container.pid }, outside.address, CLOSED_PORT);
      assert.doesNotMatch(result, /^hello/);
    });
  });

  describe("settings change", function () {
    it("rejects another subnet while containers exist", async function () {
      await assert.rejects(create("net-other", { command: ["/bin/sleep", "600"] }, { subnet: "10.253.0.0/24", defaultSecurityGroups: [] }), (error: Error) => {
        assert.match(error.message, /containerSubnet 10\.253\.0\.0\/24 differs from 10\.254\.0\.0\/22, which 1 container\(s\) on this cell use \(net-1\)/);
        return true;
      });
      created.delete("net-other");
    });
  });

  describe("drift", function () {
    const id = "net-drift";
    let container: ContainerObservation;

    before(async function () {
      container = await create(id, { command: ["/bin/sleep", "600"] });
    });

    it("reports the address while intact", async function () {
      const observed = await session.agent.call("container.inspect", { id });
      assert.equal(observed?.address, container.address);
    });

    it("drops the address when eth0 loses it", async function () {
      await runIn({ pid: container.pid }, ["ip", "address", "flush", "dev", "eth0"]);
      const observed = await session.agent.call("container.inspect", { id });
      assert.equal(observed?.status, "running");
      assert.equal(observed?.address, undefined);
    });

    it("drops the address when the veth is gone", async function () {
      await cell.exec(["ip", "link", "delete", interfaceNames(id).host]);
      const observed = await session.agent.call("container.inspect", { id });
      assert.equal(observed?.address, undefined);
    });
  });

  describe("interrupted create", function () {
    const crashed = "net-crash";
    let crashedAddress: string;

    before(async function () {
      const observed = await create(crashed, { command: ["/bin/sleep", "600"], ports: [{ containerPort: 80, cellPort: 40000 }], bandwidth: { rate: "10Mbit", burst: "64KiB" } });
      crashedAddress = observed.address!;
      // What an agent that died between attaching and writing the container's
      // state leaves: the workload ends when its start pipe closes, and no
      // state file exists.
      await cell.exec(["kill", "-KILL", String(observed.pid)]);
      await waitFor("the workload to exit", async () => ((await cell.exec(["test", "-e", `/proc/${observed.pid}`])).code !== 0 ? true : undefined));
      await cell.exec(["rm", `/var/lib/cellfleet/containers/${crashed}/state.json`]);
    });

    it("leaves an attachment and an ifb device", async function () {
      assert.ok(existsSync(networkDir("containers", `${crashed}.json`)));
      assert.ok((await cellLinks()).includes(interfaceNames(crashed).ifb));
    });

    it("releases them at the next create", async function () {
      const next = await create("net-after", { command: ["/bin/sleep", "600"], ports: [{ containerPort: 80, cellPort: 40000 }] });
      assert.equal(next.ports?.[0].cellPort, 40000, "the crashed create's cell port is free again");
      assert.equal(next.address, crashedAddress, "the crashed create's address is free again");
      assert.equal(existsSync(networkDir("containers", `${crashed}.json`)), false);
      assert.equal((await cellLinks()).includes(interfaceNames(crashed).ifb), false);
    });

    it("deletes the rest of the crashed container", async function () {
      assert.deepEqual(await session.agent.call("container.delete", { id: crashed }), { existed: true });
      created.delete(crashed);
    });
  });

  describe("concurrent creates", function () {
    it("get distinct addresses and ports", async function () {
      const ids = ["net-par-1", "net-par-2", "net-par-3"];
      const observed = await Promise.all(ids.map((id) => create(id, { command: ["/bin/sleep", "600"], ports: [{ containerPort: 80 }] })));
      const addresses = observed.map((container) => container.address);
      const cellPorts = observed.map((container) => container.ports?.[0].cellPort);
      assert.equal(new Set(addresses).size, ids.length, `addresses ${addresses.join(", ")}`);
      assert.equal(new Set(cellPorts).size, ids.length, `cell ports ${cellPorts.join(", ")}`);
      for (const container of observed) assert.match(container.address ?? "", /^10\.254\.0\.\d+$/);
    });
  });

  describe("delete", function () {
    const id = "net-del";
    let address: string;

    before(async function () {
      const observed = await create(id, { command: ["/bin/sleep", "600"], securityGroups: ["to-greeter"], bandwidth: { rate: "10Mbit", burst: "64KiB" } });
      address = observed.address!;
      assert.match(await connect({ pid: observed.pid }, outside.address, GREETER_PORT), /^hello outside/);
      assert.ok((await conntrackLines(address)).length > 0, "the connection left a conntrack entry");
      for (const other of [...created]) await remove(other);
    });

    it("leaves no container links", async function () {
      const leftovers = (await cellLinks()).filter((name) => /^cf[vei][0-9a-f]{10}$/.test(name));
      assert.deepEqual(leftovers, []);
    });

    it("removes the bridge after the last container", async function () {
      assert.equal((await cellLinks()).includes("cfbr0"), false);
    });

    it("leaves no qdisc on cell links", async function () {
      const qdiscs = await cell.exec(["tc", "qdisc", "show"]);
      assert.doesNotMatch(qdiscs.stdout, /tbf|ingress/);
    });

    it("releases every address", function () {
      assert.deepEqual(readdirSync(networkDir("containers")), []);
    });

    it("leaves no conntrack entries", async function () {
      assert.deepEqual(await conntrackLines(address), []);
    });
  });
});
