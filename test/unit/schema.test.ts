// The package schema must describe what the provider really accepts: the
// zod schemas for provider configuration and Container inputs are the truth.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";

import { containerInputsSchema, DEFAULT_MEMORY } from "../../provider/src/common/container-spec";
import {
  BASTION_TOKEN,
  CONTAINER_STATUS_TOKEN,
  CONTAINER_TOKEN,
  ObjectTypeSpec,
  PACKAGE_SCHEMA,
  PropertySpec,
  schemaJson,
} from "../../provider/src/plugin/schema";
import { cellConfigSchema, SECRET_CONFIG_KEYS } from "../../provider/src/transport/cell-config";

// dist/test/unit -> repository root
const REPOSITORY = path.resolve(__dirname, "..", "..", "..");

const HOST_KEY = "SHA256:" + "a".repeat(43);

function secretKeys(properties: Record<string, PropertySpec>): string[] {
  return Object.entries(properties)
    .filter(([, spec]) => spec.secret === true)
    .map(([key]) => key)
    .sort();
}

function defaults(properties: Record<string, PropertySpec>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(properties).filter(([, spec]) => spec.default !== undefined).map(([key, spec]) => [key, spec.default]));
}

describe("package schema", () => {
  const bastion = PACKAGE_SCHEMA.types[BASTION_TOKEN] as ObjectTypeSpec;
  const container = PACKAGE_SCHEMA.resources[CONTAINER_TOKEN];

  it("has the version of provider/package.json", () => {
    const manifest = JSON.parse(readFileSync(path.join(REPOSITORY, "provider", "package.json"), "utf8")) as { version: string };
    assert.equal(PACKAGE_SCHEMA.version, manifest.version);
  });

  it("serialises to JSON with the Container token", () => {
    const parsed = JSON.parse(schemaJson()) as typeof PACKAGE_SCHEMA;
    assert.equal(parsed.name, "cellfleet");
    assert.ok(parsed.resources[CONTAINER_TOKEN]);
  });

  it("lists every provider configuration key", () => {
    assert.deepEqual(Object.keys(PACKAGE_SCHEMA.config.variables).sort(), Object.keys(cellConfigSchema.shape).sort());
  });

  it("gives the provider the same inputs as config", () => {
    assert.deepEqual(PACKAGE_SCHEMA.provider.inputProperties, PACKAGE_SCHEMA.config.variables);
  });

  it("lists every bastion key", () => {
    assert.deepEqual(Object.keys(bastion.properties).sort(), Object.keys(cellConfigSchema.shape.bastion.unwrap().shape).sort());
  });

  it("marks the secret configuration keys", () => {
    assert.deepEqual(secretKeys(PACKAGE_SCHEMA.config.variables), [...SECRET_CONFIG_KEYS].sort());
    assert.deepEqual(secretKeys(bastion.properties), [...SECRET_CONFIG_KEYS].sort());
  });

  it("states the configuration defaults that zod applies", () => {
    const parsed = cellConfigSchema.parse({ host: "h", privateKey: "k", hostKey: HOST_KEY }) as Record<string, unknown>;
    for (const [key, value] of Object.entries(defaults(PACKAGE_SCHEMA.config.variables))) {
      assert.equal(parsed[key], value, key);
    }
  });

  it("lists every Container input", () => {
    assert.deepEqual(Object.keys(container.inputProperties).sort(), Object.keys(containerInputsSchema.shape).sort());
  });

  it("requires the Container inputs that zod requires", () => {
    const result = containerInputsSchema.safeParse({});
    assert.equal(result.success, false);
    const missing = result.error?.issues.map((issue) => String(issue.path[0])).sort();
    assert.deepEqual(missing, [...container.requiredInputs].sort());
  });

  it("states the Container defaults that zod applies", () => {
    const parsed = containerInputsSchema.parse({ image: "i", command: ["c"] }) as Record<string, unknown>;
    const { memory, ...others } = defaults(container.inputProperties);
    // zod turns the memory default into bytes, so it is compared as written.
    assert.equal(memory, DEFAULT_MEMORY);
    assert.ok(Object.keys(others).length > 0);
    for (const [key, value] of Object.entries(others)) {
      assert.equal(parsed[key], value, key);
    }
  });

  it("outputs every Container input", () => {
    for (const key of Object.keys(container.inputProperties)) {
      assert.ok(container.properties[key], key);
    }
  });

  it("outputs the observed Container state", () => {
    for (const key of ["containerId", "status", "reason", "pid", "cpuShares", "startedAt", "imageDigest", "memoryBytes"]) {
      assert.ok(container.properties[key], key);
    }
  });

  it("lists only existing properties as required", () => {
    for (const key of container.required) assert.ok(container.properties[key], key);
    for (const key of container.requiredInputs) assert.ok(container.inputProperties[key], key);
  });

  it("describes every property", () => {
    const groups: [string, Record<string, PropertySpec>][] = [
      ["config", PACKAGE_SCHEMA.config.variables],
      ["bastion", bastion.properties],
      ["container inputs", container.inputProperties],
      ["container outputs", container.properties],
    ];
    for (const [group, properties] of groups) {
      for (const [key, spec] of Object.entries(properties)) {
        assert.ok(spec.description.length > 10, `${group}.${key}`);
      }
    }
  });

  it("resolves every type reference", () => {
    const references = JSON.stringify(PACKAGE_SCHEMA).match(/#\/types\/[^"]+/g) ?? [];
    assert.ok(references.length > 0);
    for (const reference of references) {
      assert.ok(PACKAGE_SCHEMA.types[reference.slice("#/types/".length)], reference);
    }
  });

  it("offers the container statuses", () => {
    const status = PACKAGE_SCHEMA.types[CONTAINER_STATUS_TOKEN];
    assert.ok("enum" in status);
    assert.deepEqual(
      status.enum.map((member) => member.value),
      ["running", "stopped"],
    );
  });
});
