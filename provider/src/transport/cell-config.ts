/**
 * The provider configuration: how to reach one cell over SSH. Validated at
 * CheckConfig time, so a bad value stops `pulumi preview` before any dial.
 */
import { z } from "zod";

import { cellNetworkConfigShape } from "../common/network-spec";

const FINGERPRINT_PATTERN = /^SHA256:[A-Za-z0-9+/]{43}=?$/;
const PUBLIC_KEY_PATTERN = /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/]+={0,2}( .*)?$/;

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
    /** The container subnet and the security groups bound to every container. */
    ...cellNetworkConfigShape,
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

/** Formats a short label for messages, such as "root@198.18.0.2:22". */
export function cellLabel(config: Pick<CellConfig, "user" | "host" | "port">): string {
  return `${config.user}@${config.host}:${config.port}`;
}
