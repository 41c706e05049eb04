// Wire encoding between google.protobuf.Struct and PropertyMap: every
// signature the engine sends, and what the plugin sends back.
import assert from "node:assert/strict";

import { Struct, Value } from "google-protobuf/google/protobuf/struct_pb";

import { PropertyMap, Secret, UNKNOWN } from "../../provider/src/plugin/resource";
import {
  annotateSecrets,
  ARCHIVE_SIGNATURE,
  ASSET_SIGNATURE,
  collectSecretStrings,
  containsSecrets,
  containsUnknowns,
  decodeStruct,
  decodeValue,
  encodeStruct,
  encodeValue,
  formatPropertyPath,
  OUTPUT_VALUE_SIGNATURE,
  RESOURCE_REFERENCE_SIGNATURE,
  SECRET_SIGNATURE,
  SIGNATURE_KEY,
  UNKNOWN_VALUE,
  unwrapSecrets,
  WireError,
} from "../../provider/src/plugin/wire";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function decodeJson(json: Record<string, Json>): PropertyMap {
  return decodeStruct(Struct.fromJavaScript(json as Parameters<typeof Struct.fromJavaScript>[0]));
}

function encodeJson(map: PropertyMap): Record<string, unknown> {
  return encodeStruct(map).toJavaScript();
}

const secret = (value: Json) => ({ [SIGNATURE_KEY]: SECRET_SIGNATURE, value });

describe("wire decoding", () => {
  it("decodes plain values", () => {
    const map = decodeJson({ text: "a", flag: true, none: null, list: ["x", 2], nested: { key: "v" } });
    assert.deepEqual(map, { text: "a", flag: true, none: null, list: ["x", 2], nested: { key: "v" } });
  });

  it("decodes numbers as doubles", () => {
    const map = decodeJson({ integer: 42, fraction: 1.5, large: 2 ** 53, negative: -7 });
    assert.equal(map.integer, 42);
    assert.equal(map.fraction, 1.5);
    assert.equal(map.large, 2 ** 53);
    assert.equal(map.negative, -7);
  });

  it("decodes a value with no kind as null", () => {
    assert.equal(decodeValue(new Value()), null);
  });

  it("decodes a missing struct as an empty map", () => {
    assert.deepEqual(decodeStruct(undefined), {});
  });

  it("decodes the unknown string to UNKNOWN", () => {
    const map = decodeJson({ host: UNKNOWN_VALUE, list: ["a", UNKNOWN_VALUE] });
    assert.equal(map.host, UNKNOWN);
    assert.deepEqual(map.list, ["a", UNKNOWN]);
  });

  it("decodes a secret object to Secret", () => {
    const map = decodeJson({ token: secret("hunter2") });
    assert.ok(map.token instanceof Secret);
    assert.equal(map.token.value, "hunter2");
  });

  it("decodes a secret inside a secret once", () => {
    const map = decodeJson({ token: secret(secret("hunter2")) });
    assert.ok(map.token instanceof Secret);
    assert.equal(map.token.value, "hunter2");
  });

  it("decodes a secret object value", () => {
    const map = decodeJson({ env: secret({ A: "1" }) });
    assert.ok(map.env instanceof Secret);
    assert.deepEqual(map.env.value, { A: "1" });
  });

  it("decodes a secret unknown", () => {
    const map = decodeJson({ token: secret(UNKNOWN_VALUE) });
    assert.ok(map.token instanceof Secret);
    assert.equal(map.token.value, UNKNOWN);
  });

  it("decodes a known output value", () => {
    const map = decodeJson({ host: { [SIGNATURE_KEY]: OUTPUT_VALUE_SIGNATURE, value: "cell-1", dependencies: ["urn:a"] } });
    assert.equal(map.host, "cell-1");
  });

  it("decodes an output value without value as UNKNOWN", () => {
    const map = decodeJson({ host: { [SIGNATURE_KEY]: OUTPUT_VALUE_SIGNATURE, dependencies: ["urn:a"] } });
    assert.equal(map.host, UNKNOWN);
  });

  it("decodes a secret output value", () => {
    const map = decodeJson({ key: { [SIGNATURE_KEY]: OUTPUT_VALUE_SIGNATURE, value: "k", secret: true } });
    assert.ok(map.key instanceof Secret);
    assert.equal(map.key.value, "k");
  });

  it("decodes a secret unknown output value", () => {
    const map = decodeJson({ key: { [SIGNATURE_KEY]: OUTPUT_VALUE_SIGNATURE, secret: true } });
    assert.ok(map.key instanceof Secret);
    assert.equal(map.key.value, UNKNOWN);
  });

  it("decodes a resource reference to its id", () => {
    const map = decodeJson({ ref: { [SIGNATURE_KEY]: RESOURCE_REFERENCE_SIGNATURE, urn: "urn:pulumi:s::p::t::n", id: "abc" } });
    assert.equal(map.ref, "abc");
  });

  it("decodes a reference with empty id as UNKNOWN", () => {
    const map = decodeJson({ ref: { [SIGNATURE_KEY]: RESOURCE_REFERENCE_SIGNATURE, urn: "urn:pulumi:s::p::t::n", id: "" } });
    assert.equal(map.ref, UNKNOWN);
  });

  it("decodes a component reference to its URN", () => {
    const map = decodeJson({ ref: { [SIGNATURE_KEY]: RESOURCE_REFERENCE_SIGNATURE, urn: "urn:pulumi:s::p::t::n" } });
    assert.equal(map.ref, "urn:pulumi:s::p::t::n");
  });

  it("rejects an asset and names the property", () => {
    assert.throws(
      () => decodeJson({ files: [{ [SIGNATURE_KEY]: ASSET_SIGNATURE, path: "/tmp/x" }] }),
      (error: unknown) => error instanceof WireError && error.path === "files[0]" && /assets and archives/.test(error.message),
    );
  });

  it("rejects an archive", () => {
    assert.throws(() => decodeJson({ bundle: { [SIGNATURE_KEY]: ARCHIVE_SIGNATURE, path: "/tmp/x" } }), WireError);
  });

  it("rejects an unknown signature", () => {
    assert.throws(
      () => decodeJson({ odd: { [SIGNATURE_KEY]: "ffff" } }),
      (error: unknown) => error instanceof WireError && error.path === "odd" && error.message.includes('"ffff"'),
    );
  });
});

