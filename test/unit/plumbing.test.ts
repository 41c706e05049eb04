// The pure parts of container networking: address allocation, port
// assignment, route overlap, interface names and the tc script. The parts
// that change the cell are proven by the networking integration tests.
import assert from "node:assert/strict";

import { bandwidthScript } from "../../provider/src/agent/network/bandwidth";
import { overlappingRoute, type RouteEntry } from "../../provider/src/agent/network/bridge";
import { addressCapacity, allocateAddress } from "../../provider/src/agent/network/ipam";
import { assignCellPorts, parseListeningSockets, PortConflict } from "../../provider/src/agent/network/ports";
import { CommandError, inNetworkNamespace, runChecked, type Runner } from "../../provider/src/agent/network/tools";
import { interfaceNames } from "../../provider/src/agent/network/veth";

describe("address allocation", function () {
  it("skips the network and gateway addresses", function () {
    assert.equal(allocateAddress("10.254.0.0/22", "10.254.0.1", []), "10.254.0.2");
  });

  it("fills the lowest gap", function () {
    assert.equal(allocateAddress("10.254.0.0/22", "10.254.0.1", ["10.254.0.2", "10.254.0.4"]), "10.254.0.3");
  });

  it("never hands out the broadcast address", function () {
    const used = ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"];
    assert.equal(allocateAddress("10.0.0.0/29", "10.0.0.1", used), undefined);
  });

  it("counts the addresses of a subnet", function () {
    assert.equal(addressCapacity("10.0.0.0/29"), 5);
    assert.equal(addressCapacity("10.254.0.0/22"), 1021);
  });
});

describe("cell port assignment", function () {
  const sshd = parseListeningSockets('tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=812,fd=3))\n');

  it("parses ss output", function () {
    const output = [
      'tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=812,fd=3))',
      'udp UNCONN 0 0 127.0.0.1%lo:53 0.0.0.0:* users:(("dnsmasq",pid=9,fd=4),("dnsmasq",pid=9,fd=6))',
      "tcp LISTEN 0 4096 [::]:8080 [::]:*",
      "",
    ].join("\n");
    assert.deepEqual(parseListeningSockets(output), [
      { protocol: "tcp", port: 22, users: '"sshd",pid=812' },
      { protocol: "udp", port: 53, users: '"dnsmasq",pid=9),("dnsmasq",pid=9' },
      { protocol: "tcp", port: 8080, users: "" },
    ]);
  });

  it("chooses the first free automatic port per protocol", function () {
    const others = [{ id: "a", ports: [{ protocol: "tcp" as const, containerPort: 80, cellPort: 61000 }] }];
    const ports = assignCellPorts(
      "b",
      [
        { containerPort: 80, protocol: "tcp" },
        { containerPort: 53, protocol: "udp" },
      ],
      others,
      sshd,
    );
    assert.deepEqual(ports, [
      { protocol: "tcp", containerPort: 80, cellPort: 61001 },
      { protocol: "udp", containerPort: 53, cellPort: 61000 },
    ]);
  });

  it("keeps a requested port out of the automatic choice", function () {
    const ports = assignCellPorts(
      "b",
      [
        { containerPort: 80, protocol: "tcp" },
        { containerPort: 81, cellPort: 61000, protocol: "tcp" },
      ],
      [],
      [],
    );
    assert.deepEqual(
      ports.map((port) => port.cellPort),
      [61001, 61000],
    );
  });

  it("names the container that holds a port", function () {
    const others = [{ id: "web", ports: [{ protocol: "tcp" as const, containerPort: 80, cellPort: 8080 }] }];
    assert.throws(() => assignCellPorts("b", [{ containerPort: 80, cellPort: 8080, protocol: "tcp" }], others, []), {
      name: "Error",
      message: "cell port tcp/8080 for container b is already used by container web: choose another cellPort or leave it out to get a free one",
    });
  });

  it("names the process that listens on a port", function () {
    assert.throws(() => assignCellPorts("b", [{ containerPort: 80, cellPort: 22, protocol: "tcp" }], [], sshd), /already used by a listening socket of "sshd",pid=812/);
  });

  it("lets udp use a port tcp listens on", function () {
    assert.deepEqual(assignCellPorts("b", [{ containerPort: 53, cellPort: 22, protocol: "udp" }], [], sshd), [{ protocol: "udp", containerPort: 53, cellPort: 22 }]);
  });

  it("ignores the container's own earlier ports", function () {
    const earlier = [{ id: "b", ports: [{ protocol: "tcp" as const, containerPort: 80, cellPort: 8080 }] }];
    assert.deepEqual(assignCellPorts("b", [{ containerPort: 80, cellPort: 8080, protocol: "tcp" }], earlier, []), [{ protocol: "tcp", containerPort: 80, cellPort: 8080 }]);
  });

  it("reports an exhausted range", function () {
    const others = [{ id: "a", ports: Array.from({ length: 1000 }, (_, index) => ({ protocol: "tcp" as const, containerPort: index + 1, cellPort: 61000 + index })) }];
    assert.throws(() => assignCellPorts("b", [{ containerPort: 80, protocol: "tcp" }], others, []), (error: Error) => error instanceof PortConflict && /all of 61000-61999 are in use/.test(error.message));
  });
});

