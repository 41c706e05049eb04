/**
 * Network inputs of a Container (ports, bandwidth, security groups, labels)
 * and the cell network settings of the provider configuration, as zod
 * schemas. The provider checks them at `pulumi preview`; the agent checks
 * them again before it touches the cell.
 */
import { z } from "zod";

import { parseByteSize, SIZE_EXAMPLES } from "./units";

// --- IPv4 ------------------------------------------------------------------

const IPV4_PATTERN = /^(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})$/;

/** Parses dotted-quad IPv4 text into a 32-bit number; leading zeros are rejected because some tools read them as octal. */
export function parseIpv4(text: string): number | undefined {
  const match = IPV4_PATTERN.exec(text);
  if (!match) return undefined;
  const octets = match.slice(1).map(Number);
  if (octets.some((octet) => octet > 255)) return undefined;
  return octets.reduce((value, octet) => value * 256 + octet, 0);
}

export function formatIpv4(value: number): string {
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join(".");
}

/** An IPv4 prefix with its first and last address as 32-bit numbers. */
export interface Ipv4Prefix {
  network: number;
  prefixLength: number;
  /** The network address, the same as network. */
  first: number;
  /** The broadcast address. */
  last: number;
}

/** Parses "a.b.c.d/n"; a bare address is a /32. Returns undefined for anything else. */
export function parseIpv4Prefix(text: string): Ipv4Prefix | undefined {
  const [address, length, ...rest] = text.split("/");
  if (rest.length > 0) return undefined;
  const value = parseIpv4(address);
  if (value === undefined) return undefined;
  if (length !== undefined && !/^(0|[1-9]\d?)$/.test(length)) return undefined;
  const prefixLength = length === undefined ? 32 : Number(length);
  if (prefixLength > 32) return undefined;
  const size = 2 ** (32 - prefixLength);
  const network = value - (value % size);
  return { network, prefixLength, first: network, last: network + size - 1 };
}

/** Returns whether two prefixes share at least one address. */
export function prefixesOverlap(a: Ipv4Prefix, b: Ipv4Prefix): boolean {
  return a.first <= b.last && b.first <= a.last;
}

// --- cell network settings ---------------------------------------------------

export const DEFAULT_CONTAINER_SUBNET = "10.254.0.0/22";

/** Prefix lengths for the container subnet: a /29 still leaves five container addresses besides the gateway. */
export const MIN_SUBNET_PREFIX = 8;
export const MAX_SUBNET_PREFIX = 29;

/** Ranges that can never be a container subnet, with the reason shown to the user. */
const RESERVED_RANGES: { prefix: string; what: string }[] = [
  { prefix: "0.0.0.0/8", what: '"this network" (0.0.0.0/8)' },
  { prefix: "127.0.0.0/8", what: "loopback (127.0.0.0/8)" },
  { prefix: "169.254.0.0/16", what: "link-local (169.254.0.0/16)" },
  { prefix: "224.0.0.0/4", what: "multicast (224.0.0.0/4)" },
  { prefix: "240.0.0.0/4", what: "reserved (240.0.0.0/4)" },
];

/** Returns why a container subnet is unusable, or undefined when it is usable. */
export function containerSubnetProblem(subnet: string): string | undefined {
  const parsed = parseIpv4Prefix(subnet);
  const example = `such as ${JSON.stringify(DEFAULT_CONTAINER_SUBNET)}`;
  if (!parsed || !subnet.includes("/")) {
    return `containerSubnet ${JSON.stringify(subnet)} is not an IPv4 CIDR: give an address and a prefix length, ${example}`;
  }
  if (parsed.prefixLength < MIN_SUBNET_PREFIX || parsed.prefixLength > MAX_SUBNET_PREFIX) {
    return `containerSubnet ${JSON.stringify(subnet)} has prefix length /${parsed.prefixLength}: use /${MIN_SUBNET_PREFIX} to /${MAX_SUBNET_PREFIX}, ${example}`;
  }
  if (parseIpv4(subnet.split("/")[0]) !== parsed.network) {
    const fixed = `${formatIpv4(parsed.network)}/${parsed.prefixLength}`;
    return `containerSubnet ${JSON.stringify(subnet)} has host bits set: use the network address, ${JSON.stringify(fixed)}`;
  }
  for (const reserved of RESERVED_RANGES) {
    if (prefixesOverlap(parsed, parseIpv4Prefix(reserved.prefix) as Ipv4Prefix)) {
      return `containerSubnet ${JSON.stringify(subnet)} overlaps ${reserved.what}: choose a private range, ${example}`;
    }
  }
  return undefined;
}

/** Returns the gateway of a subnet, its first host address, which the bridge takes and containers route through. */
export function gatewayOf(subnet: string): string {
  const parsed = parseIpv4Prefix(subnet);
  if (!parsed) throw new Error(`subnet ${JSON.stringify(subnet)} is not an IPv4 CIDR`);
  return formatIpv4(parsed.first + 1);
}

/** Names of SecurityGroup resources; the agent stores each group in a file of that name. */
export const SECURITY_GROUP_NAME_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,62}$/i;

