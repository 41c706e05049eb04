/**
 * A real OpenSSH server for tests, listening only on 127.0.0.1 at a random
 * high port, with generated host keys, in a temporary directory.
 *
 * sshd runs as root inside new PID and mount namespaces (`unshare`). Its
 * privilege separation directory /run/sshd lives on a private tmpfs, so the
 * host's /run is never touched. stop() ends the namespace's init, which ends
 * every process the server started, including sessions that a test left
 * open. Sessions therefore see an empty /run, but the host's other files and
 * its network. Needs root and util-linux `unshare`.
 */
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

export const SSHD_PATH = "/usr/sbin/sshd";
export const LOOPBACK = "127.0.0.1";
const START_TIMEOUT_MS = 10_000;
/** The log is cut to this many characters so a chatty DEBUG server cannot exhaust memory. */
const MAX_LOG_CHARS = 1_000_000;

export type HostKeyType = "ed25519" | "ecdsa" | "rsa";

export interface KeyPair {
  /** Path of the private key. The public key is at `${path}.pub`. */
  path: string;
  privateKey: string;
  /** The .pub line: "<type> <base64> <comment>". */
  publicKeyLine: string;
  /** The fingerprint that `ssh-keygen -lf` prints, such as "SHA256:...". */
  fingerprint: string;
  type: string;
}

export interface SshdOptions {
  /** Public key lines that may log in as the current user. */
  authorizedKeys: string[];
  /** Host key types to generate and serve. Only ed25519 when not given. */
  hostKeyTypes?: HostKeyType[];
  /** Sets AllowTcpForwarding, which a bastion needs. False when not given. */
  allowTcpForwarding?: boolean;
  /** sshd LogLevel. VERBOSE when not given, which logs each connection. */
  logLevel?: "INFO" | "VERBOSE" | "DEBUG1" | "DEBUG2" | "DEBUG3";
  /** More sshd_config lines, appended as they are. */
  extraConfig?: string[];
}

/** Returns true when this process can run the fixture. */
export function canRunSshd(): boolean {
  return process.getuid?.() === 0;
}

/**
 * Generates a key pair with ssh-keygen in `dir`. `passphrase` encrypts the
 * private key, and an empty one leaves it unencrypted.
 */
export async function generateKeyPair(
  dir: string,
  name: string,
  type: HostKeyType = "ed25519",
  passphrase = "",
): Promise<KeyPair> {
  const path = join(dir, name);
  const args = ["-q", "-t", type, "-N", passphrase, "-C", `cellfleet-test-${name}`, "-f", path];
  if (type === "rsa") {
    args.splice(2, 0, "-b", "3072");
  }
  await execFileAsync("ssh-keygen", args);
  const publicKeyLine = readFileSync(`${path}.pub`, "utf8").trim();
  const { stdout } = await execFileAsync("ssh-keygen", ["-l", "-E", "sha256", "-f", `${path}.pub`]);
  const fingerprint = stdout.trim().split(/\s+/)[1];
  return {
    path,
    privateKey: readFileSync(path, "utf8"),
    publicKeyLine,
    fingerprint,
    type: publicKeyLine.split(" ")[0],
  };
}

