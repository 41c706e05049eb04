import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";

import { type Box, covers, disjointUnion } from "../../provider/src/agent/network/boxes";
import { deleteArguments, parseConntrackLine } from "../../provider/src/agent/network/conntrack";
import { computeAllowLists, flowAllowed, logLabel, renderRuleset } from "../../provider/src/agent/network/ruleset";
import type { Element } from "../../provider/src/agent/network/nft";
import type { NetworkState } from "../../provider/src/common/network-state";
import { findRepoRoot } from "../helpers/cell";

const address = (text: string) => text.split(".").reduce((sum, octet) => sum * 256 + Number(octet), 0);

function baseState(): NetworkState {
  return {
    settings: { bridge: "cfbr0", subnet: "10.254.0.0/24", gateway: "10.254.0.1", defaultSecurityGroups: ["dns"] },
    containers: [
      {
        id: "web-1",
        address: "10.254.0.2",
        hostInterface: "cfv-web1",
        securityGroups: ["web", "partners"],
        ports: [{ protocol: "tcp", containerPort: 8080, cellPort: 18080 }],
        labels: { app: "web" },
      },
      { id: "db-1", address: "10.254.0.3", hostInterface: "cfv-db1", securityGroups: [], ports: [], labels: { app: "db" } },
    ],
    securityGroups: {
      dns: [
        { protocol: "udp", destination: "0.0.0.0/0", ports: "53" },
        { protocol: "tcp", destination: "0.0.0.0/0", ports: "53" },
      ],
      web: [
        { protocol: "tcp", destination: "0.0.0.0/0", ports: "80, 443", log: true },
        { protocol: "icmp", destination: "198.51.100.0/24", type: 8, code: -1 },
      ],
      // Overlaps web and itself: the renderer must still produce disjoint elements.
      partners: [
        { protocol: "tcp", destination: "198.51.100.0/25, 198.51.100.64-198.51.100.200", ports: "8000-8100,8050-8200" },
        { protocol: "tcp", destination: "198.51.100.7", ports: "8000" },
        { protocol: "all", destination: "203.0.113.0/24" },
      ],
    },
    policies: [{ id: "web-to-db", source: { container: "web-1" }, destination: { label: { key: "app", value: "db" } }, protocol: "tcp", ports: { from: 5432, to: 5433 } }],
  };
}

function elementsOf(state: NetworkState, set: string): Element[] {
  return renderRuleset(state)
    .operations.map((operation) => operation.object)
    .filter((object): object is Element => object.kind === "element" && object.set === set);
}

