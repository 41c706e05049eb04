import assert from "node:assert/strict";

import { validateContainerInputs } from "../../provider/src/common/container-spec";
import {
  cellNetworkConfigSchema,
  containerSubnetProblem,
  gatewayOf,
  maximumBurstBytes,
  minimumBurstBytes,
  parseBitRate,
  parseIpv4,
  parseIpv4Prefix,
} from "../../provider/src/common/network-spec";

const base = { image: "rootfs.tar", command: ["/bin/true"] };

function failuresFor(inputs: Record<string, unknown>): { property: string; reason: string }[] {
  const result = validateContainerInputs({ ...base, ...inputs });
  assert.equal(result.ok, false, "expected a validation failure");
  return result.ok ? [] : result.failures;
}

function reasonFor(inputs: Record<string, unknown>, property: string): string {
  const failure = failuresFor(inputs).find((entry) => entry.property === property);
  assert.ok(failure, `no failure for ${property}: ${JSON.stringify(failuresFor(inputs))}`);
  return failure.reason;
}

describe("network inputs", function () {
  describe("defaults", function () {
    it("adds empty network inputs", function () {
      const result = validateContainerInputs(base);
      assert.ok(result.ok);
      assert.deepEqual(result.spec.ports, []);
      assert.deepEqual(result.spec.securityGroups, []);
      assert.deepEqual(result.spec.labels, {});
      assert.equal(result.spec.bandwidth, undefined);
    });
  });

  describe("ports", function () {
    it("defaults the protocol to tcp", function () {
      const result = validateContainerInputs({ ...base, ports: [{ containerPort: 8080 }, { containerPort: 53, cellPort: 5353, protocol: "udp" }] });
      assert.ok(result.ok);
      assert.deepEqual(result.spec.ports, [
        { containerPort: 8080, protocol: "tcp" },
        { containerPort: 53, cellPort: 5353, protocol: "udp" },
      ]);
    });

    for (const port of [0, 65536, -1]) {
      it(`rejects container port ${port}`, function () {
        assert.match(reasonFor({ ports: [{ containerPort: port }] }, "ports.0.containerPort"), /containerPort must be from 1 to 65535/);
      });
    }

    it("rejects a fractional cell port", function () {
      assert.match(reasonFor({ ports: [{ containerPort: 80, cellPort: 80.5 }] }, "ports.0.cellPort"), /cellPort must be a whole number/);
    });

    it("requires the container port", function () {
      assert.match(reasonFor({ ports: [{ cellPort: 80 }] }, "ports.0.containerPort"), /containerPort is required/);
    });

    it("rejects an unknown protocol", function () {
      assert.match(reasonFor({ ports: [{ containerPort: 80, protocol: "sctp" }] }, "ports.0.protocol"), /protocol must be "tcp" or "udp"/);
    });

    it("rejects a container port mapped twice", function () {
      assert.match(reasonFor({ ports: [{ containerPort: 80 }, { containerPort: 80, cellPort: 8080 }] }, "ports.1"), /ports\[1\] maps tcp\/80 again \(already in ports\[0\]\)/);
    });

    it("rejects a cell port used twice", function () {
      const ports = [
        { containerPort: 80, cellPort: 8080 },
        { containerPort: 81, cellPort: 8080 },
      ];
      assert.match(reasonFor({ ports }, "ports.1.cellPort"), /ports\[1\] uses cell port tcp\/8080 again/);
    });

    it("accepts one port number for tcp and udp", function () {
      const result = validateContainerInputs({ ...base, ports: [{ containerPort: 53 }, { containerPort: 53, protocol: "udp" }] });
      assert.ok(result.ok);
    });

    it("rejects unknown port fields", function () {
      assert.ok(failuresFor({ ports: [{ containerPort: 80, hostPort: 80 }] }).some((failure) => /hostPort/.test(failure.reason)));
    });
  });

  describe("bandwidth", function () {
    it("parses rate in bits and burst in bytes", function () {
      const result = validateContainerInputs({ ...base, bandwidth: { rate: "10Mbit", burst: "64KiB" } });
      assert.ok(result.ok);
      assert.deepEqual(result.spec.bandwidth, { rate: 10_000_000, burst: 65536 });
    });

    it("requires burst with rate", function () {
      assert.match(reasonFor({ bandwidth: { rate: "10Mbit" } }, "bandwidth.burst"), /bandwidth\.burst/);
    });

    it("requires rate with burst", function () {
      assert.match(reasonFor({ bandwidth: { burst: "64KiB" } }, "bandwidth.rate"), /bandwidth\.rate/);
    });

    it("rejects a rate in bytes per second", function () {
      assert.match(reasonFor({ bandwidth: { rate: "10MB", burst: "64KiB" } }, "bandwidth.rate"), /bandwidth\.rate "10MB" is not a rate: use bits per second/);
    });

    it("names the minimum burst", function () {
      // 100 Mbit/s at 250 Hz: 100e6 / 8 / 250 = 50000 bytes per tick.
      const reason = reasonFor({ bandwidth: { rate: "100Mbit", burst: "16KiB" } }, "bandwidth.burst");
      assert.match(reason, /bandwidth\.burst is 16384 bytes, below the minimum of 50000 bytes for a rate of 100000000 bit\/s/);
      assert.match(reason, /250 Hz/);
    });

    it("requires one full frame at low rates", function () {
      assert.match(reasonFor({ bandwidth: { rate: "64kbit", burst: 1000 } }, "bandwidth.burst"), /minimum of 1514 bytes/);
    });

    it("rejects a burst of over a minute of traffic", function () {
      assert.match(reasonFor({ bandwidth: { rate: "64kbit", burst: "1MiB" } }, "bandwidth.burst"), /above the maximum of 480000 bytes/);
    });

    it("rejects a rate below 8 kbit", function () {
      assert.match(reasonFor({ bandwidth: { rate: "1kbit", burst: 2000 } }, "bandwidth.rate"), /is 1000 bit\/s: give 8 kbit\/s to 100 Gbit\/s/);
    });

    it("rejects a rate of the wrong type", function () {
      assert.match(reasonFor({ bandwidth: { rate: true, burst: 2000 } }, "bandwidth.rate"), /number of bits per second/);
    });
  });

  describe("security groups and labels", function () {
    it("rejects an invalid group name", function () {
      assert.match(reasonFor({ securityGroups: ["ok", "bad name"] }, "securityGroups.1"), /securityGroups\[1\] "bad name" is not a security group name/);
    });

    it("rejects a group listed twice", function () {
      assert.match(reasonFor({ securityGroups: ["dns", "dns"] }, "securityGroups.1"), /listed twice/);
    });

    it("accepts labels", function () {
      const result = validateContainerInputs({ ...base, labels: { app: "web", "team/owner": "ops-1", empty: "" } });
      assert.ok(result.ok);
    });

    it("rejects an invalid label key", function () {
      assert.match(reasonFor({ labels: { "-app": "web" } }, "labels.-app"), /label key "-app" is invalid/);
    });

    it("rejects an invalid label value", function () {
      assert.match(reasonFor({ labels: { app: "web server" } }, "labels.app"), /label app="web server" has an invalid value/);
    });
  });
});