describe("subnet overlap", function () {
  const routes: RouteEntry[] = [
    { dst: "default", dev: "eth0" },
    { dst: "192.0.2.0/24", dev: "eth0" },
    { dst: "10.254.0.0/22", dev: "cfbr0" },
    { type: "local", dst: "198.18.0.2", dev: "cfc-t-net", table: "local" },
  ];

  it("ignores default routes and the bridge's own route", function () {
    assert.equal(overlappingRoute("10.254.0.0/22", routes, "cfbr0"), undefined);
  });

  it("finds a route inside the subnet", function () {
    assert.deepEqual(overlappingRoute("198.18.0.0/16", routes, "cfbr0"), routes[3]);
  });

  it("finds a route around the subnet", function () {
    assert.deepEqual(overlappingRoute("192.0.2.128/25", routes, "cfbr0"), routes[1]);
  });
});

describe("interface names", function () {
  it("fit the kernel's 15-byte limit", function () {
    const names = interfaceNames("a".repeat(63));
    for (const name of Object.values(names)) assert.ok(Buffer.byteLength(name) <= 15, name);
  });

  it("differ between containers", function () {
    assert.notEqual(interfaceNames("web-1").host, interfaceNames("web-2").host);
  });

  it("are stable for one container", function () {
    assert.deepEqual(interfaceNames("web-1"), interfaceNames("web-1"));
  });
});

describe("bandwidth script", function () {
  it("shapes both directions of the veth", function () {
    const names = { host: "cfvh", peer: "cfep", ifb: "cfii" };
    assert.equal(
      bandwidthScript(names, { rate: 8_000_000, burst: 32768 }),
      [
        "qdisc add dev cfvh root tbf rate 8000000bit burst 32768 latency 100ms",
        "qdisc add dev cfvh handle ffff: ingress",
        "filter add dev cfvh parent ffff: protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev cfii",
        "qdisc add dev cfii root tbf rate 8000000bit burst 32768 latency 100ms",
        "",
      ].join("\n"),
    );
  });
});

describe("command runner", function () {
  it("enters the container's network namespace only", function () {
    assert.deepEqual(inNetworkNamespace(42, ["ip", "link"]), ["nsenter", "--net=/proc/42/ns/net", "--", "ip", "link"]);
  });

  it("reports the command and its error output", async function () {
    const runner: Runner = async () => ({ code: 2, stdout: "", stderr: "RTNETLINK answers: File exists\n" });
    await assert.rejects(runChecked(runner, ["ip", "link", "add", "x"]), {
      message: "`ip link add x` failed with exit code 2: RTNETLINK answers: File exists",
    });
  });

  it("classifies a missing tool", async function () {
    const runner: Runner = async () => {
      throw Object.assign(new Error("spawn tc ENOENT"), { code: "ENOENT" });
    };
    await assert.rejects(runChecked(runner, ["tc", "qdisc"]), (error: Error) => error instanceof CommandError && error.kind === "MISSING_BINARY" && /tc was not found on the cell/.test(error.message));
  });
});
