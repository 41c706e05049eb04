/**
 * Conversion between google.protobuf.Struct values, as the Pulumi engine
 * sends them, and PropertyMaps with Secret and UNKNOWN markers.
 *
 * The engine encodes values that JSON cannot express as objects carrying a
 * signature key, and an unknown value as a fixed string. The constants below
 * are the ones in @pulumi/pulumi 3.276.0 (runtime/rpc.js).
 */
import { ListValue, NullValue, Struct, Value } from "google-protobuf/google/protobuf/struct_pb";

import { PropertyMap, PropertyValue, Secret, UNKNOWN } from "./resource";

export const SIGNATURE_KEY = "4dabf18193072939515e22adb298388d";
export const SECRET_SIGNATURE = "1b47061264138c4ac30d75fd1eb44270";
export const OUTPUT_VALUE_SIGNATURE = "d0e6a833031e9bbcd3f4e8bde6ca49a4";
export const RESOURCE_REFERENCE_SIGNATURE = "5cf8f73096256a8f31e491e813e4eb8e";
export const ASSET_SIGNATURE = "c44067f5952c0a294b673a41bacd8c17";
export const ARCHIVE_SIGNATURE = "0def7320c3a5731c473e5ecbe6d01bc7";
/** The string that stands for a value not known until apply time. */
export const UNKNOWN_VALUE = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

/** A property value with every Secret marker removed; UNKNOWN markers remain. */
export type PlainValue = null | boolean | number | string | PlainValue[] | { [key: string]: PlainValue } | typeof UNKNOWN;
export type PlainMap = Record<string, PlainValue>;

export type PathSegment = string | number;

