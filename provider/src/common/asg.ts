/**
 * Security group rules in the Cloud Foundry application security group (ASG)
 * JSON format. The strict parser runs in the provider at `pulumi preview` and
 * again in the agent before it renders anything. The pure helpers turn
 * accepted destinations and ports into the intervals of the nftables sets.
 *
 * Every form this parser accepts is one the renderer enforces exactly, so the
 * parser rejects anything it would have to guess about: whitespace inside an
 * address, a CIDR with host bits set, leading zeros (some tools read them as
 * octal), reversed ranges, and IPv6. Containers on a cell have IPv6 disabled
 * and the bridge drops every IPv6 frame from them, so an IPv6 destination or
 * an icmpv6 rule could never allow anything; accepting one would let an
 * operator believe that a permission exists.
 */
import { promises as fs } from "node:fs";

import { z } from "zod";

import type { SecurityGroupRule } from "./network-state";

/** An inclusive range of unsigned integers: IPv4 addresses as 32-bit numbers, ports, ICMP types. */
export interface Interval {
  first: number;
  last: number;
}

export interface ValidationFailure {
  property: string;
  reason: string;
}

export type RuleValidation = { ok: true; rules: SecurityGroupRule[] } | { ok: false; failures: ValidationFailure[] };

const PROTOCOLS = ["tcp", "udp", "icmp", "all"] as const;
const FIELDS = ["protocol", "destination", "ports", "type", "code", "log", "description"] as const;
const DESTINATION_FORMS = 'an IPv4 address, a CIDR such as "198.51.100.0/24", a range such as "198.51.100.10-198.51.100.20", or a comma list of those';
const PORT_FORMS = '"443", "8000-8080" or "80, 443"';

/** A problem with one value, formatted into a message by describeProblem alone. */
export type Problem =
  | { code: "empty"; forms: string }
  | { code: "whitespace"; entry: string }
  | { code: "empty_entry" }
  | { code: "ipv6"; entry: string }
  | { code: "not_ipv4"; entry: string }
  | { code: "leading_zero"; entry: string; fixed: string }
  | { code: "prefix_length"; entry: string }
  | { code: "host_bits"; entry: string; fixed: string }
  | { code: "reversed_range"; unit: "address" | "port"; fixed: string }
  | { code: "not_port"; entry: string }
  | { code: "port_range"; entry: string }
  | { code: "protocol"; value: unknown }
  | { code: "icmpv6" }
  | { code: "missing_ports"; protocol: string }
  | { code: "ports_not_allowed"; protocol: string }
  | { code: "icmp_only"; field: "type" | "code"; protocol: string }
  | { code: "missing_icmp"; field: "type" | "code" }
  | { code: "icmp_range"; value: unknown }
  | { code: "log_tcp_only"; protocol: string }
  | { code: "wrong_type"; expected: string; value: unknown }
  | { code: "unknown_field"; field: string }
  | { code: "missing"; forms: string };

type Parsed<T> = { ok: true; value: T } | { ok: false; problem: Problem };

function quote(value: unknown): string {
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}

/** Formats one problem. The property is the full path, such as `rules[2].ports`. */
export function describeProblem(property: string, value: unknown, problem: Problem): string {
  const shown = `${property} ${quote(value)}`;
  switch (problem.code) {
    case "empty":
      return `${property} is empty: give ${problem.forms}`;
    case "whitespace":
      return `${shown} has whitespace inside ${quote(problem.entry)}: remove it; only a space after a comma is allowed`;
    case "empty_entry":
      return `${shown} has an empty entry: remove the extra comma`;
    case "ipv6":
      return `${shown} contains the IPv6 address ${quote(problem.entry)}: containers on a cell have IPv6 disabled, so only IPv4 destinations can be enforced; remove it`;
    case "not_ipv4":
      return `${shown} contains ${quote(problem.entry)}, which is not an IPv4 address: give ${DESTINATION_FORMS}`;
    case "leading_zero":
      return `${shown} contains ${quote(problem.entry)} with a leading zero, which some tools read as octal: write ${quote(problem.fixed)}`;
    case "prefix_length":
      return `${shown} contains ${quote(problem.entry)}, whose prefix length is not 0 to 32: write a CIDR such as "198.51.100.0/24"`;
    case "host_bits":
      return `${shown} contains ${quote(problem.entry)}, which has host bits set: write the network address ${quote(problem.fixed)}, or a single address without a prefix`;
    case "reversed_range":
      return `${shown} is a reversed range: write the lower ${problem.unit} first, ${quote(problem.fixed)}`;
    case "not_port":
      return `${shown} contains ${quote(problem.entry)}, which is not a port number: give ${PORT_FORMS}`;
    case "port_range":
      return `${shown} contains ${quote(problem.entry)}, which is out of range: ports are 1 to 65535`;
    case "protocol":
      return `${shown} is not a protocol: use one of "tcp", "udp", "icmp" or "all"`;
    case "icmpv6":
      return `${shown} is not supported: containers on a cell have IPv6 disabled, so an icmpv6 rule could never allow anything; remove the rule`;
    case "missing_ports":
      return `${property} is missing: protocol ${quote(problem.protocol)} needs ports, such as ${PORT_FORMS}`;
    case "ports_not_allowed":
      return `${shown} is not allowed for protocol ${quote(problem.protocol)}: remove ports, or set protocol to "tcp" or "udp"`;
    case "icmp_only":
      return `${shown} is only allowed for protocol "icmp", not ${quote(problem.protocol)}: remove ${problem.field}`;
    case "missing_icmp":
      return `${property} is missing: protocol "icmp" needs type and code; use -1 for any`;
    case "icmp_range":
      return `${shown} is out of range: use an integer from -1 (any) to 255`;
    case "log_tcp_only":
      return `${property} is only allowed for protocol "tcp", not ${quote(problem.protocol)}: remove log`;
    case "wrong_type":
      return `${property} must be ${problem.expected}, not ${problem.value === null ? "null" : typeof problem.value} ${quote(problem.value)}`;
    case "unknown_field":
      return `${property} is not a field of a security group rule: use ${FIELDS.join(", ")}`;
    case "missing":
      return `${property} is missing: give ${problem.forms}`;
  }
}

