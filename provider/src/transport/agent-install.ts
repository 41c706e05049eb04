/**
 * Installs the agent bundle on a cell under <agentRoot>/<digest>/. The
 * directory appears only through an atomic rename after every file has been
 * verified with sha256sum on the cell, so a directory with that name always
 * contains exactly the bundle that the digest names.
 */
import { randomBytes } from "node:crypto";

import { CELL_PATHS } from "../common/protocol";

import { AGENT_ENTRY_FILE, type AgentBundle } from "./agent-bundle";
import { CellTransportError } from "./errors";
import { shellQuote } from "./shell";
import type { CellConnection } from "./ssh";

/** The oldest Node.js major version that the agent runs on. */
export const MIN_NODE_MAJOR = 18;

/** Other versions' directories are removed once they have not been used for this long, in minutes. */
const STALE_VERSION_MINUTES = 24 * 60;

/** Parses "v20.11.1" into its major version, or returns undefined for anything else. */
export function parseNodeMajor(versionOutput: string): number | undefined {
  const match = /^v(\d+)\.\d+\.\d+/.exec(versionOutput.trim());
  return match ? Number(match[1]) : undefined;
}

function nodeMissingError(label: string, found: string, cause?: unknown): CellTransportError {
  return new CellTransportError(
    label,
    "check Node.js",
    `cell ${label} has no Node.js ${MIN_NODE_MAJOR} or newer (found ${found}): install the nodejs package on the cell`,
    { cause },
  );
}

/**
 * Checks that the cell runs Node.js 18 or newer, the way the agent will be
 * started (through sudo when the connection uses it). Returns the version,
 * such as "v20.11.1".
 */
export async function checkNode(connection: CellConnection): Promise<string> {
  const label = connection.label;
  // One round trip covers both checks. Exit status 127 is the shell's own
  // code for a command that was not found.
  const command = `command -v node >/dev/null 2>&1 || exit 127; ${connection.sudoPrefix}node --version`;
  const result = await connection.exec(command);
  const stdout = result.stdout.toString("utf8").trim();
  const stderr = result.stderr.toString("utf8").trim();
  if (result.code === 127) {
    throw nodeMissingError(label, "no node on PATH");
  }
  if (result.code !== 0) {
    if (connection.sudoPrefix !== "" && /password|sudoers|not allowed/i.test(stderr)) {
      throw new CellTransportError(
        label,
        "check Node.js",
        `cell ${label}: \`${connection.sudoPrefix}node --version\` failed because sudo needs a password or does not allow it (${stderr}): allow user ${connection.config.user} to run node through sudo without a password, or connect as root`,
      );
    }
    throw nodeMissingError(label, `\`node --version\` exited with code ${result.code}: ${stderr || stdout}`);
  }

  // Only the last line counts, because a login script on the cell may print
  // text before the command runs.
  const version = stdout.split("\n").at(-1)?.trim() ?? "";
  const major = parseNodeMajor(version);
  if (major === undefined || major < MIN_NODE_MAJOR) {
    throw nodeMissingError(label, version || "no version output");
  }
  return version;
}

export interface HashMismatch {
  name: string;
  expected: string;
  /** Undefined when the file is missing or unreadable. */
  actual?: string;
}

/** Runs sha256sum on the cell over the bundle's files in `dir` and returns the files that differ from the manifest. */
export async function findHashMismatches(
  connection: CellConnection,
  bundle: AgentBundle,
  dir: string,
): Promise<HashMismatch[]> {
  const paths = bundle.files.map((file) => shellQuote(`${dir}/${file.name}`));
  const result = await connection.exec(`sha256sum -- ${paths.join(" ")}`);
  const lines = result.stdout.toString("utf8").split("\n");

  // sha256sum prints one line per readable file, in argument order, and
  // prefixes the line with a backslash when the name needs escaping.
  const actualByPath = new Map<string, string>();
  for (const line of lines) {
    const match = /^\\?([0-9a-f]{64}) [ *](.*)$/.exec(line);
    if (match) {
      actualByPath.set(match[2], match[1]);
    }
  }

  const mismatches: HashMismatch[] = [];
  for (const file of bundle.files) {
    const actual = actualByPath.get(`${dir}/${file.name}`);
    if (actual !== file.sha256) {
      mismatches.push({ name: file.name, expected: file.sha256, actual });
    }
  }
  return mismatches;
}

