// Published ports and bandwidth limits of real containers on a real local
// cell through the real agent: cell ports reached from an "outside world"
// namespace and by hairpin from containers, taken ports rejected, and
// throughput measured in both directions against the configured rate.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import path from "node:path";

import { minimumBurstBytes } from "../../provider/src/common/network-spec";
import type { ContainerObservation, CreateContainerParams } from "../../provider/src/common/protocol";
import { interfaceNames } from "../../provider/src/agent/network/veth";
import { ensureImageOnCell, imageDigest } from "../../provider/src/plugin/resources/container/image";
import { closeAllCellSessions, getCellSession, type CellSession } from "../../provider/src/transport/pool";
import { createCell, type Cell } from "../helpers/cell";
import { createOutsideWorld, httpGet, measureTransfer, type OutsideWorld, type Place, type Transfer } from "../helpers/outside-world";
import { cellConfigFor, testImagePath } from "../helpers/session";

const NETWORK = { subnet: "10.254.0.0/22", defaultSecurityGroups: [] };
const OUTSIDE_INDEX = 202;
const FIXED_CELL_PORT = 40080;
const METER_PORT = 9100;
const RECEIVER_PORT = 9200;

const RATE_BITS = 8_000_000;
const BURST_BYTES = 32 * 1024;
const TRANSFER_BYTES = 3 * 1024 * 1024;
// tbf counts whole Ethernet frames (1514 bytes at MTU 1500) while the
// receiver counts TCP payload (1448 bytes per frame with timestamps).
const PAYLOAD_SHARE = 1448 / 1514;
// Allowed deviation of the measured time from the expected one. TCP needs a
// few round trips to fill the bucket and loses some time to drops at the
// queue limit, so the measured rate is a little below the configured one.
const TOLERANCE = 0.15;

/** Serves "web-ok" over HTTP on 8080 and 8081. */
const WEB_SERVER = "mkdir -p /tmp/www && echo web-ok > /tmp/www/index.html && httpd -p 8081 -h /tmp/www && exec httpd -f -p 8080 -h /tmp/www";

function expectedMs(bytes: number): number {
  return ((bytes - BURST_BYTES) / ((RATE_BITS / 8) * PAYLOAD_SHARE)) * 1000;
}

function rateOf(transfer: Transfer): string {
  return `${((transfer.bytes * 8) / (transfer.ms / 1000) / 1e6).toFixed(2)} Mbit/s payload`;
}

