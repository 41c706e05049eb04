/**
 * One veth pair per container: the cell end on the bridge, the container end
 * moved into the container's network namespace as eth0. Interface names
 * derive from the container id, so every step, including cleanup after a
 * crash, finds them without any other state.
 */
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";

import { interfaceExists } from "./bridge";
import { inNetworkNamespace, type Runner, runChecked } from "./tools";

export interface InterfaceNames {
  /** The cell end, attached to the bridge. */
  host: string;
  /** The container end until it is renamed to eth0 inside the container. */
  peer: string;
  /** The ifb device that shapes traffic sent by the container. */
  ifb: string;
}

/**
 * Derives interface names from a container id: a three-letter prefix and ten
 * hex digits of the id's SHA-256, 13 bytes, under the kernel's 15-byte limit.
 * Ids are up to 63 characters, so they cannot be used directly.
 */
export function interfaceNames(containerId: string): InterfaceNames {
  const digest = createHash("sha256").update(containerId).digest("hex").slice(0, 10);
  return { host: `cfv${digest}`, peer: `cfe${digest}`, ifb: `cfi${digest}` };
}

export interface VethRequest {
  /** The container's workload, by its pid on the cell. */
  pid: number;
  names: InterfaceNames;
  bridge: string;
  mtu: number;
  address: string;
  prefixLength: number;
  gateway: string;
}

/**
 * Creates the pair and configures both ends. The order matters: IPv6 is
 * disabled in the container's namespace first, so eth0 never gets an IPv6
 * address, even a link-local one, and the container cannot use IPv6 to go
 * around rules written for IPv4.
 */
export async function createVeth(runner: Runner, request: VethRequest): Promise<void> {
  const { pid, names, bridge, mtu } = request;

  await runChecked(runner, inNetworkNamespace(pid, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]));

  // The peer is created directly in the container's namespace, so it never exists on the cell under a name another tool could take.
  const mtuText = String(mtu);
  await runChecked(runner, ["ip", "link", "add", "name", names.host, "mtu", mtuText, "type", "veth", "peer", "name", names.peer, "mtu", mtuText, "netns", String(pid)]);

  await runChecked(runner, ["sysctl", "-q", "-w", `net.ipv6.conf.${names.host}.disable_ipv6=1`]);
  // Hairpin lets bridge netfilter send a DNATed frame back out of the port it
  // came in on, which a container reaching its own published port needs.
  await runChecked(
    runner,
    ["ip", "-batch", "-"],
    [`link set dev ${names.host} master ${bridge}`, `link set dev ${names.host} type bridge_slave hairpin on`, `link set dev ${names.host} up`, ""].join("\n"),
  );

  await runChecked(
    runner,
    inNetworkNamespace(pid, ["ip", "-batch", "-"]),
    [
      `link set dev ${names.peer} name eth0`,
      `address add ${request.address}/${request.prefixLength} dev eth0`,
      "link set dev eth0 up",
      `route add default via ${request.gateway} dev eth0`,
      "",
    ].join("\n"),
  );
}

/** Deletes an interface if it exists; deleting either end of a veth pair deletes both. */
export async function deleteInterface(runner: Runner, name: string): Promise<void> {
  if (!(await interfaceExists(name))) return;
  const result = await runner(["ip", "link", "delete", name]);
  // The kernel may remove a veth between the check and the delete, when the container's namespace goes away.
  if (result.code !== 0 && (await interfaceExists(name))) {
    await runChecked(runner, ["ip", "link", "delete", name]);
  }
}

/** Returns the bridge an interface is attached to, or undefined. */
export async function masterOf(name: string): Promise<string | undefined> {
  const target = await fs.readlink(`/sys/class/net/${name}/master`).catch(() => undefined);
  return target?.split("/").pop();
}

/** Returns the IPv4 addresses, as "a.b.c.d/n", of eth0 in the container's namespace, or undefined when eth0 is missing. */
export async function containerEth0Addresses(runner: Runner, pid: number): Promise<string[] | undefined> {
  const result = await runner(inNetworkNamespace(pid, ["ip", "-j", "-4", "address", "show", "dev", "eth0"]));
  if (result.code !== 0) return undefined;
  const links = JSON.parse(result.stdout || "[]") as { addr_info?: { local: string; prefixlen: number }[] }[];
  return links.flatMap((link) => link.addr_info ?? []).map((info) => `${info.local}/${info.prefixlen}`);
}
