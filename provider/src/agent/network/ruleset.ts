/**
 * Renders a cell's whole network state into cellfleet's own nftables tables,
 * as one transaction that replaces both tables atomically. Nothing outside
 * these two tables is touched, so rules of iptables-nft, Docker or firewalld
 * on the same cell keep working.
 *
 * Packet path. Containers share one Linux bridge. The kernel's bridge
 * netfilter (br_netfilter, `nf_call_iptables` on the bridge) passes IPv4
 * frames bridged between two containers through the inet hooks with
 * conntrack, the same as routed traffic, so one inet table filters both.
 * Kernels without nf_conntrack_bridge have no other way to track bridged
 * flows. When bridge netfilter is off, the bridge table drops every frame
 * bridged between two container ports instead: container-to-container
 * traffic then fails closed, policies or not.
 *
 *   bridge cellfleet   prerouting  anti-spoofing: a container port may only
 *                                  send IPv4 and ARP from its own address,
 *                                  so IPv6 and forged sources never reach
 *                                  the inet table
 *   inet cellfleet     prerouting  (before DNAT, so rules see the address the
 *                                  container used) egress allow lists and
 *                                  container-to-container policies
 *                      forward     inbound: only replies and published ports
 *                      nat         DNAT for published ports, masquerade
 *
 * The number of rules adds no rule evaluations per packet. Each allow list is
 * one lookup in a set of concatenated intervals keyed by the container's
 * address, per-container logging is one verdict map lookup, and only the
 * first packet of a connection gets that far. NOTE: the kernel's lookup in
 * such a set still slows down as the set grows (docs/BENCHMARKS.md).
 */
import { createHash } from "node:crypto";

import { destinationIntervals, formatAddress, icmpInterval, type Interval, parseDestination, portIntervals } from "../../common/asg";
import type { ContainerAttachment, EndpointSelector, NetworkPolicyState, NetworkState, SecurityGroupRule } from "../../common/network-state";
import { type Box, disjointUnion } from "./boxes";
import { type Element, type TableRef, Transaction, type Value } from "./nft";

export const INET_TABLE: TableRef = { family: "inet", name: "cellfleet" };
export const BRIDGE_TABLE: TableRef = { family: "bridge", name: "cellfleet" };

export interface RenderOptions {
  /** Whether the kernel passes frames bridged on the container bridge through the inet hooks. */
  bridgeNetfilter: boolean;
}

export const PROTOCOL_NUMBERS = { icmp: 1, tcp: 6, udp: 17 } as const;

/** The egress allow list of one container to addresses outside the container subnet, as disjoint boxes. */
export interface EgressAllowList {
  container: ContainerAttachment;
  address: number;
  /** Boxes of destination x port. */
  tcp: Box[];
  /** tcp boxes of rules with log: true, checked before the others so that a match is logged. */
  tcpLogged: Box[];
  udp: Box[];
  /** Boxes of destination x ICMP type x code. */
  icmp: Box[];
  /** Boxes of destination, for protocol "all". */
  all: Box[];
  /** Bound groups that the cell has no rules for, which allow nothing. */
  missingGroups: string[];
}

/** The ports that one policy-allowed pair may use, as disjoint intervals. */
export interface PolicyAllowance {
  source: ContainerAttachment;
  destination: ContainerAttachment;
  protocol: "tcp" | "udp";
  ports: Interval[];
}

export interface AllowLists {
  subnet: Interval;
  gateway: number;
  egress: EgressAllowList[];
  policies: PolicyAllowance[];
}

// --- allow lists ---------------------------------------------------------------

function parseAddressStrict(value: string, what: string): number {
  const parsed = parseDestination(value);
  if (!parsed.ok || parsed.value.length !== 1 || parsed.value[0].first !== parsed.value[0].last) {
    throw new Error(`${what} ${JSON.stringify(value)} is not one IPv4 address`);
  }
  return parsed.value[0].first;
}

function parseSubnet(value: string): Interval {
  const parsed = parseDestination(value);
  if (!parsed.ok || parsed.value.length !== 1 || !value.includes("/")) {
    throw new Error(`network settings: subnet ${JSON.stringify(value)} is not an IPv4 CIDR such as "10.254.0.0/22"`);
  }
  return parsed.value[0];
}

function contains(interval: Interval, value: number): boolean {
  return interval.first <= value && value <= interval.last;
}

