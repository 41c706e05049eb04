/**
 * nftables as typed objects named in nft's own words: table, chain, rule,
 * set, map and element. A Transaction validates each operation as it is
 * added and renders all of them into one script. The real runner pipes that
 * script into a single `nft -f -`, which the kernel commits all or nothing,
 * and the fake runner for unit tests behaves the same way.
 */
import { type CommandResult, type Runner, spawnRunner } from "./tools";

export type Family = "ip" | "ip6" | "inet" | "arp" | "bridge" | "netdev";
export type Hook = "prerouting" | "input" | "forward" | "output" | "postrouting" | "ingress";
export type ChainType = "filter" | "nat" | "route";
export type SetFlag = "constant" | "interval" | "timeout" | "dynamic";

export interface TableRef {
  family: Family;
  name: string;
}

export interface Table extends TableRef {
  kind: "table";
  comment?: string;
}

/** A chain. A base chain has type, hook and priority, and a regular chain has none of them. */
export interface Chain {
  kind: "chain";
  table: TableRef;
  name: string;
  type?: ChainType;
  hook?: Hook;
  /** Numeric priority: nft's named ones are -300 raw, -200 conntrack, -150 mangle, -100 dstnat, 0 filter, 100 srcnat. */
  priority?: number;
  policy?: "accept" | "drop";
  comment?: string;
}

export interface Rule {
  kind: "rule";
  table: TableRef;
  chain: string;
  /** The rule's statements in nft syntax, such as `ct state established,related accept`. */
  rule: string;
  /** Also the rule's identity when the live ruleset is compared with the desired one. */
  comment?: string;
}

/** A set or map. Its `typeof` or `type` is the key, followed by ": value" for a map. */
export interface NftSet {
  kind: "set" | "map";
  table: TableRef;
  name: string;
  typeof?: string;
  type?: string;
  flags?: SetFlag[];
  comment?: string;
}

/** One field of an element, in the shape `nft -j -n` prints it. */
export type Value = string | number | { prefix: { addr: string; len: number } } | { range: [string | number, string | number] };

export type Verdict = { accept: null } | { drop: null } | { jump: { target: string } } | { goto: { target: string } };

export interface Element {
  kind: "element";
  table: TableRef;
  /** The set or map the element belongs to. */
  set: string;
  /** One value per concatenated field. */
  key: Value[];
  /** Maps only: the data, one value per field, or a verdict. */
  value?: Value[] | Verdict;
}

export type NftObject = Table | Chain | Rule | NftSet | Element;

export type Operation = { verb: "add"; object: NftObject } | { verb: "delete"; object: Table | Chain | NftSet } | { verb: "flush"; object: Table | Chain | NftSet };

export type NftErrorCode =
  /** The transaction itself is malformed; nothing was sent to nft. */
  | "INVALID"
  /** nft could not parse the script. */
  | "SYNTAX"
  /** An object that an operation needs does not exist. */
  | "NOT_FOUND"
  /** An element overlaps or duplicates one that exists. */
  | "EXISTS"
  /** The kernel or nft lacks a feature the script uses. */
  | "UNSUPPORTED"
  | "PERMISSION"
  | "BUSY"
  /** The nft binary is not installed. */
  | "MISSING_BINARY"
  | "FAILED";

/** An nftables failure, classified once so callers never match nft's message text. */
export class NftError extends Error {
  constructor(
    readonly code: NftErrorCode,
    message: string,
    readonly detail?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "NftError";
  }
}

const STDERR_CLASSES: [RegExp, NftErrorCode][] = [
  [/syntax error|unexpected|unknown identifier|Could not parse/i, "SYNTAX"],
  [/No such file or directory|does not exist/i, "NOT_FOUND"],
  [/File exists|conflicting intervals/i, "EXISTS"],
  [/Operation not supported|Protocol error|not supported|Protocol not supported/i, "UNSUPPORTED"],
  [/Operation not permitted|Permission denied/i, "PERMISSION"],
  [/Device or resource busy/i, "BUSY"],
];

