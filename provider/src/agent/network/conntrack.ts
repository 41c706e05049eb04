/**
 * Connection tracking entries, read and deleted with the `conntrack` tool
 * (Debian package conntrack). Removing a permission from the ruleset stops
 * new connections only: packets of an established connection match
 * `ct state established` before any allow list. Deleting the connection's
 * entry makes its next packet a new one, which the allow lists then reject.
 */
import { type Exec, spawnExec } from "./nft";
import type { Flow } from "./ruleset";

export interface ConntrackEntry extends Flow {
  protocolName: string;
  sourcePort?: number;
  id?: number;
}

export interface ConntrackRunner {
  list(): Promise<ConntrackEntry[]>;
  /** Deletes the entries of one connection; resolves false when none existed any more. */
  delete(entry: ConntrackEntry): Promise<boolean>;
}

function addressNumber(text: string | undefined): number | undefined {
  const match = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text ?? "");
  return match ? match.slice(1).reduce((sum, octet) => sum * 256 + Number(octet), 0) : undefined;
}

function formatAddress(value: number): string {
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join(".");
}

/**
 * Parses one line of `conntrack -L -f ipv4`, such as
 * "tcp 6 431999 ESTABLISHED src=A dst=B sport=1 dport=2 src=B dst=A ...".
 * The first src, dst and port fields are the original direction.
 */
export function parseConntrackLine(line: string): ConntrackEntry | undefined {
  const words = line.trim().split(/\s+/);
  if (words.length < 4 || !/^\d+$/.test(words[1])) return undefined;
  const fields = new Map<string, string>();
  for (const word of words.slice(2)) {
    const separator = word.indexOf("=");
    if (separator <= 0) continue;
    const key = word.slice(0, separator);
    if (!fields.has(key)) fields.set(key, word.slice(separator + 1));
  }
  const source = addressNumber(fields.get("src"));
  const destination = addressNumber(fields.get("dst"));
  if (source === undefined || destination === undefined) return undefined;
  const number = (key: string) => (fields.has(key) ? Number(fields.get(key)) : undefined);
  return {
    protocolName: words[0],
    protocol: Number(words[1]),
    source,
    destination,
    sourcePort: number("sport"),
    destinationPort: number("dport"),
    type: number("type"),
    code: number("code"),
    id: number("id"),
  };
}

/** Returns the conntrack arguments that select exactly one connection's original direction. */
export function deleteArguments(entry: ConntrackEntry): string[] {
  const args = ["-D", "-f", "ipv4", "-p", String(entry.protocol), "--orig-src", formatAddress(entry.source), "--orig-dst", formatAddress(entry.destination)];
  if (entry.sourcePort !== undefined && entry.destinationPort !== undefined) {
    args.push("--orig-port-src", String(entry.sourcePort), "--orig-port-dst", String(entry.destinationPort));
  }
  if (entry.protocol === 1 && entry.type !== undefined && entry.code !== undefined) {
    args.push("--icmp-type", String(entry.type), "--icmp-code", String(entry.code));
    if (entry.id !== undefined) args.push("--icmp-id", String(entry.id));
  }
  return args;
}

export class ConntrackError extends Error {
  constructor(
    readonly code: "MISSING_BINARY" | "FAILED",
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "ConntrackError";
  }
}

/** Runs the real conntrack tool; `command` may prefix it, such as ["ip", "netns", "exec", "NAME", "conntrack"]. */
export class ExecConntrackRunner implements ConntrackRunner {
  private readonly command: string[];
  private readonly exec: Exec;

  constructor(options: { command?: string[]; exec?: Exec } = {}) {
    this.command = options.command ?? ["conntrack"];
    this.exec = options.exec ?? spawnExec;
  }

  async list(): Promise<ConntrackEntry[]> {
    const result = await this.run(["-L", "-f", "ipv4"], "list connections");
    if (result.code !== 0) throw new ConntrackError("FAILED", `conntrack -L failed with exit code ${result.code}: ${result.stderr.trim()}`);
    return result.stdout
      .split("\n")
      .map(parseConntrackLine)
      .filter((entry): entry is ConntrackEntry => entry !== undefined);
  }

  async delete(entry: ConntrackEntry): Promise<boolean> {
    const args = deleteArguments(entry);
    const result = await this.run(args, "delete a connection");
    if (result.code === 0) return true;
    // conntrack exits 1 when the entry is already gone, such as a connection that closed meanwhile.
    if (/0 flow entries have been deleted/.test(result.stderr)) return false;
    throw new ConntrackError("FAILED", `conntrack ${args.join(" ")} failed with exit code ${result.code}: ${result.stderr.trim()}`);
  }

  private async run(args: string[], action: string) {
    const argv = [...this.command, ...args];
    try {
      return await this.exec(argv);
    } catch (error) {
      const missing = (error as NodeJS.ErrnoException).code === "ENOENT";
      throw new ConntrackError(
        missing ? "MISSING_BINARY" : "FAILED",
        `conntrack failed to ${action}: cannot run ${argv[0]}: ${(error as Error).message}${missing ? ": install the conntrack package" : ""}`,
        { cause: error },
      );
    }
  }
}

/** A conntrack table in memory, for unit tests. */
export class FakeConntrackRunner implements ConntrackRunner {
  constructor(public entries: ConntrackEntry[] = []) {}

  async list(): Promise<ConntrackEntry[]> {
    return [...this.entries];
  }

  async delete(entry: ConntrackEntry): Promise<boolean> {
    const before = this.entries.length;
    this.entries = this.entries.filter((candidate) => candidate !== entry);
    return this.entries.length < before;
  }
}
