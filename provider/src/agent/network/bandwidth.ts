/**
 * Bandwidth limits on a container's veth, both directions, with tbf token
 * buckets on the cell end, where the container cannot change them:
 *
 *   into the container   tbf as the root qdisc of the cell end, whose egress
 *                        is the container's ingress
 *   out of the container the cell end's ingress redirects every frame to an
 *                        ifb device with its own tbf; ifb hands the frame
 *                        back to the cell end's receive path afterwards
 *
 * The kernel's police action would avoid the ifb device, but it drops what
 * exceeds the rate instead of queueing it, and kernels built without
 * CONFIG_NET_ACT_POLICE lack it. Deleting the veth and the ifb device removes
 * every qdisc and filter with them.
 */
import type { Bandwidth } from "../../common/network-spec";
import { deleteInterface, type InterfaceNames } from "./veth";
import { type Runner, runChecked } from "./tools";

/**
 * How long a packet may wait in a bucket's queue. tbf derives its queue
 * length from it (rate x latency + burst); 100 ms keeps TCP near the rate
 * without the long queues that add delay to every other flow.
 */
export const QUEUE_LATENCY = "100ms";

/** Returns the tc batch that installs both limits, one command per line, for `tc -batch -`. */
export function bandwidthScript(names: InterfaceNames, bandwidth: Bandwidth): string {
  const bucket = `tbf rate ${bandwidth.rate}bit burst ${bandwidth.burst} latency ${QUEUE_LATENCY}`;
  return [
    `qdisc add dev ${names.host} root ${bucket}`,
    `qdisc add dev ${names.host} handle ffff: ingress`,
    // u32 "match u32 0 0" matches every frame: the kernel in use may lack the matchall classifier.
    `filter add dev ${names.host} parent ffff: protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev ${names.ifb}`,
    `qdisc add dev ${names.ifb} root ${bucket}`,
    "",
  ].join("\n");
}

export async function applyBandwidth(runner: Runner, names: InterfaceNames, bandwidth: Bandwidth, mtu: number): Promise<void> {
  await runChecked(runner, ["ip", "link", "add", "name", names.ifb, "mtu", String(mtu), "type", "ifb"]);
  await runChecked(runner, ["ip", "link", "set", "dev", names.ifb, "up"]);
  await runChecked(runner, ["tc", "-batch", "-"], bandwidthScript(names, bandwidth));
}

/** Removes the ifb device; the veth's own qdiscs go with the veth. */
export async function removeBandwidth(runner: Runner, names: InterfaceNames): Promise<void> {
  await deleteInterface(runner, names.ifb);
}

/** Returns what is missing of the limits on the cell, one reason per missing piece. */
export async function bandwidthDrift(runner: Runner, names: InterfaceNames): Promise<string[]> {
  const reasons: string[] = [];
  for (const [device, what] of [
    [names.host, "traffic into the container"],
    [names.ifb, "traffic out of the container"],
  ] as const) {
    const result = await runner(["tc", "qdisc", "show", "dev", device, "root"]);
    if (result.code !== 0 || !/\btbf\b/.test(result.stdout)) reasons.push(`the tbf limit for ${what} is missing on ${device}`);
  }
  const filters = await runner(["tc", "filter", "show", "dev", names.host, "parent", "ffff:"]);
  if (filters.code !== 0 || !filters.stdout.includes(names.ifb)) reasons.push(`the redirect from ${names.host} to ${names.ifb} is missing`);
  return reasons;
}
