/**
 * Host key verification for the cell and the bastion. A key is accepted only
 * when it matches the configured pin (a public key or a SHA256 fingerprint)
 * or a known_hosts entry for the host. Trusting an unknown key would hand
 * root on the cell to any server that takes over its address.
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";

import { CellDialError, HostKeyMismatchError } from "./errors";

/** A public key as the SSH wire format carries it, with the values derived from it. */
export interface PresentedHostKey {
  /** The key blob, as ssh2 passes it to `hostVerifier` when `hostHash` is not set. */
  blob: Buffer;
  /** The type string at the start of the blob, such as "ssh-ed25519". */
  type: string;
  /** "SHA256:" and the unpadded base64 SHA-256 of the blob, exactly as `ssh-keygen -lf` prints it. */
  fingerprint: string;
}

/** Reads the type string that starts every SSH public key blob (RFC 4253, section 6.6). */
export function keyTypeOfBlob(blob: Buffer): string | undefined {
  if (blob.length < 4) {
    return undefined;
  }
  const length = blob.readUInt32BE(0);
  if (length === 0 || length > 64 || 4 + length > blob.length) {
    return undefined;
  }
  const type = blob.toString("latin1", 4, 4 + length);
  return /^[\x21-\x7e]+$/.test(type) ? type : undefined;
}

/** Computes the fingerprint that `ssh-keygen -lf` prints for a key blob. */
export function fingerprintOfBlob(blob: Buffer): string {
  const digest = createHash("sha256").update(blob).digest("base64");
  return `SHA256:${digest.replace(/=+$/, "")}`;
}

export function describePresentedKey(blob: Buffer): PresentedHostKey {
  return { blob, type: keyTypeOfBlob(blob) ?? "unknown-key-type", fingerprint: fingerprintOfBlob(blob) };
}

/** A configured `hostKey` value, parsed. */
export type HostKeyPin =
  | { kind: "fingerprint"; fingerprint: string }
  | { kind: "public-key"; type: string; blob: Buffer };

/**
 * Parses a `hostKey` value: "SHA256:<base64>" or "<type> <base64> [comment]".
 * Throws when the key line's type differs from the type inside the blob,
 * because such a line was damaged or edited and could never match.
 */
export function parseHostKeyPin(pin: string): HostKeyPin {
  const trimmed = pin.trim();
  if (trimmed.startsWith("SHA256:")) {
    return { kind: "fingerprint", fingerprint: trimmed.replace(/=+$/, "") };
  }
  const [type, base64] = trimmed.split(/\s+/);
  const blob = Buffer.from(base64 ?? "", "base64");
  const blobType = keyTypeOfBlob(blob);
  if (blobType !== type) {
    throw new Error(
      `hostKey "${type} ${(base64 ?? "").slice(0, 16)}..." is invalid: the key data contains type ${blobType ?? "none"}, not ${type}. Copy the whole line from /etc/ssh/ssh_host_*_key.pub on the cell`,
    );
  }
  return { kind: "public-key", type, blob };
}

export function pinMatches(pin: HostKeyPin, presented: PresentedHostKey): boolean {
  if (pin.kind === "fingerprint") {
    return pin.fingerprint === presented.fingerprint;
  }
  return pin.blob.length === presented.blob.length && timingSafeEqual(pin.blob, presented.blob);
}

/** One line of a known_hosts file, in the format that sshd(8) documents. */
export interface KnownHostsEntry {
  /** 1-based line number, for messages. */
  line: number;
  marker?: "revoked" | "cert-authority";
  /** The host pattern field as written: comma-separated patterns or one hashed "|1|salt|hash" entry. */
  hosts: string;
  keyType: string;
  blob: Buffer;
}

export interface ParsedKnownHosts {
  entries: KnownHostsEntry[];
  /** Lines that were skipped, with the reason, for the log. */
  notes: string[];
}

/** Parses the text of a known_hosts file. `source` names the file in notes. */
export function parseKnownHosts(text: string, source: string): ParsedKnownHosts {
  const entries: KnownHostsEntry[] = [];
  const notes: string[] = [];
  const lines = text.split(/\r?\n/);

  for (let index = 0; index < lines.length; index++) {
    const lineNumber = index + 1;
    const trimmed = lines[index].trim();
    if (trimmed === "" || trimmed.startsWith("#")) {
      continue;
    }

    const fields = trimmed.split(/\s+/);
    let marker: KnownHostsEntry["marker"];
    if (fields[0].startsWith("@")) {
      const markerField = fields.shift() as string;
      if (markerField === "@revoked") {
        marker = "revoked";
      } else if (markerField === "@cert-authority") {
        marker = "cert-authority";
      } else {
        notes.push(`${source} line ${lineNumber}: skipped, because the marker ${markerField} is unknown`);
        continue;
      }
    }

    if (fields.length < 3) {
      notes.push(`${source} line ${lineNumber}: skipped, because it has no host pattern, key type and key`);
      continue;
    }
    const [hosts, keyType, base64] = fields;
    const blob = Buffer.from(base64, "base64");
    if (keyTypeOfBlob(blob) !== keyType) {
      notes.push(`${source} line ${lineNumber}: skipped, because its key data is not a valid ${keyType} key`);
      continue;
    }
    if (marker === "cert-authority") {
      notes.push(
        `${source} line ${lineNumber}: @cert-authority entries are not supported and are ignored, so list the host key itself`,
      );
    }
    entries.push({ line: lineNumber, marker, hosts, keyType, blob });
  }

  return { entries, notes };
}