function securityGroupNames(field: string) {
  return z.array(z.string()).superRefine((names, context) => {
    const seen = new Set<string>();
    names.forEach((name, index) => {
      if (!SECURITY_GROUP_NAME_PATTERN.test(name)) {
        context.addIssue({
          code: "custom",
          path: [index],
          message: `${field}[${index}] ${JSON.stringify(name)} is not a security group name: use 1 to 63 letters, digits, ".", "_" or "-", starting with a letter or digit`,
        });
      } else if (seen.has(name)) {
        context.addIssue({ code: "custom", path: [index], message: `${field}[${index}] ${JSON.stringify(name)} is listed twice: remove the duplicate` });
      }
      seen.add(name);
    });
  });
}

export const containerSubnetSchema = z
  .string()
  .default(DEFAULT_CONTAINER_SUBNET)
  .superRefine((subnet, context) => {
    const problem = containerSubnetProblem(subnet);
    if (problem) context.addIssue({ code: "custom", message: problem });
  });

export const defaultSecurityGroupsSchema = securityGroupNames("defaultSecurityGroups").default([]);

/**
 * Provider configuration keys for the cell's container network. The provider
 * sends them with every container.create. The agent stores them on the cell
 * the first time, and rejects a different subnet while containers use the old one.
 */
export const cellNetworkConfigShape = {
  /** IPv4 subnet of container addresses on the cell's bridge; its first host address is the gateway. */
  containerSubnet: containerSubnetSchema,
  /** Security groups bound to every container of the cell, besides each container's own. */
  defaultSecurityGroups: defaultSecurityGroupsSchema,
};

export const cellNetworkConfigSchema = z.object(cellNetworkConfigShape).strict();
export type CellNetworkConfig = z.output<typeof cellNetworkConfigSchema>;

// --- bandwidth -----------------------------------------------------------------

/**
 * Bit-rate units, decimal as in tc(8): "kbit" is 1000 bit/s. Only units that
 * end in "bit" are accepted, because tc reads "bps" as bytes per second and
 * users read it as bits.
 */
const RATE_UNITS: Record<string, number> = { BIT: 1, KBIT: 1e3, MBIT: 1e6, GBIT: 1e9, TBIT: 1e12 };
const RATE_PATTERN = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$/;
export const RATE_EXAMPLES = '"10Mbit", "512kbit" or "1Gbit" (bits per second, 1 kbit = 1000 bit)';

/**
 * The kernel timer frequency the token bucket minimum is computed for.
 * NOTE: a preview cannot know a cell's CONFIG_HZ; at HZ=100 tbf needs 2.5
 * times this minimum to reach the rate.
 */
export const TOKEN_BUCKET_HZ = 250;
/** One full Ethernet frame at MTU 1500, with its 14-byte header: tbf drops any packet larger than its bucket. */
export const MIN_BURST_BYTES = 1514;
export const MIN_RATE_BITS = 8_000;
export const MAX_RATE_BITS = 100e9;
/** The bucket may hold at most what the rate sends in this many seconds; tc stores the bucket as a 32-bit count of timer ticks. */
export const MAX_BURST_SECONDS = 60;
const MAX_BURST_BYTES = 2 ** 32 - 1;

/** Parses a rate in bits per second: "10Mbit", "1.5gbit" or a number of bit/s. */
export function parseBitRate(value: string | number): number | undefined {
  if (typeof value === "number") return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  const match = RATE_PATTERN.exec(value);
  if (!match) return undefined;
  const multiplier = RATE_UNITS[match[2].toUpperCase()];
  if (multiplier === undefined) return undefined;
  const bits = Math.round(Number(match[1]) * multiplier);
  return Number.isSafeInteger(bits) ? bits : undefined;
}

/**
 * The smallest bucket that lets tbf reach the rate: it refills once per
 * timer tick, so it must hold one tick's worth of bytes (rate / 8 / HZ), and
 * at least one full-size frame.
 */
export function minimumBurstBytes(rateBitsPerSecond: number, frameBytes = MIN_BURST_BYTES): number {
  return Math.max(Math.ceil(rateBitsPerSecond / 8 / TOKEN_BUCKET_HZ), frameBytes);
}

export function maximumBurstBytes(rateBitsPerSecond: number): number {
  return Math.min(Math.floor((rateBitsPerSecond / 8) * MAX_BURST_SECONDS), MAX_BURST_BYTES);
}

const rateSchema = z.union([z.string(), z.number()]).transform((value, context) => {
  const bits = parseBitRate(value);
  if (bits === undefined) {
    context.addIssue({ code: "custom", message: `bandwidth.rate ${JSON.stringify(value)} is not a rate: use bits per second with a unit, such as ${RATE_EXAMPLES}` });
    return z.NEVER;
  }
  if (bits < MIN_RATE_BITS || bits > MAX_RATE_BITS) {
    context.addIssue({
      code: "custom",
      message: `bandwidth.rate ${JSON.stringify(value)} is ${bits} bit/s: give ${MIN_RATE_BITS / 1000} kbit/s to ${MAX_RATE_BITS / 1e9} Gbit/s`,
    });
    return z.NEVER;
  }
  return bits;
});