function describeMismatches(mismatches: HashMismatch[]): string {
  return mismatches
    .map((mismatch) =>
      mismatch.actual === undefined
        ? `${mismatch.name} is missing`
        : `${mismatch.name} has sha256 ${mismatch.actual}, the manifest lists ${mismatch.expected}`,
    )
    .join("; ");
}

export interface InstallOptions {
  /** Parent of the version directories. CELL_PATHS.agents unless a test puts it elsewhere. */
  agentRoot?: string;
  log?: (message: string) => void;
}

/** Installs the bundle if it is not on the cell yet and returns its directory. */
export async function installAgentBundle(
  connection: CellConnection,
  bundle: AgentBundle,
  options: InstallOptions = {},
): Promise<string> {
  const log = options.log ?? (() => {});
  const label = connection.label;
  const sudo = connection.sudoPrefix;
  const agentRoot = options.agentRoot ?? CELL_PATHS.agents;
  const target = `${agentRoot}/${bundle.digest}`;

  const present = await connection.exec(`test -d ${shellQuote(target)}`);
  if (present.code === 0) {
    await verifyInstalled(connection, bundle, target);
  } else {
    await stageAndMove(connection, bundle, agentRoot, target, log);
  }

  // A fresh mtime marks this version as in use, so that the cleanup of a
  // provider with another bundle version on the same cell keeps it.
  await connection.execChecked(`${sudo}touch -- ${shellQuote(target)}`, "mark the agent version as used");
  await removeStaleVersions(connection, bundle, agentRoot, log);
  return target;
}

/** Rejects when an installed version differs from its manifest, because a change on the cell must not go unnoticed. */
async function verifyInstalled(connection: CellConnection, bundle: AgentBundle, target: string): Promise<void> {
  const mismatches = await findHashMismatches(connection, bundle, target);
  if (mismatches.length > 0) {
    throw new CellTransportError(
      connection.label,
      "verify installed agent",
      `cell ${connection.label}: the installed agent in ${target} failed verification: ${describeMismatches(mismatches)}; something changed it on the cell, so inspect the cell, then remove ${target} to reinstall`,
    );
  }
}

