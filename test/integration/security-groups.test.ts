// Security groups enforced on a real local cell through the real agent.
// Simulated containers (network namespaces on the cell's bridge) connect to
// an outside world (another namespace with listeners). Every rule form must
// allow exactly what it describes and reject the rest.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";

import type { CellNetworkSettings, SecurityGroupRule } from "../../provider/src/common/network-state";
import { closeAllCellSessions, type CellSession } from "../../provider/src/transport/pool";
import { createCell, findRepoRoot, type Cell } from "../helpers/cell";
import { inNetns, type NetnsProcess, ping, probe, probeOne, sh, SimulatedNetwork, type SimulatedContainer } from "../helpers/netsim";
import { sessionFor } from "../helpers/session";

const INDEX = 31;
const OUT = (host: number) => `100.64.${INDEX}.${host}`;
const FAR = (host: number) => `100.64.${INDEX + 1}.${host}`;
const TCP_PORTS = [53, 79, 80, 81, 443, 444, 7999, 8000, 8001, 8002, 8003];
const UDP_PORTS = [53, 54];
const OUTSIDE_ADDRESSES = [OUT(2), OUT(3), OUT(5), OUT(9), OUT(10), OUT(12), OUT(13), FAR(2), FAR(3), FAR(4)];

describe("security groups on a local cell", function () {
  this.timeout(120_000);
  let cell: Cell;
  let session: CellSession;
  let net: SimulatedNetwork;
  let c1: SimulatedContainer;
  let networkDir: string;

  function writeState(relative: string, value: unknown): void {
    const file = path.join(networkDir, relative);
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, JSON.stringify(value));
  }

  function writeSettings(defaultSecurityGroups: string[] = []): void {
    const settings: CellNetworkSettings = { bridge: net.options.bridge, subnet: net.subnet, gateway: net.gateway, defaultSecurityGroups };
    writeState("settings.json", settings);
  }

  function attach(container: SimulatedContainer): void {
    writeState(`containers/${container.id}.json`, container.attachment);
  }

  function putGroup(name: string, rules: SecurityGroupRule[]) {
    return session.agent.call("securityGroup.put", { name, rules });
  }

  async function tcp(host: string, port: number, from: SimulatedContainer = c1): Promise<string> {
    return (await probeOne(from.netns, { kind: "tcp", host, port })).result;
  }

  async function results(probes: [string, number][], kind: "tcp" | "udp" = "tcp"): Promise<string[]> {
    return (await probe(c1.netns, probes.map(([host, port]) => ({ kind, host, port })))).map((entry) => entry.result);
  }

  before(async function () {
    cell = await createCell("t-sg");
    session = await sessionFor(cell);
    networkDir = path.join(cell.stateDir, "lib", "network");
    net = new SimulatedNetwork({ prefix: "t-sg", cellNetns: cell.netns, bridge: "sgbr", index: INDEX });
    await net.createBridge();
    c1 = await net.addContainer("web-1", { securityGroups: ["sg-a", "sg-b"] });
    await net.addOutside(OUTSIDE_ADDRESSES);
    await net.startServer(net.outsideNetns, "outside", { tcp: TCP_PORTS, udp: UDP_PORTS, udpAddresses: OUTSIDE_ADDRESSES });
    writeSettings();
    attach(c1);
  });

  after(async function () {
    await closeAllCellSessions();
    await net?.cleanup();
    await cell?.remove();
  });

  afterEach(async function () {
    await session.agent.call("securityGroup.delete", { name: "sg-b" });
  });

  it("rejects everything without a group", async function () {
    await putGroup("sg-a", []);
    assert.deepEqual(await results([[OUT(2), 80], [OUT(3), 443]]), ["refused", "refused"]);
    assert.equal(await ping(c1.netns, OUT(2)), false);
  });

  it("masquerades allowed traffic to the cell address", async function () {
    await putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "80" }]);
    const reply = await probeOne(c1.netns, { kind: "tcp", host: OUT(2), port: 80 });
    assert.equal(reply.result, "open");
    assert.equal(reply.greeting, `hello outside from ${net.cellOutsideAddress}`);
  });

  it("enforces one address and one port", async function () {
    await putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "80" }]);
    assert.deepEqual(await results([[OUT(2), 80], [OUT(2), 81], [OUT(2), 79], [OUT(3), 80]]), ["open", "refused", "refused", "refused"]);
  });

  it("enforces a CIDR and a port range", async function () {
    await putGroup("sg-a", [{ protocol: "tcp", destination: `100.64.${INDEX}.0/29`, ports: "8000-8002" }]);
    assert.deepEqual(
      await results([[OUT(2), 8000], [OUT(5), 8002], [OUT(3), 8001], [OUT(2), 7999], [OUT(2), 8003], [OUT(9), 8000]]),
      ["open", "open", "open", "refused", "refused", "refused"],
    );
  });

  it("enforces an address range and a port list", async function () {
    await putGroup("sg-a", [{ protocol: "tcp", destination: `${OUT(10)}-${OUT(12)}`, ports: "80,443" }]);
    assert.deepEqual(
      await results([[OUT(10), 80], [OUT(12), 443], [OUT(10), 81], [OUT(9), 80], [OUT(13), 443]]),
      ["open", "open", "refused", "refused", "refused"],
    );
  });

  it("enforces every entry of lists with spaces", async function () {
    await putGroup("sg-a", [{ protocol: "tcp", destination: `${FAR(2)}, ${FAR(4)}`, ports: "80, 443" }]);
    assert.deepEqual(
      await results([[FAR(2), 80], [FAR(2), 443], [FAR(4), 80], [FAR(4), 443], [FAR(3), 80], [FAR(2), 444]]),
      ["open", "open", "open", "open", "refused", "refused"],
    );
  });

  it("enforces udp ports only for udp", async function () {
    await putGroup("sg-a", [{ protocol: "udp", destination: OUT(2), ports: "53" }]);
    const [allowed, otherPort] = await results([[OUT(2), 53], [OUT(2), 54]], "udp");
    assert.equal(allowed, "reply");
    assert.notEqual(otherPort, "reply");
    assert.equal(await tcp(OUT(2), 53), "refused");
  });

  describe("icmp", function () {
    const cases: { type: number; code: number; allowed: boolean }[] = [
      { type: 8, code: 0, allowed: true },
      { type: 8, code: -1, allowed: true },
      { type: -1, code: -1, allowed: true },
      { type: 0, code: 0, allowed: false },
      { type: 8, code: 1, allowed: false },
    ];
    for (const { type, code, allowed } of cases) {
      it(`${allowed ? "allows" : "rejects"} echo with type ${type} code ${code}`, async function () {
        await putGroup("sg-a", [{ protocol: "icmp", destination: OUT(2), type, code }]);
        assert.equal(await ping(c1.netns, OUT(2)), allowed);
        assert.equal(await ping(c1.netns, OUT(3)), false);
      });
    }
  });

  it("enforces all protocols to one address", async function () {
    await putGroup("sg-a", [{ protocol: "all", destination: OUT(3) }]);
    assert.deepEqual(await results([[OUT(3), 80], [OUT(3), 8003], [OUT(2), 80]]), ["open", "open", "refused"]);
    assert.deepEqual(await results([[OUT(3), 54]], "udp"), ["reply"]);
    assert.equal(await ping(c1.netns, OUT(3)), true);
  });

  it("allows the union of groups and defaults", async function () {
    writeSettings(["dns"]);
    try {
      await putGroup("dns", JSON.parse(readFileSync(path.join(findRepoRoot(), "examples", "security-groups", "dns.json"), "utf8")) as SecurityGroupRule[]);
      await putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "80" }]);
      // Overlapping and duplicate rules across groups must render and apply.
      await putGroup("sg-b", [
        { protocol: "tcp", destination: OUT(2), ports: "443" },
        { protocol: "tcp", destination: `100.64.${INDEX}.0/24`, ports: "79-80" },
        { protocol: "tcp", destination: OUT(2), ports: "80" },
      ]);
      assert.deepEqual(await results([[OUT(2), 80], [OUT(2), 443], [OUT(3), 79], [OUT(2), 81]]), ["open", "open", "open", "refused"]);
      assert.deepEqual(await results([[OUT(9), 53]], "udp"), ["reply"]);
      assert.equal(await tcp(OUT(9), 53), "open");
    } finally {
      writeSettings();
      await session.agent.call("securityGroup.delete", { name: "dns" });
    }
    assert.notEqual((await results([[OUT(9), 53]], "udp"))[0], "reply");
  });

  it("cuts an open connection when its rule goes", async function () {
    await putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "80, 443" }]);
    const client: NetnsProcess = await net.startClient(c1.netns, OUT(2), 80);
    await client.waitFor(/data tick/);
    await putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "443" }]);
    assert.match(await client.waitFor(/closed \S+/, 5000), /closed (ECONNRESET|close|EPIPE)/);
    assert.equal(await tcp(OUT(2), 80), "refused");
    assert.equal(await tcp(OUT(2), 443), "open");
  });

  it("keeps an open connection whose rule stays", async function () {
    await putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "80, 443" }]);
    const client = await net.startClient(c1.netns, OUT(2), 80);
    await putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "80" }]);
    const seen = client.output.length;
    await new Promise((resolve) => setTimeout(resolve, 600));
    assert.doesNotMatch(client.output, /closed/);
    assert.ok(client.output.length > seen, "no echo after the update");
    client.stop();
  });

  describe("bypass attempts", function () {
    let c2: SimulatedContainer;

    before(async function () {
      // c2 has IPv6 on, as if the plumbing had failed to disable it.
      c2 = await net.addContainer("v6-open", { securityGroups: ["sg-a"], ipv6: true });
      attach(c2);
      await net.startServer(c1.netns, "c1", { tcp: [80] });
      await putGroup("sg-a", [{ protocol: "all", destination: "0.0.0.0/0" }]);
    });

    async function linkLocal(netns: string, device: string): Promise<string> {
      for (let attempt = 0; attempt < 50; attempt++) {
        const match = /inet6 (fe80::[0-9a-f:]+)\/64 scope link(?! tentative)/.exec(await inNetns(netns, ["ip", "-6", "address", "show", "dev", device]));
        if (match) return match[1];
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      throw new Error(`no usable link-local address on ${device} in ${netns}`);
    }

    it("drops IPv6 from a container even with IPv6 on", async function () {
      const target = await linkLocal(cell.netns, net.options.bridge);
      const ping6 = () => inNetns(c2.netns, ["busybox", "ping6", "-c", "1", "-W", "2", "-I", "eth0", target]).then(() => true, () => false);
      await linkLocal(c2.netns, "eth0");
      // Without cellfleet's tables IPv6 works on this bridge, so the test can fail.
      for (const family of ["inet", "bridge"]) await cell.exec(["nft", "delete", "table", family, "cellfleet"]);
      assert.equal(await ping6(), true, "ping6 failed without cellfleet's tables, so the test proves nothing");
      await putGroup("sg-a", [{ protocol: "all", destination: "0.0.0.0/0" }]);
      assert.equal(await ping6(), false);
    });

    it("drops a forged source address", async function () {
      await inNetns(c1.netns, ["ip", "address", "add", `198.19.${INDEX}.77/24`, "dev", "eth0"]);
      try {
        const forged = await probeOne(c1.netns, { kind: "tcp", host: OUT(2), port: 80, localAddress: `198.19.${INDEX}.77` });
        assert.equal(forged.result, "timeout");
        assert.equal(await tcp(OUT(2), 80), "open");
      } finally {
        await inNetns(c1.netns, ["ip", "address", "delete", `198.19.${INDEX}.77/24`, "dev", "eth0"]);
      }
    });

    it("keeps containers apart without a policy", async function () {
      assert.equal(await tcp(c1.attachment.address, 80, c2), "refused");
    });
  });

  describe("logging", function () {
    let previous: string;

    before(async function () {
      // Netfilter logs from namespaces other than the host's only with this host-wide switch.
      previous = (await sh(["sysctl", "-n", "net.netfilter.nf_log_all_netns"])).trim();
      await sh(["sysctl", "-qw", "net.netfilter.nf_log_all_netns=1"]);
    });

    after(async function () {
      if (previous !== undefined) await sh(["sysctl", "-qw", `net.netfilter.nf_log_all_netns=${previous}`]);
    });

    async function kernelLogSince(marker: string): Promise<string> {
      const log = await sh(["dmesg"]);
      const start = log.lastIndexOf(marker);
      return start >= 0 ? log.slice(start) : log;
    }

    async function mark(): Promise<string> {
      const marker = `cellfleet-test-mark-${Date.now()}`;
      writeFileSync("/dev/kmsg", `${marker}\n`);
      return marker;
    }

    it("logs the first packet of a logged rule", async function () {
      await putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "80", log: true }]);
      const marker = await mark();
      assert.equal(await tcp(OUT(2), 80), "open");
      const log = await kernelLogSince(marker);
      const lines = log.split("\n").filter((line) => line.includes("web-1 cf-accept: ") && line.includes(`DST=${OUT(2)}`) && line.includes("DPT=80 "));
      assert.equal(lines.length, 1, log);
      assert.match(lines[0], /SYN/);
    });

    it("logs rejected packets with the container label", async function () {
      await putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "80" }]);
      const marker = await mark();
      assert.equal(await tcp(OUT(2), 81), "refused");
      const log = await kernelLogSince(marker);
      assert.ok(log.split("\n").some((line) => line.includes("web-1 cf-reject: ") && line.includes("DPT=81 ")), log);
    });
  });

  describe("inspect and delete", function () {
    it("reports an untouched group as enforced", async function () {
      await putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "80, 443" }]);
      const observed = await session.agent.call("securityGroup.inspect", { name: "sg-a" });
      assert.deepEqual(observed, { name: "sg-a", rules: [{ protocol: "tcp", destination: OUT(2), ports: "80, 443" }], enforced: true });
    });

    it("reports an element deleted by hand", async function () {
      await putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "80, 443" }]);
      const removed = await cell.exec(["nft", "delete", "element", "inet", "cellfleet", "egress_tcp", `{ ${c1.attachment.address} . ${OUT(2)} . 443 }`]);
      assert.equal(removed.code, 0, removed.stderr);
      const observed = await session.agent.call("securityGroup.inspect", { name: "sg-a" });
      assert.equal(observed?.enforced, false);
      assert.match(observed?.drift ?? "", /rules\[0\] \(tcp to "100\.64\.31\.2" ports "80, 443"\) is not enforced for container web-1: set egress_tcp lacks part of it/);
      assert.equal(await tcp(OUT(2), 443), "refused");
    });

    it("reports a rule deleted by hand", async function () {
      await putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "80" }]);
      const listing = await cell.exec(["nft", "-a", "list", "chain", "inet", "cellfleet", "egress_rules"]);
      const handle = /@egress_tcp accept comment "tcp rules" # handle (\d+)/.exec(listing.stdout)?.[1];
      assert.ok(handle, listing.stdout);
      const removed = await cell.exec(["nft", "delete", "rule", "inet", "cellfleet", "egress_rules", "handle", handle]);
      assert.equal(removed.code, 0, removed.stderr);
      const observed = await session.agent.call("securityGroup.inspect", { name: "sg-a" });
      assert.equal(observed?.enforced, false);
      assert.match(observed?.drift ?? "", /chain egress_rules lacks the rule "tcp rules"/);
    });

    it("repairs drift on the next put", async function () {
      await putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "80" }]);
      await cell.exec(["nft", "delete", "element", "inet", "cellfleet", "egress_tcp", `{ ${c1.attachment.address} . ${OUT(2)} . 80 }`]);
      const observed = await putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "80" }]);
      assert.equal(observed.enforced, true, observed.drift);
      assert.equal(await tcp(OUT(2), 80), "open");
    });

    it("deletes a group and its permissions", async function () {
      await putGroup("sg-b", [{ protocol: "tcp", destination: OUT(3), ports: "80" }]);
      assert.equal(await tcp(OUT(3), 80), "open");
      assert.deepEqual(await session.agent.call("securityGroup.delete", { name: "sg-b" }), { existed: true });
      assert.equal(await session.agent.call("securityGroup.inspect", { name: "sg-b" }), null);
      assert.equal(await tcp(OUT(3), 80), "refused");
      assert.deepEqual(await session.agent.call("securityGroup.delete", { name: "sg-b" }), { existed: false });
    });

    it("rejects invalid rules with the rule index", async function () {
      await assert.rejects(
        putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "443-80" }]),
        (error: Error & { body?: { code?: string } }) => {
          assert.match(error.message, /rules\[0\]\.ports "443-80" is a reversed range: write the lower port first, "80-443"/);
          return true;
        },
      );
    });

    it("leaves other tables alone", async function () {
      const added = await cell.exec(["nft", "add", "table", "inet", "t_sg_other"]);
      assert.equal(added.code, 0, added.stderr);
      await putGroup("sg-a", [{ protocol: "tcp", destination: OUT(2), ports: "80" }]);
      const tables = await cell.exec(["nft", "list", "tables"]);
      assert.match(tables.stdout, /table inet t_sg_other/);
      await cell.exec(["nft", "delete", "table", "inet", "t_sg_other"]);
    });
  });
});