// --- destinations ----------------------------------------------------------

const OCTETS = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** Parses one dotted-quad IPv4 address into a 32-bit number. */
function parseAddress(text: string): Parsed<number> {
  const match = OCTETS.exec(text);
  if (!match) return { ok: false, problem: text.includes(":") ? { code: "ipv6", entry: text } : { code: "not_ipv4", entry: text } };
  const octets = match.slice(1).map(Number);
  if (octets.some((octet) => octet > 255)) return { ok: false, problem: { code: "not_ipv4", entry: text } };
  if (match.slice(1).some((octet) => octet.length > 1 && octet.startsWith("0"))) {
    return { ok: false, problem: { code: "leading_zero", entry: text, fixed: octets.join(".") } };
  }
  return { ok: true, value: ((octets[0] << 24) >>> 0) + (octets[1] << 16) + (octets[2] << 8) + octets[3] };
}

export function formatAddress(value: number): string {
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join(".");
}

function parseDestinationEntry(entry: string): Parsed<Interval> {
  if (entry.includes(":")) return { ok: false, problem: { code: "ipv6", entry } };
  if (entry.includes("/")) {
    const [addressText, lengthText, ...rest] = entry.split("/");
    const address = parseAddress(addressText);
    if (!address.ok) return address;
    if (rest.length > 0 || !/^\d{1,2}$/.test(lengthText) || Number(lengthText) > 32) {
      return { ok: false, problem: { code: "prefix_length", entry } };
    }
    const length = Number(lengthText);
    const size = 2 ** (32 - length);
    const network = address.value - (address.value % size);
    if (network !== address.value) {
      return { ok: false, problem: { code: "host_bits", entry, fixed: `${formatAddress(network)}/${length}` } };
    }
    return { ok: true, value: { first: network, last: network + size - 1 } };
  }
  if (entry.includes("-")) {
    const bounds = entry.split("-");
    if (bounds.length !== 2) return { ok: false, problem: { code: "not_ipv4", entry } };
    const first = parseAddress(bounds[0]);
    if (!first.ok) return first;
    const last = parseAddress(bounds[1]);
    if (!last.ok) return last;
    if (first.value > last.value) {
      return { ok: false, problem: { code: "reversed_range", unit: "address", fixed: `${bounds[1]}-${bounds[0]}` } };
    }
    return { ok: true, value: { first: first.value, last: last.value } };
  }
  const address = parseAddress(entry);
  return address.ok ? { ok: true, value: { first: address.value, last: address.value } } : address;
}

/**
 * Splits a comma list. A space directly after a comma is allowed (CF rule
 * files contain "80, 443"); whitespace anywhere else is a problem, because
 * "10.0.0.1 /24" could mean two things.
 */
function splitList(text: string, forms: string): Parsed<string[]> {
  if (text.length === 0) return { ok: false, problem: { code: "empty", forms } };
  const entries = text.split(/, */);
  for (const entry of entries) {
    if (entry.length === 0) return { ok: false, problem: { code: "empty_entry" } };
    if (/\s/.test(entry)) return { ok: false, problem: { code: "whitespace", entry } };
  }
  return { ok: true, value: entries };
}