describe("wire encoding", () => {
  it("encodes Secret as a secret object", () => {
    assert.deepEqual(encodeJson({ token: new Secret("hunter2") }), { token: secret("hunter2") });
  });

  it("encodes a nested Secret once", () => {
    assert.deepEqual(encodeJson({ token: new Secret(new Secret("x")) }), { token: secret("x") });
  });

  it("encodes UNKNOWN as the unknown string", () => {
    assert.deepEqual(encodeJson({ pid: UNKNOWN, env: { A: UNKNOWN } }), { pid: UNKNOWN_VALUE, env: { A: UNKNOWN_VALUE } });
  });

  it("encodes a secret unknown", () => {
    assert.deepEqual(encodeJson({ token: new Secret(UNKNOWN) }), { token: secret(UNKNOWN_VALUE) });
  });

  it("leaves out undefined keys", () => {
    const map = { a: "x", b: undefined } as unknown as PropertyMap;
    assert.deepEqual(encodeJson(map), { a: "x" });
  });

  it("encodes numbers as doubles", () => {
    const value = encodeValue(3);
    assert.equal(value.getKindCase(), Value.KindCase.NUMBER_VALUE);
    assert.equal(value.getNumberValue(), 3);
  });

  it("rejects a non-finite number with its path", () => {
    assert.throws(
      () => encodeStruct({ limits: { cpu: Number.NaN } }),
      (error: unknown) => error instanceof WireError && error.path === "limits.cpu",
    );
  });

  it("rejects a class instance", () => {
    const map = { when: new Date(0) } as unknown as PropertyMap;
    assert.throws(() => encodeStruct(map), /a Date cannot be sent/);
  });

  it("round-trips secrets, unknowns and nesting", () => {
    const map: PropertyMap = {
      image: "/images/a.tar",
      command: ["/bin/sh", new Secret("-c")],
      env: { A: "1", TOKEN: new Secret("t") },
      pid: UNKNOWN,
      memoryBytes: 268435456,
      running: true,
      reason: null,
    };
    assert.deepEqual(decodeStruct(encodeStruct(map)), map);
  });
});

