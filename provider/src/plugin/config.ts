/**
 * Provider configuration as the engine sends it to CheckConfig, DiffConfig
 * and Configure, checked against cellConfigSchema.
 *
 * Values set with `pulumi config set` reach the provider as strings, and an
 * object such as bastion as JSON text, so values are converted to the types
 * in PACKAGE_SCHEMA before validation.
 */
import type { z } from "zod";

import { CellConfig, cellConfigSchema } from "../transport/cell-config";
import type { CheckFailure, DiffKind, PropertyMap, PropertyValue } from "./resource";
import { Secret, UNKNOWN } from "./resource";
import { PACKAGE_SCHEMA, PropertySpec, TypeReference } from "./schema";
import {
  annotateSecrets,
  collectSecretStrings,
  containsUnknowns,
  formatPropertyPath,
  isPlainObject,
  PathSegment,
  PlainMap,
  PlainValue,
  unwrapSecrets,
} from "./wire";

/**
 * Keys that the engine keeps in provider inputs for itself, as
 * pkg/resource/deploy/providers/registry.go in Pulumi 3.x shows: "version"
 * at the top level, "__internal", and in state from older engines
 * "pluginDownloadURL" and "pluginChecksums" at the top level. They are not
 * validated, and CheckConfig returns them unchanged because the engine reads
 * the plugin version back from its result.
 */
export const ENGINE_CONFIG_KEYS: ReadonlySet<string> = new Set(["version", "__internal", "pluginDownloadURL", "pluginChecksums"]);

/** Keys whose change points the provider at another cell or another route to it. */
const ADDRESS_KEYS = ["host", "port", "user", "bastion"];

const CONFIG_VARIABLES = PACKAGE_SCHEMA.config.variables;

type Issue = z.core.$ZodIssue;

export type ParsedConfig =
  | { state: "known"; config: CellConfig; secrets: Set<string> }
  | { state: "unknown" }
  | { state: "invalid"; failures: CheckFailure[] };

export interface ConfigDiff {
  changes: boolean;
  /** Changed top-level keys. */
  changedKeys: string[];
  detailedDiff: Record<string, { kind: DiffKind; inputDiff: boolean }>;
}

// ---------------------------------------------------------------------------
// Type conversion