function parseList(text: string, forms: string, parseEntry: (entry: string) => Parsed<Interval>): Parsed<Interval[]> {
  const entries = splitList(text, forms);
  if (!entries.ok) return entries;
  const intervals: Interval[] = [];
  for (const entry of entries.value) {
    const interval = parseEntry(entry);
    if (!interval.ok) return interval;
    intervals.push(interval.value);
  }
  return { ok: true, value: intervals };
}

/** Parses a destination as written in a rule into address intervals, or names its problem. */
export function parseDestination(destination: string): Parsed<Interval[]> {
  return parseList(destination, DESTINATION_FORMS, parseDestinationEntry);
}

// --- ports -----------------------------------------------------------------

function parsePort(text: string): Parsed<number> {
  if (!/^\d+$/.test(text)) return { ok: false, problem: { code: "not_port", entry: text } };
  if (text.length > 1 && text.startsWith("0")) return { ok: false, problem: { code: "not_port", entry: text } };
  const port = Number(text);
  if (port < 1 || port > 65535) return { ok: false, problem: { code: "port_range", entry: text } };
  return { ok: true, value: port };
}

function parsePortEntry(entry: string): Parsed<Interval> {
  const bounds = entry.split("-");
  if (bounds.length > 2) return { ok: false, problem: { code: "not_port", entry } };
  const first = parsePort(bounds[0]);
  if (!first.ok) return first;
  if (bounds.length === 1) return { ok: true, value: { first: first.value, last: first.value } };
  const last = parsePort(bounds[1]);
  if (!last.ok) return last;
  if (first.value > last.value) {
    return { ok: false, problem: { code: "reversed_range", unit: "port", fixed: `${bounds[1]}-${bounds[0]}` } };
  }
  return { ok: true, value: { first: first.value, last: last.value } };
}

/** Parses a ports field into port intervals, or names its problem. */
export function parsePorts(ports: string): Parsed<Interval[]> {
  return parseList(ports, PORT_FORMS, parsePortEntry);
}

// --- helpers for the renderer, on rules that passed validation --------------

function unwrap<T>(parsed: Parsed<T>, field: string, value: string): T {
  if (!parsed.ok) throw new Error(describeProblem(field, value, parsed.problem));
  return parsed.value;
}

/** Returns the address intervals of a validated destination, and throws on one that does not validate. */
export function destinationIntervals(destination: string): Interval[] {
  return unwrap(parseDestination(destination), "destination", destination);
}

/** Returns the port intervals of a validated ports field, and throws on one that does not validate. */
export function portIntervals(ports: string): Interval[] {
  return unwrap(parsePorts(ports), "ports", ports);
}

/** Returns the ICMP type or code interval of a rule field, where -1 (any) is 0 to 255. */
export function icmpInterval(value: number | undefined): Interval {
  return value === undefined || value === -1 ? { first: 0, last: 255 } : { first: value, last: value };
}

// --- the schema ------------------------------------------------------------

function valueCheck(parse: (text: string) => Parsed<unknown>) {
  return (text: string, context: z.core.$RefinementCtx<string>) => {
    const parsed = parse(text);
    if (!parsed.ok) context.addIssue({ code: "custom", params: { problem: parsed.problem }, input: text });
  };
}

const icmpNumber = z.unknown().superRefine((value, context) => {
  if (typeof value !== "number") {
    context.addIssue({ code: "custom", params: { problem: { code: "wrong_type", expected: "an integer from -1 to 255", value } }, input: value });
  } else if (!Number.isInteger(value) || value < -1 || value > 255) {
    context.addIssue({ code: "custom", params: { problem: { code: "icmp_range", value } }, input: value });
  }
});

function stringField(expected: string) {
  return z.unknown().superRefine((value, context) => {
    if (typeof value !== "string") {
      context.addIssue({ code: "custom", params: { problem: { code: "wrong_type", expected, value } }, input: value });
    }
  });
}

