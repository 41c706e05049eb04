/**
 * The cell's container bridge: created when the first container attaches,
 * removed when the last one detaches.
 *
 * Containers are not isolated from each other at layer 2; filtering relies on
 * bridge netfilter instead. With `nf_call_iptables` on the bridge, the kernel
 * passes every IPv4 frame bridged between two container ports through the
 * inet hooks with conntrack, so the rules engine filters container-to-
 * container traffic in the same table as routed traffic. Isolated bridge
 * ports would break published ports reached from another container: bridge
 * netfilter forwards a DNATed frame back across the bridge at layer 2
 * (br_netfilter's "bridged DNAT"), which port isolation drops.
 */
import { promises as fs } from "node:fs";

import type { CellNetworkSettings } from "../../common/network-state";
import { parseIpv4Prefix, prefixesOverlap } from "../../common/network-spec";
import { type Runner, runChecked } from "./tools";

export const BRIDGE_NAME = "cfbr0";
/** Used when the cell has no default route to take the MTU from. */
export const DEFAULT_MTU = 1500;

/** One entry of `ip -j -4 route show table all`. */
export interface RouteEntry {
  dst: string;
  dev?: string;
  type?: string;
  table?: string;
}

export async function readRoutes(runner: Runner): Promise<RouteEntry[]> {
  return JSON.parse(await runChecked(runner, ["ip", "-j", "-4", "route", "show", "table", "all"])) as RouteEntry[];
}

/**
 * Returns the first route of the cell whose destination shares an address
 * with the subnet. Default routes match every address but are less specific
 * than the bridge's route, and routes on the bridge itself are cellfleet's own.
 */
export function overlappingRoute(subnet: string, routes: RouteEntry[], bridge: string): RouteEntry | undefined {
  const prefix = parseIpv4Prefix(subnet);
  if (!prefix) throw new Error(`subnet ${JSON.stringify(subnet)} is not an IPv4 CIDR`);
  return routes.find((route) => {
    if (route.dst === "default" || route.dev === bridge) return false;
    const destination = parseIpv4Prefix(route.dst);
    return destination !== undefined && prefixesOverlap(prefix, destination);
  });
}

export function describeRoute(route: RouteEntry): string {
  const parts = [route.type && route.type !== "unicast" ? route.type : "", route.dst, route.dev ? `dev ${route.dev}` : "", route.table ? `table ${route.table}` : ""];
  return parts.filter(Boolean).join(" ");
}

async function readNumber(file: string): Promise<number | undefined> {
  const text = await fs.readFile(file, "utf8").catch(() => undefined);
  return text === undefined ? undefined : Number(text.trim());
}

export async function interfaceExists(name: string): Promise<boolean> {
  return fs
    .access(`/sys/class/net/${name}`)
    .then(() => true)
    .catch(() => false);
}

/**
 * The MTU of the interface that carries the cell's default route: containers
 * must not send frames that the uplink would have to fragment or drop.
 */
async function uplinkMtu(runner: Runner): Promise<number> {
  const routes = JSON.parse(await runChecked(runner, ["ip", "-j", "-4", "route", "show", "default"])) as RouteEntry[];
  const device = routes.find((route) => route.dev)?.dev;
  if (!device) return DEFAULT_MTU;
  return (await readNumber(`/sys/class/net/${device}/mtu`)) ?? DEFAULT_MTU;
}

/**
 * Makes sure br_netfilter is loaded, so `nf_call_iptables` on the bridge has
 * an effect. Loading the module switches bridge netfilter on for every bridge
 * of the namespace, so when this call loads it, the namespace-wide switches
 * go back off and only cellfleet's bridge, through its own option, uses it.
 * Returns false when the module cannot be loaded; the rules engine then
 * blocks container-to-container traffic on the bridge.
 */
