/**
 * The SSH connection to one cell, optionally through a bastion: dial with
 * host key pinning and retries, run commands, and upload files over SFTP.
 */
import { randomBytes } from "node:crypto";
import { basename } from "node:path";
import type { Duplex } from "node:stream";

import { Client, utils, type ClientChannel, type ConnectConfig, type SFTPWrapper } from "ssh2";

import { cellLabel, type CellConfig, type HopConfig } from "./cell-config";
import { BastionHopError, dialWithRetry } from "./dial-retry";
import { abortError, CellCommandError, CellDialError, CellTransportError, HostKeyMismatchError } from "./errors";
import { createHostKeyCheck, type HostKeyCheck } from "./host-key";

/** Interval between keepalive requests in milliseconds. With KEEPALIVE_COUNT_MAX, a dead peer is noticed within about 75 s. */
const KEEPALIVE_INTERVAL_MS = 15_000;
const KEEPALIVE_COUNT_MAX = 4;
/** How long close() waits for the server to confirm the disconnect before it destroys the socket. */
const CLOSE_TIMEOUT_MS = 5_000;
/** SFTP status code for a missing file or directory (draft-ietf-secsh-filexfer-02, section 7). */
const SFTP_NO_SUCH_FILE = 2;
/** Channel open failure reason when the server's policy forbids the request (RFC 4254, section 5.1). */
const OPEN_ADMINISTRATIVELY_PROHIBITED = 1;

export interface CellConnectionOptions {
  /** Receives retries and errors that the connection handles itself. */
  log?: (message: string) => void;
  /** Cancels the dial, including the wait between attempts. */
  signal?: AbortSignal;
}

export interface ExecOptions {
  /** Written to the command's stdin, which is then closed. Without it, stdin is closed at once. */
  stdin?: string | Buffer;
  /**
   * On abort, exec() rejects with an AbortError at once, closes the channel
   * and sends SIGTERM to the command's process group with a second command.
   */
  signal?: AbortSignal;
}

export interface ExecResult {
  stdout: Buffer;
  stderr: Buffer;
  /** The exit status, or null when a signal ended the command. */
  code: number | null;
  /** The signal that ended the command, such as "SIGKILL". */
  signal?: string;
}