/**
 * Returns the name under which known_hosts stores a host: the bare host for
 * port 22 and "[host]:port" otherwise, lowercased as OpenSSH does.
 */
export function knownHostsName(host: string, port: number): string {
  const lower = host.toLowerCase();
  return port === 22 ? lower : `[${lower}]:${port}`;
}

function globToRegExp(pattern: string): RegExp {
  const escaped = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${escaped}$`, "i");
}

function hashedEntryMatches(field: string, name: string): boolean {
  // "|1|" entries store HMAC-SHA1(key = salt, data = name), both base64.
  const parts = field.split("|");
  if (parts.length !== 4 || parts[1] !== "1") {
    return false;
  }
  const salt = Buffer.from(parts[2], "base64");
  const expected = Buffer.from(parts[3], "base64");
  const actual = createHmac("sha1", salt).update(name).digest();
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}

/**
 * Returns whether a host field of a known_hosts line covers `name`, the value
 * of knownHostsName(). A negated pattern ("!pattern") that matches excludes
 * the line even when another pattern matches, as in OpenSSH.
 */
export function hostFieldMatches(field: string, name: string): boolean {
  if (field.startsWith("|")) {
    return hashedEntryMatches(field, name);
  }
  let matched = false;
  for (const pattern of field.split(",")) {
    if (pattern.startsWith("!")) {
      if (globToRegExp(pattern.slice(1)).test(name)) {
        return false;
      }
    } else if (globToRegExp(pattern).test(name)) {
      matched = true;
    }
  }
  return matched;
}

/** The outcome of checking a presented key against a known_hosts file. */
export type KnownHostsVerdict =
  | { status: "match"; entry: KnownHostsEntry }
  | { status: "revoked"; entry: KnownHostsEntry }
  /** The file has entries for the host, but none with this key. */
  | { status: "changed"; entries: KnownHostsEntry[]; certAuthorities: KnownHostsEntry[] }
  /** The file has no entry for the host. */
  | { status: "unknown"; certAuthorities: KnownHostsEntry[] };

export function checkKnownHosts(
  known: ParsedKnownHosts,
  host: string,
  port: number,
  presented: PresentedHostKey,
): KnownHostsVerdict {
  // A revoked key is rejected whatever host patterns its line lists, which is
  // stricter than matching it per host and never accepts a key that the file
  // marks as compromised.
  for (const entry of known.entries) {
    if (entry.marker === "revoked" && entry.blob.equals(presented.blob)) {
      return { status: "revoked", entry };
    }
  }

  const name = knownHostsName(host, port);
  const hostEntries: KnownHostsEntry[] = [];
  const certAuthorities: KnownHostsEntry[] = [];
  for (const entry of known.entries) {
    if (entry.marker === "revoked" || !hostFieldMatches(entry.hosts, name)) {
      continue;
    }
    if (entry.marker === "cert-authority") {
      certAuthorities.push(entry);
      continue;
    }
    if (entry.blob.length === presented.blob.length && timingSafeEqual(entry.blob, presented.blob)) {
      return { status: "match", entry };
    }
    hostEntries.push(entry);
  }

  if (hostEntries.length > 0) {
    return { status: "changed", entries: hostEntries, certAuthorities };
  }
  return { status: "unknown", certAuthorities };
}

/** The host key algorithms that ssh2 1.17 offers, in its default order. */
const DEFAULT_HOST_KEY_ALGORITHMS = [
  "ssh-ed25519",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
  "rsa-sha2-512",
  "rsa-sha2-256",
  "ssh-rsa",
];

function algorithmsForKeyType(type: string): string[] {
  if (type === "ssh-rsa") {
    return ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"];
  }
  return DEFAULT_HOST_KEY_ALGORITHMS.includes(type) ? [type] : [];
}

/**
 * Orders the host key algorithms so that the server presents a key of a type
 * that we trust, as OpenSSH's client does. Without this, a server with both
 * an ed25519 and an RSA key would present ed25519 and fail an RSA pin.
 * Returns undefined to keep ssh2's default order.
 */
export function preferredHostKeyAlgorithms(trustedTypes: string[]): string[] | undefined {
  const preferred: string[] = [];
  for (const type of trustedTypes) {
    for (const algorithm of algorithmsForKeyType(type)) {
      if (!preferred.includes(algorithm)) {
        preferred.push(algorithm);
      }
    }
  }
  if (preferred.length === 0) {
    return undefined;
  }
  return [...preferred, ...DEFAULT_HOST_KEY_ALGORITHMS.filter((algorithm) => !preferred.includes(algorithm))];
}

/** The fields of CellConfig, or of its bastion, that host key verification reads. */
export interface HostKeySettings {
  host: string;
  port: number;
  hostKey?: string;
  knownHostsFile?: string;
}

/** A ready check for one hop, built once per dial so the known_hosts file is read once. */
export interface HostKeyCheck {
  /** Returns undefined when the key is trusted, else the error to fail the dial with. */
  verify(blob: Buffer): HostKeyMismatchError | undefined;
  /** Exact ssh2 `algorithms.serverHostKey` list, or undefined for the default. */
  serverHostKeyAlgorithms?: string[];
}

function presentedText(role: "cell" | "bastion", presented: PresentedHostKey): string {
  return `the ${role} presented ${presented.type} ${presented.fingerprint}`;
}

function certAuthorityNote(certAuthorities: KnownHostsEntry[]): string {
  if (certAuthorities.length === 0) {
    return "";
  }
  const lines = certAuthorities.map((entry) => entry.line).join(", ");
  return ` (the @cert-authority entries on lines ${lines} were ignored, because cellfleet checks host keys only and does not support host certificates)`;
}

/**
 * Builds the host key check for one hop. `label` is the hop as
 * "user@host:port". `role` is "cell" or "bastion", which the messages need
 * to name the setting to change. A configured
 * `hostKey` takes precedence over `knownHostsFile`, so that a user who
 * follows the mismatch message and pins the new key is not blocked by the
 * stale file. Throws CellDialError when the known_hosts file cannot be read.
 */
export function createHostKeyCheck(
  settings: HostKeySettings,
  label: string,
  role: "cell" | "bastion",
  log: (message: string) => void,
): HostKeyCheck {
  const settingName = role === "cell" ? "hostKey" : "bastion.hostKey";

  if (settings.hostKey !== undefined) {
    let pin: HostKeyPin;
    try {
      pin = parseHostKeyPin(settings.hostKey);
    } catch (error) {
      throw new CellDialError(label, 0, `host key pin for ${label} is invalid: ${(error as Error).message}`, {
        cause: error,
        step: "parse host key pin",
      });
    }
    return {
      serverHostKeyAlgorithms: pin.kind === "public-key" ? preferredHostKeyAlgorithms([pin.type]) : undefined,
      verify(blob) {
        const presented = describePresentedKey(blob);
        if (pinMatches(pin, presented)) {
          return undefined;
        }
        return new HostKeyMismatchError(
          label,
          presented.type,
          presented.fingerprint,
          `host key of ${label} does not match the pin: ${presentedText(role, presented)}; if the ${role} was rebuilt, verify that fingerprint out of band and set ${settingName} to it`,
        );
      },
    };
  }

  const file = settings.knownHostsFile as string;
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    throw new CellDialError(label, 0, `known_hosts file ${file} for ${label} could not be read: ${(error as Error).message}`, {
      cause: error,
      step: "read known_hosts file",
    });
  }
  const known = parseKnownHosts(text, file);
  for (const note of known.notes) {
    log(note);
  }

  const name = knownHostsName(settings.host, settings.port);
  const trustedTypes = known.entries
    .filter((entry) => entry.marker === undefined && hostFieldMatches(entry.hosts, name))
    .map((entry) => entry.keyType);

  return {
    serverHostKeyAlgorithms: preferredHostKeyAlgorithms(trustedTypes),
    verify(blob) {
      const presented = describePresentedKey(blob);
      const verdict = checkKnownHosts(known, settings.host, settings.port, presented);
      const seen = presentedText(role, presented);
      switch (verdict.status) {
        case "match":
          return undefined;
        case "revoked":
          return new HostKeyMismatchError(
            label,
            presented.type,
            presented.fingerprint,
            `host key of ${label} is revoked: ${seen}, which line ${verdict.entry.line} of ${file} marks @revoked`,
          );
        case "changed": {
          const lines = verdict.entries.map((entry) => entry.line).join(", ");
          return new HostKeyMismatchError(
            label,
            presented.type,
            presented.fingerprint,
            `host key of ${label} does not match the known_hosts file ${file} (entries for ${name} on lines ${lines}): ${seen}; if the ${role} was rebuilt, verify that fingerprint out of band and replace those lines${certAuthorityNote(verdict.certAuthorities)}`,
          );
        }
        case "unknown":
          return new HostKeyMismatchError(
            label,
            presented.type,
            presented.fingerprint,
            `host key of ${label} is unknown: the known_hosts file ${file} has no entry for ${name}, and ${seen}; verify that fingerprint out of band, then add the key to the file or set ${settingName}${certAuthorityNote(verdict.certAuthorities)}`,
          );
      }
    },
  };
}
