// Provider configuration as CheckConfig, Configure and DiffConfig see it:
// text from `pulumi config set`, secrets, unknowns and the engine's own keys.
import assert from "node:assert/strict";

import {
  checkProviderConfig,
  diffProviderConfig,
  inputsFromVariables,
  parseProviderConfig,
} from "../../provider/src/plugin/config";
import { PropertyMap, Secret, UNKNOWN } from "../../provider/src/plugin/resource";

const HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBk2kO3ZtCw7rQ0nHnX9nS9aFZ2vJk2rGQm6VY3o5p0D";
const PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n-----END OPENSSH PRIVATE KEY-----\n";

function validConfig(overrides: PropertyMap = {}): PropertyMap {
  return { host: "198.18.0.2", privateKey: PRIVATE_KEY, hostKey: HOST_KEY, ...overrides };
}

function failureFor(failures: { property: string; reason: string }[], property: string) {
  return failures.find((failure) => failure.property === property);
}

describe("checkProviderConfig", () => {
  it("accepts a minimal configuration", () => {
    const { failures } = checkProviderConfig(validConfig());
    assert.deepEqual(failures, []);
  });

  it("marks privateKey secret", () => {
    const { inputs } = checkProviderConfig(validConfig());
    assert.ok(inputs.privateKey instanceof Secret);
    assert.equal(inputs.privateKey.value, PRIVATE_KEY);
  });

  it("marks passphrase secret", () => {
    const { inputs } = checkProviderConfig(validConfig({ passphrase: "pw" }));
    assert.ok(inputs.passphrase instanceof Secret);
  });

  it("marks bastion privateKey secret", () => {
    const { inputs } = checkProviderConfig(validConfig({ bastion: { host: "jump", privateKey: "k2", hostKey: HOST_KEY } }));
    const bastion = inputs.bastion as Record<string, unknown>;
    assert.ok(bastion.privateKey instanceof Secret);
    assert.equal(bastion.host, "jump");
  });

  it("keeps other secrets from the request", () => {
    const { inputs } = checkProviderConfig(validConfig({ host: new Secret("198.18.0.2") }));
    assert.ok(inputs.host instanceof Secret);
  });

  it("converts text from stack configuration", () => {
    const { inputs, failures } = checkProviderConfig(validConfig({ port: "2222", sudo: "true", dialTimeout: "2.5" }));
    assert.deepEqual(failures, []);
    assert.equal(inputs.port, 2222);
    assert.equal(inputs.sudo, true);
    assert.equal(inputs.dialTimeout, 2.5);
  });

  it("parses bastion given as JSON text", () => {
    const bastion = JSON.stringify({ host: "jump", port: 2200, privateKey: "k2", hostKey: HOST_KEY });
    const { inputs, failures } = checkProviderConfig(validConfig({ bastion }));
    assert.deepEqual(failures, []);
    assert.equal((inputs.bastion as Record<string, unknown>).port, 2200);
  });

  it("parses default groups given as JSON text", () => {
    const { inputs, failures } = checkProviderConfig(validConfig({ defaultSecurityGroups: '["dns", "web"]' }));
    assert.deepEqual(failures, []);
    assert.deepEqual(inputs.defaultSecurityGroups, ["dns", "web"]);
  });

  it("reports an invalid container subnet", () => {
    const { failures } = checkProviderConfig(validConfig({ containerSubnet: "10.254.0.0/33" }));
    assert.match(failureFor(failures, "containerSubnet")?.reason ?? "", /containerSubnet "10.254.0.0\/33" is not an IPv4 CIDR/);
  });

  it("reports a missing host key pin", () => {
    const config = validConfig();
    delete config.hostKey;
    const failure = failureFor(checkProviderConfig(config).failures, "hostKey");
    assert.ok(failure);
    assert.match(failure.reason, /not pinned/);
  });

  it("reports a port out of range", () => {
    const failure = failureFor(checkProviderConfig(validConfig({ port: 70000 })).failures, "port");
    assert.ok(failure);
    assert.equal(failure.reason, "port must be at most 65535 (got 70000)");
  });

  it("reports a port that is not a number", () => {
    const failure = failureFor(checkProviderConfig(validConfig({ port: "ssh" })).failures, "port");
    assert.ok(failure);
    assert.equal(failure.reason, "port must be a number, not a string");
  });

  it("reports a fractional port", () => {
    const failure = failureFor(checkProviderConfig(validConfig({ port: 22.5 })).failures, "port");
    assert.ok(failure);
    assert.match(failure.reason, /whole number/);
  });

  it("reports a missing host", () => {
    const config = validConfig();
    delete config.host;
    assert.equal(failureFor(checkProviderConfig(config).failures, "host")?.reason, "host is required");
  });

  it("reports an unknown key with the valid ones", () => {
    const failure = failureFor(checkProviderConfig(validConfig({ hots: "x" })).failures, "hots");
    assert.ok(failure);
    assert.match(failure.reason, /unknown configuration key "hots".*host, port/);
  });

  it("reports bastion problems by nested path", () => {
    const { failures } = checkProviderConfig(validConfig({ bastion: { host: "jump", privateKey: "k2", port: 0 } }));
    assert.ok(failureFor(failures, "bastion.port"));
    assert.ok(failureFor(failures, "bastion.hostKey"));
  });

  it("never quotes a secret value in a failure", () => {
    const { failures } = checkProviderConfig(validConfig({ privateKey: "", passphrase: 12345 }));
    const text = JSON.stringify(failures);
    assert.ok(failureFor(failures, "privateKey"));
    assert.ok(failureFor(failures, "passphrase"));
    assert.ok(!text.includes("12345"), text);
  });

  it("passes the engine's version key through", () => {
    const { inputs, failures } = checkProviderConfig(validConfig({ version: "0.1.0" }));
    assert.deepEqual(failures, []);
    assert.equal(inputs.version, "0.1.0");
  });

  it("skips checks of unknown values", () => {
    const { inputs, failures } = checkProviderConfig(validConfig({ host: UNKNOWN, port: UNKNOWN }));
    assert.deepEqual(failures, []);
    assert.equal(inputs.host, UNKNOWN);
  });

  it("skips the pin check when knownHostsFile is unknown", () => {
    const config = validConfig({ knownHostsFile: UNKNOWN });
    delete config.hostKey;
    assert.deepEqual(checkProviderConfig(config).failures, []);
  });

  it("still reports known problems beside unknowns", () => {
    const { failures } = checkProviderConfig(validConfig({ host: UNKNOWN, dialRetries: 1000 }));
    assert.deepEqual(
      failures.map((failure) => failure.property),
      ["dialRetries"],
    );
  });
});