/** One hop to dial: the cell itself or its bastion. */
interface HopTarget {
  label: string;
  role: "cell" | "bastion";
  host: string;
  port: number;
  user: string;
  privateKey: string;
  passphrase?: string;
  hostKeyCheck: HostKeyCheck;
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function prepareHop(
  hop: Pick<HopConfig, "host" | "port" | "user" | "privateKey" | "passphrase" | "hostKey" | "knownHostsFile">,
  role: "cell" | "bastion",
  log: (message: string) => void,
): HopTarget {
  const label = cellLabel(hop);

  // Parsing up front turns a wrong key or passphrase into one clear error
  // before any connection, instead of a failure inside every attempt.
  const parsed = utils.parseKey(hop.privateKey, hop.passphrase);
  if (parsed instanceof Error) {
    const setting = role === "cell" ? "privateKey" : "bastion.privateKey";
    const hint = hop.passphrase === undefined ? "; if the key is encrypted, set the passphrase" : "";
    throw new CellDialError(label, 0, `${setting} for ${label} could not be parsed: ${parsed.message}${hint}`, {
      cause: parsed,
      step: "parse privateKey",
    });
  }

  return {
    label,
    role,
    host: hop.host,
    port: hop.port,
    user: hop.user,
    privateKey: hop.privateKey,
    passphrase: hop.passphrase,
    hostKeyCheck: createHostKeyCheck(hop, label, role, log),
  };
}

function authenticationError(target: HopTarget, attempt: number, cause: unknown): CellDialError {
  const setting = target.role === "cell" ? "privateKey" : "bastion.privateKey";
  return new CellDialError(
    target.label,
    attempt,
    `authentication to ${target.role} ${target.label} failed: the server rejected ${setting} for user ${target.user}; add its public key to ~${target.user}/.ssh/authorized_keys on the ${target.role}`,
    { cause, step: "authenticate" },
  );
}

/**
 * Performs one TCP connect (unless `sock` is given), SSH handshake, host
 * key check and authentication. Rejects with the HostKeyMismatchError from
 * the check rather than ssh2's generic "Host denied".
 */
function handshake(
  target: HopTarget,
  attempt: number,
  timeoutMs: number,
  sock: Duplex | undefined,
  signal: AbortSignal | undefined,
): Promise<Client> {
  return new Promise((resolve, reject) => {
    const client = new Client();
    let hostKeyError: HostKeyMismatchError | undefined;
    let settled = false;

    const finish = (error?: unknown): void => {
      if (settled) {
        return;
      }
      settled = true;
      signal?.removeEventListener("abort", onAbort);
      if (error === undefined) {
        resolve(client);
        return;
      }
      client.destroy();
      reject(error);
    };
    const onAbort = (): void => finish(abortError(`dial ${target.label} was cancelled`, signal as AbortSignal));

    client.once("ready", () => finish());
    // This listener stays for the client's life, so a late error never
    // becomes an unhandled 'error' event. The connection adds its own.
    client.on("error", (error: Error & { level?: string }) => {
      if (hostKeyError !== undefined) {
        finish(hostKeyError);
      } else if (error.level === "client-authentication") {
        finish(authenticationError(target, attempt, error));
      } else {
        finish(error);
      }
    });
    client.once("close", () => {
      const error = Object.assign(new Error(`connection to ${target.label} closed during the SSH handshake`), {
        code: "ECONNRESET",
      });
      finish(error);
    });

    if (signal?.aborted) {
      onAbort();
      return;
    }
    signal?.addEventListener("abort", onAbort, { once: true });

    const connectConfig: ConnectConfig = {
      host: target.host,
      port: target.port,
      username: target.user,
      privateKey: target.privateKey,
      passphrase: target.passphrase,
      readyTimeout: timeoutMs,
      keepaliveInterval: KEEPALIVE_INTERVAL_MS,
      keepaliveCountMax: KEEPALIVE_COUNT_MAX,
      // Without hostHash, ssh2 passes the raw key blob, which both the
      // fingerprint and the public key comparison need.
      hostVerifier: (key: Buffer) => {
        hostKeyError = target.hostKeyCheck.verify(key);
        return hostKeyError === undefined;
      },
      sock: sock as ConnectConfig["sock"],
    };
    if (target.hostKeyCheck.serverHostKeyAlgorithms !== undefined) {
      connectConfig.algorithms = {
        serverHostKey: target.hostKeyCheck.serverHostKeyAlgorithms as NonNullable<
          ConnectConfig["algorithms"]
        >["serverHostKey"],
      };
    }

    try {
      client.connect(connectConfig);
    } catch (error) {
      finish(error);
    }
  });
}

/** Opens a direct-tcpip channel from the bastion to the cell, bounded by the dial timeout. */
function forwardThroughBastion(
  bastion: Client,
  host: string,
  port: number,
  timeoutMs: number,
): Promise<ClientChannel> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => {
      settled = true;
      const error = Object.assign(new Error(`forwarding to ${host}:${port} timed out after ${timeoutMs / 1000} s`), {
        code: "ETIMEDOUT",
      });
      reject(error);
    }, timeoutMs);

    try {
      // sshd only logs the originator address. 127.0.0.1:0 marks the forward
      // as coming from this process, not from a listening port.
      bastion.forwardOut("127.0.0.1", 0, host, port, (error, stream) => {
        if (settled) {
          stream?.close();
          return;
        }
        settled = true;
        clearTimeout(timer);
        if (error) {
          reject(error);
        } else {
          resolve(stream);
        }
      });
    } catch (error) {
      settled = true;
      clearTimeout(timer);
      reject(error);
    }
  });
}

/** Starts the stderr line in which an abortable command reports its process group. */
const PROCESS_GROUP_MARKER = "cellfleet-exec-process-group";
const MARKER_LINE = new RegExp(`(^|\\n)${PROCESS_GROUP_MARKER} (\\d+)\\n`);

/** Returns the process group id from the marker line, once stderr contains it. */
function findProcessGroup(stderr: Buffer): string | undefined {
  return MARKER_LINE.exec(stderr.toString("latin1"))?.[2];
}

/** Removes the marker line from the command's stderr, so that callers see only the command's own output. */
function removeMarkerLine(stderr: Buffer): Buffer {
  const match = MARKER_LINE.exec(stderr.toString("latin1"));
  if (match === null) {
    return stderr;
  }
  // latin1 maps each byte to one character, so string offsets are byte offsets.
  const start = match.index + match[1].length;
  const end = match.index + match[0].length;
  return Buffer.concat([stderr.subarray(0, start), stderr.subarray(end)]);
}