/** Returns a TCP port on 127.0.0.1 that was free a moment ago. Nothing listens on it when this returns. */
export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, LOOPBACK, () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export class SshdServer {
  readonly host = LOOPBACK;
  /** The login user: the user that runs the tests. */
  readonly user = userInfo().username;
  readonly hostKeys: KeyPair[];
  readonly dir: string;
  readonly port: number;

  private readonly process: ChildProcess;
  private output = "";
  private exited: Promise<void>;
  private running = true;

  constructor(dir: string, port: number, hostKeys: KeyPair[], child: ChildProcess) {
    this.dir = dir;
    this.port = port;
    this.hostKeys = hostKeys;
    this.process = child;
    const append = (chunk: Buffer): void => {
      if (this.output.length < MAX_LOG_CHARS) {
        this.output += chunk.toString("utf8");
      }
    };
    child.stdout?.on("data", append);
    child.stderr?.on("data", append);
    this.exited = new Promise((resolve) =>
      child.once("exit", () => {
        this.running = false;
        resolve();
      }),
    );
  }

  /** Returns the server's log so far, which sshd -e writes to stderr. */
  logs(): string {
    return this.output;
  }

  /** Counts the TCP connections that sshd accepted, from its VERBOSE log. */
  connectionCount(): number {
    return this.logs().match(/Connection from \S+ port \d+ on/g)?.length ?? 0;
  }

  get isRunning(): boolean {
    return this.running;
  }

  /** Waits until the log contains `pattern`, for `timeoutMs` at most. */
  async waitForLog(pattern: RegExp, timeoutMs = START_TIMEOUT_MS): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pattern.test(this.output)) {
      if (!this.running) {
        throw new Error(`sshd on port ${this.port} exited before logging ${pattern}; its log:\n${this.output}`);
      }
      if (Date.now() > deadline) {
        throw new Error(`sshd on port ${this.port} did not log ${pattern} within ${timeoutMs} ms; its log:\n${this.output}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /**
   * Stops the server and every process in its namespaces, then deletes the
   * temporary directory. Safe to call twice.
   */
  async stop(): Promise<void> {
    await this.terminate();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Ends the server's process tree and keeps the directory, so that a retry on another port can reuse the keys. */
  async terminate(): Promise<void> {
    if (this.running && this.process.pid !== undefined) {
      // unshare with --fork blocks SIGTERM and SIGINT while it waits for its child, so
      // it gets SIGKILL. --kill-child then makes the kernel send SIGKILL to
      // the namespace's init, which ends every process in the PID namespace.
      process.kill(this.process.pid, "SIGKILL");
      await this.exited;
    }
  }
}

function sshdConfig(dir: string, port: number, hostKeys: KeyPair[], options: SshdOptions): string {
  const lines = [
    `ListenAddress ${LOOPBACK}:${port}`,
    ...hostKeys.map((key) => `HostKey ${key.path}`),
    "PidFile none",
    `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
    // The temporary directory sits in world-writable /tmp, which StrictModes rejects.
    "StrictModes no",
    "UsePAM no",
    "PubkeyAuthentication yes",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "PermitRootLogin prohibit-password",
    `AllowTcpForwarding ${options.allowTcpForwarding ? "yes" : "no"}`,
    "AllowAgentForwarding no",
    "AllowStreamLocalForwarding no",
    "X11Forwarding no",
    "PermitTunnel no",
    "GatewayPorts no",
    "PrintMotd no",
    "PrintLastLog no",
    "MaxStartups 100",
    "Subsystem sftp internal-sftp",
    `LogLevel ${options.logLevel ?? "VERBOSE"}`,
    ...(options.extraConfig ?? []),
  ];
  return `${lines.join("\n")}\n`;
}

async function launch(dir: string, port: number, hostKeys: KeyPair[], options: SshdOptions): Promise<SshdServer> {
  const configPath = join(dir, `sshd_config_${port}`);
  writeFileSync(configPath, sshdConfig(dir, port, hostKeys, options), { mode: 0o600 });

  const script =
    'mount -t tmpfs -o mode=0755,size=1m tmpfs /run && mkdir -m 0755 /run/sshd && exec "$0" -D -e -f "$1"';
  const child = spawn(
    "unshare",
    ["--pid", "--fork", "--kill-child", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, SSHD_PATH, configPath],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const server = new SshdServer(dir, port, hostKeys, child);
  const spawnFailed = new Promise<never>((_, reject) => child.once("error", reject));
  try {
    await Promise.race([server.waitForLog(new RegExp(`Server listening on ${LOOPBACK.replace(/\./g, "\\.")} port ${port}`)), spawnFailed]);
  } catch (error) {
    await server.terminate().catch(() => {});
    throw error;
  }
  return server;
}

/**
 * Starts sshd with fresh host keys in a new temporary directory. Retries
 * with another port when the chosen one was taken in the meantime.
 */
export async function startSshd(options: SshdOptions): Promise<SshdServer> {
  if (!canRunSshd()) {
    throw new Error("the sshd fixture needs root, because sshd and unshare --pid --mount need it");
  }

  const dir = mkdtempSync(join(tmpdir(), "cellfleet-sshd-"));
  try {
    chmodSync(dir, 0o700);
    writeFileSync(join(dir, "authorized_keys"), `${options.authorizedKeys.join("\n")}\n`, { mode: 0o600 });
    const hostKeys: KeyPair[] = [];
    for (const type of options.hostKeyTypes ?? ["ed25519"]) {
      hostKeys.push(await generateKeyPair(dir, `ssh_host_${type}_key`, type));
    }

    let lastError: unknown;
    for (let attempt = 0; attempt < 3; attempt++) {
      const port = await freeLoopbackPort();
      try {
        return await launch(dir, port, hostKeys, options);
      } catch (error) {
        lastError = error;
        if (!/Address already in use/.test(String((error as Error).message))) {
          break;
        }
      }
    }
    throw lastError;
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}