/** Returns the groups bound to a container: its own and the cell's defaults, each once. */
export function groupsOf(container: ContainerAttachment, defaults: string[]): string[] {
  return [...new Set([...container.securityGroups, ...defaults])];
}

/** Returns the boxes one rule allows, in the dimensions of its protocol. */
export function ruleBoxes(rule: SecurityGroupRule): Box[] {
  const destinations = destinationIntervals(rule.destination);
  switch (rule.protocol) {
    case "tcp":
    case "udp": {
      const ports = portIntervals(rule.ports ?? "");
      return destinations.flatMap((destination) => ports.map((port) => [destination, port]));
    }
    case "icmp":
      return destinations.map((destination) => [destination, icmpInterval(rule.type), icmpInterval(rule.code)]);
    case "all":
      return destinations.map((destination) => [destination]);
    case "icmpv6":
      // Validation rejects icmpv6 because containers have no IPv6, so a stored one allows nothing.
      return [];
  }
}

function egressFor(container: ContainerAttachment, address: number, groups: Record<string, SecurityGroupRule[]>, defaults: string[]): EgressAllowList {
  const raw = { tcp: [] as Box[], tcpLogged: [] as Box[], udp: [] as Box[], icmp: [] as Box[], all: [] as Box[] };
  const missingGroups: string[] = [];
  for (const name of groupsOf(container, defaults)) {
    const rules = groups[name];
    if (rules === undefined) {
      missingGroups.push(name);
      continue;
    }
    for (const rule of rules) {
      const boxes = ruleBoxes(rule);
      if (rule.protocol === "tcp") (rule.log ? raw.tcpLogged : raw.tcp).push(...boxes);
      if (rule.protocol === "udp") raw.udp.push(...boxes);
      if (rule.protocol === "icmp") raw.icmp.push(...boxes);
      if (rule.protocol === "all") raw.all.push(...boxes);
    }
  }
  return {
    container,
    address,
    tcp: disjointUnion(raw.tcp),
    tcpLogged: disjointUnion(raw.tcpLogged),
    udp: disjointUnion(raw.udp),
    icmp: disjointUnion(raw.icmp),
    all: disjointUnion(raw.all),
    missingGroups,
  };
}

/** Returns the containers an endpoint selector picks: one by id, or all with a label. */
export function selectContainers(selector: EndpointSelector, containers: ContainerAttachment[]): ContainerAttachment[] {
  if ("container" in selector) return containers.filter((container) => container.id === selector.container);
  return containers.filter((container) => container.labels[selector.label.key] === selector.label.value);
}

function policyAllowances(policies: NetworkPolicyState[], containers: ContainerAttachment[]): PolicyAllowance[] {
  const byPair = new Map<string, PolicyAllowance>();
  for (const policy of policies) {
    for (const source of selectContainers(policy.source, containers)) {
      for (const destination of selectContainers(policy.destination, containers)) {
        // Traffic from a container to itself never leaves its network namespace.
        if (source.id === destination.id) continue;
        const key = `${source.id} ${destination.id} ${policy.protocol}`;
        const entry = byPair.get(key) ?? { source, destination, protocol: policy.protocol, ports: [] };
        entry.ports.push({ first: policy.ports.from, last: policy.ports.to });
        byPair.set(key, entry);
      }
    }
  }
  return [...byPair.values()].map((entry) => ({ ...entry, ports: disjointUnion(entry.ports.map((port) => [port])).map((box) => box[0]) }));
}

const INTERFACE_NAME = /^[A-Za-z0-9_.:-]{1,15}$/;

function checkAttachments(state: NetworkState, subnet: Interval, gateway: number): Map<string, number> {
  const addresses = new Map<string, number>();
  const owners = new Map<number, string>();
  for (const container of state.containers) {
    const what = `container ${container.id}`;
    const address = parseAddressStrict(container.address, `${what}: address`);
    if (!contains(subnet, address) || address === gateway || address === subnet.first || address === subnet.last) {
      throw new Error(`${what}: address ${container.address} is not a host address of the subnet ${state.settings.subnet} other than the gateway`);
    }
    const owner = owners.get(address);
    if (owner !== undefined) throw new Error(`${what}: address ${container.address} is already used by container ${owner}`);
    if (!INTERFACE_NAME.test(container.hostInterface)) {
      throw new Error(`${what}: hostInterface ${JSON.stringify(container.hostInterface)} is not an interface name of 1 to 15 letters, digits or ._:-`);
    }
    owners.set(address, container.id);
    addresses.set(container.id, address);
  }
  return addresses;
}