/** Classifies a failed nft run from its stderr, and makes the first error line the message. */
export function classifyNftFailure(action: string, stderr: string, exitCode: number | null): NftError {
  const code = STDERR_CLASSES.find(([pattern]) => pattern.test(stderr))?.[1] ?? "FAILED";
  const firstError = stderr.split("\n").find((line) => /Error:/.test(line))?.replace(/^.*?Error:\s*/, "") ?? stderr.trim().split("\n")[0] ?? "";
  const reason = firstError || `exit code ${exitCode}`;
  return new NftError(code, `nft ${action} failed: ${reason}`, stderr.trim());
}

// --- validation --------------------------------------------------------------

const NAME = /^[A-Za-z][A-Za-z0-9_]{0,199}$/;
// nft's scanner reads these as keywords, so a chain or set named like one is a syntax error.
// NOTE: a partial list of the words most likely to be picked as names; the real nft still rejects any other keyword.
const KEYWORDS = new Set([
  "accept", "arp", "bridge", "chain", "comment", "counter", "ct", "dnat", "drop", "element", "filter", "flags", "flush",
  "forward", "fwd", "goto", "hook", "icmp", "inet", "input", "ip", "ip6", "jump", "limit", "log", "map", "masquerade", "meta",
  "nat", "netdev", "output", "policy", "postrouting", "prerouting", "priority", "redirect", "reject", "return", "rule", "set",
  "snat", "table", "tcp", "type", "udp",
]);
const HOOKS_OF_NAT = new Set<Hook>(["prerouting", "input", "output", "postrouting"]);

function checkName(what: string, name: string): string | undefined {
  if (!NAME.test(name)) return `${what} name ${JSON.stringify(name)} is invalid: use a letter, then letters, digits or underscores`;
  if (KEYWORDS.has(name)) return `${what} name ${JSON.stringify(name)} is an nft keyword: choose another name`;
  return undefined;
}