/** Raised for a value that cannot cross the wire; `path` names the property. */
export class WireError extends Error {
  constructor(
    message: string,
    readonly path: string,
  ) {
    super(path === "" ? message : `${path}: ${message}`);
    this.name = "WireError";
  }
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Formats a property path as Pulumi does in detailed diffs and check
 * failures: `env.TOKEN`, `command[0]`, `labels["app.kubernetes.io/name"]`.
 */
export function formatPropertyPath(segments: readonly PathSegment[]): string {
  let path = "";
  for (const segment of segments) {
    if (typeof segment === "number") {
      path += `[${segment}]`;
    } else if (IDENTIFIER.test(segment)) {
      path += path === "" ? segment : `.${segment}`;
    } else {
      path += `[${JSON.stringify(segment)}]`;
    }
  }
  return path;
}

/** True for `{}`-style objects, which are the only objects a PropertyValue may be besides Secret. */
export function isPlainObject(value: unknown): value is { [key: string]: PropertyValue } {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

// ---------------------------------------------------------------------------
// Decoding

/** Decodes a Struct from the engine; a missing Struct decodes to an empty map. */
export function decodeStruct(struct: Struct | undefined): PropertyMap {
  const map: PropertyMap = {};
  if (struct === undefined) return map;
  struct.getFieldsMap().forEach((value, key) => {
    map[key] = decodeValue(value, [key]);
  });
  return map;
}

export function decodeValue(value: Value, path: readonly PathSegment[] = []): PropertyValue {
  switch (value.getKindCase()) {
    case Value.KindCase.KIND_NOT_SET:
    case Value.KindCase.NULL_VALUE:
      return null;
    case Value.KindCase.BOOL_VALUE:
      return value.getBoolValue();
    case Value.KindCase.NUMBER_VALUE:
      // Protobuf carries every number as a double; integers stay exact up to 2^53.
      return value.getNumberValue();
    case Value.KindCase.STRING_VALUE: {
      const text = value.getStringValue();
      return text === UNKNOWN_VALUE ? UNKNOWN : text;
    }
    case Value.KindCase.LIST_VALUE:
      return (value.getListValue()?.getValuesList() ?? []).map((element, index) => decodeValue(element, [...path, index]));
    case Value.KindCase.STRUCT_VALUE:
      return decodeObject(value.getStructValue() ?? new Struct(), path);
  }
}

function decodeObject(struct: Struct, path: readonly PathSegment[]): PropertyValue {
  const fields = struct.getFieldsMap();
  const signature = fields.get(SIGNATURE_KEY);
  if (signature === undefined) {
    const object: { [key: string]: PropertyValue } = {};
    fields.forEach((value, key) => {
      object[key] = decodeValue(value, [...path, key]);
    });
    return object;
  }

  const field = (name: string): Value | undefined => fields.get(name);
  switch (signature.getStringValue()) {
    case SECRET_SIGNATURE: {
      const inner = field("value");
      return makeSecret(inner === undefined ? null : decodeValue(inner, path));
    }
    case OUTPUT_VALUE_SIGNATURE: {
      // An output value without "value" is unknown; its dependencies matter only to the engine.
      const inner = field("value");
      const decoded = inner === undefined ? UNKNOWN : decodeValue(inner, path);
      return field("secret")?.getBoolValue() === true ? makeSecret(decoded) : decoded;
    }
    case RESOURCE_REFERENCE_SIGNATURE:
      return decodeResourceReference(field("urn"), field("id"), path);
    case ASSET_SIGNATURE:
    case ARCHIVE_SIGNATURE:
      throw new WireError("assets and archives are not supported by cellfleet: pass a path or text as a string", formatPropertyPath(path));
    default:
      throw new WireError(`unsupported value with signature ${JSON.stringify(signature.getStringValue())}`, formatPropertyPath(path));
  }
}

/**
 * Reduces a resource reference to what the engine would send a provider that
 * does not accept references: the id of a custom resource (unknown while it
 * is empty or unknown), or the URN of a component resource.
 */
function decodeResourceReference(urn: Value | undefined, id: Value | undefined, path: readonly PathSegment[]): PropertyValue {
  if (id !== undefined) {
    const decoded = decodeValue(id, path);
    return decoded === "" ? UNKNOWN : decoded;
  }
  if (urn === undefined || urn.getKindCase() !== Value.KindCase.STRING_VALUE) {
    throw new WireError("resource reference has neither an id nor a URN", formatPropertyPath(path));
  }
  return urn.getStringValue();
}

/** Wraps a value in Secret without nesting one Secret in another. */
export function makeSecret(value: PropertyValue): Secret {
  return value instanceof Secret ? value : new Secret(value);
}

// ---------------------------------------------------------------------------
// Encoding

/** Encodes a map for the engine. Keys whose value is undefined are left out. */
export function encodeStruct(map: PropertyMap, path: readonly PathSegment[] = []): Struct {
  const struct = new Struct();
  const fields = struct.getFieldsMap();
  for (const [key, value] of Object.entries(map)) {
    if (value === undefined) continue;
    fields.set(key, encodeValue(value, [...path, key]));
  }
  return struct;
}

export function encodeValue(value: PropertyValue, path: readonly PathSegment[] = []): Value {
  const result = new Value();
  if (value === null || value === undefined) {
    result.setNullValue(NullValue.NULL_VALUE);
  } else if (value === UNKNOWN) {
    result.setStringValue(UNKNOWN_VALUE);
  } else if (value instanceof Secret) {
    const inner = value.value instanceof Secret ? value.value.value : value.value;
    const struct = new Struct();
    struct.getFieldsMap().set(SIGNATURE_KEY, stringValue(SECRET_SIGNATURE));
    struct.getFieldsMap().set("value", encodeValue(inner, path));
    result.setStructValue(struct);
  } else if (typeof value === "boolean") {
    result.setBoolValue(value);
  } else if (typeof value === "number") {
    // JSON state files cannot hold NaN or Infinity, so the engine would fail later and further from the cause.
    if (!Number.isFinite(value)) {
      throw new WireError(`number ${value} is not finite`, formatPropertyPath(path));
    }
    result.setNumberValue(value);
  } else if (typeof value === "string") {
    result.setStringValue(value);
  } else if (Array.isArray(value)) {
    const list = new ListValue();
    list.setValuesList(value.map((element, index) => encodeValue(element ?? null, [...path, index])));
    result.setListValue(list);
  } else if (isPlainObject(value)) {
    result.setStructValue(encodeStruct(value, path));
  } else {
    const kind = typeof value === "object" ? (Object.getPrototypeOf(value)?.constructor?.name ?? "object") : typeof value;
    throw new WireError(`a ${kind} cannot be sent to the engine: use plain objects, arrays, strings, numbers and booleans`, formatPropertyPath(path));
  }
  return result;
}

function stringValue(text: string): Value {
  const value = new Value();
  value.setStringValue(text);
  return value;
}

// ---------------------------------------------------------------------------
// Inspection

/**
 * Removes every Secret marker, deep, and returns the plain values together
 * with the paths (formatted as by formatPropertyPath) that were secret. A
 * path inside a secret is not listed again.
 */
export function unwrapSecrets(map: PropertyMap): { values: PlainMap; secretPaths: Set<string> } {
  const secretPaths = new Set<string>();
  const values: PlainMap = {};
  for (const [key, value] of Object.entries(map)) {
    if (value === undefined) continue;
    values[key] = unwrapValue(value, [key], secretPaths, false);
  }
  return { values, secretPaths };
}

/**
 * Returns the value without Secret markers. The result has lost its
 * secretness, so it must not reach the engine, a log or an error message.
 */
export function unwrapValue(
  value: PropertyValue,
  path: readonly PathSegment[] = [],
  secretPaths?: Set<string>,
  insideSecret = false,
): PlainValue {
  if (value instanceof Secret) {
    if (!insideSecret) secretPaths?.add(formatPropertyPath(path));
    return unwrapValue(value.value, path, secretPaths, true);
  }
  if (Array.isArray(value)) {
    return value.map((element, index) => unwrapValue(element, [...path, index], secretPaths, insideSecret));
  }
  if (isPlainObject(value)) {
    const object: { [key: string]: PlainValue } = {};
    for (const [key, element] of Object.entries(value)) {
      if (element === undefined) continue;
      object[key] = unwrapValue(element, [...path, key], secretPaths, insideSecret);
    }
    return object;
  }
  return value;
}

/** True when the value, or anything inside it including secrets, is UNKNOWN. */
export function containsUnknowns(value: PropertyValue | PropertyMap): boolean {
  if (value === UNKNOWN) return true;
  if (value instanceof Secret) return containsUnknowns(value.value);
  if (Array.isArray(value)) return value.some((element) => containsUnknowns(element));
  if (isPlainObject(value)) return Object.values(value).some((element) => element !== undefined && containsUnknowns(element));
  return false;
}

export function containsSecrets(value: PropertyValue | PropertyMap): boolean {
  if (value instanceof Secret) return true;
  if (Array.isArray(value)) return value.some((element) => containsSecrets(element));
  if (isPlainObject(value)) return Object.values(value).some((element) => element !== undefined && containsSecrets(element));
  return false;
}

/**
 * Returns a copy of `outputs` in which every property whose counterpart in
 * `inputs` contains a secret is itself secret. Where both sides are plain
 * objects the rule applies key by key, so one secret env entry does not hide
 * the others. Any other value, such as an array, becomes secret as a whole,
 * because its elements may have moved.
 */
export function annotateSecrets(outputs: PropertyMap, inputs: PropertyMap): PropertyMap {
  const result: PropertyMap = { ...outputs };
  for (const [key, input] of Object.entries(inputs)) {
    const output = result[key];
    if (output === undefined || input === undefined) continue;
    result[key] = annotateValue(output, input);
  }
  return result;
}

function annotateValue(output: PropertyValue, input: PropertyValue): PropertyValue {
  if (output instanceof Secret || !containsSecrets(input)) return output;
  if (isPlainObject(output) && isPlainObject(input)) {
    return annotateSecrets(output, input);
  }
  return new Secret(output);
}

/** Collects every string inside a Secret, so messages can be scrubbed of them. */
export function collectSecretStrings(value: PropertyValue | PropertyMap, into: Set<string> = new Set(), insideSecret = false): Set<string> {
  if (value instanceof Secret) {
    collectSecretStrings(value.value, into, true);
  } else if (typeof value === "string") {
    if (insideSecret && value !== "") into.add(value);
  } else if (Array.isArray(value)) {
    for (const element of value) collectSecretStrings(element, into, insideSecret);
  } else if (isPlainObject(value)) {
    for (const element of Object.values(value)) {
      if (element !== undefined) collectSecretStrings(element, into, insideSecret);
    }
  }
  return into;
}