describe("parseProviderConfig", () => {
  it("applies defaults", () => {
    const parsed = parseProviderConfig(validConfig());
    assert.equal(parsed.state, "known");
    if (parsed.state !== "known") return;
    assert.equal(parsed.config.port, 22);
    assert.equal(parsed.config.user, "root");
  });

  it("collects secret strings for redaction", () => {
    const parsed = parseProviderConfig(validConfig({ passphrase: "pw-123", bastion: { host: "jump", privateKey: "k2-secret", hostKey: HOST_KEY } }));
    assert.equal(parsed.state, "known");
    if (parsed.state !== "known") return;
    assert.deepEqual([...parsed.secrets].sort(), [PRIVATE_KEY, "k2-secret", "pw-123"].sort());
  });

  it("ignores the engine's version key", () => {
    assert.equal(parseProviderConfig(validConfig({ version: "0.1.0" })).state, "known");
  });

  it("reports unknown values as unknown", () => {
    assert.equal(parseProviderConfig(validConfig({ host: UNKNOWN })).state, "unknown");
  });

  it("reports invalid values with failures", () => {
    const parsed = parseProviderConfig(validConfig({ port: 0 }));
    assert.equal(parsed.state, "invalid");
    if (parsed.state !== "invalid") return;
    assert.equal(parsed.failures[0].property, "port");
  });
});

describe("inputsFromVariables", () => {
  it("strips the package prefix", () => {
    assert.deepEqual(inputsFromVariables([["cellfleet:config:port", "22"], ["cellfleet:host", "h"]]), { port: "22", host: "h" });
  });
});

describe("diffProviderConfig", () => {
  it("finds no change in equal configs", () => {
    const diff = diffProviderConfig(validConfig(), validConfig());
    assert.equal(diff.changes, false);
    assert.deepEqual(diff.detailedDiff, {});
  });

  it("treats text and numbers alike", () => {
    assert.equal(diffProviderConfig(validConfig({ port: 22 }), validConfig({ port: "22" })).changes, false);
  });

  it("ignores secretness alone", () => {
    assert.equal(diffProviderConfig(validConfig(), validConfig({ privateKey: new Secret(PRIVATE_KEY) })).changes, false);
  });

  it("reports a changed port as an update", () => {
    const diff = diffProviderConfig(validConfig({ port: 22 }), validConfig({ port: 2222 }));
    assert.equal(diff.changes, true);
    assert.deepEqual(diff.changedKeys, ["port"]);
    assert.deepEqual(diff.detailedDiff, { port: { kind: "update", inputDiff: true } });
  });

  it("reports added and removed keys", () => {
    const diff = diffProviderConfig(validConfig({ sudo: true }), validConfig({ user: "ops" }));
    assert.deepEqual(diff.detailedDiff, { sudo: { kind: "delete", inputDiff: true }, user: { kind: "add", inputDiff: true } });
  });

  it("reports bastion changes by nested path", () => {
    const before = validConfig({ bastion: { host: "jump-1", privateKey: "k", hostKey: HOST_KEY } });
    const after = validConfig({ bastion: { host: "jump-2", privateKey: "k", hostKey: HOST_KEY } });
    const diff = diffProviderConfig(before, after);
    assert.deepEqual(diff.detailedDiff, { "bastion.host": { kind: "update", inputDiff: true } });
    assert.deepEqual(diff.changedKeys, ["bastion"]);
  });

  it("reports an unknown new value as an update", () => {
    const diff = diffProviderConfig(validConfig(), validConfig({ host: UNKNOWN }));
    assert.deepEqual(diff.detailedDiff, { host: { kind: "update", inputDiff: true } });
  });

  it("ignores the engine's version key", () => {
    assert.equal(diffProviderConfig(validConfig({ version: "0.1.0" }), validConfig({ version: "0.2.0" })).changes, false);
  });

  it("drops paths under ignoreChanges", () => {
    const before = validConfig({ port: 22, bastion: { host: "a", privateKey: "k", hostKey: HOST_KEY } });
    const after = validConfig({ port: 23, bastion: { host: "b", privateKey: "k", hostKey: HOST_KEY } });
    const diff = diffProviderConfig(before, after, ["bastion"]);
    assert.deepEqual(diff.changedKeys, ["port"]);
  });
});