describe("bit rates and token buckets", function () {
  it("parses decimal bit units", function () {
    assert.equal(parseBitRate("10Mbit"), 10_000_000);
    assert.equal(parseBitRate("1.5gbit"), 1_500_000_000);
    assert.equal(parseBitRate("512 kbit"), 512_000);
    assert.equal(parseBitRate(8000), 8000);
  });

  it("rejects byte units and bare numbers in text", function () {
    assert.equal(parseBitRate("10Mbps"), undefined);
    assert.equal(parseBitRate("10MB"), undefined);
    assert.equal(parseBitRate("10"), undefined);
  });

  it("sizes the minimum bucket by rate and frame", function () {
    assert.equal(minimumBurstBytes(8_000_000), 4000);
    assert.equal(minimumBurstBytes(64_000), 1514);
  });

  it("caps the maximum bucket below 4 GiB", function () {
    assert.equal(maximumBurstBytes(100e9), 2 ** 32 - 1);
  });
});

describe("cell network settings", function () {
  it("defaults the subnet and groups", function () {
    assert.deepEqual(cellNetworkConfigSchema.parse({}), { containerSubnet: "10.254.0.0/22", defaultSecurityGroups: [] });
  });

  it("puts the gateway on the first host address", function () {
    assert.equal(gatewayOf("10.254.0.0/22"), "10.254.0.1");
  });

  const problems: [string, RegExp][] = [
    ["10.254.0.0", /is not an IPv4 CIDR/],
    ["10.254.0.0/33", /is not an IPv4 CIDR/],
    ["10.254.0.1/22", /has host bits set: use the network address, "10\.254\.0\.0\/22"/],
    ["10.0.0.0/7", /prefix length \/7: use \/8 to \/29/],
    ["10.254.0.0/30", /prefix length \/30/],
    ["127.0.0.0/16", /overlaps loopback/],
    ["224.1.0.0/16", /overlaps multicast/],
    ["010.254.0.0/22", /is not an IPv4 CIDR/],
  ];
  for (const [subnet, pattern] of problems) {
    it(`rejects ${subnet}`, function () {
      assert.match(containerSubnetProblem(subnet) ?? "", pattern);
    });
  }

  it("accepts private ranges", function () {
    for (const subnet of ["10.254.0.0/22", "172.16.0.0/12", "192.168.5.0/24", "100.64.0.0/16"]) assert.equal(containerSubnetProblem(subnet), undefined, subnet);
  });

  it("rejects a duplicate default group", function () {
    assert.equal(cellNetworkConfigSchema.safeParse({ defaultSecurityGroups: ["dns", "dns"] }).success, false);
  });

  it("parses prefixes", function () {
    assert.deepEqual(parseIpv4Prefix("10.0.0.0/30"), { network: parseIpv4("10.0.0.0"), prefixLength: 30, first: parseIpv4("10.0.0.0"), last: parseIpv4("10.0.0.3") });
    assert.equal(parseIpv4Prefix("10.0.0.256"), undefined);
  });
});