/** Computes the allow lists of every container, and throws on attachments that contradict the settings. */
export function computeAllowLists(state: NetworkState): AllowLists {
  const subnet = parseSubnet(state.settings.subnet);
  const gateway = parseAddressStrict(state.settings.gateway, "network settings: gateway");
  if (!contains(subnet, gateway)) throw new Error(`network settings: gateway ${state.settings.gateway} is outside the subnet ${state.settings.subnet}`);
  const addresses = checkAttachments(state, subnet, gateway);

  // Containers bound to the same groups share one computation.
  const cache = new Map<string, Omit<EgressAllowList, "container" | "address">>();
  const egress = state.containers.map((container) => {
    const key = JSON.stringify(groupsOf(container, state.settings.defaultSecurityGroups).sort());
    let lists = cache.get(key);
    if (!lists) {
      lists = egressFor(container, 0, state.securityGroups, state.settings.defaultSecurityGroups);
      cache.set(key, lists);
    }
    return { ...lists, container, address: addresses.get(container.id) as number };
  });
  return { subnet, gateway, egress, policies: policyAllowances(state.policies, state.containers) };
}

// --- flows -----------------------------------------------------------------------

/** A connection as conntrack records its original direction. */
export interface Flow {
  protocol: number;
  source: number;
  destination: number;
  destinationPort?: number;
  type?: number;
  code?: number;
}

function inBoxes(boxes: Box[], point: number[]): boolean {
  return boxes.some((box) => box.every((interval, dimension) => contains(interval, point[dimension])));
}

/**
 * Returns whether the ruleset allows a flow from a container to start, as the
 * from_containers chain decides it. Flows that do not start at a container
 * address are not the rules engine's to judge and count as allowed.
 */
export function flowAllowed(lists: AllowLists, flow: Flow): boolean {
  if (!contains(lists.subnet, flow.source) || flow.source === lists.gateway) return true;
  if (flow.destination >>> 24 === 127) return false;

  if (contains(lists.subnet, flow.destination) && flow.destination !== lists.gateway) {
    return lists.policies.some(
      (policy) =>
        lists.egress.find((entry) => entry.container.id === policy.source.id)?.address === flow.source &&
        lists.egress.find((entry) => entry.container.id === policy.destination.id)?.address === flow.destination &&
        PROTOCOL_NUMBERS[policy.protocol] === flow.protocol &&
        flow.destinationPort !== undefined &&
        policy.ports.some((port) => contains(port, flow.destinationPort as number)),
    );
  }

  const entry = lists.egress.find((candidate) => candidate.address === flow.source);
  if (!entry) return false;
  if (inBoxes(entry.all, [flow.destination])) return true;
  switch (flow.protocol) {
    case PROTOCOL_NUMBERS.tcp:
      return flow.destinationPort !== undefined && (inBoxes(entry.tcp, [flow.destination, flow.destinationPort]) || inBoxes(entry.tcpLogged, [flow.destination, flow.destinationPort]));
    case PROTOCOL_NUMBERS.udp:
      return flow.destinationPort !== undefined && inBoxes(entry.udp, [flow.destination, flow.destinationPort]);
    case PROTOCOL_NUMBERS.icmp:
      return flow.type !== undefined && flow.code !== undefined && inBoxes(entry.icmp, [flow.destination, flow.type, flow.code]);
    default:
      return false;
  }
}

// --- rendering -------------------------------------------------------------------

/**
 * Returns the label that starts every log prefix of a container: its id when
 * that is at most 20 characters, otherwise its first 11 characters, "~" and 8
 * hex digits of its SHA-256. Tools that keep only the first 29 characters of a
 * prefix (the iptables LOG limit) still see the whole label.
 */
export function logLabel(id: string): string {
  if (id.length <= 20) return id;
  return `${id.slice(0, 11)}~${createHash("sha256").update(id).digest("hex").slice(0, 8)}`;
}

/** Returns the nft name of a per-container chain. Ids are [a-z0-9-], so mapping "-" to "_" keeps them apart. */
export function containerChain(id: string, purpose: "accept_log" | "reject"): string {
  return `ctr_${id.replace(/-/g, "_")}_${purpose}`;
}

function addressValue(interval: Interval): Value {
  if (interval.first === interval.last) return formatAddress(interval.first);
  const size = interval.last - interval.first + 1;
  if (Number.isInteger(Math.log2(size)) && interval.first % size === 0) {
    return { prefix: { addr: formatAddress(interval.first), len: 32 - Math.log2(size) } };
  }
  return { range: [formatAddress(interval.first), formatAddress(interval.last)] };
}