describe("wire inspection", () => {
  it("formats property paths", () => {
    assert.equal(formatPropertyPath(["env", "TOKEN"]), "env.TOKEN");
    assert.equal(formatPropertyPath(["command", 0]), "command[0]");
    assert.equal(formatPropertyPath(["env", "MY-VAR"]), 'env["MY-VAR"]');
    assert.equal(formatPropertyPath(["a.b"]), '["a.b"]');
  });

  it("unwraps secrets and lists their paths", () => {
    const { values, secretPaths } = unwrapSecrets({
      env: { TOKEN: new Secret("t"), PLAIN: "p", "MY-KEY": new Secret("k") },
      command: ["/bin/sh", new Secret("-c")],
      bastion: new Secret({ privateKey: new Secret("pk"), host: "h" }),
      pid: UNKNOWN,
    });
    assert.deepEqual(values, {
      env: { TOKEN: "t", PLAIN: "p", "MY-KEY": "k" },
      command: ["/bin/sh", "-c"],
      bastion: { privateKey: "pk", host: "h" },
      pid: UNKNOWN,
    });
    assert.deepEqual([...secretPaths].sort(), ['env["MY-KEY"]', "bastion", "command[1]", "env.TOKEN"].sort());
  });

  it("finds unknowns inside secrets and arrays", () => {
    assert.equal(containsUnknowns({ a: new Secret(UNKNOWN) }), true);
    assert.equal(containsUnknowns({ a: ["x", { b: UNKNOWN }] }), true);
    assert.equal(containsUnknowns({ a: ["x", { b: "y" }], c: new Secret("s") }), false);
  });

  it("finds secrets at any depth", () => {
    assert.equal(containsSecrets({ a: [{ b: new Secret("x") }] }), true);
    assert.equal(containsSecrets({ a: [{ b: "x" }] }), false);
  });

  it("annotates outputs key by key within objects", () => {
    const outputs = annotateSecrets({ env: { TOKEN: "t", PLAIN: "p" }, pid: 5 }, { env: { TOKEN: new Secret("t"), PLAIN: "p" } });
    const env = outputs.env as Record<string, unknown>;
    assert.ok(env.TOKEN instanceof Secret);
    assert.equal(env.PLAIN, "p");
    assert.equal(outputs.pid, 5);
  });

  it("annotates a whole array when one input element is secret", () => {
    const outputs = annotateSecrets({ command: ["/bin/sh", "-c"] }, { command: ["/bin/sh", new Secret("-c")] });
    assert.ok(outputs.command instanceof Secret);
    assert.deepEqual(outputs.command.value, ["/bin/sh", "-c"]);
  });

  it("annotates an output object whose input was a whole secret", () => {
    const outputs = annotateSecrets({ env: { A: "1" } }, { env: new Secret({ A: "1" }) });
    assert.ok(outputs.env instanceof Secret);
  });

  it("keeps an output that is already secret", () => {
    const already = new Secret("x");
    const outputs = annotateSecrets({ token: already }, { token: new Secret("x") });
    assert.equal(outputs.token, already);
  });

  it("collects strings inside secrets only", () => {
    const strings = collectSecretStrings({ a: "public", b: new Secret({ c: "hidden", d: ["also"] }), e: new Secret("") });
    assert.deepEqual([...strings].sort(), ["also", "hidden"]);
  });
});
