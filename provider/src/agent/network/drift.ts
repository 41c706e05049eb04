/**
 * Compares the live ruleset (`nft -j -n list table`) with the desired one, so
 * that a rule or set element changed by hand shows up as drift of the
 * security groups and policies it weakens.
 *
 * Rules are identified by their comments, which the renderer makes unique
 * within a chain. Set elements are compared as intervals, because nft prints
 * an address range that happens to be a prefix as a prefix.
 * NOTE: a rule replaced by hand with the same comment is not detected.
 */
import { formatAddress, type Interval } from "../../common/asg";
import type { NetworkPolicyState, SecurityGroupRule } from "../../common/network-state";
import { type Box, covers } from "./boxes";
import type { Chain, Element, NftJsonObject, NftSet, TableRef, Transaction, Value } from "./nft";
import { type AllowLists, egressElements, egressSetOf, groupsOf, INET_TABLE, policyElements, PROTOCOL_NUMBERS, ruleBoxes, selectContainers } from "./ruleset";

type Field = Interval | string;

interface LiveChain {
  type?: string;
  hook?: string;
  priority?: number;
  policy?: string;
  comments: (string | undefined)[];
}

interface LiveTable {
  chains: Map<string, LiveChain>;
  /** Element keys per set or map, each as one field per concatenated value. */
  sets: Map<string, Field[][]>;
}

export type LiveRuleset = Map<string, LiveTable>;

const ADDRESS = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

function addressNumber(text: string): number | undefined {
  const match = ADDRESS.exec(text);
  if (!match) return undefined;
  return match.slice(1).reduce((sum, octet) => sum * 256 + Number(octet), 0);
}

function fieldOf(value: unknown): Field {
  if (typeof value === "number") return { first: value, last: value };
  if (typeof value === "string") {
    const address = addressNumber(value);
    return address === undefined ? value : { first: address, last: address };
  }
  if (value && typeof value === "object") {
    if ("prefix" in value) {
      const { addr, len } = (value as { prefix: { addr: string; len: number } }).prefix;
      const first = addressNumber(addr) ?? 0;
      return { first, last: first + 2 ** (32 - len) - 1 };
    }
    if ("range" in value) {
      const [low, high] = (value as { range: [unknown, unknown] }).range.map(fieldOf);
      if (typeof low === "object" && typeof high === "object") return { first: low.first, last: high.last };
    }
  }
  return JSON.stringify(value);
}

function fieldsOf(key: unknown): Field[] {
  if (key && typeof key === "object" && "concat" in key) return (key as { concat: unknown[] }).concat.map(fieldOf);
  return [fieldOf(key)];
}

function fieldText(field: Field): string {
  if (typeof field === "string") return field;
  return field.first === field.last ? String(field.first) : `${field.first}-${field.last}`;
}

function keyText(fields: Field[]): string {
  return fields.map(fieldText).join(" . ");
}

function tableKey(table: TableRef): string {
  return `${table.family} ${table.name}`;
}

/** Indexes `nft -j -n list table` output by table. */
export function readLiveRuleset(objects: NftJsonObject[]): LiveRuleset {
  const live: LiveRuleset = new Map();
  const tableOf = (body: Record<string, unknown>) => {
    const key = `${body.family} ${body.table ?? body.name}`;
    let table = live.get(key);
    if (!table) {
      table = { chains: new Map(), sets: new Map() };
      live.set(key, table);
    }
    return table;
  };
  for (const object of objects) {
    if (object.table) tableOf(object.table);
    if (object.chain) {
      const body = object.chain;
      tableOf(body).chains.set(String(body.name), {
        type: body.type as string | undefined,
        hook: body.hook as string | undefined,
        priority: body.prio as number | undefined,
        policy: body.policy as string | undefined,
        comments: [],
      });
    }
    for (const kind of ["set", "map"] as const) {
      const body = object[kind];
      if (!body) continue;
      const elements = ((body.elem as unknown[] | undefined) ?? []).map((element) => fieldsOf(kind === "map" && Array.isArray(element) ? element[0] : element));
      tableOf(body).sets.set(String(body.name), elements);
    }
    if (object.rule) {
      const body = object.rule;
      tableOf(body).chains.get(String(body.chain))?.comments.push(body.comment as string | undefined);
    }
  }
  return live;
}