function numberValue(interval: Interval): Value {
  return interval.first === interval.last ? interval.first : { range: [interval.first, interval.last] };
}

function cidr(interval: Interval): string {
  const value = addressValue(interval);
  return typeof value === "object" && "prefix" in value ? `${value.prefix.addr}/${value.prefix.len}` : String(value);
}

const EGRESS_SETS = [
  { name: "egress_tcp_log", typeof: "ip saddr . ip daddr . tcp dport", list: "tcpLogged" },
  { name: "egress_tcp", typeof: "ip saddr . ip daddr . tcp dport", list: "tcp" },
  { name: "egress_udp", typeof: "ip saddr . ip daddr . udp dport", list: "udp" },
  { name: "egress_icmp", typeof: "ip saddr . ip daddr . icmp type . icmp code", list: "icmp" },
  { name: "egress_all", typeof: "ip saddr . ip daddr", list: "all" },
] as const;

export type EgressSetName = (typeof EGRESS_SETS)[number]["name"];

/** Returns the set that enforces a rule, as the renderer fills it. */
export function egressSetOf(rule: SecurityGroupRule): EgressSetName | undefined {
  switch (rule.protocol) {
    case "tcp":
      return rule.log ? "egress_tcp_log" : "egress_tcp";
    case "udp":
      return "egress_udp";
    case "icmp":
      return "egress_icmp";
    case "all":
      return "egress_all";
    default:
      return undefined;
  }
}

/** Returns the elements of one egress set for one container. */
export function egressElements(entry: EgressAllowList, set: EgressSetName): Element[] {
  const spec = EGRESS_SETS.find((candidate) => candidate.name === set);
  if (!spec) return [];
  const source = formatAddress(entry.address);
  return entry[spec.list].map((box) => ({
    kind: "element",
    table: INET_TABLE,
    set,
    key: [source, addressValue(box[0]), ...box.slice(1).map(numberValue)],
  }));
}

/** Returns the policy_allow elements of one allowance. */
export function policyElements(lists: AllowLists, allowance: PolicyAllowance): Element[] {
  const address = (id: string) => formatAddress(lists.egress.find((entry) => entry.container.id === id)?.address as number);
  return allowance.ports.map((ports) => ({
    kind: "element",
    table: INET_TABLE,
    set: "policy_allow",
    key: [address(allowance.source.id), address(allowance.destination.id), PROTOCOL_NUMBERS[allowance.protocol], numberValue(ports)],
  }));
}

function renderBridgeTable(tx: Transaction, state: NetworkState, options: RenderOptions): void {
  const table = BRIDGE_TABLE;
  const rule = (chain: string, text: string, comment: string) => tx.add({ kind: "rule", table, chain, rule: text, comment });

  tx.add({ kind: "table", ...table, comment: "managed by cellfleet: replaced whole on every change" });
  tx.add({ kind: "set", table, name: "ports", type: "ifname", comment: "bridge ports of containers" });
  tx.add({ kind: "set", table, name: "port_addresses", type: "ifname . ipv4_addr", comment: "the one source address of each container port" });

  // Bridge priority -300 runs before br_netfilter hands the frame to the inet hooks.
  tx.add({ kind: "chain", table, name: "port_guard", type: "filter", hook: "prerouting", priority: -300, policy: "accept" });
  rule("port_guard", "iifname != @ports accept", "frames not from a container port");
  rule("port_guard", "iifname . ip saddr @port_addresses accept", "IPv4 from the container's own address");
  rule("port_guard", "iifname . arp saddr ip @port_addresses accept", "ARP for the container's own address");
  rule("port_guard", "drop", "forged sources, IPv6 and other protocols");

  if (!options.bridgeNetfilter) {
    tx.add({ kind: "chain", table, name: "forward_guard", type: "filter", hook: "forward", priority: -200, policy: "accept" });
    rule("forward_guard", "iifname @ports oifname @ports drop", "container to container without bridge netfilter");
  }

  for (const container of state.containers) {
    tx.add({ kind: "element", table, set: "ports", key: [container.hostInterface] });
    tx.add({ kind: "element", table, set: "port_addresses", key: [container.hostInterface, container.address] });
  }
}

