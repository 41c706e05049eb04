import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";

import {
  destinationIntervals,
  formatAddress,
  icmpInterval,
  loadCfRulesFile,
  portIntervals,
  validateSecurityGroupRules,
} from "../../provider/src/common/asg";
import { findRepoRoot } from "../helpers/cell";

function failuresFor(rules: unknown): Map<string, string> {
  const result = validateSecurityGroupRules(rules);
  assert.equal(result.ok, false, "expected a validation failure");
  return new Map(!result.ok ? result.failures.map((failure) => [failure.property, failure.reason]) : []);
}

function reasonFor(rule: Record<string, unknown>, property: string): string {
  const failures = failuresFor([{ protocol: "tcp", destination: "198.51.100.1", ports: "80", ...rule }]);
  const reason = failures.get(property);
  assert.ok(reason, `no failure for ${property}; got ${JSON.stringify([...failures])}`);
  return reason;
}

function addresses(destination: string): string[] {
  return destinationIntervals(destination).map((interval) => `${formatAddress(interval.first)}-${formatAddress(interval.last)}`);
}

describe("security group rule validation", function () {
  describe("accepted forms", function () {
    const accepted: Record<string, unknown>[] = [
      { protocol: "tcp", destination: "198.51.100.7", ports: "443" },
      { protocol: "tcp", destination: "198.51.100.0/24", ports: "8000-8080" },
      { protocol: "udp", destination: "198.51.100.10-198.51.100.20", ports: "53" },
      { protocol: "tcp", destination: "198.51.100.1,203.0.113.0/24, 192.0.2.5-192.0.2.9", ports: "80,443" },
      { protocol: "tcp", destination: "0.0.0.0/0", ports: "80, 443, 8000-8080", log: true, description: "web" },
      { protocol: "icmp", destination: "0.0.0.0/0", type: -1, code: -1 },
      { protocol: "icmp", destination: "198.51.100.1", type: 8, code: 0 },
      { protocol: "all", destination: "198.51.100.0/28" },
    ];
    for (const rule of accepted) {
      it(`accepts ${JSON.stringify(rule)}`, function () {
        assert.deepEqual(validateSecurityGroupRules([rule]), { ok: true, rules: [rule] });
      });
    }

    it("accepts an empty rule list", function () {
      assert.deepEqual(validateSecurityGroupRules([]), { ok: true, rules: [] });
    });
  });

  describe("destination", function () {
    it("rejects whitespace inside an address", function () {
      assert.equal(
        reasonFor({ destination: "198.51.100.0 /24" }, "rules[0].destination"),
        'rules[0].destination "198.51.100.0 /24" has whitespace inside "198.51.100.0 /24": remove it; only a space after a comma is allowed',
      );
    });

    it("rejects leading whitespace", function () {
      assert.match(reasonFor({ destination: " 198.51.100.1" }, "rules[0].destination"), /has whitespace inside " 198.51.100.1"/);
    });

    it("rejects a space before a comma", function () {
      assert.match(reasonFor({ destination: "198.51.100.1 ,198.51.100.2" }, "rules[0].destination"), /whitespace inside "198.51.100.1 "/);
    });

    it("rejects a reversed range with the fix", function () {
      assert.equal(
        reasonFor({ destination: "198.51.100.9-198.51.100.1" }, "rules[0].destination"),
        'rules[0].destination "198.51.100.9-198.51.100.1" is a reversed range: write the lower address first, "198.51.100.1-198.51.100.9"',
      );
    });

    it("rejects host bits in a CIDR", function () {
      assert.match(reasonFor({ destination: "198.51.100.1/24" }, "rules[0].destination"), /host bits set: write the network address "198.51.100.0\/24"/);
    });

    it("rejects a prefix length above 32", function () {
      assert.match(reasonFor({ destination: "198.51.100.0/33" }, "rules[0].destination"), /prefix length is not 0 to 32/);
    });

    it("rejects an octet above 255", function () {
      assert.match(reasonFor({ destination: "198.51.100.256" }, "rules[0].destination"), /"198.51.100.256", which is not an IPv4 address/);
    });

    it("rejects leading zeros", function () {
      assert.match(reasonFor({ destination: "198.051.100.1" }, "rules[0].destination"), /leading zero.*write "198.51.100.1"/);
    });

    it("rejects an empty list entry", function () {
      assert.match(reasonFor({ destination: "198.51.100.1,,198.51.100.2" }, "rules[0].destination"), /has an empty entry: remove the extra comma/);
    });

    it("rejects a trailing comma", function () {
      assert.match(reasonFor({ destination: "198.51.100.1," }, "rules[0].destination"), /has an empty entry/);
    });

    it("rejects an empty destination", function () {
      assert.match(reasonFor({ destination: "" }, "rules[0].destination"), /^rules\[0\]\.destination is empty: give an IPv4 address/);
    });

    it("rejects IPv6 and says why", function () {
      const reason = reasonFor({ destination: "2001:db8::/32" }, "rules[0].destination");
      assert.match(reason, /IPv6 address "2001:db8::\/32": containers on a cell have IPv6 disabled/);
    });

    it("requires a destination", function () {
      const failures = failuresFor([{ protocol: "all" }]);
      assert.match(failures.get("rules[0].destination") ?? "", /is missing: give an IPv4 address/);
    });

    it("rejects a number", function () {
      const failures = failuresFor([{ protocol: "all", destination: 3 }]);
      assert.match(failures.get("rules[0].destination") ?? "", /must be a string, not number 3/);
    });
  });

  describe("ports", function () {
    it("rejects a reversed range with the fix", function () {
      const failures = failuresFor([
        { protocol: "tcp", destination: "198.51.100.1", ports: "80" },
        { protocol: "tcp", destination: "198.51.100.1", ports: "80" },
        { protocol: "tcp", destination: "198.51.100.1", ports: "443-80" },
      ]);
      assert.equal(failures.get("rules[2].ports"), 'rules[2].ports "443-80" is a reversed range: write the lower port first, "80-443"');
    });

    it("rejects port 0", function () {
      assert.match(reasonFor({ ports: "0" }, "rules[0].ports"), /"0", which is out of range: ports are 1 to 65535/);
    });

    it("rejects port 65536", function () {
      assert.match(reasonFor({ ports: "80,65536" }, "rules[0].ports"), /"65536", which is out of range/);
    });

    it("rejects whitespace around a dash", function () {
      assert.match(reasonFor({ ports: "80 - 443" }, "rules[0].ports"), /whitespace inside "80 - 443"/);
    });

    it("rejects a word", function () {
      assert.match(reasonFor({ ports: "http" }, "rules[0].ports"), /"http", which is not a port number/);
    });

    it("rejects a number instead of a string", function () {
      assert.match(reasonFor({ ports: 80 }, "rules[0].ports"), /must be a string such as "443", "8000-8080" or "80, 443", not number 80/);
    });

    it("requires ports for tcp", function () {
      const failures = failuresFor([{ protocol: "tcp", destination: "198.51.100.1" }]);
      assert.equal(failures.get("rules[0].ports"), 'rules[0].ports is missing: protocol "tcp" needs ports, such as "443", "8000-8080" or "80, 443"');
    });

    it("requires ports for udp", function () {
      const failures = failuresFor([{ protocol: "udp", destination: "198.51.100.1" }]);
      assert.match(failures.get("rules[0].ports") ?? "", /protocol "udp" needs ports/);
    });

    it("rejects ports on all", function () {
      const failures = failuresFor([{ protocol: "all", destination: "198.51.100.1", ports: "80" }]);
      assert.equal(failures.get("rules[0].ports"), 'rules[0].ports "80" is not allowed for protocol "all": remove ports, or set protocol to "tcp" or "udp"');
    });

    it("rejects ports on icmp", function () {
      const failures = failuresFor([{ protocol: "icmp", destination: "198.51.100.1", ports: "80", type: 8, code: 0 }]);
      assert.match(failures.get("rules[0].ports") ?? "", /not allowed for protocol "icmp"/);
    });
  });

  describe("icmp, log and fields", function () {
    it("requires type and code for icmp", function () {
      const failures = failuresFor([{ protocol: "icmp", destination: "198.51.100.1" }]);
      assert.match(failures.get("rules[0].type") ?? "", /is missing: protocol "icmp" needs type and code; use -1 for any/);
      assert.match(failures.get("rules[0].code") ?? "", /is missing/);
    });

    it("rejects a type above 255", function () {
      const failures = failuresFor([{ protocol: "icmp", destination: "198.51.100.1", type: 256, code: 0 }]);
      assert.equal(failures.get("rules[0].type"), "rules[0].type 256 is out of range: use an integer from -1 (any) to 255");
    });

    it("rejects a code below -1", function () {
      const failures = failuresFor([{ protocol: "icmp", destination: "198.51.100.1", type: 8, code: -2 }]);
      assert.match(failures.get("rules[0].code") ?? "", /-2 is out of range/);
    });

    it("rejects type on tcp", function () {
      assert.match(reasonFor({ type: 8 }, "rules[0].type"), /rules\[0\]\.type 8 is only allowed for protocol "icmp", not "tcp"/);
    });

    it("rejects log on udp", function () {
      const failures = failuresFor([{ protocol: "udp", destination: "198.51.100.1", ports: "53", log: true }]);
      assert.match(failures.get("rules[0].log") ?? "", /only allowed for protocol "tcp", not "udp"/);
    });

    it("rejects an unknown protocol", function () {
      assert.match(reasonFor({ protocol: "tpc" }, "rules[0].protocol"), /"tpc" is not a protocol: use one of "tcp", "udp", "icmp" or "all"/);
    });

    it("rejects icmpv6 and says why", function () {
      const failures = failuresFor([{ protocol: "icmpv6", destination: "198.51.100.1", type: 128, code: 0 }]);
      assert.match(failures.get("rules[0].protocol") ?? "", /"icmpv6" is not supported: containers on a cell have IPv6 disabled/);
    });

    it("rejects an unknown field", function () {
      assert.match(reasonFor({ prots: "80" }, "rules[0].prots"), /rules\[0\]\.prots is not a field of a security group rule/);
    });

    it("rejects a rule that is not an object", function () {
      assert.match(failuresFor(["tcp"]).get("rules[0]") ?? "", /must be a rule object, not string "tcp"/);
    });

    it("rejects rules that are not an array", function () {
      assert.match(failuresFor({ protocol: "tcp" }).get("rules") ?? "", /must be an array of rule objects/);
    });

    it("reports every failure at once", function () {
      const failures = failuresFor([
        { protocol: "tcp", destination: "198.51.100.1", ports: "443-80" },
        { protocol: "udp", destination: "198.51.100.300", ports: "53" },
      ]);
      assert.ok(failures.has("rules[0].ports"));
      assert.ok(failures.has("rules[1].destination"));
    });
  });
});