const burstSchema = z.union([z.string(), z.number()]).transform((value, context) => {
  const bytes = parseByteSize(value);
  if (bytes === undefined) {
    context.addIssue({ code: "custom", message: `bandwidth.burst ${JSON.stringify(value)} is not a size: use bytes with a unit, such as ${SIZE_EXAMPLES}` });
    return z.NEVER;
  }
  return bytes;
});

/**
 * Both directions of the container's interface are limited to `rate`; up to
 * `burst` bytes may pass at once after an idle period. Output: rate in bits
 * per second, burst in bytes.
 */
export const bandwidthSchema = z
  .object({ rate: rateSchema, burst: burstSchema })
  .strict()
  .superRefine((bandwidth, context) => {
    const minimum = minimumBurstBytes(bandwidth.rate);
    const maximum = maximumBurstBytes(bandwidth.rate);
    if (bandwidth.burst < minimum) {
      context.addIssue({
        code: "custom",
        path: ["burst"],
        message:
          `bandwidth.burst is ${bandwidth.burst} bytes, below the minimum of ${minimum} bytes for a rate of ${bandwidth.rate} bit/s: ` +
          `the token bucket must hold one timer tick of traffic at ${TOKEN_BUCKET_HZ} Hz (rate / 8 / ${TOKEN_BUCKET_HZ}) and one ${MIN_BURST_BYTES}-byte frame`,
      });
    } else if (bandwidth.burst > maximum) {
      context.addIssue({
        code: "custom",
        path: ["burst"],
        message: `bandwidth.burst is ${bandwidth.burst} bytes, above the maximum of ${maximum} bytes for a rate of ${bandwidth.rate} bit/s (${MAX_BURST_SECONDS} seconds of traffic, and less than 4 GiB)`,
      });
    }
  });

export type Bandwidth = z.output<typeof bandwidthSchema>;

// --- ports -------------------------------------------------------------------------

const portNumber = (field: string) =>
  z
    .number({ error: (issue) => (issue.input === undefined ? `${field} is required` : `${field} must be a whole number from 1 to 65535`) })
    .int(`${field} must be a whole number from 1 to 65535`)
    .min(1, `${field} must be from 1 to 65535`)
    .max(65535, `${field} must be from 1 to 65535`);

export const portMappingSchema = z
  .object({
    containerPort: portNumber("containerPort"),
    /** Chosen by the cell from its automatic range when left out. */
    cellPort: portNumber("cellPort").optional(),
    protocol: z.enum(["tcp", "udp"], { error: 'protocol must be "tcp" or "udp"' }).default("tcp"),
  })
  .strict();

export type PortRequest = z.output<typeof portMappingSchema>;

export const portsSchema = z.array(portMappingSchema).superRefine((ports, context) => {
  const containerPorts = new Map<string, number>();
  const cellPorts = new Map<string, number>();
  ports.forEach((port, index) => {
    const containerKey = `${port.protocol}/${port.containerPort}`;
    const first = containerPorts.get(containerKey);
    if (first !== undefined) {
      context.addIssue({ code: "custom", path: [index], message: `ports[${index}] maps ${containerKey} again (already in ports[${first}]): map each container port once` });
    } else {
      containerPorts.set(containerKey, index);
    }
    if (port.cellPort === undefined) return;
    const cellKey = `${port.protocol}/${port.cellPort}`;
    const firstCell = cellPorts.get(cellKey);
    if (firstCell !== undefined) {
      context.addIssue({ code: "custom", path: [index, "cellPort"], message: `ports[${index}] uses cell port ${cellKey} again (already in ports[${firstCell}]): choose another cell port` });
    } else {
      cellPorts.set(cellKey, index);
    }
  });
});

// --- labels --------------------------------------------------------------------

const LABEL_KEY_PATTERN = /^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE_PATTERN = /^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$/;

/** Labels that network policies select containers by, such as { app: "web" }. */
export const labelsSchema = z.record(z.string(), z.string()).superRefine((labels, context) => {
  for (const [key, value] of Object.entries(labels)) {
    if (!LABEL_KEY_PATTERN.test(key)) {
      context.addIssue({
        code: "custom",
        path: [key],
        message: `label key ${JSON.stringify(key)} is invalid: use 1 to 63 letters, digits, ".", "_", "-" or "/", starting and ending with a letter or digit`,
      });
    } else if (!LABEL_VALUE_PATTERN.test(value)) {
      context.addIssue({
        code: "custom",
        path: [key],
        message: `label ${key}=${JSON.stringify(value)} has an invalid value: use up to 63 letters, digits, ".", "_" or "-", starting and ending with a letter or digit`,
      });
    }
  }
});

/** The network fields of the Container inputs, merged into containerInputsSchema. */
export const containerNetworkShape = {
  ports: portsSchema.default([]),
  bandwidth: bandwidthSchema.optional(),
  securityGroups: securityGroupNames("securityGroups").default([]),
  labels: labelsSchema.default({}),
};