function renderFilterChains(tx: Transaction, state: NetworkState, lists: AllowLists): void {
  const table = INET_TABLE;
  const bridge = JSON.stringify(state.settings.bridge);
  const subnet = cidr(lists.subnet);
  const rule = (chain: string, text: string, comment: string) => tx.add({ kind: "rule", table, chain, rule: text, comment });

  // Regular chains first: nft resolves goto targets when it adds a rule.
  tx.add({ kind: "chain", table, name: "egress_rules" });
  tx.add({ kind: "chain", table, name: "container_to_container" });

  // Priority -150 (mangle) is after conntrack (-200) and before DNAT (-100):
  // rules see ct state, and the destination the container addressed.
  tx.add({ kind: "chain", table, name: "from_containers", type: "filter", hook: "prerouting", priority: -150, policy: "accept" });
  rule("from_containers", `iifname != ${bridge} return`, "traffic not from the container bridge");
  rule("from_containers", "ct state established,related accept", "replies and related ICMP");
  rule("from_containers", "ct state invalid drop", "packets conntrack cannot place");
  rule("from_containers", "meta nfproto ipv6 drop", "IPv6, which containers do not have");
  rule("from_containers", `ip saddr != ${subnet} drop`, "sources outside the container subnet");
  // With route_localnet on the bridge, 127.0.0.0/8 would otherwise reach the cell's loopback services.
  rule("from_containers", "ip daddr 127.0.0.0/8 drop", "the cell's loopback addresses");
  rule("from_containers", `ip daddr ${state.settings.gateway} goto egress_rules`, "the cell's bridge address, like any cell address");
  rule("from_containers", `ip daddr ${subnet} goto container_to_container`, "other containers");
  rule("from_containers", "goto egress_rules", "everything else");

  rule("egress_rules", "ip saddr . ip daddr . tcp dport @egress_tcp_log ip saddr vmap @accept_logged", "tcp rules with log");
  rule("egress_rules", "ip saddr . ip daddr . tcp dport @egress_tcp accept", "tcp rules");
  rule("egress_rules", "ip saddr . ip daddr . udp dport @egress_udp accept", "udp rules");
  rule("egress_rules", "ip saddr . ip daddr . icmp type . icmp code @egress_icmp accept", "icmp rules");
  rule("egress_rules", "ip saddr . ip daddr @egress_all accept", "all-protocol rules");
  rule("egress_rules", "ip saddr vmap @reject_logged", "log and reject the rest per container");
  rule("egress_rules", "reject with icmpx admin-prohibited", "sources that are not an attached container");

  rule("container_to_container", "ip saddr . ip daddr . meta l4proto . th dport @policy_allow accept", "network policies");
  rule("container_to_container", "ip saddr vmap @reject_logged", "log and reject the rest per container");
  rule("container_to_container", "reject with icmpx admin-prohibited", "sources that are not an attached container");

  tx.add({ kind: "chain", table, name: "to_containers", type: "filter", hook: "forward", priority: 0, policy: "accept" });
  rule("to_containers", `oifname != ${bridge} return`, "traffic not to the container bridge");
  rule("to_containers", "ct state established,related accept", "replies and related ICMP");
  rule("to_containers", "ct status dnat accept", "published ports");
  rule("to_containers", `iifname ${bridge} accept`, "from containers, already checked in from_containers");
  rule("to_containers", "reject with icmpx admin-prohibited", "unsolicited traffic to container addresses");
}

function renderNatChains(tx: Transaction, state: NetworkState, lists: AllowLists): void {
  const table = INET_TABLE;
  const bridge = JSON.stringify(state.settings.bridge);
  const subnet = cidr(lists.subnet);
  const rule = (chain: string, text: string, comment: string) => tx.add({ kind: "rule", table, chain, rule: text, comment });
  const dnat = "fib daddr type local dnat ip to meta l4proto . th dport map @published";

  tx.add({ kind: "chain", table, name: "published_prerouting", type: "nat", hook: "prerouting", priority: -100, policy: "accept" });
  rule("published_prerouting", dnat, "published ports on every cell address");
  // Connections that the cell itself opens to its own addresses pass output, not prerouting.
  tx.add({ kind: "chain", table, name: "published_output", type: "nat", hook: "output", priority: -100, policy: "accept" });
  rule("published_output", dnat, "published ports reached from the cell");

  tx.add({ kind: "chain", table, name: "snat_postrouting", type: "nat", hook: "postrouting", priority: 100, policy: "accept" });
  rule("snat_postrouting", `ip saddr ${subnet} ip daddr != ${subnet} masquerade`, "container traffic leaving the cell");
  // Without this, a container reaching a published port of the same bridge would get replies from the wrong address.
  rule("snat_postrouting", `ip saddr ${subnet} ip daddr ${subnet} ct status dnat masquerade`, "hairpin to a published port");
  // Needs route_localnet on the bridge: the kernel refuses to route 127.0.0.0/8 sources otherwise.
  rule("snat_postrouting", `ip saddr 127.0.0.0/8 oifname ${bridge} masquerade`, "published ports reached from the cell's loopback");
}