describe("security group intervals", function () {
  it("turns one address into one interval", function () {
    assert.deepEqual(addresses("198.51.100.7"), ["198.51.100.7-198.51.100.7"]);
  });

  it("turns a CIDR into its network and broadcast addresses", function () {
    assert.deepEqual(addresses("198.51.100.0/24"), ["198.51.100.0-198.51.100.255"]);
  });

  it("covers everything for 0.0.0.0/0", function () {
    assert.deepEqual(destinationIntervals("0.0.0.0/0"), [{ first: 0, last: 2 ** 32 - 1 }]);
  });

  it("keeps every entry of a list", function () {
    assert.deepEqual(addresses("198.51.100.1, 203.0.113.8/30,192.0.2.1-192.0.2.3"), [
      "198.51.100.1-198.51.100.1",
      "203.0.113.8-203.0.113.11",
      "192.0.2.1-192.0.2.3",
    ]);
  });

  it("keeps every port of a list with spaces", function () {
    assert.deepEqual(portIntervals("80, 443"), [
      { first: 80, last: 80 },
      { first: 443, last: 443 },
    ]);
  });

  it("keeps a port range", function () {
    assert.deepEqual(portIntervals("8000-8080"), [{ first: 8000, last: 8080 }]);
  });

  it("reads icmp -1 as any", function () {
    assert.deepEqual(icmpInterval(-1), { first: 0, last: 255 });
    assert.deepEqual(icmpInterval(8), { first: 8, last: 8 });
  });

  it("throws on a destination that does not validate", function () {
    assert.throws(() => destinationIntervals("198.51.100.1 "), /whitespace/);
  });
});

