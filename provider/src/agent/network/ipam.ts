/**
 * Container addresses: one IPv4 address per container from the cell's
 * subnet. The gateway takes the first host address; the network and
 * broadcast addresses are never handed out. Allocations live in the
 * attachment files, so the caller passes the addresses in use and holds the
 * "network" lock while it allocates and writes.
 */
import { formatIpv4, parseIpv4, parseIpv4Prefix } from "../../common/network-spec";

/**
 * Returns the lowest free container address, or undefined when the subnet is
 * full. Reusing the lowest address is safe because detaching a container
 * deletes the conntrack entries of its address.
 */
export function allocateAddress(subnet: string, gateway: string, used: Iterable<string>): string | undefined {
  const prefix = parseIpv4Prefix(subnet);
  const gatewayValue = parseIpv4(gateway);
  if (!prefix || gatewayValue === undefined) throw new Error(`subnet ${JSON.stringify(subnet)} or gateway ${JSON.stringify(gateway)} is not IPv4`);
  const taken = new Set<number>([gatewayValue]);
  for (const address of used) {
    const value = parseIpv4(address);
    if (value !== undefined) taken.add(value);
  }
  for (let candidate = prefix.first + 1; candidate < prefix.last; candidate++) {
    if (!taken.has(candidate)) return formatIpv4(candidate);
  }
  return undefined;
}

/** Returns the number of addresses containers can get: all host addresses but the gateway. */
export function addressCapacity(subnet: string): number {
  const prefix = parseIpv4Prefix(subnet);
  if (!prefix) throw new Error(`subnet ${JSON.stringify(subnet)} is not IPv4`);
  return prefix.last - prefix.first - 2;
}