function resolveType(spec: TypeReference): TypeReference & { properties?: Record<string, PropertySpec> } {
  if (spec.$ref === undefined) return spec;
  const token = spec.$ref.replace(/^#\/types\//, "");
  const type = PACKAGE_SCHEMA.types[token];
  if (type === undefined) throw new Error(`schema reference ${spec.$ref} names no type`);
  return "properties" in type ? { type: "object", properties: type.properties } : { type: type.type };
}

const NUMBER_TEXT = /^\s*-?\d+(\.\d+)?\s*$/;

/**
 * Converts text to the type the schema expects: "22" to 22, "true" to true,
 * JSON object text to an object, JSON array text to an array. Text that does not convert is returned as
 * it is, so validation reports it with the property name.
 */
function convertValue(value: PlainValue, spec: TypeReference): PlainValue {
  if (value === UNKNOWN || value === null) return value;
  const type = resolveType(spec);
  if ((type.type === "integer" || type.type === "number") && typeof value === "string" && NUMBER_TEXT.test(value)) {
    return Number(value);
  }
  if (type.type === "boolean" && typeof value === "string" && (value === "true" || value === "false")) {
    return value === "true";
  }
  if (type.type === "array" && typeof value === "string") {
    try {
      const parsed = JSON.parse(value) as PlainValue;
      return Array.isArray(parsed) ? parsed : value;
    } catch {
      return value;
    }
  }
  if (type.type === "object" && type.properties !== undefined) {
    let object: PlainValue = value;
    if (typeof value === "string") {
      try {
        object = JSON.parse(value) as PlainValue;
      } catch {
        return value;
      }
    }
    return isPlainObject(object) ? convertObject(object as PlainMap, type.properties) : object;
  }
  return value;
}

function convertObject(values: PlainMap, properties: Record<string, PropertySpec>): PlainMap {
  const result: PlainMap = {};
  for (const [key, value] of Object.entries(values)) {
    const spec = properties[key];
    result[key] = spec === undefined ? value : convertValue(value, spec);
  }
  return result;
}

/** Marks every property that the schema declares secret, at any depth. */
function markSchemaSecrets(values: PropertyMap, properties: Record<string, PropertySpec>): PropertyMap {
  const result: PropertyMap = {};
  for (const [key, value] of Object.entries(values)) {
    const spec = properties[key];
    if (spec === undefined || value === null || value instanceof Secret) {
      result[key] = value;
    } else if (spec.secret === true) {
      result[key] = new Secret(value);
    } else {
      const type = resolveType(spec);
      result[key] = type.properties !== undefined && isPlainObject(value) ? markSchemaSecrets(value, type.properties) : value;
    }
  }
  return result;
}

function splitEngineKeys(values: PropertyMap): { own: PropertyMap; engine: PropertyMap } {
  const own: PropertyMap = {};
  const engine: PropertyMap = {};
  for (const [key, value] of Object.entries(values)) {
    if (ENGINE_CONFIG_KEYS.has(key)) engine[key] = value;
    else own[key] = value;
  }
  return { own, engine };
}

/** Returns the configuration with engine keys removed, secrets unwrapped and text converted to schema types. */
function normalise(values: PropertyMap): PlainMap {
  const { own } = splitEngineKeys(values);
  return convertObject(unwrapSecrets(own).values, CONFIG_VARIABLES);
}

// ---------------------------------------------------------------------------
// Validation

function valueAt(values: PlainMap, path: readonly PropertyKey[]): PlainValue | undefined {
  let current: PlainValue | undefined = values;
  for (const segment of path) {
    if (current === UNKNOWN) return UNKNOWN;
    if (current === null || typeof current !== "object") return undefined;
    current = (current as Record<string, PlainValue>)[String(segment)];
  }
  return current;
}

/**
 * True when an issue may come from a value that is not known yet, so it must
 * not fail a preview. That is the case when the value at the issue's path,
 * or above it, is unknown. It is also the case for the missing host key pin
 * when knownHostsFile at the same level is unknown.
 */
function dependsOnUnknown(issue: Issue, values: PlainMap): boolean {
  for (let length = 0; length <= issue.path.length; length++) {
    const value = valueAt(values, issue.path.slice(0, length));
    if (value === UNKNOWN) return true;
  }
  const value = valueAt(values, issue.path);
  if (value !== undefined && containsUnknowns(value as PropertyValue)) return true;
  if (issue.path[issue.path.length - 1] === "hostKey") {
    return valueAt(values, [...issue.path.slice(0, -1), "knownHostsFile"]) === UNKNOWN;
  }
  return false;
}

function specAt(path: readonly PathSegment[]): PropertySpec | undefined {
  let properties: Record<string, PropertySpec> | undefined = CONFIG_VARIABLES;
  let spec: PropertySpec | undefined;
  for (const segment of path) {
    spec = properties?.[String(segment)];
    if (spec === undefined) return undefined;
    properties = resolveType(spec).properties;
  }
  return spec;
}

function isSecretPath(path: readonly PathSegment[]): boolean {
  for (let length = 1; length <= path.length; length++) {
    if (specAt(path.slice(0, length))?.secret === true) return true;
  }
  return false;
}

function describeType(value: PlainValue | undefined): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (value === UNKNOWN) return "unknown";
  return `a ${typeof value}`;
}

/** Turns one zod issue into check failures that name the property; secret values are never quoted. */
function describeIssue(issue: Issue, values: PlainMap): CheckFailure[] {
  const path = issue.path.map((segment) => (typeof segment === "number" ? segment : String(segment)));
  const property = formatPropertyPath(path);
  const value = valueAt(values, path);
  const valueNote = isSecretPath(path) || value === undefined ? "" : ` (got ${JSON.stringify(value)})`;

  switch (issue.code) {
    case "unrecognized_keys": {
      const parent = path.length === 0 ? CONFIG_VARIABLES : resolveType(specAt(path) ?? {}).properties ?? {};
      const known = Object.keys(parent).join(", ");
      return issue.keys.map((key) => ({
        property: formatPropertyPath([...path, key]),
        reason: `unknown configuration key ${JSON.stringify(key)}: check the spelling; valid keys are ${known}`,
      }));
    }
    case "invalid_type":
      if (value === undefined) return [{ property, reason: `${property} is required` }];
      if (issue.expected === "int") return [{ property, reason: `${property} must be a whole number${valueNote}` }];
      return [{ property, reason: `${property} must be ${issue.expected === "object" ? "an object" : `a ${issue.expected}`}, not ${describeType(value)}` }];
    case "too_big":
      if (issue.origin === "number") {
        const bound = issue.inclusive === false ? "less than" : "at most";
        return [{ property, reason: `${property} must be ${bound} ${String(issue.maximum)}${valueNote}` }];
      }
      return [{ property, reason: issue.message }];
    case "too_small":
      if (issue.origin === "number") {
        const bound = issue.inclusive === false ? "greater than" : "at least";
        return [{ property, reason: `${property} must be ${bound} ${String(issue.minimum)}${valueNote}` }];
      }
      return [{ property, reason: issue.message }];
    default:
      return [{ property, reason: issue.message }];
  }
}