function checkText(what: string, text: string): string | undefined {
  if (/[\n"\\]/.test(text)) return `${what} ${JSON.stringify(text)} contains a quote, backslash or newline, which nft cannot take in a string`;
  if (Buffer.byteLength(text) > 127) return `${what} ${JSON.stringify(text)} is longer than nft's limit of 127 bytes`;
  return undefined;
}

function tableKey(table: TableRef): string {
  return `${table.family} ${table.name}`;
}

function fieldCount(set: NftSet): number {
  const key = (set.typeof ?? set.type ?? "").split(" : ")[0];
  return key.split(" . ").length;
}

function isInterval(value: Value): boolean {
  return typeof value === "object";
}

function checkValue(value: Value): string | undefined {
  if (typeof value === "string") return checkText("value", value);
  if (typeof value === "number") return Number.isInteger(value) && value >= 0 ? undefined : `value ${value} is not a non-negative integer`;
  if ("prefix" in value) {
    const { addr, len } = value.prefix;
    return checkText("prefix address", addr) ?? (Number.isInteger(len) && len >= 0 && len <= 128 ? undefined : `prefix length ${len} is out of range`);
  }
  const [first, last] = value.range;
  return checkValue(first) ?? checkValue(last);
}

function describe(object: NftObject): string {
  switch (object.kind) {
    case "table":
      return `table ${tableKey(object)}`;
    case "chain":
      return `chain ${object.name} of table ${tableKey(object.table)}`;
    case "rule":
      return `rule ${JSON.stringify(object.rule)} in chain ${object.chain}`;
    case "set":
    case "map":
      return `${object.kind} ${object.name} of table ${tableKey(object.table)}`;
    case "element":
      return `element ${renderValues(object.key)} of ${object.set}`;
  }
}

// --- rendering -----------------------------------------------------------------

function renderValue(value: Value): string {
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return /^\d{1,3}(\.\d{1,3}){3}$/.test(value) ? value : `"${value}"`;
  if ("prefix" in value) return `${value.prefix.addr}/${value.prefix.len}`;
  return `${renderValue(value.range[0])}-${renderValue(value.range[1])}`;
}

function renderValues(values: Value[]): string {
  return values.map(renderValue).join(" . ");
}

function renderVerdict(verdict: Verdict): string {
  if ("accept" in verdict) return "accept";
  if ("drop" in verdict) return "drop";
  if ("jump" in verdict) return `jump ${verdict.jump.target}`;
  return `goto ${verdict.goto.target}`;
}

function renderElement(element: Element): string {
  const key = renderValues(element.key);
  if (element.value === undefined) return key;
  return `${key} : ${Array.isArray(element.value) ? renderValues(element.value) : renderVerdict(element.value)}`;
}

function comment(text: string | undefined): string {
  return text === undefined ? "" : ` comment "${text}"`;
}

function renderObject(object: Exclude<NftObject, Element>): string {
  switch (object.kind) {
    case "table":
      return `table ${tableKey(object)}${object.comment === undefined ? "" : ` {${comment(object.comment)} ; }`}`;
    case "chain": {
      const parts: string[] = [];
      if (object.hook !== undefined) parts.push(`type ${object.type} hook ${object.hook} priority ${object.priority} ;`);
      if (object.policy !== undefined) parts.push(`policy ${object.policy} ;`);
      if (object.comment !== undefined) parts.push(`${comment(object.comment).trim()} ;`);
      return `chain ${tableKey(object.table)} ${object.name}${parts.length ? ` { ${parts.join(" ")} }` : ""}`;
    }
    case "set":
    case "map": {
      const parts = [object.typeof !== undefined ? `typeof ${object.typeof} ;` : `type ${object.type} ;`];
      if (object.flags?.length) parts.push(`flags ${object.flags.join(",")} ;`);
      if (object.comment !== undefined) parts.push(`${comment(object.comment).trim()} ;`);
      return `${object.kind} ${tableKey(object.table)} ${object.name} { ${parts.join(" ")} }`;
    }
    case "rule":
      return `rule ${tableKey(object.table)} ${object.chain} ${object.rule}${comment(object.comment)}`;
  }
}

/** Elements per `add element` line: long enough to keep the script short, short enough to read. */
const ELEMENTS_PER_LINE = 500;

/**
 * A list of operations that nft applies as one transaction. Each operation is
 * checked as it is added. The first problem is kept and every later operation
 * is ignored, so a caller can build the whole transaction and check once.
 */
export class Transaction {
  readonly operations: Operation[] = [];
  private firstError: NftError | undefined;
  private readonly tables = new Set<string>();
  private readonly chains = new Map<string, Chain>();
  private readonly sets = new Map<string, NftSet>();

  get error(): NftError | undefined {
    return this.firstError;
  }

  add(object: NftObject): this {
    return this.record("add", object);
  }

  delete(object: Table | Chain | NftSet): this {
    return this.record("delete", object);
  }

  flush(object: Table | Chain | NftSet): this {
    return this.record("flush", object);
  }

  /** Returns the set or map that this transaction defines under that name. */
  setNamed(table: TableRef, name: string): NftSet | undefined {
    return this.sets.get(`${tableKey(table)} ${name}`);
  }

  /** Returns the chain that this transaction defines under that name. */
  chainNamed(table: TableRef, name: string): Chain | undefined {
    return this.chains.get(`${tableKey(table)} ${name}`);
  }

  /** Renders the script for `nft -f -`; throws the first validation error instead. */
  render(): string {
    if (this.firstError) throw this.firstError;
    const lines: string[] = [];
    let pending: Element[] = [];
    const flushElements = () => {
      for (let start = 0; start < pending.length; start += ELEMENTS_PER_LINE) {
        const chunk = pending.slice(start, start + ELEMENTS_PER_LINE);
        const first = chunk[0];
        lines.push(`add element ${tableKey(first.table)} ${first.set} { ${chunk.map(renderElement).join(", ")} }`);
      }
      pending = [];
    };
    for (const operation of this.operations) {
      const { object } = operation;
      if (object.kind === "element" && operation.verb === "add") {
        const last = pending[pending.length - 1];
        if (last && (last.set !== object.set || tableKey(last.table) !== tableKey(object.table))) flushElements();
        pending.push(object);
        continue;
      }
      flushElements();
      if (operation.verb === "add") {
        lines.push(`add ${renderObject(object as Exclude<NftObject, Element>)}`);
      } else {
        // delete and flush name the object only, without its definition.
        const target = operation.object;
        const name = target.kind === "table" ? `table ${tableKey(target)}` : `${target.kind} ${tableKey(target.table)} ${target.name}`;
        lines.push(`${operation.verb} ${name}`);
      }
    }
    flushElements();
    return `${lines.join("\n")}\n`;
  }

  private record(verb: Operation["verb"], object: NftObject): this {
    if (this.firstError) return this;
    const problem = this.check(verb, object);
    if (problem !== undefined) {
      this.firstError = new NftError("INVALID", `invalid nftables transaction: cannot ${verb} ${describe(object)}: ${problem}`);
      return this;
    }
    this.operations.push({ verb, object } as Operation);
    return this;
  }

  private check(verb: Operation["verb"], object: NftObject): string | undefined {
    if (object.kind === "table") {
      const problem = checkName("table", object.name) ?? (object.comment === undefined ? undefined : checkText("comment", object.comment));
      if (problem) return problem;
      const key = tableKey(object);
      if (verb === "add") this.tables.add(key);
      if (verb === "delete") {
        this.tables.delete(key);
        for (const map of [this.chains, this.sets]) for (const name of map.keys()) if (name.startsWith(`${key} `)) map.delete(name);
      }
      return undefined;
    }

    if (!this.tables.has(tableKey(object.table))) return `its table ${tableKey(object.table)} is not defined earlier in this transaction`;
    if (verb !== "add") return object.kind === "element" || object.kind === "rule" ? `only add is supported for a ${object.kind}` : undefined;

    switch (object.kind) {
      case "chain":
        return this.checkChain(object);
      case "set":
      case "map":
        return this.checkSet(object);
      case "rule":
        return this.checkRule(object);
      case "element":
        return this.checkElement(object);
    }
  }

  private checkChain(chain: Chain): string | undefined {
    const problem = checkName("chain", chain.name) ?? (chain.comment === undefined ? undefined : checkText("comment", chain.comment));
    if (problem) return problem;
    const base = [chain.type, chain.hook, chain.priority].filter((field) => field !== undefined).length;
    if (base !== 0 && base !== 3) return "a base chain needs type, hook and priority together";
    if (chain.policy !== undefined && base === 0) return "only a base chain has a policy";
    if (chain.type === "nat" && !HOOKS_OF_NAT.has(chain.hook as Hook)) return `a nat chain cannot use hook ${chain.hook}`;
    if (chain.priority !== undefined && !Number.isInteger(chain.priority)) return `priority ${chain.priority} is not an integer`;
    const key = `${tableKey(chain.table)} ${chain.name}`;
    if (this.chains.has(key)) return "the chain is already defined in this transaction";
    this.chains.set(key, chain);
    return undefined;
  }

  private checkSet(set: NftSet): string | undefined {
    const problem = checkName(set.kind, set.name) ?? (set.comment === undefined ? undefined : checkText("comment", set.comment));
    if (problem) return problem;
    if ((set.typeof === undefined) === (set.type === undefined)) return "give exactly one of type and typeof";
    const definition = (set.typeof ?? set.type) as string;
    if (/[\n;{}"]/.test(definition)) return `key ${JSON.stringify(definition)} contains a character that ends a statement`;
    if ((set.kind === "map") !== definition.includes(" : ")) return set.kind === "map" ? 'a map needs "key : value"' : 'a set has no ": value"';
    const key = `${tableKey(set.table)} ${set.name}`;
    if (this.sets.has(key)) return `the ${set.kind} is already defined in this transaction`;
    this.sets.set(key, set);
    return undefined;
  }

  private checkRule(rule: Rule): string | undefined {
    if (!this.chains.has(`${tableKey(rule.table)} ${rule.chain}`)) return `chain ${rule.chain} is not defined earlier in this transaction`;
    if (rule.rule.trim() === "") return "the rule is empty";
    // A newline, semicolon or hash would end the statement early or start another command in the script.
    if (/[\n;#]/.test(rule.rule)) return "the rule contains a newline, semicolon or hash";
    if ((rule.rule.match(/"/g) ?? []).length % 2 !== 0) return "the rule has an unbalanced quote";
    // nft resolves a jump or goto target when it adds the rule, so the target must come first.
    for (const match of rule.rule.matchAll(/\b(?:jump|goto)\s+([A-Za-z][A-Za-z0-9_]*)/g)) {
      if (!this.chains.has(`${tableKey(rule.table)} ${match[1]}`)) return `target chain ${match[1]} is not defined earlier in this transaction`;
    }
    return rule.comment === undefined ? undefined : checkText("comment", rule.comment);
  }

  private checkElement(element: Element): string | undefined {
    const set = this.sets.get(`${tableKey(element.table)} ${element.set}`);
    if (!set) return `set ${element.set} is not defined earlier in this transaction`;
    if (element.key.length !== fieldCount(set)) return `the key has ${element.key.length} fields but ${set.name} has ${fieldCount(set)}`;
    for (const value of element.key) {
      const problem = checkValue(value);
      if (problem) return problem;
      if (isInterval(value) && !set.flags?.includes("interval")) return `${set.name} has no interval flag, so it cannot hold ${renderValue(value)}`;
    }
    if (set.kind === "map" && element.value === undefined) return "an element of a map needs a value";
    if (set.kind === "set" && element.value !== undefined) return "an element of a set has no value";
    if (Array.isArray(element.value)) {
      for (const value of element.value) {
        const problem = checkValue(value);
        if (problem) return problem;
      }
    } else if (element.value !== undefined && ("jump" in element.value || "goto" in element.value)) {
      const target = "jump" in element.value ? element.value.jump.target : element.value.goto.target;
      if (!this.chains.has(`${tableKey(element.table)} ${target}`)) return `verdict target chain ${target} is not defined earlier in this transaction`;
    }
    return undefined;
  }
}

// --- runners -----------------------------------------------------------------

/** One object of `nft -j list` output, such as { table: {...} } or { set: {...} }. */
export type NftJsonObject = Record<string, Record<string, unknown>>;

/** Applies transactions and lists tables on one network namespace. */
export interface NftRunner {
  /** Applies every operation or none. */
  apply(transaction: Transaction): Promise<void>;
  /** Lists the given tables as `nft -j -n list table` does; a table that does not exist lists nothing. */
  list(tables: TableRef[]): Promise<NftJsonObject[]>;
}

/** Runs one process; unit tests replace it to assert the exact argv and input. */
export type Exec = Runner;
export type ExecResult = CommandResult;
export const spawnExec: Exec = spawnRunner;

/** Runs the real nft binary; `command` may prefix it, such as ["ip", "netns", "exec", "NAME", "nft"]. */
export class ExecNftRunner implements NftRunner {
  private readonly command: string[];
  private readonly exec: Exec;

  constructor(options: { command?: string[]; exec?: Exec } = {}) {
    this.command = options.command ?? ["nft"];
    this.exec = options.exec ?? spawnExec;
  }

  async apply(transaction: Transaction): Promise<void> {
    const script = transaction.render();
    const result = await this.run([...this.command, "-f", "-"], "apply the ruleset", script);
    if (result.code !== 0) throw classifyNftFailure("-f (apply the ruleset)", result.stderr, result.code);
  }

  async list(tables: TableRef[]): Promise<NftJsonObject[]> {
    const objects: NftJsonObject[] = [];
    for (const table of tables) {
      const result = await this.run([...this.command, "-j", "-n", "list", "table", table.family, table.name], `list table ${tableKey(table)}`);
      if (result.code !== 0) {
        const error = classifyNftFailure(`list table ${tableKey(table)}`, result.stderr, result.code);
        if (error.code === "NOT_FOUND") continue;
        throw error;
      }
      const parsed = JSON.parse(result.stdout) as { nftables?: NftJsonObject[] };
      objects.push(...(parsed.nftables ?? []).filter((object) => !("metainfo" in object)));
    }
    return objects;
  }

  private async run(argv: string[], action: string, input?: string): Promise<ExecResult> {
    try {
      return await this.exec(argv, input);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code === "ENOENT" ? "MISSING_BINARY" : "FAILED";
      const hint = code === "MISSING_BINARY" ? ": install the nftables package" : "";
      throw new NftError(code, `nft ${action} failed: cannot run ${argv[0]}: ${(error as Error).message}${hint}`, undefined, { cause: error });
    }
  }
}

interface FakeTable {
  table: Table;
  chains: Map<string, { chain: Chain; rules: Rule[] }>;
  sets: Map<string, { set: NftSet; elements: Element[] }>;
}

/**
 * An in-memory nftables that applies a transaction to a copy of its state
 * and keeps the copy only if every operation succeeds, as the kernel does. It
 * parses no scripts: it keeps the typed objects of the transactions.
 */
export class FakeNftRunner implements NftRunner {
  private tables = new Map<string, FakeTable>();
  private pendingFailure: NftError | undefined;
  /** Every transaction applied successfully, oldest first. */
  readonly applied: Transaction[] = [];

  /** Makes the next apply fail with this error and change nothing. */
  failNextApply(error: NftError = new NftError("FAILED", "nft -f (apply the ruleset) failed: injected failure")): void {
    this.pendingFailure = error;
  }

  async apply(transaction: Transaction): Promise<void> {
    transaction.render();
    if (this.pendingFailure) {
      const error = this.pendingFailure;
      this.pendingFailure = undefined;
      throw error;
    }
    const next = cloneTables(this.tables);
    for (const operation of transaction.operations) applyOperation(next, operation);
    this.tables = next;
    this.applied.push(transaction);
  }

  async list(tables: TableRef[]): Promise<NftJsonObject[]> {
    const objects: NftJsonObject[] = [];
    for (const ref of tables) {
      const table = this.tables.get(tableKey(ref));
      if (!table) continue;
      objects.push(...listTable(table));
    }
    return objects;
  }

  /** Deletes one element as an operator's `nft delete element` would; for drift tests. */
  deleteElement(table: TableRef, set: string, matches: (element: Element) => boolean): number {
    const entry = this.tables.get(tableKey(table))?.sets.get(set);
    if (!entry) return 0;
    const before = entry.elements.length;
    entry.elements = entry.elements.filter((element) => !matches(element));
    return before - entry.elements.length;
  }

  /** Deletes rules as an operator's `nft delete rule` would; for drift tests. */
  deleteRules(table: TableRef, chain: string, matches: (rule: Rule) => boolean): number {
    const entry = this.tables.get(tableKey(table))?.chains.get(chain);
    if (!entry) return 0;
    const before = entry.rules.length;
    entry.rules = entry.rules.filter((rule) => !matches(rule));
    return before - entry.rules.length;
  }
}

function cloneTables(tables: Map<string, FakeTable>): Map<string, FakeTable> {
  const copy = new Map<string, FakeTable>();
  for (const [key, table] of tables) {
    copy.set(key, {
      table: table.table,
      chains: new Map([...table.chains].map(([name, entry]) => [name, { chain: entry.chain, rules: [...entry.rules] }])),
      sets: new Map([...table.sets].map(([name, entry]) => [name, { set: entry.set, elements: [...entry.elements] }])),
    });
  }
  return copy;
}

function notFound(what: string): NftError {
  return new NftError("NOT_FOUND", `nft -f (apply the ruleset) failed: Could not process rule: No such file or directory (${what})`);
}

function applyOperation(tables: Map<string, FakeTable>, operation: Operation): void {
  const { object } = operation;
  if (object.kind === "table") {
    const key = tableKey(object);
    if (operation.verb === "add" && !tables.has(key)) tables.set(key, { table: object, chains: new Map(), sets: new Map() });
    if (operation.verb === "delete") {
      if (!tables.delete(key)) throw notFound(`table ${key}`);
    }
    if (operation.verb === "flush") {
      const table = tables.get(key);
      if (!table) throw notFound(`table ${key}`);
      for (const entry of table.chains.values()) entry.rules = [];
      for (const entry of table.sets.values()) entry.elements = [];
    }
    return;
  }
  const table = tables.get(tableKey(object.table));
  if (!table) throw notFound(`table ${tableKey(object.table)}`);
  switch (object.kind) {
    case "chain":
      if (operation.verb === "add" && !table.chains.has(object.name)) table.chains.set(object.name, { chain: object, rules: [] });
      if (operation.verb === "delete" && !table.chains.delete(object.name)) throw notFound(`chain ${object.name}`);
      if (operation.verb === "flush") {
        const entry = table.chains.get(object.name);
        if (!entry) throw notFound(`chain ${object.name}`);
        entry.rules = [];
      }
      return;
    case "set":
    case "map":
      if (operation.verb === "add" && !table.sets.has(object.name)) table.sets.set(object.name, { set: object, elements: [] });
      if (operation.verb === "delete" && !table.sets.delete(object.name)) throw notFound(`${object.kind} ${object.name}`);
      if (operation.verb === "flush") {
        const entry = table.sets.get(object.name);
        if (!entry) throw notFound(`${object.kind} ${object.name}`);
        entry.elements = [];
      }
      return;
    case "rule": {
      const entry = table.chains.get(object.chain);
      if (!entry) throw notFound(`chain ${object.chain}`);
      entry.rules.push(object);
      return;
    }
    case "element": {
      const entry = table.sets.get(object.set);
      if (!entry) throw notFound(`set ${object.set}`);
      entry.elements.push(object);
      return;
    }
  }
}

function elementJson(element: Element): unknown {
  const key = element.key.length === 1 ? element.key[0] : { concat: element.key };
  if (element.value === undefined) return key;
  if (!Array.isArray(element.value)) return [key, element.value];
  const value = element.value.length === 1 ? element.value[0] : { concat: element.value };
  return [key, value];
}

function listTable(entry: FakeTable): NftJsonObject[] {
  const { family, name } = entry.table;
  const objects: NftJsonObject[] = [{ table: { family, name, ...(entry.table.comment ? { comment: entry.table.comment } : {}) } }];
  for (const { chain } of entry.chains.values()) {
    const base = chain.hook ? { type: chain.type, hook: chain.hook, prio: chain.priority, policy: chain.policy ?? "accept" } : {};
    objects.push({ chain: { family, table: name, name: chain.name, ...base } });
  }
  for (const { set, elements } of entry.sets.values()) {
    const body: Record<string, unknown> = { family, name: set.name, table: name };
    if (set.flags?.length) body.flags = set.flags;
    if (elements.length) body.elem = elements.map(elementJson);
    objects.push({ [set.kind]: body });
  }
  for (const { rules } of entry.chains.values()) {
    for (const rule of rules) {
      objects.push({ rule: { family, table: name, chain: rule.chain, expr: [], ...(rule.comment ? { comment: rule.comment } : {}) } });
    }
  }
  return objects;
}