function renderContainerChains(tx: Transaction, lists: AllowLists): void {
  const table = INET_TABLE;
  for (const entry of lists.egress) {
    const { id } = entry.container;
    const label = logLabel(id);
    const source = formatAddress(entry.address);

    const accept = containerChain(id, "accept_log");
    tx.add({ kind: "chain", table, name: accept, comment: `container ${id}` });
    tx.add({ kind: "rule", table, chain: accept, rule: `log prefix "${label} cf-accept: " accept`, comment: "first packet of a logged connection" });

    const reject = containerChain(id, "reject");
    tx.add({ kind: "chain", table, name: reject, comment: `container ${id}` });
    tx.add({ kind: "rule", table, chain: reject, rule: `limit rate 10/second burst 20 packets log prefix "${label} cf-reject: "`, comment: "rate-limited log" });
    tx.add({ kind: "rule", table, chain: reject, rule: "meta l4proto tcp reject with tcp reset", comment: "tcp gets a reset" });
    tx.add({ kind: "rule", table, chain: reject, rule: "reject with icmpx admin-prohibited", comment: "others get admin-prohibited" });

    tx.add({ kind: "element", table, set: "accept_logged", key: [source], value: { goto: { target: accept } } });
    tx.add({ kind: "element", table, set: "reject_logged", key: [source], value: { goto: { target: reject } } });
  }
}

function renderPublished(tx: Transaction, state: NetworkState): void {
  const owners = new Map<string, string>();
  for (const container of state.containers) {
    for (const port of container.ports) {
      const key = `${port.protocol}/${port.cellPort}`;
      const owner = owners.get(key);
      if (owner !== undefined) {
        throw new Error(`container ${container.id}: cell port ${key} is already published by container ${owner}`);
      }
      owners.set(key, container.id);
      tx.add({
        kind: "element",
        table: INET_TABLE,
        set: "published",
        key: [PROTOCOL_NUMBERS[port.protocol], port.cellPort],
        value: [container.address, port.containerPort],
      });
    }
  }
}

/**
 * Renders the complete desired state of cellfleet's tables. The transaction
 * first adds and deletes each table, so it applies whether or not the table
 * exists, and then defines it anew: the kernel swaps old for new in one
 * commit, with no moment in which a container is unfiltered.
 */
export function renderRuleset(state: NetworkState, options: RenderOptions = { bridgeNetfilter: true }): Transaction {
  const lists = computeAllowLists(state);
  const tx = new Transaction();
  for (const table of [INET_TABLE, BRIDGE_TABLE]) {
    tx.add({ kind: "table", ...table });
    tx.delete({ kind: "table", ...table });
  }

  renderBridgeTable(tx, state, options);

  const table = INET_TABLE;
  tx.add({ kind: "table", ...table, comment: "managed by cellfleet: replaced whole on every change" });
  for (const spec of EGRESS_SETS) {
    tx.add({ kind: "set", table, name: spec.name, typeof: spec.typeof, flags: ["interval"] });
  }
  tx.add({ kind: "set", table, name: "policy_allow", typeof: "ip saddr . ip daddr . meta l4proto . th dport", flags: ["interval"] });
  tx.add({ kind: "map", table, name: "published", typeof: "meta l4proto . th dport : ip daddr . th dport" });
  tx.add({ kind: "map", table, name: "accept_logged", typeof: "ip saddr : verdict" });
  tx.add({ kind: "map", table, name: "reject_logged", typeof: "ip saddr : verdict" });

  // Chains that verdict maps point to must exist before the maps' elements.
  renderContainerChains(tx, lists);
  renderFilterChains(tx, state, lists);
  renderNatChains(tx, state, lists);

  for (const entry of lists.egress) {
    for (const spec of EGRESS_SETS) for (const element of egressElements(entry, spec.name)) tx.add(element);
  }
  for (const allowance of lists.policies) for (const element of policyElements(lists, allowance)) tx.add(element);
  renderPublished(tx, state);
  return tx;
}