describe("ruleset rendering", function () {
  it("matches the golden script", function () {
    const golden = path.join(findRepoRoot(), "test", "unit", "fixtures", "ruleset.golden.nft");
    const rendered = renderRuleset(baseState()).render();
    if (process.env.UPDATE_GOLDEN === "1") writeFileSync(golden, rendered);
    assert.equal(rendered, readFileSync(golden, "utf8"));
  });

  it("drops bridged container traffic without bridge netfilter", function () {
    const script = renderRuleset(baseState(), { bridgeNetfilter: false }).render();
    assert.match(script, /add rule bridge cellfleet forward_guard iifname @ports oifname @ports drop/);
    assert.doesNotMatch(renderRuleset(baseState()).render(), /forward_guard/);
  });

  it("renders overlapping rules as disjoint elements", function () {
    const elements = elementsOf(baseState(), "egress_tcp").filter((element) => element.key[0] === "10.254.0.2");
    assert.deepEqual(
      elements.map((element) => element.key.slice(1)),
      [
        [{ prefix: { addr: "0.0.0.0", len: 0 } }, 53],
        [{ range: ["198.51.100.0", "198.51.100.200"] }, { range: [8000, 8200] }],
      ],
    );
  });

  it("keeps logged tcp rules in their own set", function () {
    const elements = elementsOf(baseState(), "egress_tcp_log");
    assert.deepEqual(
      elements.map((element) => element.key),
      [
        ["10.254.0.2", { prefix: { addr: "0.0.0.0", len: 0 } }, 80],
        ["10.254.0.2", { prefix: { addr: "0.0.0.0", len: 0 } }, 443],
      ],
    );
  });

  it("renders every port of a list with spaces", function () {
    const state = baseState();
    state.securityGroups.web = [{ protocol: "tcp", destination: "198.51.100.9", ports: "80, 443" }];
    state.securityGroups.partners = [];
    state.settings.defaultSecurityGroups = [];
    assert.deepEqual(
      elementsOf(state, "egress_tcp").map((element) => element.key),
      [
        ["10.254.0.2", "198.51.100.9", 80],
        ["10.254.0.2", "198.51.100.9", 443],
      ],
    );
  });

  it("resolves policy labels to container pairs", function () {
    assert.deepEqual(elementsOf(baseState(), "policy_allow").map((element) => element.key), [["10.254.0.2", "10.254.0.3", 6, { range: [5432, 5433] }]]);
  });

  it("publishes ports in the DNAT map", function () {
    assert.deepEqual(elementsOf(baseState(), "published").map((element) => [element.key, element.value]), [[[6, 18080], ["10.254.0.2", 8080]]]);
  });

  it("rejects a cell port published twice", function () {
    const state = baseState();
    state.containers[1].ports = [{ protocol: "tcp", containerPort: 80, cellPort: 18080 }];
    assert.throws(() => renderRuleset(state), /container db-1: cell port tcp\/18080 is already published by container web-1/);
  });

  it("rejects an address outside the subnet", function () {
    const state = baseState();
    state.containers[1].address = "10.255.0.3";
    assert.throws(() => renderRuleset(state), /container db-1: address 10.255.0.3 is not a host address of the subnet 10.254.0.0\/24/);
  });

  it("rejects the gateway as a container address", function () {
    const state = baseState();
    state.containers[1].address = "10.254.0.1";
    assert.throws(() => renderRuleset(state), /container db-1: address 10.254.0.1 is not a host address/);
  });

  it("treats an unknown group as no permissions", function () {
    const state = baseState();
    state.containers[1].securityGroups = ["nonexistent"];
    const lists = computeAllowLists(state);
    assert.deepEqual(lists.egress[1].missingGroups, ["nonexistent"]);
  });
});

describe("log labels", function () {
  it("keeps a short id whole", function () {
    assert.equal(logLabel("web-1"), "web-1");
  });

  it("shortens a long id to 20 characters that stay unique", function () {
    const first = logLabel("payments-frontend-blue-42");
    const second = logLabel("payments-frontend-green-42");
    assert.equal(first.length, 20);
    assert.match(first, /^payments-fr~[0-9a-f]{8}$/);
    assert.notEqual(first, second);
  });
});

describe("flow decisions", function () {
  const lists = computeAllowLists(baseState());
  const web = address("10.254.0.2");
  const db = address("10.254.0.3");

  const cases: [string, Parameters<typeof flowAllowed>[1], boolean][] = [
    ["tcp to an allowed port", { protocol: 6, source: web, destination: address("192.0.2.1"), destinationPort: 443 }, true],
    ["tcp to another port", { protocol: 6, source: web, destination: address("192.0.2.1"), destinationPort: 444 }, false],
    ["tcp in the partner range", { protocol: 6, source: web, destination: address("198.51.100.150"), destinationPort: 8150 }, true],
    ["udp dns from the default group", { protocol: 17, source: db, destination: address("192.0.2.53"), destinationPort: 53 }, true],
    ["icmp echo with any code", { protocol: 1, source: web, destination: address("198.51.100.1"), type: 8, code: 3 }, true],
    ["icmp elsewhere", { protocol: 1, source: web, destination: address("192.0.2.1"), type: 8, code: 0 }, false],
    ["any protocol to the all range", { protocol: 47, source: web, destination: address("203.0.113.9") }, true],
    ["a policy port", { protocol: 6, source: web, destination: db, destinationPort: 5433 }, true],
    ["the reverse of a policy", { protocol: 6, source: db, destination: web, destinationPort: 5432 }, false],
    ["loopback", { protocol: 6, source: web, destination: address("127.0.0.1"), destinationPort: 53 }, false],
    ["a flow from outside", { protocol: 6, source: address("192.0.2.9"), destination: web, destinationPort: 8080 }, true],
  ];
  for (const [name, flow, allowed] of cases) {
    it(`${allowed ? "allows" : "revokes"} ${name}`, function () {
      assert.equal(flowAllowed(lists, flow), allowed);
    });
  }
});

