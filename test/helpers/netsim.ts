// Simulated container networking for traffic tests of the rules engine, in
// place of the plumbing. The cell's network namespace gets a bridge with the
// gateway address. Each simulated container is a network namespace with a
// veth into the bridge. The "outside world" is a namespace joined to the cell
// by a veth, with listeners. cleanup() removes every namespace created here,
// and nothing touches the host's own namespace.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { promisify } from "node:util";

import type { ContainerAttachment } from "../../provider/src/common/network-state";

const run = promisify(execFile);

export async function sh(argv: string[]): Promise<string> {
  try {
    const { stdout } = await run(argv[0], argv.slice(1), { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (error) {
    const failure = error as Error & { stderr?: string };
    throw new Error(`${argv.join(" ")} failed: ${failure.message.split("\n")[0]} ${failure.stderr ?? ""}`.trim());
  }
}

export function inNetns(netns: string, argv: string[]): Promise<string> {
  return sh(["ip", "netns", "exec", netns, ...argv]);
}

export interface Probe {
  kind: "tcp" | "udp";
  host: string;
  port: number;
  localAddress?: string;
  timeoutMs?: number;
}

export interface ProbeResult {
  /** "open" (tcp, greeting read), "reply" (udp), "refused" (tcp reset), "timeout", or an errno code. */
  result: string;
  greeting?: string;
}

// Runs probes in parallel inside one namespace; a tcp probe waits for the
// server's greeting line, so "open" also proves that replies come back.
const PROBE_SCRIPT = `
const net = require("net"), dgram = require("dgram");
const probes = JSON.parse(process.argv[1]);
Promise.all(probes.map((p) => new Promise((resolve) => {
  const timeout = p.timeoutMs || 1500;
  if (p.kind === "tcp") {
    const socket = net.connect({ host: p.host, port: p.port, localAddress: p.localAddress });
    let data = "";
    const timer = setTimeout(() => { socket.destroy(); resolve({ result: "timeout" }); }, timeout);
    socket.on("data", (chunk) => { data += chunk; if (data.includes("\\n")) { clearTimeout(timer); socket.destroy(); resolve({ result: "open", greeting: data.trim() }); } });
    socket.on("error", (error) => { clearTimeout(timer); resolve({ result: error.code === "ECONNREFUSED" ? "refused" : error.code }); });
  } else {
    const socket = dgram.createSocket("udp4");
    const timer = setTimeout(() => { socket.close(); resolve({ result: "timeout" }); }, timeout);
    socket.on("message", (message) => { clearTimeout(timer); socket.close(); resolve({ result: "reply", greeting: String(message).trim() }); });
    socket.on("error", (error) => { clearTimeout(timer); try { socket.close(); } catch {} resolve({ result: error.code }); });
    socket.connect(p.port, p.host, () => socket.send("ping"));
  }
}))).then((results) => process.stdout.write(JSON.stringify(results)));
`;

// Listens on tcp and udp ports and echoes. It greets each connection or
// datagram with its own name and the peer's address, so tests can check masquerade.
const SERVER_SCRIPT = `
const net = require("net"), dgram = require("dgram");
const spec = JSON.parse(process.argv[1]);
let pending = spec.tcp.length + spec.udp.length;
const ready = () => { if (--pending === 0) process.stdout.write("ready\\n"); };
for (const port of spec.tcp) {
  net.createServer((socket) => {
    socket.on("error", () => {});
    socket.write("hello " + spec.name + " from " + socket.remoteAddress + "\\n");
    socket.pipe(socket);
  }).listen(port, "0.0.0.0", ready);
}
// A socket bound to 0.0.0.0 replies from the primary address, which a connected
// client ignores, so udp binds each address on its own.
const addresses = spec.udpAddresses.length ? spec.udpAddresses : ["0.0.0.0"];
pending += spec.udp.length * (addresses.length - 1);
for (const port of spec.udp) {
  for (const address of addresses) {
    const socket = dgram.createSocket("udp4");
    socket.on("message", (message, peer) => socket.send("hello " + spec.name + " from " + peer.address, peer.port, peer.address));
    socket.bind(port, address, ready);
  }
}
if (pending === 0) process.stdout.write("ready\\n");
`;

// Holds one tcp connection open and writes a line every 100 ms; prints
// "connected", each received line, and "closed <code>" when the connection ends.
const CLIENT_SCRIPT = `
const net = require("net");
const [host, port] = [process.argv[1], Number(process.argv[2])];
const socket = net.connect({ host, port }, () => process.stdout.write("connected\\n"));
const timer = setInterval(() => socket.write("tick\\n"), 100);
socket.on("data", (chunk) => process.stdout.write("data " + String(chunk).split("\\n")[0] + "\\n"));
const end = (code) => { clearInterval(timer); process.stdout.write("closed " + code + "\\n"); process.exit(0); };
socket.on("error", (error) => end(error.code));
socket.on("close", () => end("close"));
`;

export async function probe(netns: string, probes: Probe[]): Promise<ProbeResult[]> {
  const output = await inNetns(netns, [process.execPath, "-e", PROBE_SCRIPT, JSON.stringify(probes)]);
  return JSON.parse(output) as ProbeResult[];
}

export async function probeOne(netns: string, single: Probe): Promise<ProbeResult> {
  return (await probe(netns, [single]))[0];
}

/** Sends one ICMP echo request with busybox ping; resolves true when a reply came back. */
export async function ping(netns: string, host: string): Promise<boolean> {
  try {
    await inNetns(netns, ["busybox", "ping", "-c", "1", "-W", "1", host]);
    return true;
  } catch {
    return false;
  }
}

/** A process started in a namespace, with its output so far. */
export class NetnsProcess {
  output = "";

  constructor(readonly child: ChildProcess) {
    child.stdout?.on("data", (chunk: Buffer) => (this.output += chunk.toString("utf8")));
    child.stderr?.on("data", (chunk: Buffer) => (this.output += chunk.toString("utf8")));
  }

  async waitFor(pattern: RegExp, timeoutMs = 5000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const match = pattern.exec(this.output);
      if (match) return match[0];
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${pattern} in output ${JSON.stringify(this.output)}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /** Stops the process by its pid. */
  stop(): void {
    if (this.child.exitCode === null && this.child.pid !== undefined) {
      try {
        process.kill(this.child.pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
  }
}

function startInNetns(netns: string, script: string, args: string[]): NetnsProcess {
  // `ip netns exec` execs the command in place, so the child's pid is node's own.
  return new NetnsProcess(spawn("ip", ["netns", "exec", netns, process.execPath, "-e", script, ...args], { stdio: ["ignore", "pipe", "pipe"] }));
}

export interface SimulatedContainer {
  id: string;
  netns: string;
  attachment: ContainerAttachment;
}

export interface SimulationOptions {
  /** Prefix of every namespace and link name, such as "t-sg"; at most 6 characters. */
  prefix: string;
  /** The network namespace that plays the cell. */
  cellNetns: string;
  bridge: string;
  /** Third octet of the container subnet 198.19.N.0/24 and of the outside subnet 100.64.N.0/24. */
  index: number;
}

export class SimulatedNetwork {
  readonly subnet: string;
  readonly gateway: string;
  /** The cell's address towards the outside world. */
  readonly cellOutsideAddress: string;
  readonly outsideNetns: string;
  readonly containers: SimulatedContainer[] = [];
  private readonly namespaces: string[] = [];
  private readonly processes: NetnsProcess[] = [];

  constructor(readonly options: SimulationOptions) {
    this.subnet = `198.19.${options.index}.0/24`;
    this.gateway = `198.19.${options.index}.1`;
    this.cellOutsideAddress = `100.64.${options.index}.1`;
    this.outsideNetns = `${options.prefix}-out`;
  }

  private cell(argv: string[]): Promise<string> {
    return inNetns(this.options.cellNetns, argv);
  }

  /**
   * Sets up what the plumbing would: a bridge with bridge netfilter on
   * (nf_call_iptables), forwarding, and route_localnet so that the cell's
   * own 127.0.0.1 reaches published ports.
   */
  async createBridge(): Promise<void> {
    const { bridge } = this.options;
    await this.cell(["ip", "link", "set", "lo", "up"]);
    await this.cell(["ip", "link", "add", bridge, "type", "bridge", "nf_call_iptables", "1"]);
    await this.cell(["ip", "address", "add", `${this.gateway}/24`, "dev", bridge]);
    await this.cell(["ip", "link", "set", bridge, "up"]);
    await this.cell(["sysctl", "-qw", "net.ipv4.ip_forward=1", `net.ipv4.conf.${bridge}.route_localnet=1`]);
  }

  private async addNamespace(name: string): Promise<void> {
    await sh(["ip", "netns", "add", name]);
    this.namespaces.push(name);
    await inNetns(name, ["ip", "link", "set", "lo", "up"]);
  }

  /** Creates a simulated container: a namespace whose only link is a veth into the bridge. */
  async addContainer(id: string, options: { securityGroups?: string[]; labels?: Record<string, string>; ipv6?: boolean; registered?: boolean } = {}): Promise<SimulatedContainer> {
    const number = this.containers.length + 2;
    const netns = `${this.options.prefix}-c${number}`;
    const hostInterface = `${this.options.prefix.replace(/-/g, "")}h${number}`;
    const address = `198.19.${this.options.index}.${number}`;
    await this.addNamespace(netns);
    if (!options.ipv6) await inNetns(netns, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]);
    await sh(["ip", "link", "add", hostInterface, "netns", this.options.cellNetns, "type", "veth", "peer", "name", "eth0", "netns", netns]);
    await this.cell(["ip", "link", "set", hostInterface, "master", this.options.bridge]);
    // Hairpin lets br_netfilter send a DNATed frame back out of the port it came in on.
    await this.cell(["ip", "link", "set", hostInterface, "type", "bridge_slave", "hairpin", "on"]);
    await this.cell(["ip", "link", "set", hostInterface, "up"]);
    await inNetns(netns, ["ip", "address", "add", `${address}/24`, "dev", "eth0"]);
    await inNetns(netns, ["ip", "link", "set", "eth0", "up"]);
    await inNetns(netns, ["ip", "route", "add", "default", "via", this.gateway]);
    const container: SimulatedContainer = {
      id,
      netns,
      attachment: { id, address, hostInterface, securityGroups: options.securityGroups ?? [], ports: [], labels: options.labels ?? {} },
    };
    this.containers.push(container);
    return container;
  }

  /**
   * Creates the outside world: a namespace joined to the cell by a veth, with
   * every given address on its end, and routes for them in the cell.
   */
  async addOutside(addresses: string[]): Promise<void> {
    const netns = this.outsideNetns;
    const cellLink = `${this.options.prefix.replace(/-/g, "")}out`;
    await this.addNamespace(netns);
    await inNetns(netns, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    await sh(["ip", "link", "add", cellLink, "netns", this.options.cellNetns, "type", "veth", "peer", "name", "eth0", "netns", netns]);
    await this.cell(["ip", "address", "add", `${this.cellOutsideAddress}/24`, "dev", cellLink]);
    await this.cell(["ip", "link", "set", cellLink, "up"]);
    await inNetns(netns, ["ip", "link", "set", "eth0", "up"]);
    const onLink = `100.64.${this.options.index}.`;
    const first = addresses.find((address) => address.startsWith(onLink));
    if (!first) throw new Error(`outside addresses ${addresses.join(", ")} need one in ${onLink}0/24 to reach the cell`);
    for (const address of addresses) {
      await inNetns(netns, ["ip", "address", "add", `${address}/${address.startsWith(onLink) ? 24 : 32}`, "dev", "eth0"]);
      if (!address.startsWith(onLink)) await this.cell(["ip", "route", "add", `${address}/32`, "via", first]);
    }
  }

  /** Starts listeners in a namespace and waits until they listen. */
  async startServer(netns: string, name: string, ports: { tcp?: number[]; udp?: number[]; udpAddresses?: string[] }): Promise<NetnsProcess> {
    const spec = { name, tcp: ports.tcp ?? [], udp: ports.udp ?? [], udpAddresses: ports.udpAddresses ?? [] };
    const server = startInNetns(netns, SERVER_SCRIPT, [JSON.stringify(spec)]);
    this.processes.push(server);
    await server.waitFor(/ready/);
    return server;
  }

  /** Opens a long-lived tcp connection from a namespace. */
  async startClient(netns: string, host: string, port: number): Promise<NetnsProcess> {
    const client = startInNetns(netns, CLIENT_SCRIPT, [host, String(port)]);
    this.processes.push(client);
    await client.waitFor(/data hello/);
    return client;
  }

  /** Stops every process started here and removes every namespace; the cell's links go with the cell. */
  async cleanup(): Promise<void> {
    for (const child of this.processes) child.stop();
    for (const name of this.namespaces.reverse()) {
      await sh(["ip", "netns", "delete", name]).catch(() => undefined);
    }
  }
}