async function ensureBridgeNetfilter(runner: Runner, log: (message: string) => void): Promise<boolean> {
  if (await fs.access("/proc/sys/net/bridge").then(() => true, () => false)) return true;
  // NOTE: no test runs the modprobe path below, because the test kernel has br_netfilter built in.
  const loaded = await runner(["modprobe", "br_netfilter"]).catch((error: Error) => ({ code: -1, stdout: "", stderr: error.message }));
  if (loaded.code !== 0) {
    log(`modprobe br_netfilter failed (${loaded.stderr.trim()}): containers on ${BRIDGE_NAME} will not reach each other`);
    return false;
  }
  await runChecked(runner, ["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0", "net.bridge.bridge-nf-call-ip6tables=0", "net.bridge.bridge-nf-call-arptables=0"]);
  log("loaded br_netfilter and switched it off for every bridge but cellfleet's");
  return true;
}

async function bridgeAddresses(runner: Runner, bridge: string): Promise<string[]> {
  const links = JSON.parse(await runChecked(runner, ["ip", "-j", "-4", "address", "show", "dev", bridge])) as { addr_info?: { local: string; prefixlen: number }[] }[];
  return links.flatMap((link) => link.addr_info ?? []).map((info) => `${info.local}/${info.prefixlen}`);
}

export class SubnetOverlap extends Error {}

/**
 * Creates the bridge with the gateway address, or repairs the address of an
 * existing one, and returns the bridge's MTU. Also turns on IPv4 forwarding
 * in the cell's namespace, which containers need to reach anything beyond
 * the cell. NOTE: forwarding is namespace-wide, so the cell then routes
 * between all of its interfaces as far as its firewall allows.
 */
export async function ensureBridge(runner: Runner, settings: CellNetworkSettings, log: (message: string) => void): Promise<number> {
  const { bridge, subnet, gateway } = settings;
  const prefixLength = subnet.split("/")[1];
  const wanted = `${gateway}/${prefixLength}`;

  if (!(await interfaceExists(bridge))) {
    const overlap = overlappingRoute(subnet, await readRoutes(runner), bridge);
    if (overlap) {
      throw new SubnetOverlap(`containerSubnet ${subnet} overlaps the cell's route "${describeRoute(overlap)}": choose a subnet that the cell does not use`);
    }
    const netfilter = await ensureBridgeNetfilter(runner, log);
    const mtu = await uplinkMtu(runner);
    await runChecked(runner, ["ip", "link", "add", "name", bridge, "mtu", String(mtu), "type", "bridge", ...(netfilter ? ["nf_call_iptables", "1"] : [])]);
    // IPv6 is off on the bridge, so a container cannot reach the cell over IPv6 either.
    // route_localnet lets connections from the cell's own 127.0.0.1 reach published
    // ports. It is safe only because the rules engine drops 127.0.0.0/8 destinations from containers.
    await runChecked(runner, ["sysctl", "-q", "-w", `net.ipv6.conf.${bridge}.disable_ipv6=1`, `net.ipv4.conf.${bridge}.route_localnet=1`, "net.ipv4.ip_forward=1"]);
    await runChecked(runner, ["ip", "address", "add", wanted, "dev", bridge]);
    await runChecked(runner, ["ip", "link", "set", bridge, "up"]);
    log(`created bridge ${bridge} with ${wanted}, MTU ${mtu}${netfilter ? "" : ", without bridge netfilter"}`);
    return mtu;
  }

  const addresses = await bridgeAddresses(runner, bridge);
  if (addresses.length !== 1 || addresses[0] !== wanted) {
    await runChecked(runner, ["ip", "address", "flush", "dev", bridge]);
    await runChecked(runner, ["ip", "address", "add", wanted, "dev", bridge]);
    log(`bridge ${bridge} had addresses [${addresses.join(", ")}]; set ${wanted}`);
  }
  await runChecked(runner, ["ip", "link", "set", bridge, "up"]);
  await runChecked(runner, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
  return (await readNumber(`/sys/class/net/${bridge}/mtu`)) ?? DEFAULT_MTU;
}

/** Deletes the bridge if it exists; the caller checks that no container uses it. */
export async function removeBridge(runner: Runner, bridge: string): Promise<void> {
  if (await interfaceExists(bridge)) await runChecked(runner, ["ip", "link", "delete", bridge]);
}