async function stageAndMove(
  connection: CellConnection,
  bundle: AgentBundle,
  agentRoot: string,
  target: string,
  log: (message: string) => void,
): Promise<void> {
  const label = connection.label;
  const sudo = connection.sudoPrefix;
  const staging = `${agentRoot}/.staging-${randomBytes(6).toString("hex")}`;
  const quotedRoot = shellQuote(agentRoot);
  const quotedStaging = shellQuote(staging);

  // With sudo, the staging directory belongs to the SSH user while SFTP,
  // which runs as that user, writes into it. `$(id -u)` expands in the
  // user's shell before sudo runs. test/integration/sudo.test.ts covers it.
  const createCommands = [
    `${sudo}mkdir -p -- ${quotedRoot}`,
    `${sudo}chmod 0755 -- ${quotedRoot}`,
    `${sudo}mkdir -m 0700 -- ${quotedStaging}`,
  ];
  if (sudo !== "") {
    createCommands.push(`${sudo}chown "$(id -u)" -- ${quotedStaging}`);
  }
  await connection.execChecked(createCommands.join(" && "), "create the agent staging directory");

  try {
    for (const file of bundle.files) {
      await connection.upload(file.localPath, `${staging}/${file.name}`, file.mode);
    }

    // Root must own the files before they are verified, so that the SSH
    // user cannot change an agent that runs as root after the check.
    const sealCommands: string[] = [];
    if (sudo !== "") {
      sealCommands.push(`${sudo}chown -R 0:0 -- ${quotedStaging}`);
    }
    for (const file of bundle.files) {
      sealCommands.push(`${sudo}chmod ${file.mode.toString(8).padStart(4, "0")} -- ${shellQuote(`${staging}/${file.name}`)}`);
    }
    sealCommands.push(`${sudo}chmod 0755 -- ${quotedStaging}`);
    await connection.execChecked(sealCommands.join(" && "), "set owner and mode of the agent files");

    const mismatches = await findHashMismatches(connection, bundle, staging);
    if (mismatches.length > 0) {
      throw new CellTransportError(
        label,
        "verify uploaded agent",
        `cell ${label}: the agent uploaded to ${staging} failed verification: ${describeMismatches(mismatches)}; the local bundle changed after it was loaded or the upload was corrupted, so rebuild the bundle and retry`,
      );
    }

    // mv -T renames the directory itself and fails when the target exists
    // and is not empty, instead of moving staging into it.
    const move = await connection.exec(`${sudo}mv -T -- ${quotedStaging} ${shellQuote(target)}`);
    if (move.code !== 0) {
      const raced = await connection.exec(`test -d ${shellQuote(target)}`);
      if (raced.code !== 0) {
        throw new CellTransportError(
          label,
          "move the agent into place",
          `cell ${label}: moving ${staging} to ${target} failed: ${move.stderr.toString("utf8").trim()}; check that ${agentRoot} is writable`,
        );
      }
      log(`cell ${label}: another run installed agent ${bundle.digest} first, so this run uses that copy`);
      await removeDirectory(connection, staging, log);
      await verifyInstalled(connection, bundle, target);
    } else {
      log(`cell ${label}: installed agent ${bundle.digest} in ${target}`);
    }
  } catch (error) {
    await removeDirectory(connection, staging, log);
    throw error;
  }
}

async function removeDirectory(connection: CellConnection, dir: string, log: (message: string) => void): Promise<void> {
  try {
    const result = await connection.exec(`${connection.sudoPrefix}rm -rf -- ${shellQuote(dir)}`);
    if (result.code !== 0) {
      log(`cell ${connection.label}: removing ${dir} failed: ${result.stderr.toString("utf8").trim()}`);
    }
  } catch (error) {
    log(`cell ${connection.label}: removing ${dir} failed: ${(error as Error).message}`);
  }
}

/**
 * Removes other agent versions and leftover staging directories that were
 * last used more than a day ago. Only names that this module creates are
 * matched, so nothing else under the agent root is ever deleted. A failure
 * is logged and does not stop the start.
 */
async function removeStaleVersions(
  connection: CellConnection,
  bundle: AgentBundle,
  agentRoot: string,
  log: (message: string) => void,
): Promise<void> {
  const digestGlob = "[0-9a-f]".repeat(64);
  const command =
    `${connection.sudoPrefix}find ${shellQuote(agentRoot)} -mindepth 1 -maxdepth 1 -type d -mmin +${STALE_VERSION_MINUTES}` +
    ` \\( -name '${digestGlob}' -o -name '.staging-*' \\) ! -name ${shellQuote(bundle.digest)}` +
    ` -print -exec rm -rf -- {} +`;
  try {
    const result = await connection.exec(command);
    const removed = result.stdout.toString("utf8").trim();
    if (result.code !== 0) {
      log(`cell ${connection.label}: removing old agent versions failed: ${result.stderr.toString("utf8").trim()}`);
    } else if (removed !== "") {
      log(`cell ${connection.label}: removed old agent versions: ${removed.split("\n").join(", ")}`);
    }
  } catch (error) {
    log(`cell ${connection.label}: removing old agent versions failed: ${(error as Error).message}`);
  }
}

/** Returns the command that starts the installed agent as root. */
export function agentCommand(connection: CellConnection, installDir: string): string {
  return `${connection.sudoPrefix}node ${shellQuote(`${installDir}/${AGENT_ENTRY_FILE}`)} serve`;
}