function valueFields(values: Value[]): Field[] {
  return values.map(fieldOf);
}

/** Returns what differs in the structure of the tables: missing tables, chains, hooks, rules and map entries. */
export function structuralDrift(desired: Transaction, live: LiveRuleset): string[] {
  const reasons: string[] = [];
  const chains = new Map<string, { chain: Chain; comments: (string | undefined)[] }>();
  const sets = new Map<string, { set: NftSet; keys: string[] }>();
  const tables = new Set<string>();
  for (const { verb, object } of desired.operations) {
    if (verb !== "add") continue;
    if (object.kind === "table") tables.add(tableKey(object));
    if (object.kind === "chain") chains.set(`${tableKey(object.table)} ${object.name}`, { chain: object, comments: [] });
    if (object.kind === "rule") chains.get(`${tableKey(object.table)} ${object.chain}`)?.comments.push(object.comment);
    if (object.kind === "set" || object.kind === "map") sets.set(`${tableKey(object.table)} ${object.name}`, { set: object, keys: [] });
    if (object.kind === "element") sets.get(`${tableKey(object.table)} ${object.set}`)?.keys.push(keyText(valueFields(object.key)));
  }

  for (const table of tables) {
    if (!live.has(table)) reasons.push(`table ${table} does not exist`);
  }
  for (const { chain, comments } of chains.values()) {
    const table = live.get(tableKey(chain.table));
    if (!table) continue;
    const found = table.chains.get(chain.name);
    if (!found) {
      reasons.push(`chain ${chain.name} of table ${tableKey(chain.table)} does not exist`);
      continue;
    }
    if (chain.hook !== undefined && (found.hook !== chain.hook || found.priority !== chain.priority || (found.policy ?? "accept") !== (chain.policy ?? "accept"))) {
      reasons.push(`chain ${chain.name} is not hooked to ${chain.hook} at priority ${chain.priority} with policy ${chain.policy ?? "accept"}`);
    }
    const missing = comments.filter((comment) => !found.comments.includes(comment));
    const extra = found.comments.filter((comment) => !comments.includes(comment));
    for (const comment of missing) reasons.push(`chain ${chain.name} lacks the rule "${comment}"`);
    if (extra.length) reasons.push(`chain ${chain.name} has ${extra.length} rule(s) that cellfleet did not write`);
  }
  for (const { set, keys } of sets.values()) {
    const table = live.get(tableKey(set.table));
    if (!table) continue;
    const found = table.sets.get(set.name);
    if (!found) {
      reasons.push(`${set.kind} ${set.name} of table ${tableKey(set.table)} does not exist`);
      continue;
    }
    // Egress and policy sets are compared per group and per policy, where a difference can be named.
    if (set.name.startsWith("egress_") || set.name === "policy_allow") continue;
    const liveKeys = new Set(found.map(keyText));
    const missing = keys.filter((key) => !liveKeys.has(key));
    if (missing.length) reasons.push(`${set.kind} ${set.name} lacks ${missing.length} element(s), such as ${missing[0]}`);
    const desiredKeys = new Set(keys);
    const extra = [...liveKeys].filter((key) => !desiredKeys.has(key));
    if (extra.length) reasons.push(`${set.kind} ${set.name} has ${extra.length} element(s) that cellfleet did not write, such as ${extra[0]}`);
  }
  return reasons;
}

function liveElementsFor(live: LiveRuleset, set: string, matches: (fields: Field[]) => boolean): Field[][] {
  return (live.get(tableKey(INET_TABLE))?.sets.get(set) ?? []).filter(matches);
}