const ruleSchema = z
  .object({
    protocol: z.unknown().optional().superRefine((value, context) => {
      if (value === "icmpv6") {
        context.addIssue({ code: "custom", params: { problem: { code: "icmpv6" } }, input: value });
      } else if (!PROTOCOLS.includes(value as (typeof PROTOCOLS)[number])) {
        context.addIssue({ code: "custom", params: { problem: { code: "protocol", value } }, input: value });
      }
    }),
    destination: z.unknown().optional().superRefine((value, context) => {
      if (typeof value !== "string") {
        context.addIssue({ code: "custom", params: { problem: { code: "wrong_type", expected: "a string", value } }, input: value });
      } else {
        valueCheck(parseDestination)(value, context as z.core.$RefinementCtx<string>);
      }
    }),
    ports: z.unknown().optional().superRefine((value, context) => {
      if (typeof value !== "string") {
        context.addIssue({ code: "custom", params: { problem: { code: "wrong_type", expected: `a string such as ${PORT_FORMS}`, value } }, input: value });
      } else {
        valueCheck(parsePorts)(value, context as z.core.$RefinementCtx<string>);
      }
    }),
    type: icmpNumber.optional(),
    code: icmpNumber.optional(),
    log: z
      .unknown()
      .superRefine((value, context) => {
        if (value !== undefined && typeof value !== "boolean") {
          context.addIssue({ code: "custom", params: { problem: { code: "wrong_type", expected: "true or false", value } }, input: value });
        }
      })
      .optional(),
    description: stringField("a string").optional(),
  })
  .strict()
  .superRefine((rule, context) => {
    const fail = (path: string, value: unknown, problem: Problem) =>
      context.addIssue({ code: "custom", path: [path], params: { problem }, input: value });

    // zod runs no field refinement for an absent key, so required fields are checked here.
    if (rule.destination === undefined) fail("destination", undefined, { code: "missing", forms: DESTINATION_FORMS });
    if (rule.protocol === undefined) fail("protocol", undefined, { code: "missing", forms: '"tcp", "udp", "icmp" or "all"' });
    const protocol = rule.protocol as string;
    // A wrong protocol already has its own failure; checks against it would only add noise.
    if (!PROTOCOLS.includes(protocol as (typeof PROTOCOLS)[number])) return;

    if (protocol === "tcp" || protocol === "udp") {
      if (rule.ports === undefined) fail("ports", undefined, { code: "missing_ports", protocol });
    } else if (rule.ports !== undefined) {
      fail("ports", rule.ports, { code: "ports_not_allowed", protocol });
    }
    for (const field of ["type", "code"] as const) {
      if (protocol === "icmp" && rule[field] === undefined) fail(field, undefined, { code: "missing_icmp", field });
      if (protocol !== "icmp" && rule[field] !== undefined) fail(field, rule[field], { code: "icmp_only", field, protocol });
    }
    if (rule.log !== undefined && protocol !== "tcp") fail("log", rule.log, { code: "log_tcp_only", protocol });
  });

const rulesSchema = z.array(ruleSchema);

function propertyOf(path: PropertyKey[]): string {
  let property = "rules";
  for (const segment of path) property += typeof segment === "number" ? `[${segment}]` : `.${String(segment)}`;
  return property;
}

function describeIssue(issue: z.core.$ZodIssue): ValidationFailure[] {
  if (issue.code === "unrecognized_keys") {
    return issue.keys.map((key) => {
      const property = propertyOf([...issue.path, key]);
      return { property, reason: describeProblem(property, undefined, { code: "unknown_field", field: key }) };
    });
  }
  const property = propertyOf(issue.path);
  if (issue.code === "custom" && issue.params?.problem) {
    return [{ property, reason: describeProblem(property, issue.input, issue.params.problem as Problem) }];
  }
  if (issue.code === "invalid_type") {
    const expected = issue.path.length === 0 ? "an array of rule objects" : "a rule object";
    return [{ property, reason: describeProblem(property, issue.input, { code: "wrong_type", expected, value: issue.input }) }];
  }
  return [{ property, reason: `${property}: ${issue.message}` }];
}

/** Validates rules in the CF ASG format and returns every problem, each naming the rule index, the field and the value. */
export function validateSecurityGroupRules(rules: unknown): RuleValidation {
  const result = rulesSchema.safeParse(rules, { reportInput: true });
  if (!result.success) return { ok: false, failures: result.error.issues.flatMap(describeIssue) };
  return { ok: true, rules: result.data as SecurityGroupRule[] };
}

/** Reads a CF rules file (a JSON array of rule objects, as `cf create-security-group` takes) and validates it. */
export async function loadCfRulesFile(file: string): Promise<RuleValidation> {
  let text: string;
  try {
    text = await fs.readFile(file, "utf8");
  } catch (error) {
    return { ok: false, failures: [{ property: "rulesFile", reason: `failed to read rules file ${file}: ${(error as Error).message}` }] };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    return { ok: false, failures: [{ property: "rulesFile", reason: `rules file ${file} is not valid JSON: ${(error as Error).message}` }] };
  }
  const result = validateSecurityGroupRules(parsed);
  if (result.ok) return result;
  return { ok: false, failures: result.failures.map((failure) => ({ property: failure.property, reason: `${file}: ${failure.reason}` })) };
}
