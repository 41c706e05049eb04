import assert from "node:assert/strict";

import { classifyNftFailure, type Exec, ExecNftRunner, FakeNftRunner, NftError, type TableRef, Transaction } from "../../provider/src/agent/network/nft";

const table: TableRef = { family: "inet", name: "demo" };

function demoTransaction(): Transaction {
  return new Transaction()
    .add({ kind: "table", ...table })
    .delete({ kind: "table", ...table })
    .add({ kind: "table", ...table, comment: "demo" })
    .add({ kind: "chain", table, name: "target" })
    .add({ kind: "chain", table, name: "entry", type: "filter", hook: "forward", priority: 0, policy: "accept" })
    .add({ kind: "set", table, name: "allowed", typeof: "ip saddr . tcp dport", flags: ["interval"] })
    .add({ kind: "map", table, name: "by_source", typeof: "ip saddr : verdict" })
    .add({ kind: "rule", table, chain: "entry", rule: "ip saddr . tcp dport @allowed accept", comment: "allow list" })
    .add({ kind: "rule", table, chain: "entry", rule: "goto target", comment: "rest" })
    .add({ kind: "element", table, set: "allowed", key: ["198.51.100.1", { range: [80, 443] }] })
    .add({ kind: "element", table, set: "allowed", key: [{ prefix: { addr: "198.51.100.0", len: 24 } }, 22] })
    .add({ kind: "element", table, set: "by_source", key: ["198.51.100.1"], value: { goto: { target: "target" } } });
}

describe("nft transaction", function () {
  it("renders one script in order", function () {
    assert.equal(
      demoTransaction().render(),
      [
        "add table inet demo",
        "delete table inet demo",
        'add table inet demo { comment "demo" ; }',
        "add chain inet demo target",
        "add chain inet demo entry { type filter hook forward priority 0 ; policy accept ; }",
        "add set inet demo allowed { typeof ip saddr . tcp dport ; flags interval ; }",
        "add map inet demo by_source { typeof ip saddr : verdict ; }",
        'add rule inet demo entry ip saddr . tcp dport @allowed accept comment "allow list"',
        'add rule inet demo entry goto target comment "rest"',
        "add element inet demo allowed { 198.51.100.1 . 80-443, 198.51.100.0/24 . 22 }",
        "add element inet demo by_source { 198.51.100.1 : goto target }",
        "",
      ].join("\n"),
    );
  });

  it("quotes string values", function () {
    const tx = new Transaction()
      .add({ kind: "table", family: "bridge", name: "demo" })
      .add({ kind: "set", table: { family: "bridge", name: "demo" }, name: "ports", type: "ifname" })
      .add({ kind: "element", table: { family: "bridge", name: "demo" }, set: "ports", key: ["veth1"] });
    assert.match(tx.render(), /add element bridge demo ports \{ "veth1" \}/);
  });

  const invalid: [string, (tx: Transaction) => Transaction, RegExp][] = [
    ["a chain before its table", (tx) => tx.add({ kind: "chain", table, name: "entry" }), /table inet demo is not defined earlier/],
    ["a keyword as a name", (tx) => tx.add({ kind: "table", ...table }).add({ kind: "chain", table, name: "masquerade" }), /is an nft keyword/],
    ["a name with a hyphen", (tx) => tx.add({ kind: "table", ...table }).add({ kind: "chain", table, name: "a-b" }), /is invalid/],
    ["a hook without a priority", (tx) => tx.add({ kind: "table", ...table }).add({ kind: "chain", table, name: "entry", type: "filter", hook: "input" }), /type, hook and priority together/],
    ["a nat chain on forward", (tx) => tx.add({ kind: "table", ...table }).add({ kind: "chain", table, name: "entry", type: "nat", hook: "forward", priority: 0 }), /nat chain cannot use hook forward/],
    ["a rule in an unknown chain", (tx) => tx.add({ kind: "table", ...table }).add({ kind: "rule", table, chain: "entry", rule: "accept" }), /chain entry is not defined earlier/],
    ["a second command in a rule", (tx) => tx.add({ kind: "table", ...table }).add({ kind: "chain", table, name: "entry" }).add({ kind: "rule", table, chain: "entry", rule: "accept; flush ruleset" }), /newline, semicolon or hash/],
    ["a goto to a later chain", (tx) => tx.add({ kind: "table", ...table }).add({ kind: "chain", table, name: "entry" }).add({ kind: "rule", table, chain: "entry", rule: "goto later" }), /target chain later is not defined earlier/],
    ["a quote in a comment", (tx) => tx.add({ kind: "table", ...table, comment: 'say "hi"' }), /contains a quote/],
    [
      "an element with too few fields",
      (tx) => tx.add({ kind: "table", ...table }).add({ kind: "set", table, name: "pairs", typeof: "ip saddr . tcp dport" }).add({ kind: "element", table, set: "pairs", key: ["198.51.100.1"] }),
      /the key has 1 fields but pairs has 2/,
    ],
    [
      "a range in a set without interval",
      (tx) => tx.add({ kind: "table", ...table }).add({ kind: "set", table, name: "ports", typeof: "tcp dport" }).add({ kind: "element", table, set: "ports", key: [{ range: [1, 2] }] }),
      /has no interval flag/,
    ],
    [
      "a map element without a value",
      (tx) => tx.add({ kind: "table", ...table }).add({ kind: "map", table, name: "m", typeof: "ip saddr : verdict" }).add({ kind: "element", table, set: "m", key: ["198.51.100.1"] }),
      /needs a value/,
    ],
    [
      "a chain defined twice",
      (tx) => tx.add({ kind: "table", ...table }).add({ kind: "chain", table, name: "entry" }).add({ kind: "chain", table, name: "entry" }),
      /already defined/,
    ],
  ];
  for (const [name, build, pattern] of invalid) {
    it(`rejects ${name}`, function () {
      const tx = build(new Transaction());
      assert.ok(tx.error instanceof NftError);
      assert.equal(tx.error.code, "INVALID");
      assert.match(tx.error.message, pattern);
      assert.throws(() => tx.render(), pattern);
    });
  }

  it("keeps the first error and ignores later operations", function () {
    const tx = new Transaction().add({ kind: "chain", table, name: "entry" }).add({ kind: "table", ...table });
    assert.match(tx.error?.message ?? "", /cannot add chain entry/);
    assert.equal(tx.operations.length, 0);
  });

  it("splits long element lists into lines of 500", function () {
    const tx = new Transaction().add({ kind: "table", ...table }).add({ kind: "set", table, name: "ports", typeof: "tcp dport" });
    for (let port = 1; port <= 1200; port++) tx.add({ kind: "element", table, set: "ports", key: [port] });
    const lines = tx.render().trim().split("\n").filter((line) => line.startsWith("add element"));
    assert.equal(lines.length, 3);
  });
});