describe("CF rules files", function () {
  let directory: string;

  before(function () {
    directory = mkdtempSync(path.join(os.tmpdir(), "cellfleet-asg-"));
  });

  after(function () {
    rmSync(directory, { recursive: true, force: true });
  });

  for (const name of ["dns.json", "web.json"]) {
    it(`loads examples/security-groups/${name}`, async function () {
      const result = await loadCfRulesFile(path.join(findRepoRoot(), "examples", "security-groups", name));
      assert.deepEqual(!result.ok && result.failures, false);
      assert.ok(result.ok);
      assert.ok(result.rules.length > 0);
    });
  }

  it("names the file in a failure", async function () {
    const file = path.join(directory, "bad.json");
    writeFileSync(file, JSON.stringify([{ protocol: "tcp", destination: "198.51.100.1", ports: "443-80" }]));
    const result = await loadCfRulesFile(file);
    assert.equal(result.ok, false);
    assert.match(!result.ok ? result.failures[0].reason : "", new RegExp(`^${file}: rules\\[0\\]\\.ports "443-80" is a reversed range`));
  });

  it("reports invalid JSON", async function () {
    const file = path.join(directory, "broken.json");
    writeFileSync(file, "[{");
    const result = await loadCfRulesFile(file);
    assert.match(!result.ok ? result.failures[0].reason : "", /is not valid JSON/);
  });
});