function validate(values: PlainMap): { config?: CellConfig; failures: CheckFailure[] } {
  const result = cellConfigSchema.safeParse(values);
  if (result.success) return { config: result.data, failures: [] };
  const failures = result.error.issues.filter((issue) => !dependsOnUnknown(issue, values)).flatMap((issue) => describeIssue(issue, values));
  return { failures };
}

// ---------------------------------------------------------------------------
// The three configuration RPCs

/**
 * Validates new provider inputs for CheckConfig. The returned inputs carry
 * schema types, mark privateKey and passphrase secret at every level (the
 * engine strips secrets before CheckConfig), keep other secrets from `news`
 * and keep the engine's own keys as they were.
 */
export function checkProviderConfig(news: PropertyMap): { inputs: PropertyMap; failures: CheckFailure[] } {
  const { own, engine } = splitEngineKeys(news);
  const values = normalise(own);
  const { failures } = validate(values);
  const typed = markSchemaSecrets(values as PropertyMap, CONFIG_VARIABLES);
  return { inputs: { ...annotateSecrets(typed, own), ...engine }, failures };
}

/**
 * Parses the inputs that Configure receives. Unknown values, which only a
 * preview can send, leave the configuration unknown rather than invalid.
 */
export function parseProviderConfig(inputs: PropertyMap): ParsedConfig {
  const { own } = splitEngineKeys(inputs);
  if (containsUnknowns(own)) return { state: "unknown" };
  const values = normalise(own);
  const { config, failures } = validate(values);
  if (config === undefined) return { state: "invalid", failures };
  const marked = annotateSecrets(markSchemaSecrets(values as PropertyMap, CONFIG_VARIABLES), own);
  return { state: "known", config, secrets: collectSecretStrings(marked) };
}

/** Builds the variables map of a legacy Configure request ("cellfleet:config:port" = "22") into inputs. */
export function inputsFromVariables(variables: Map<string, string> | Iterable<[string, string]>): PropertyMap {
  const inputs: PropertyMap = {};
  for (const [name, value] of variables) {
    const key = name.replace(/^cellfleet:config:/, "").replace(/^cellfleet:/, "");
    inputs[key] = value;
  }
  return inputs;
}

/**
 * Compares old and new provider inputs. No change forces a replacement,
 * because replacing the provider would replace every container it manages.
 * Changes are still listed key by key, so the CLI shows them.
 */
export function diffProviderConfig(olds: PropertyMap, news: PropertyMap, ignoreChanges: readonly string[] = []): ConfigDiff {
  const before = normalise(olds);
  const after = normalise(news);
  const detailedDiff: ConfigDiff["detailedDiff"] = {};
  const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
  for (const key of keys) {
    diffValue([key], before[key], after[key], detailedDiff);
  }
  for (const path of Object.keys(detailedDiff)) {
    if (ignoreChanges.some((ignored) => path === ignored || path.startsWith(`${ignored}.`) || path.startsWith(`${ignored}[`))) {
      delete detailedDiff[path];
    }
  }
  const changedKeys = [...new Set(Object.keys(detailedDiff).map((path) => path.split(/[.[]/)[0]))].sort();
  return { changes: changedKeys.length > 0, changedKeys, detailedDiff };
}

/** Returns the changed keys that point the provider at another cell or another route to it. */
export function changedAddressKeys(diff: ConfigDiff): string[] {
  return diff.changedKeys.filter((key) => ADDRESS_KEYS.includes(key));
}

function diffValue(path: PathSegment[], before: PlainValue | undefined, after: PlainValue | undefined, out: ConfigDiff["detailedDiff"]): void {
  const key = formatPropertyPath(path);
  if (before === undefined && after === undefined) return;
  if (before === undefined) {
    out[key] = { kind: "add", inputDiff: true };
  } else if (after === undefined) {
    out[key] = { kind: "delete", inputDiff: true };
  } else if (isPlainObject(before) && isPlainObject(after)) {
    const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
    for (const child of keys) {
      diffValue([...path, child], (before as PlainMap)[child], (after as PlainMap)[child], out);
    }
  } else if (after === UNKNOWN || containsUnknowns(after as PropertyValue) || !deepEqual(before, after)) {
    out[key] = { kind: "update", inputDiff: true };
  }
}

function deepEqual(a: PlainValue, b: PlainValue): boolean {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((element, index) => deepEqual(element, b[index]));
  if (isPlainObject(a) && isPlainObject(b)) {
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((key) => deepEqual((a as PlainMap)[key], (b as PlainMap)[key]));
  }
  return false;
}