describe("ports and bandwidth on a local cell", function () {
  this.timeout(120_000);
  let cell: Cell;
  let session: CellSession;
  let digest: string;
  let outside: OutsideWorld;
  const created = new Set<string>();
  const agentLog: string[] = [];
  const measured: string[] = [];

  async function create(id: string, spec: CreateContainerParams["spec"]): Promise<ContainerObservation> {
    created.add(id);
    return session.agent.call("container.create", { id, imageDigest: digest, spec, network: NETWORK });
  }

  async function fetchPage(place: Place, host: string, port: number): Promise<string> {
    return (await httpGet(place, `http://${host}:${port}/`)).trim();
  }

  before(async function () {
    cell = await createCell("t-port");
    session = await getCellSession(cellConfigFor(cell), { log: (message) => agentLog.push(message) });
    digest = await imageDigest(testImagePath());
    await ensureImageOnCell(session, testImagePath(), digest);
    outside = await createOutsideWorld(cell, OUTSIDE_INDEX);
    // Hairpin traffic leaves a container for a cell address, so it needs egress permission like any other destination.
    await session.agent.call("securityGroup.put", { name: "cell-ports", rules: [{ protocol: "tcp", destination: outside.cellAddress, ports: `61000-61999, ${FIXED_CELL_PORT}` }] });
    await session.agent.call("securityGroup.put", { name: "meter", rules: [{ protocol: "tcp", destination: outside.address, ports: String(METER_PORT) }] });
  });

  after(async function () {
    for (const id of created) await session?.agent.call("container.delete", { id }).catch(() => undefined);
    const attachTimes = agentLog.map((line) => / in (\d+) ms$/.exec(line.includes("attached container") ? line : "")?.[1]).filter(Boolean);
    if (measured.length || attachTimes.length) console.log(`      measured: ${measured.join("; ")}; attach times (ms): ${attachTimes.join(", ")}`);
    await outside?.remove();
    await closeAllCellSessions();
    await cell?.remove();
  });

  describe("published ports", function () {
    let web: ContainerObservation;
    let client: ContainerObservation;

    before(async function () {
      web = await create("port-web", {
        command: ["/bin/sh", "-c", WEB_SERVER],
        securityGroups: ["cell-ports"],
        ports: [{ containerPort: 8080 }, { containerPort: 8081, cellPort: FIXED_CELL_PORT }, { containerPort: 5353, protocol: "udp" }],
      });
      client = await create("port-client", { command: ["/bin/sleep", "600"], securityGroups: ["cell-ports"] });
      // httpd starts after the container does, so wait until it responds on the container's loopback.
      for (let attempt = 0; attempt < 50 && (await fetchPage({ pid: web.pid }, "127.0.0.1", 8080)) !== "web-ok"; attempt++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    });

    it("chooses cell ports from the automatic range", function () {
      assert.deepEqual(web.ports, [
        { protocol: "tcp", containerPort: 8080, cellPort: 61000 },
        { protocol: "tcp", containerPort: 8081, cellPort: FIXED_CELL_PORT },
        { protocol: "udp", containerPort: 5353, cellPort: 61000 },
      ]);
    });

    it("reports ports on inspect", async function () {
      const observed = await session.agent.call("container.inspect", { id: "port-web" });
      assert.deepEqual(observed?.ports, web.ports);
    });

    it("serves an automatic port from the outside", async function () {
      assert.equal(await fetchPage({ netns: outside.netns }, outside.cellAddress, 61000), "web-ok");
    });

    it("serves a requested port from the outside", async function () {
      assert.equal(await fetchPage({ netns: outside.netns }, outside.cellAddress, FIXED_CELL_PORT), "web-ok");
    });

    it("serves by hairpin from another container", async function () {
      assert.equal(await fetchPage({ pid: client.pid }, outside.cellAddress, 61000), "web-ok");
    });

    it("serves by hairpin to its own port", async function () {
      assert.equal(await fetchPage({ pid: web.pid }, outside.cellAddress, FIXED_CELL_PORT), "web-ok");
    });

    it("rejects a cell port another container uses", async function () {
      await assert.rejects(create("port-taken", { command: ["/bin/sleep", "600"], ports: [{ containerPort: 80, cellPort: FIXED_CELL_PORT }] }), (error: Error) => {
        assert.match(error.message, /cell port tcp\/40080 for container port-taken is already used by container port-web/);
        return true;
      });
      created.delete("port-taken");
    });

    it("rejects a cell port a cell process listens on", async function () {
      await assert.rejects(create("port-ssh", { command: ["/bin/sleep", "600"], ports: [{ containerPort: 80, cellPort: 22 }] }), (error: Error) => {
        assert.match(error.message, /cell port tcp\/22 for container port-ssh is already used by a listening socket of "sshd",pid=\d+/);
        return true;
      });
      created.delete("port-ssh");
    });

    it("leaves nothing of a rejected create", async function () {
      const lib = path.join(cell.stateDir, "lib");
      for (const id of ["port-taken", "port-ssh"]) {
        assert.equal(existsSync(path.join(lib, "network", "containers", `${id}.json`)), false, `${id} attachment`);
        assert.equal(existsSync(path.join(lib, "containers", id)), false, `${id} directory`);
      }
    });
  });

  describe("bandwidth", function () {
    let limited: ContainerObservation;
    let cellPort: number;

    before(async function () {
      limited = await create("port-bw", {
        command: ["/bin/sleep", "600"],
        securityGroups: ["meter"],
        ports: [{ containerPort: RECEIVER_PORT }],
        bandwidth: { rate: `${RATE_BITS / 1e6}Mbit`, burst: `${BURST_BYTES / 1024}KiB` },
      });
      cellPort = limited.ports![0].cellPort;
    });

    it("uses a burst above the minimum", function () {
      assert.ok(BURST_BYTES >= minimumBurstBytes(RATE_BITS));
    });

    it("limits traffic out of the container", async function () {
      const transfer = await measureTransfer({ netns: outside.netns }, METER_PORT, { pid: limited.pid }, outside.address, METER_PORT, TRANSFER_BYTES);
      measured.push(`out ${transfer.ms.toFixed(0)} ms (${rateOf(transfer)})`);
      assert.equal(transfer.bytes, TRANSFER_BYTES);
      const expected = expectedMs(TRANSFER_BYTES);
      assert.ok(Math.abs(transfer.ms - expected) <= expected * TOLERANCE, `took ${transfer.ms.toFixed(0)} ms, expected ${expected.toFixed(0)} ms ± ${TOLERANCE * 100}%`);
    });

    it("limits traffic into the container", async function () {
      const transfer = await measureTransfer({ pid: limited.pid }, RECEIVER_PORT, { netns: outside.netns }, outside.cellAddress, cellPort, TRANSFER_BYTES);
      measured.push(`in ${transfer.ms.toFixed(0)} ms (${rateOf(transfer)})`);
      assert.equal(transfer.bytes, TRANSFER_BYTES);
      const expected = expectedMs(TRANSFER_BYTES);
      assert.ok(Math.abs(transfer.ms - expected) <= expected * TOLERANCE, `took ${transfer.ms.toFixed(0)} ms, expected ${expected.toFixed(0)} ms ± ${TOLERANCE * 100}%`);
    });

    it("leaves other containers unlimited", async function () {
      const free = await create("port-free", { command: ["/bin/sleep", "600"], securityGroups: ["meter"] });
      const transfer = await measureTransfer({ netns: outside.netns }, METER_PORT, { pid: free.pid }, outside.address, METER_PORT, TRANSFER_BYTES);
      measured.push(`unlimited ${transfer.ms.toFixed(0)} ms`);
      assert.ok(transfer.ms < expectedMs(TRANSFER_BYTES) / 5, `an unlimited transfer took ${transfer.ms.toFixed(0)} ms`);
    });

    it("removes its limits with the container", async function () {
      const names = interfaceNames("port-bw");
      await session.agent.call("container.delete", { id: "port-bw" });
      created.delete("port-bw");
      const links = await cell.exec(["ip", "-o", "link", "show"]);
      assert.doesNotMatch(links.stdout, new RegExp(`${names.host}|${names.ifb}`));
      const qdiscs = await cell.exec(["tc", "qdisc", "show"]);
      assert.doesNotMatch(qdiscs.stdout, /tbf/);
    });
  });
});