describe("boxes", function () {
  const box = (...intervals: [number, number][]): Box => intervals.map(([first, last]) => ({ first, last }));

  it("merges overlapping and adjacent intervals", function () {
    assert.deepEqual(disjointUnion([box([5, 9]), box([1, 4]), box([7, 12]), box([20, 20])]), [box([1, 12]), box([20, 20])]);
  });

  it("splits crossing rectangles into disjoint ones", function () {
    const result = disjointUnion([box([0, 9], [0, 9]), box([5, 14], [5, 14])]);
    assert.deepEqual(result, [box([0, 4], [0, 9]), box([5, 9], [0, 14]), box([10, 14], [5, 14])]);
  });

  it("drops duplicates", function () {
    assert.deepEqual(disjointUnion([box([1, 2], [80, 80]), box([1, 2], [80, 80])]), [box([1, 2], [80, 80])]);
  });

  it("produces no overlaps on random input", function () {
    let seed = 7;
    const random = (limit: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % limit;
    const input = Array.from({ length: 200 }, () => {
      const a = random(100);
      const b = random(100);
      return box([a, a + random(20)], [b, b + random(20)]);
    });
    const output = disjointUnion(input);
    for (let i = 0; i < output.length; i++) {
      for (let j = i + 1; j < output.length; j++) {
        const overlap = output[i].every((interval, dimension) => interval.first <= output[j][dimension].last && output[j][dimension].first <= interval.last);
        assert.equal(overlap, false, `${JSON.stringify(output[i])} overlaps ${JSON.stringify(output[j])}`);
      }
    }
    for (const original of input) assert.equal(covers(output, original), true);
    for (const piece of output) assert.equal(covers(input, piece), true);
  });

  it("finds a hole in a cover", function () {
    assert.equal(covers([box([0, 4], [0, 9]), box([6, 9], [0, 9])], box([0, 9], [0, 9])), false);
    assert.equal(covers([box([0, 4], [0, 9]), box([5, 9], [0, 9])], box([0, 9], [0, 9])), true);
  });
});

describe("conntrack lines", function () {
  it("reads the original direction of a tcp entry", function () {
    const entry = parseConntrackLine(
      "tcp      6 431999 ESTABLISHED src=10.254.0.2 dst=192.0.2.1 sport=41992 dport=80 src=192.0.2.1 dst=192.0.2.200 sport=80 dport=41992 [ASSURED] mark=0 use=1",
    );
    assert.deepEqual(entry, {
      protocolName: "tcp",
      protocol: 6,
      source: address("10.254.0.2"),
      destination: address("192.0.2.1"),
      sourcePort: 41992,
      destinationPort: 80,
      type: undefined,
      code: undefined,
      id: undefined,
    });
    assert.deepEqual(deleteArguments(entry!), ["-D", "-f", "ipv4", "-p", "6", "--orig-src", "10.254.0.2", "--orig-dst", "192.0.2.1", "--orig-port-src", "41992", "--orig-port-dst", "80"]);
  });

  it("reads an icmp entry", function () {
    const entry = parseConntrackLine("icmp     1 29 src=10.254.0.2 dst=192.0.2.1 type=8 code=0 id=51 src=192.0.2.1 dst=192.0.2.200 type=0 code=0 id=51 mark=0 use=1");
    assert.equal(entry?.type, 8);
    assert.deepEqual(deleteArguments(entry!).slice(-6), ["--icmp-type", "8", "--icmp-code", "0", "--icmp-id", "51"]);
  });

  it("ignores the summary line", function () {
    assert.equal(parseConntrackLine("conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown."), undefined);
  });
});