function isPoint(field: Field, value: number): boolean {
  return typeof field === "object" && field.first === value && field.last === value;
}

function boxesOf(elements: Field[][], skip: number): Box[] {
  return elements.map((fields) => fields.slice(skip).filter((field): field is Interval => typeof field === "object"));
}

function extraElements(desired: Element[], liveElements: Field[][]): string[] {
  const desiredKeys = new Set(desired.map((element) => keyText(valueFields(element.key))));
  return liveElements.map(keyText).filter((key) => !desiredKeys.has(key));
}

function describeRule(rule: SecurityGroupRule): string {
  const ports = rule.ports !== undefined ? ` ports "${rule.ports}"` : "";
  const icmp = rule.protocol === "icmp" ? ` type ${rule.type} code ${rule.code}` : "";
  return `${rule.protocol} to "${rule.destination}"${ports}${icmp}`;
}

/** Returns why a security group is not enforced as stored for the containers bound to it. */
export function securityGroupDrift(name: string, rules: SecurityGroupRule[], lists: AllowLists, defaults: string[], live: LiveRuleset): string[] {
  const reasons: string[] = [];
  for (const entry of lists.egress) {
    if (!groupsOf(entry.container, defaults).includes(name)) continue;
    const { id } = entry.container;
    rules.forEach((rule, index) => {
      const set = egressSetOf(rule);
      if (!set) return;
      const cover = boxesOf(liveElementsFor(live, set, (fields) => isPoint(fields[0], entry.address)), 1);
      const uncovered = ruleBoxes(rule).some((box) => !covers(cover, box));
      if (uncovered) reasons.push(`rules[${index}] (${describeRule(rule)}) is not enforced for container ${id}: set ${set} lacks part of it`);
    });
    const sets = new Set(rules.map(egressSetOf).filter((set) => set !== undefined));
    for (const set of sets) {
      const liveElements = liveElementsFor(live, set, (fields) => isPoint(fields[0], entry.address));
      const extra = extraElements(egressElements(entry, set), liveElements);
      if (extra.length) {
        reasons.push(`set ${set} allows container ${id} more than its groups do: ${extra.length} element(s) cellfleet did not write, such as ${extra[0]}`);
      }
    }
  }
  return reasons;
}

/** Returns why a network policy is not enforced for the containers it selects. */
export function policyDrift(policy: NetworkPolicyState, lists: AllowLists, live: LiveRuleset): string[] {
  const reasons: string[] = [];
  const containers = lists.egress.map((entry) => entry.container);
  const addressOf = (id: string) => lists.egress.find((entry) => entry.container.id === id)?.address as number;
  for (const source of selectContainers(policy.source, containers)) {
    for (const destination of selectContainers(policy.destination, containers)) {
      if (source.id === destination.id) continue;
      const [from, to] = [addressOf(source.id), addressOf(destination.id)];
      const protocol = PROTOCOL_NUMBERS[policy.protocol];
      const liveElements = liveElementsFor(live, "policy_allow", (fields) => isPoint(fields[0], from) && isPoint(fields[1], to) && isPoint(fields[2], protocol));
      if (!covers(boxesOf(liveElements, 3), [{ first: policy.ports.from, last: policy.ports.to }])) {
        reasons.push(
          `${policy.protocol} ${policy.ports.from}-${policy.ports.to} from container ${source.id} (${formatAddress(from)}) to container ${destination.id} (${formatAddress(to)}) is not enforced: set policy_allow lacks part of it`,
        );
      }
      const allowance = lists.policies.find((entry) => entry.source.id === source.id && entry.destination.id === destination.id && entry.protocol === policy.protocol);
      const extra = extraElements(allowance ? policyElements(lists, allowance) : [], liveElements);
      if (extra.length) reasons.push(`set policy_allow allows ${source.id} to ${destination.id} more than the policies do, such as ${extra[0]}`);
    }
  }
  return reasons;
}
