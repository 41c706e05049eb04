// The "outside world" of a test cell: a network namespace joined to the
// cell's namespace by a veth pair, on a /24 from 100.64.0.0/10 that neither
// the host nor the cell routes. Container egress in tests ends here, so it
// never leaves the machine. Also runs small Node programs inside any network
// namespace, by name or by a container's pid, to listen, connect and measure
// throughput.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { promisify } from "node:util";

import { parseIpv4Prefix, prefixesOverlap } from "../../provider/src/common/network-spec";
import type { Cell } from "./cell";

const run = promisify(execFile);

export async function sh(argv: string[]): Promise<string> {
  try {
    const { stdout } = await run(argv[0], argv.slice(1), { encoding: "utf8", maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  } catch (error) {
    const failure = error as Error & { stderr?: string };
    throw new Error(`${argv.join(" ")} failed: ${failure.message.split("\n")[0]} ${failure.stderr ?? ""}`.trim());
  }
}

/** Where a command runs: a named network namespace, or the network namespace of a process. */
export type Place = { netns: string } | { pid: number };

export function placeArgv(place: Place, argv: string[]): string[] {
  return "netns" in place ? ["ip", "netns", "exec", place.netns, ...argv] : ["nsenter", `--net=/proc/${place.pid}/ns/net`, "--", ...argv];
}

export function runIn(place: Place, argv: string[]): Promise<string> {
  return sh(placeArgv(place, argv));
}

async function routedPrefixes(listing: string): Promise<string[]> {
  return listing
    .split("\n")
    .map((line) => line.trim().split(/\s+/))
    .map((words) => (["local", "broadcast", "unicast", "blackhole", "unreachable", "prohibit"].includes(words[0]) ? words[1] : words[0]))
    .filter((destination) => destination && destination !== "default");
}

export interface OutsideWorld {
  netns: string;
  /** The cell's address on the link to the outside world. */
  cellAddress: string;
  /** The outside namespace's own address. */
  address: string;
  remove(): Promise<void>;
}

/**
 * Creates namespace NAME-out joined to the cell on 100.64.INDEX.0/24, after
 * checking that neither the host nor the cell has a route into that subnet.
 */
export async function createOutsideWorld(cell: Cell, index: number): Promise<OutsideWorld> {
  const subnet = `100.64.${index}.0/24`;
  const prefix = parseIpv4Prefix(subnet)!;
  const hostRoutes = await routedPrefixes(await sh(["ip", "-4", "route", "show", "table", "all"]));
  const cellRoutes = await routedPrefixes(await sh(["ip", "netns", "exec", cell.netns, "ip", "-4", "route", "show", "table", "all"]));
  for (const destination of [...hostRoutes, ...cellRoutes]) {
    const routed = parseIpv4Prefix(destination);
    if (routed && prefixesOverlap(prefix, routed)) throw new Error(`outside subnet ${subnet} overlaps the route ${destination}; choose another index`);
  }

  const netns = `${cell.name}-out`;
  const cellLink = `${cell.name.replace(/-/g, "")}out`;
  const world: OutsideWorld = {
    netns,
    cellAddress: `100.64.${index}.1`,
    address: `100.64.${index}.2`,
    // The cell end of the veth goes with the cell's namespace; deleting this namespace deletes both ends.
    remove: async () => {
      await sh(["ip", "netns", "delete", netns]).catch(() => undefined);
    },
  };
  try {
    await sh(["ip", "netns", "add", netns]);
    await sh(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"]);
    await sh(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    // Created with both ends already in their namespaces, so nothing appears in the host's namespace.
    await sh(["ip", "link", "add", cellLink, "netns", cell.netns, "type", "veth", "peer", "name", "eth0", "netns", netns]);
    await sh(["ip", "netns", "exec", cell.netns, "ip", "address", "add", `${world.cellAddress}/24`, "dev", cellLink]);
    await sh(["ip", "netns", "exec", cell.netns, "ip", "link", "set", cellLink, "up"]);
    await sh(["ip", "netns", "exec", netns, "ip", "address", "add", `${world.address}/24`, "dev", "eth0"]);
    await sh(["ip", "netns", "exec", netns, "ip", "link", "set", "eth0", "up"]);
  } catch (error) {
    await world.remove();
    throw error;
  }
  return world;
}

// Greets every tcp connection with "hello NAME from PEER\n", then echoes.
const SERVER_SCRIPT = `
const net = require("net");
const [name, port] = process.argv.slice(1);
net.createServer((socket) => {
  socket.on("error", () => {});
  socket.write("hello " + name + " from " + socket.remoteAddress + "\\n");
  socket.pipe(socket);
}).listen(Number(port), "0.0.0.0", () => process.stdout.write("ready\\n"));
`;

// Connects, prints the first line the server sends, or the error code.
const CONNECT_SCRIPT = `
const net = require("net");
const [host, port, timeout] = process.argv.slice(1);
const socket = net.connect(Number(port), host);
const timer = setTimeout(() => { process.stdout.write("timeout"); process.exit(0); }, Number(timeout));
let data = "";
socket.on("data", (chunk) => { data += chunk; if (data.includes("\\n")) { clearTimeout(timer); process.stdout.write(data.split("\\n")[0]); process.exit(0); } });
socket.on("error", (error) => { clearTimeout(timer); process.stdout.write(error.code); process.exit(0); });
`;

// Receives one connection and prints {bytes, ms} from its first byte to its end.
const RECEIVE_SCRIPT = `
const net = require("net");
const server = net.createServer((socket) => {
  let first = 0n, bytes = 0;
  socket.on("data", (chunk) => { if (!first) first = process.hrtime.bigint(); bytes += chunk.length; });
  socket.on("end", () => {
    const ms = Number(process.hrtime.bigint() - first) / 1e6;
    process.stdout.write(JSON.stringify({ bytes, ms }) + "\\n");
    socket.end(() => server.close());
  });
});
server.listen(Number(process.argv[1]), "0.0.0.0", () => process.stdout.write("ready\\n"));
`;

// Sends N bytes, half-closes, and prints {bytes, ms} once the receiver has closed too.
const SEND_SCRIPT = `
const net = require("net");
const [host, port, total] = process.argv.slice(1);
const socket = net.connect(Number(port), host);
const chunk = Buffer.alloc(65536, 120);
let sent = 0, start = 0n;
socket.on("connect", () => {
  start = process.hrtime.bigint();
  const pump = () => {
    while (sent < Number(total)) {
      const piece = chunk.subarray(0, Math.min(chunk.length, Number(total) - sent));
      sent += piece.length;
      if (!socket.write(piece)) return socket.once("drain", pump);
    }
    socket.end();
  };
  pump();
});
socket.on("data", () => {});
socket.on("error", (error) => { process.stdout.write(JSON.stringify({ error: error.code }) + "\\n"); process.exit(0); });
socket.on("close", () => process.stdout.write(JSON.stringify({ bytes: sent, ms: Number(process.hrtime.bigint() - start) / 1e6 }) + "\\n"));
`;

// Fetches a URL and prints the body, or the error code.
const HTTP_GET_SCRIPT = `
const http = require("http");
const request = http.get(process.argv[1], { timeout: Number(process.argv[2]) }, (response) => {
  let body = "";
  response.on("data", (chunk) => (body += chunk));
  response.on("end", () => process.stdout.write(body));
});
request.on("timeout", () => { process.stdout.write("timeout"); process.exit(0); });
request.on("error", (error) => process.stdout.write(error.code ?? error.message));
`;

/** Fetches a URL from a place and returns the body, "timeout", or an error code such as ECONNREFUSED. */
export async function httpGet(place: Place, url: string, timeoutMs = 3000): Promise<string> {
  return runIn(place, [process.execPath, "-e", HTTP_GET_SCRIPT, url, String(timeoutMs)]);
}

/** A process started in a namespace, with its output so far; stopped by its pid. */
export class BackgroundProcess {
  output = "";

  constructor(readonly child: ChildProcess) {
    child.stdout?.on("data", (chunk: Buffer) => (this.output += chunk.toString("utf8")));
    child.stderr?.on("data", (chunk: Buffer) => (this.output += chunk.toString("utf8")));
  }

  async waitFor(pattern: RegExp, timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const match = pattern.exec(this.output);
      if (match) return match[0];
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${pattern} in output ${JSON.stringify(this.output)}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  stop(): void {
    if (this.child.exitCode === null && this.child.signalCode === null && this.child.pid !== undefined) {
      try {
        process.kill(this.child.pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
  }
}

function startNode(place: Place, script: string, args: string[]): BackgroundProcess {
  // Both `ip netns exec` and nsenter without a pid namespace exec in place, so the child's pid is node's own.
  const argv = placeArgv(place, [process.execPath, "-e", script, ...args]);
  return new BackgroundProcess(spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] }));
}

/** Starts a greeting server and waits until it listens. */
export async function startGreeter(place: Place, name: string, port: number): Promise<BackgroundProcess> {
  const server = startNode(place, SERVER_SCRIPT, [name, String(port)]);
  await server.waitFor(/ready/);
  return server;
}

/** Connects from a place and returns the server's greeting, "timeout", or an error code such as ECONNREFUSED. */
export async function connect(place: Place, host: string, port: number, timeoutMs = 3000): Promise<string> {
  return runIn(place, [process.execPath, "-e", CONNECT_SCRIPT, host, String(port), String(timeoutMs)]);
}

export interface Transfer {
  bytes: number;
  ms: number;
}

/** Sends bytes from one place to a receiver in another and returns the time the receiver saw from first byte to end. */
export async function measureTransfer(receiver: Place, port: number, sender: Place, host: string, senderPort: number, bytes: number): Promise<Transfer> {
  const receiving = startNode(receiver, RECEIVE_SCRIPT, [String(port)]);
  try {
    await receiving.waitFor(/ready/);
    const sent = JSON.parse(await runIn(sender, [process.execPath, "-e", SEND_SCRIPT, host, String(senderPort), String(bytes)])) as Transfer & { error?: string };
    if (sent.error) throw new Error(`sending ${bytes} bytes to ${host}:${senderPort} failed: ${sent.error}`);
    const line = await receiving.waitFor(/\{"bytes".*\}/, 60_000);
    return JSON.parse(line) as Transfer;
  } finally {
    receiving.stop();
  }
}