function describeForwardError(error: unknown, bastionLabel: string, host: string, port: number): unknown {
  const reason = (error as { reason?: unknown })?.reason;
  if (reason !== OPEN_ADMINISTRATIVELY_PROHIBITED) {
    return error;
  }
  return new CellDialError(
    bastionLabel,
    0,
    `bastion ${bastionLabel} refused to forward a connection to ${host}:${port} (administratively prohibited): set AllowTcpForwarding yes for user ${bastionLabel.split("@")[0]} in the bastion's sshd_config`,
    { cause: error, step: "forward through bastion" },
  );
}

/**
 * Returns the prefix for commands that need root: "" for root or when
 * `sudo` is false, else "sudo -n ". `sudo` defaults to true for other users.
 */
export function sudoPrefixFor(config: Pick<CellConfig, "user" | "sudo">): string {
  const useSudo = config.user !== "root" && (config.sudo ?? true);
  return useSudo ? "sudo -n " : "";
}

export class CellConnection {
  /** The cell as "user@host:port". */
  readonly label: string;
  /**
   * "sudo -n " when commands that need root must go through sudo, else "".
   * `-n` makes sudo fail at once instead of waiting at a password prompt
   * in a session without a terminal.
   */
  readonly sudoPrefix: string;
  readonly config: CellConfig;

  private readonly client: Client;
  private readonly bastion: Client | undefined;
  private readonly log: (message: string) => void;
  private closed = false;
  private lastError: Error | undefined;
  private readonly closeListeners = new Set<(error?: Error) => void>();
  private sftpSession: Promise<SFTPWrapper> | undefined;

  private constructor(
    client: Client,
    bastion: Client | undefined,
    config: CellConfig,
    log: (message: string) => void,
  ) {
    this.client = client;
    this.bastion = bastion;
    this.config = config;
    this.log = log;
    this.label = cellLabel(config);
    this.sudoPrefix = sudoPrefixFor(config);

    client.on("error", (error: Error) => {
      this.lastError = error;
      this.log(`connection to ${this.label} failed: ${error.message}`);
    });
    client.once("close", () => this.handleClose());

    if (bastion !== undefined) {
      const bastionLabel = cellLabel(config.bastion as HopConfig);
      bastion.on("error", (error: Error) => {
        this.log(`connection to bastion ${bastionLabel} for ${this.label} failed: ${error.message}`);
      });
      // The cell's stream runs inside the bastion connection, so losing the
      // bastion ends the cell connection too.
      bastion.once("close", () => client.destroy());
    }
  }

  /**
   * Dials the cell, through the bastion when one is configured, verifies
   * both host keys and authenticates. Retries refused, unreachable, reset and
   * timed-out dials up to `config.dialRetries` more times with exponential
   * backoff. Fails at once with HostKeyMismatchError on a host key failure
   * and with CellDialError on an authentication failure.
   */
  static async open(config: CellConfig, options: CellConnectionOptions = {}): Promise<CellConnection> {
    const log = options.log ?? (() => {});
    const label = cellLabel(config);
    const timeoutMs = config.dialTimeout * 1000;
    const cellTarget = prepareHop(config, "cell", log);
    const bastionTarget = config.bastion !== undefined ? prepareHop(config.bastion, "bastion", log) : undefined;

    let bastion: Client | undefined;
    let bastionClosed = false;

    const attempt = async (attemptNumber: number): Promise<Client> => {
      let sock: Duplex | undefined;
      if (bastionTarget !== undefined) {
        // A healthy bastion connection is kept across attempts, because
        // usually only the cell behind it is still starting.
        if (bastion === undefined || bastionClosed) {
          try {
            bastion = await handshake(bastionTarget, attemptNumber, timeoutMs, undefined, options.signal);
          } catch (error) {
            throw error instanceof CellTransportError ? error : new BastionHopError(bastionTarget.label, error);
          }
          bastionClosed = false;
          bastion.once("close", () => {
            bastionClosed = true;
          });
        }
        try {
          sock = await forwardThroughBastion(bastion, config.host, config.port, timeoutMs);
        } catch (error) {
          const described = describeForwardError(error, bastionTarget.label, config.host, config.port);
          throw described instanceof CellTransportError ? described : new BastionHopError(bastionTarget.label, error);
        }
      }
      return handshake(cellTarget, attemptNumber, timeoutMs, sock, options.signal);
    };

    try {
      const client = await dialWithRetry({ label, retries: config.dialRetries, log, signal: options.signal }, attempt);
      return new CellConnection(client, bastion, config, log);
    } catch (error) {
      (bastion as Client | undefined)?.end();
      throw error;
    }
  }

