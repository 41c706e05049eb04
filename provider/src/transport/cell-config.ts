/**
 * The provider configuration: how to reach one cell over SSH. Validated at
 * CheckConfig time, so a bad value stops `pulumi preview` before any dial.
 */
import { z } from "zod";

const FINGERPRINT_PATTERN = /^SHA256:[A-Za-z0-9+/]{43}=?$/;
const PUBLIC_KEY_PATTERN = /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/]+={0,2}( .*)?$/;

const CIDR_PATTERN = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/;

function cidrIsValid(cidr: string): boolean {
  const match = CIDR_PATTERN.exec(cidr);
  if (!match) return false;
  const octets = match.slice(1, 5).map(Number);
  const prefix = Number(match[5]);
  return octets.every((octet) => octet <= 255) && prefix >= 8 && prefix <= 29;
}

const hostKeyPin = z
  .string()
  .trim()
  .refine((pin) => FINGERPRINT_PATTERN.test(pin) || PUBLIC_KEY_PATTERN.test(pin), {
    message:
      'hostKey must be a public key line such as "ssh-ed25519 AAAA..." or a fingerprint such as "SHA256:..." (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub prints it)',
  });

const hop = z
  .object({
    host: z.string().min(1, "host is empty: give the cell's address or DNS name"),
    port: z.number().int().min(1).max(65535).default(22),
    user: z.string().min(1).default("root"),
    privateKey: z.string().min(1, "privateKey is empty: give the PEM or OpenSSH private key text"),
    passphrase: z.string().optional(),
    hostKey: hostKeyPin.optional(),
    knownHostsFile: z.string().optional(),
  })
  .strict()
  .refine((value) => value.hostKey !== undefined || value.knownHostsFile !== undefined, {
    message:
      "the host key is not pinned: set hostKey (a public key or SHA256 fingerprint) or knownHostsFile, because cellfleet never trusts an unknown host key",
    path: ["hostKey"],
  });

export const cellConfigSchema = z
  .object({
    host: z.string().min(1, "host is empty: give the cell's address or DNS name"),
    port: z.number().int().min(1).max(65535).default(22),
    user: z.string().min(1).default("root"),
    privateKey: z.string().min(1, "privateKey is empty: give the PEM or OpenSSH private key text"),
    passphrase: z.string().optional(),
    hostKey: hostKeyPin.optional(),
    knownHostsFile: z.string().optional(),
    bastion: hop.optional(),
    /** Run the agent through `sudo -n`; defaults to true when user is not root. */
    sudo: z.boolean().optional(),
    /** Seconds to wait for one TCP and SSH handshake. */
    dialTimeout: z.number().positive().max(600).default(15),
    /** Further attempts after a refused or timed-out dial, with exponential backoff. */
    dialRetries: z.number().int().min(0).max(100).default(5),
    /** IPv4 subnet for container addresses on the cell's bridge. */
    containerSubnet: z
      .string()
      .default("10.254.0.0/22")
      .refine((cidr) => CIDR_PATTERN.test(cidr) && cidrIsValid(cidr), {
        message: 'containerSubnet must be an IPv4 CIDR with a prefix from 8 to 29, such as "10.254.0.0/22"',
      }),
    /** Security groups bound to every container of the cell. */
    defaultSecurityGroups: z.array(z.string().min(1)).default([]),
  })
  .strict()
  .refine((value) => value.hostKey !== undefined || value.knownHostsFile !== undefined, {
    message:
      "the host key is not pinned: set hostKey (a public key or SHA256 fingerprint) or knownHostsFile, because cellfleet never trusts an unknown host key",
    path: ["hostKey"],
  });

export type CellConfigInput = z.input<typeof cellConfigSchema>;
export type CellConfig = z.output<typeof cellConfigSchema>;
export type HopConfig = z.output<typeof hop>;

/** Names of configuration keys whose values are secrets. */
export const SECRET_CONFIG_KEYS = ["privateKey", "passphrase"] as const;

/** A short label for messages: "root@198.18.0.2:22". */
export function cellLabel(config: Pick<CellConfig, "user" | "host" | "port">): string {
  return `${config.user}@${config.host}:${config.port}`;
}