describe("nft failures", function () {
  const cases: [string, string][] = [
    ["/dev/stdin:3:1-5: Error: syntax error, unexpected junk", "SYNTAX"],
    ["Error: Could not process rule: No such file or directory\ndelete table inet cellfleet", "NOT_FOUND"],
    ["Error: Could not process rule: File exists\nadd element ...", "EXISTS"],
    ["Error: Could not process rule: Operation not supported", "UNSUPPORTED"],
    ["Error: Could not process rule: Operation not permitted", "PERMISSION"],
    ["Error: something new", "FAILED"],
  ];
  for (const [stderr, code] of cases) {
    it(`classifies ${code}`, function () {
      const error = classifyNftFailure("-f (apply the ruleset)", stderr, 1);
      assert.equal(error.code, code);
      assert.match(error.message, /^nft -f \(apply the ruleset\) failed: /);
    });
  }
});

describe("nft runners", function () {
  it("pipes the script into one nft -f -", async function () {
    const calls: { argv: string[]; input?: string }[] = [];
    const exec: Exec = async (argv, input) => {
      calls.push({ argv, input });
      return { code: 0, stdout: "", stderr: "" };
    };
    const tx = demoTransaction();
    await new ExecNftRunner({ command: ["ip", "netns", "exec", "demo", "nft"], exec }).apply(tx);
    assert.deepEqual(calls, [{ argv: ["ip", "netns", "exec", "demo", "nft", "-f", "-"], input: tx.render() }]);
  });

  it("reports a failed apply with its class", async function () {
    const exec: Exec = async () => ({ code: 1, stdout: "", stderr: "Error: Could not process rule: Operation not supported\n" });
    await assert.rejects(new ExecNftRunner({ exec }).apply(demoTransaction()), (error: NftError) => error.code === "UNSUPPORTED");
  });

  it("reports a missing nft binary", async function () {
    const exec: Exec = async () => {
      throw Object.assign(new Error("spawn nft ENOENT"), { code: "ENOENT" });
    };
    await assert.rejects(new ExecNftRunner({ exec }).apply(demoTransaction()), (error: NftError) => error.code === "MISSING_BINARY" && /install the nftables package/.test(error.message));
  });

  it("lists tables as JSON and skips missing ones", async function () {
    const calls: string[][] = [];
    const exec: Exec = async (argv) => {
      calls.push(argv);
      if (argv.includes("bridge")) return { code: 1, stdout: "", stderr: "Error: No such file or directory\n" };
      return { code: 0, stdout: JSON.stringify({ nftables: [{ metainfo: { version: "1.0.6" } }, { table: { family: "inet", name: "demo" } }] }), stderr: "" };
    };
    const objects = await new ExecNftRunner({ exec }).list([table, { family: "bridge", name: "demo" }]);
    assert.deepEqual(calls[0], ["nft", "-j", "-n", "list", "table", "inet", "demo"]);
    assert.deepEqual(objects, [{ table: { family: "inet", name: "demo" } }]);
  });

  it("fake keeps the old state when a transaction fails", async function () {
    const fake = new FakeNftRunner();
    await fake.apply(demoTransaction());
    const before = await fake.list([table]);
    // Deleting a table that does not exist fails the whole transaction, as in the kernel.
    const failing = new Transaction()
      .add({ kind: "table", family: "inet", name: "other" })
      .delete({ kind: "table", ...table })
      .delete({ kind: "table", family: "inet", name: "ghost" });
    await assert.rejects(fake.apply(failing), (error: NftError) => error.code === "NOT_FOUND");
    assert.deepEqual(await fake.list([table]), before);
    assert.deepEqual(await fake.list([{ family: "inet", name: "other" }]), []);
  });

  it("fake fails on demand", async function () {
    const fake = new FakeNftRunner();
    fake.failNextApply();
    await assert.rejects(fake.apply(demoTransaction()), /injected failure/);
    assert.deepEqual(await fake.list([table]), []);
    await fake.apply(demoTransaction());
    assert.equal(fake.applied.length, 1);
  });

  it("fake lists elements as nft -j -n does", async function () {
    const fake = new FakeNftRunner();
    await fake.apply(demoTransaction());
    const set = (await fake.list([table])).find((object) => object.set?.name === "allowed");
    assert.deepEqual(set?.set.elem, [{ concat: ["198.51.100.1", { range: [80, 443] }] }, { concat: [{ prefix: { addr: "198.51.100.0", len: 24 } }, 22] }]);
  });
});