  /** True once the connection has closed for any reason. A closed connection never reopens. */
  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Registers `listener` to run once when the connection closes, with the
   * last connection error if there was one. Runs it soon if the connection is
   * already closed. Returns a function that removes the listener.
   */
  onClose(listener: (error?: Error) => void): () => void {
    if (this.closed) {
      queueMicrotask(() => listener(this.lastError));
      return () => {};
    }
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  private handleClose(): void {
    if (this.closed) {
      return;
    }
    this.closed = true;
    this.sftpSession = undefined;
    this.bastion?.end();
    for (const listener of this.closeListeners) {
      try {
        listener(this.lastError);
      } catch (error) {
        this.log(`close listener for ${this.label} failed: ${errorMessage(error)}`);
      }
    }
    this.closeListeners.clear();
  }

  private notConnectedError(step: string): CellTransportError {
    const reason = this.lastError !== undefined ? ` after ${this.lastError.message}` : "";
    return new CellTransportError(this.label, step, `cell ${this.label}: ${step} failed: the SSH connection is closed${reason}`, {
      cause: this.lastError,
    });
  }

  private openExecChannel(command: string, step: string): Promise<ClientChannel> {
    return new Promise((resolve, reject) => {
      if (this.closed) {
        reject(this.notConnectedError(step));
        return;
      }
      const fail = (error: unknown): void => {
        reject(
          new CellTransportError(this.label, step, `cell ${this.label}: ${step} failed: could not open a channel for \`${command}\`: ${errorMessage(error)}`, {
            cause: error,
          }),
        );
      };
      try {
        this.client.exec(command, (error, channel) => (error ? fail(error) : resolve(channel)));
      } catch (error) {
        fail(error);
      }
    });
  }

  /**
   * Runs `command` through the login shell of the user and collects its
   * output. Resolves with any exit status. Use execChecked() to reject on a
   * nonzero status.
   */
  async exec(command: string, options: ExecOptions = {}): Promise<ExecResult> {
    const step = `run \`${command}\``;
    const signal = options.signal;
    if (signal?.aborted) {
      throw abortError(`cell ${this.label}: ${step} was cancelled`, signal);
    }
    // An abortable command first reports the pid of its shell, which sshd
    // made a session and process group leader, so that an abort can kill the
    // whole group. SSH signal requests cannot do this, because OpenSSH
    // refuses them in sessions of root.
    const remoteCommand = signal !== undefined ? `echo ${PROCESS_GROUP_MARKER} $$ >&2; ${command}` : command;
    const channel = await this.openExecChannel(remoteCommand, step);

    return new Promise((resolve, reject) => {
      const stdout: Buffer[] = [];
      const stderr: Buffer[] = [];
      let exit: { code: number | null; signal?: string } | undefined;
      let aborted = false;
      let processGroup: string | undefined;
      let killed = false;

      const killProcessGroup = (): void => {
        if (killed || processGroup === undefined) {
          return;
        }
        killed = true;
        this.exec(`${this.sudoPrefix}kill -TERM -- -${processGroup}`).then(
          (result) => {
            if (result.code !== 0) {
              this.log(`cell ${this.label}: stopping cancelled \`${command}\` failed: ${result.stderr.toString("utf8").trim()}`);
            }
          },
          (error: unknown) => this.log(`cell ${this.label}: stopping cancelled \`${command}\` failed: ${errorMessage(error)}`),
        );
      };

      const onAbort = (): void => {
        aborted = true;
        killProcessGroup();
        channel.close();
        // sshd closes the channel only after the command exits, so the
        // caller does not wait for that.
        reject(abortError(`cell ${this.label}: ${step} was cancelled`, signal as AbortSignal));
      };
      signal?.addEventListener("abort", onAbort, { once: true });

      channel.on("data", (chunk: Buffer) => stdout.push(chunk));
      channel.stderr.on("data", (chunk: Buffer) => {
        stderr.push(chunk);
        if (signal !== undefined && processGroup === undefined) {
          processGroup = findProcessGroup(Buffer.concat(stderr));
          // If the abort came before the pid, the kill happens now.
          if (aborted) {
            killProcessGroup();
          }
        }
      });
      channel.on("exit", (code: number | null, signalName?: string) => {
        exit = { code: code ?? null, signal: signalName ?? undefined };
      });
      channel.once("close", () => {
        signal?.removeEventListener("abort", onAbort);
        if (aborted) {
          return;
        }
        if (exit === undefined) {
          const error = this.closed ? this.notConnectedError(step) : undefined;
          reject(
            error ??
              new CellTransportError(this.label, step, `cell ${this.label}: ${step} failed: the channel closed without an exit status`),
          );
          return;
        }
        const allStderr = Buffer.concat(stderr);
        const result: ExecResult = {
          stdout: Buffer.concat(stdout),
          stderr: signal !== undefined ? removeMarkerLine(allStderr) : allStderr,
          code: exit.code,
        };
        if (exit.signal !== undefined) {
          result.signal = exit.signal;
        }
        resolve(result);
      });

      if (options.stdin !== undefined) {
        channel.end(options.stdin);
      } else {
        channel.end();
      }
    });
  }

  /**
   * Runs `command` like exec() and rejects with a CellCommandError that
   * names `step` and includes stderr when the command does not exit with 0.
   */
  async execChecked(command: string, step: string, options: ExecOptions = {}): Promise<ExecResult> {
    const result = await this.exec(command, options);
    if (result.code !== 0) {
      throw new CellCommandError(this.label, step, {
        command,
        code: result.code,
        signal: result.signal,
        stderr: result.stderr.toString("utf8"),
      });
    }
    return result;
  }

  /**
   * Starts a long-lived command and returns its channel: writing to the
   * channel feeds its stdin, and its stdout and `stderr` are streams. The
   * caller owns the channel and must handle its 'close' event.
   */
  spawn(command: string): Promise<ClientChannel> {
    return this.openExecChannel(command, `start \`${command}\``);
  }

  private getSftp(step: string): Promise<SFTPWrapper> {
    if (this.closed) {
      return Promise.reject(this.notConnectedError(step));
    }
    if (this.sftpSession === undefined) {
      const session = new Promise<SFTPWrapper>((resolve, reject) => {
        try {
          this.client.sftp((error, sftp) => {
            if (error) {
              reject(error);
              return;
            }
            sftp.on("error", (sftpError: Error) => this.log(`SFTP session on ${this.label} failed: ${sftpError.message}`));
            sftp.once("close", () => {
              if (this.sftpSession === session) {
                this.sftpSession = undefined;
              }
            });
            resolve(sftp);
          });
        } catch (error) {
          reject(error);
        }
      });
      this.sftpSession = session;
      session.catch(() => {
        if (this.sftpSession === session) {
          this.sftpSession = undefined;
        }
      });
    }
    return this.sftpSession;
  }

  /**
   * Uploads a local file to `remotePath` with `mode`, atomically: the data
   * goes to "<remotePath>.tmp-<random>", which is then renamed over
   * `remotePath`, so a reader never sees a partial file. The parent
   * directory must exist. Overwrites an existing file when the server
   * supports posix-rename@openssh.com (OpenSSH does); otherwise the plain
   * SFTP rename fails if `remotePath` exists.
   */
  async upload(localPath: string, remotePath: string, mode: number): Promise<void> {
    const step = `upload ${basename(localPath)} to ${remotePath}`;
    let sftp: SFTPWrapper;
    try {
      sftp = await this.getSftp(step);
    } catch (error) {
      if (error instanceof CellTransportError) {
        throw error;
      }
      throw new CellTransportError(this.label, step, `cell ${this.label}: ${step} failed: could not start SFTP: ${errorMessage(error)}`, {
        cause: error,
      });
    }

    const temporaryPath = `${remotePath}.tmp-${randomBytes(6).toString("hex")}`;
    const call = (operation: (done: (error?: Error | null) => void) => void): Promise<void> =>
      new Promise((resolve, reject) => operation((error) => (error ? reject(error) : resolve())));

    try {
      await call((done) => sftp.fastPut(localPath, temporaryPath, { mode }, done));
      // The mode given at open time is reduced by the server's umask, so set it again.
      await call((done) => sftp.chmod(temporaryPath, mode, done));
      await call((done) => {
        try {
          sftp.ext_openssh_rename(temporaryPath, remotePath, done);
        } catch {
          // ssh2 throws at once when the server lacks posix-rename@openssh.com.
          sftp.rename(temporaryPath, remotePath, done);
        }
      });
    } catch (error) {
      await call((done) => sftp.unlink(temporaryPath, done)).catch(() => {});
      const code = (error as { code?: unknown }).code;
      const hint = code === SFTP_NO_SUCH_FILE ? " (the parent directory or the local file does not exist)" : "";
      throw new CellTransportError(this.label, step, `cell ${this.label}: ${step} failed: ${errorMessage(error)}${hint}`, {
        cause: error,
      });
    }
  }

  /** Ends the connection and the bastion hop and waits until both are closed. */
  close(): Promise<void> {
    if (this.closed) {
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.client.destroy(), CLOSE_TIMEOUT_MS);
      timer.unref();
      this.onClose(() => {
        clearTimeout(timer);
        resolve();
      });
      this.client.end();
    });
  }
}
