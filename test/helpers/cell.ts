// Test cells for integration tests: local stand-ins for remote hosts, each a
// network namespace with its own sshd, made and removed by scripts/cell.sh.
// Creating a cell needs root.

import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

// cell.sh create waits up to 60 s for its lock and 10 s for sshd, and remove
// waits a few seconds for each process that ignores SIGTERM and each cgroup.
const cellScriptTimeoutMs = 120_000;
// Output limit for commands run inside a cell.
const execMaxBufferBytes = 64 * 1024 * 1024;

export interface ExecResult {
  stdout: string;
  stderr: string;
  // Exit code of the command, or 128 plus the signal number when a signal
  // ended it, as shells report it.
  code: number;
}

export interface Cell {
  name: string;
  // Network namespace name, as `ip netns list` shows it.
  netns: string;
  // IPv4 address of the cell's sshd.
  host: string;
  port: number;
  user: string;
  // OpenSSH private key (ed25519) that the cell's authorized_keys accepts.
  privateKey: string;
  privateKeyPath: string;
  // Host key as "ssh-ed25519 AAAA...", without a comment.
  hostPublicKey: string;
  // Host key fingerprint as "SHA256:...", as ssh-keygen -l prints it.
  hostKeyFingerprint: string;
  stateDir: string;
  // Name of the cgroup that the cell's agent creates its containers under.
  cgroupParent: string;
  // Runs a command in the cell's network and mount namespaces. Resolves with
  // the exit code instead of rejecting when the command fails.
  exec(cmd: string[]): Promise<ExecResult>;
  // Removes the cell and everything it started. Safe to call more than once.
  remove(): Promise<void>;
}

// JSON object that `cell.sh create` prints.
interface CreateOutput {
  name: string;
  netns: string;
  host: string;
  port: number;
  user: string;
  privateKeyPath: string;
  publicKeyPath: string;
  hostPublicKey: string;
  hostKeyFingerprint: string;
  stateDir: string;
  sshdPid: number;
  cgroupParent: string;
}

const createOutputKeys: (keyof CreateOutput)[] = [
  "name",
  "netns",
  "host",
  "port",
  "user",
  "privateKeyPath",
  "publicKeyPath",
  "hostPublicKey",
  "hostKeyFingerprint",
  "stateDir",
  "sshdPid",
  "cgroupParent",
];

let repoRoot: string | undefined;

// Finds the repository root by walking up from this file to the package.json
// named "cellfleet". The walk works both from test/helpers and from the
// compiled dist/test/helpers.
export function findRepoRoot(start: string = __dirname): string {
  if (repoRoot !== undefined) {
    return repoRoot;
  }
  let dir = path.resolve(start);
  for (;;) {
    const manifest = path.join(dir, "package.json");
    try {
      const parsed = JSON.parse(readFileSync(manifest, "utf8")) as { name?: unknown };
      if (parsed.name === "cellfleet") {
        repoRoot = dir;
        return dir;
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
        throw new Error(`failed to read ${manifest}: ${(err as Error).message}`);
      }
    }
    const parent = path.dirname(dir);
    if (parent === dir) {
      throw new Error(`no package.json named "cellfleet" found in ${start} or any parent directory`);
    }
    dir = parent;
  }
}

function cellScriptPath(): string {
  return path.join(findRepoRoot(), "scripts", "cell.sh");
}

// Error that execFile rejects with when the child fails or cannot start.
interface ExecFileError extends Error {
  code?: number | string | null;
  signal?: NodeJS.Signals | null;
  stdout?: string;
  stderr?: string;
}

async function runCellScript(args: string[]): Promise<{ stdout: string; stderr: string }> {
  try {
    return await execFileAsync("bash", [cellScriptPath(), ...args], {
      encoding: "utf8",
      timeout: cellScriptTimeoutMs,
    });
  } catch (err) {
    const failure = err as ExecFileError;
    const stderr = failure.stderr?.trim() ?? "";
    throw new Error(`cell.sh ${args.join(" ")} failed: ${failure.message.split("\n")[0]}\n${stderr}`);
  }
}

function parseCreateOutput(stdout: string): CreateOutput {
  const parsed = JSON.parse(stdout) as Record<string, unknown>;
  for (const key of createOutputKeys) {
    if (parsed[key] === undefined) {
      throw new Error(`cell.sh create printed no "${key}" field: ${stdout}`);
    }
  }
  return parsed as unknown as CreateOutput;
}

class LocalCell implements Cell {
  readonly name: string;
  readonly netns: string;
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly privateKey: string;
  readonly privateKeyPath: string;
  readonly hostPublicKey: string;
  readonly hostKeyFingerprint: string;
  readonly stateDir: string;
  readonly cgroupParent: string;

  constructor(output: CreateOutput, privateKey: string) {
    this.name = output.name;
    this.netns = output.netns;
    this.host = output.host;
    this.port = output.port;
    this.user = output.user;
    this.privateKey = privateKey;
    this.privateKeyPath = output.privateKeyPath;
    this.hostPublicKey = output.hostPublicKey;
    this.hostKeyFingerprint = output.hostKeyFingerprint;
    this.stateDir = output.stateDir;
    this.cgroupParent = output.cgroupParent;
  }

  async exec(cmd: string[]): Promise<ExecResult> {
    if (cmd.length === 0) {
      throw new Error("invalid command for Cell.exec: the array is empty");
    }
    try {
      const { stdout, stderr } = await execFileAsync("bash", [cellScriptPath(), "exec", this.name, "--", ...cmd], {
        encoding: "utf8",
        maxBuffer: execMaxBufferBytes,
      });
      return { stdout, stderr, code: 0 };
    } catch (err) {
      const failure = err as ExecFileError;
      const stdout = failure.stdout ?? "";
      const stderr = failure.stderr ?? "";
      if (typeof failure.code === "number") {
        return { stdout, stderr, code: failure.code };
      }
      if (failure.signal) {
        return { stdout, stderr, code: 128 + os.constants.signals[failure.signal] };
      }
      // A string code such as ENOENT or ERR_CHILD_PROCESS_STDIO_MAXBUFFER
      // means that the command did not run to completion.
      throw err;
    }
  }

  async remove(): Promise<void> {
    await runCellScript(["remove", this.name]);
  }
}

// Creates cell NAME (1 to 11 characters from a-z, 0-9 and '-') with
// `scripts/cell.sh create`. The caller must call remove(), typically in an
// after() hook, because the cell outlives the test process otherwise.
export async function createCell(name: string): Promise<Cell> {
  const { stdout } = await runCellScript(["create", name]);

  let output: CreateOutput;
  let privateKey: string;
  try {
    output = parseCreateOutput(stdout);
    privateKey = await readFile(output.privateKeyPath, "utf8");
  } catch (err) {
    // The cell exists even though its description is unusable, so remove it
    // before reporting the error.
    await runCellScript(["remove", name]).catch(() => undefined);
    throw err;
  }

  return new LocalCell(output, privateKey);
}
