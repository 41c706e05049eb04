/**
 * The client side of the agent RPC: installs the agent bundle on a cell,
 * starts `node agent.js serve` on an exec channel, and matches the JSON-lines
 * responses on its stdout to the requests written to its stdin.
 */
import { StringDecoder } from "node:string_decoder";

import type { ClientChannel } from "ssh2";

import type { AgentErrorBody, AgentErrorCode, AgentMethod, AgentMethods } from "../common/protocol";

import type { AgentBundle } from "./agent-bundle";
import { agentCommand, checkNode, installAgentBundle } from "./agent-install";
import { abortError, CellTransportError } from "./errors";
import type { CellConnection } from "./ssh";

export { loadAgentBundle, defaultAgentBundleDir, type AgentBundle, type AgentBundleFile } from "./agent-bundle";

/** Maximum length of a stdout line from the agent, in characters. A longer line means a broken agent, not a large result. */
const MAX_RESPONSE_LINE_CHARS = 64 * 1024 * 1024;
/** Maximum length of a stderr line in the log, in characters. The rest of the line is cut. */
const MAX_LOG_LINE_CHARS = 4096;
/** Stderr lines kept to explain an unexpected exit. */
const STDERR_TAIL_LINES = 20;
/** How long close() waits for the agent to exit after stdin ends before it closes the channel. */
const CLOSE_TIMEOUT_MS = 5_000;

/** An error response from the agent to one call. */
export class AgentError extends CellTransportError {
  readonly code: AgentErrorCode;
  readonly method: AgentMethod;
  /** The cell's own name as the agent reports it, from cell.json or the hostname. */
  readonly cellName: string;
  /** The message from the agent, without the cell and step prefix. */
  readonly agentMessage: string;

  constructor(label: string, method: AgentMethod, body: AgentErrorBody) {
    super(label, body.step, `cell ${label}: ${body.step} failed: ${body.message}`);
    this.name = "AgentError";
    this.code = body.code;
    this.method = method;
    this.cellName = body.cell;
    this.agentMessage = body.message;
  }
}

/** The agent's channel closed, so pending and later calls get no response. */
export class AgentUnavailableError extends CellTransportError {
  constructor(label: string, step: string, message: string, options?: { cause?: unknown }) {
    super(label, step, message, options);
    this.name = "AgentUnavailableError";
  }
}

export interface AgentClientOptions {
  /** Receives install progress, the agent's stderr lines and protocol problems. */
  log?: (message: string) => void;
  /** Parent of the version directories. CELL_PATHS.agents unless a test puts it elsewhere. */
  agentRoot?: string;
}

export interface CallOptions {
  /** Rejects the call at once. The agent still finishes the request, and its response is dropped. */
  signal?: AbortSignal;
}

interface PendingCall {
  method: AgentMethod;
  resolve: (result: unknown) => void;
  reject: (error: Error) => void;
}

/**
 * Splits a byte stream into lines and calls `onLine` for each complete one.
 * Calls `onOverflow` once when a line grows past `maxChars`.
 */
function lineSplitter(onLine: (line: string) => void, maxChars: number, onOverflow: () => void) {
  const decoder = new StringDecoder("utf8");
  let buffered = "";
  let overflowed = false;
  return {
    push(chunk: Buffer): void {
      if (overflowed) {
        return;
      }
      buffered += decoder.write(chunk);
      let newline = buffered.indexOf("\n");
      while (newline !== -1) {
        onLine(buffered.slice(0, newline));
        buffered = buffered.slice(newline + 1);
        newline = buffered.indexOf("\n");
      }
      if (buffered.length > maxChars) {
        overflowed = true;
        buffered = "";
        onOverflow();
      }
    },
    flush(): void {
      buffered += decoder.end();
      if (buffered !== "" && !overflowed) {
        onLine(buffered);
      }
      buffered = "";
    },
  };
}

function isErrorBody(value: unknown): value is AgentErrorBody {
  const body = value as Record<string, unknown>;
  return (
    typeof body === "object" &&
    body !== null &&
    typeof body.code === "string" &&
    typeof body.message === "string" &&
    typeof body.step === "string" &&
    typeof body.cell === "string"
  );
}

function truncate(text: string, maxChars: number): string {
  return text.length <= maxChars ? text : `${text.slice(0, maxChars)}... (${text.length - maxChars} more characters)`;
}

export class AgentClient {
  /** The cell as "user@host:port". */
  readonly label: string;
  /** The agent's version directory on the cell. */
  readonly installDir: string;
  /** The cell's Node.js version, such as "v20.11.1". */
  readonly nodeVersion: string;

  private readonly channel: ClientChannel;
  private readonly log: (message: string) => void;
  private readonly pending = new Map<number, PendingCall>();
  private readonly closeListeners = new Set<(error: Error) => void>();
  private readonly stderrTail: string[] = [];
  private nextId = 1;
  private exitStatus: string | undefined;
  private closedError: AgentUnavailableError | undefined;

  private constructor(
    connection: CellConnection,
    channel: ClientChannel,
    installDir: string,
    nodeVersion: string,
    log: (message: string) => void,
  ) {
    this.label = connection.label;
    this.channel = channel;
    this.installDir = installDir;
    this.nodeVersion = nodeVersion;
    this.log = log;

    const stdout = lineSplitter(
      (line) => this.handleResponseLine(line),
      MAX_RESPONSE_LINE_CHARS,
      () => {
        this.log(`agent on ${this.label} wrote a stdout line longer than ${MAX_RESPONSE_LINE_CHARS} characters, so the client closes it`);
        this.channel.close();
      },
    );
    const stderr = lineSplitter(
      (line) => this.handleLogLine(line),
      MAX_LOG_LINE_CHARS,
      () => this.log(`agent on ${this.label}: (a stderr line longer than ${MAX_LOG_LINE_CHARS} characters was dropped)`),
    );

    channel.on("data", (chunk: Buffer) => stdout.push(chunk));
    channel.stderr.on("data", (chunk: Buffer) => stderr.push(chunk));
    channel.on("exit", (code: number | null, signalName?: string) => {
      this.exitStatus = signalName ? `was killed by ${signalName}` : `exited with code ${code}`;
    });
    channel.once("close", () => {
      stdout.flush();
      stderr.flush();
      this.handleClose();
    });
  }

  /**
   * Checks Node.js on the cell, installs `bundle` unless that version is
   * already there, and starts the agent. Rejects with a CellTransportError
   * that names the failed step.
   */
  static async start(
    connection: CellConnection,
    bundle: AgentBundle,
    options: AgentClientOptions = {},
  ): Promise<AgentClient> {
    const log = options.log ?? (() => {});
    const nodeVersion = await checkNode(connection);
    const installDir = await installAgentBundle(connection, bundle, { agentRoot: options.agentRoot, log });
    const channel = await connection.spawn(agentCommand(connection, installDir));
    log(`cell ${connection.label}: started agent ${bundle.digest.slice(0, 12)} on Node.js ${nodeVersion}`);
    return new AgentClient(connection, channel, installDir, nodeVersion, log);
  }

  /** True once the agent's channel has closed. A closed client never reopens. */
  get isClosed(): boolean {
    return this.closedError !== undefined;
  }

  /** Registers `listener` to run once when the agent's channel closes. Returns a function that removes it. */
  onClose(listener: (error: Error) => void): () => void {
    if (this.closedError !== undefined) {
      const error = this.closedError;
      queueMicrotask(() => listener(error));
      return () => {};
    }
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  /**
   * Sends one request and resolves with the agent's result. Rejects with
   * AgentError when the agent reports a failure, and with
   * AgentUnavailableError when the agent's channel closes first.
   */
  call<M extends AgentMethod>(
    method: M,
    params: AgentMethods[M]["params"],
    options: CallOptions = {},
  ): Promise<AgentMethods[M]["result"]> {
    if (this.closedError !== undefined) {
      return Promise.reject(
        new AgentUnavailableError(this.label, method, `cell ${this.label}: ${method} failed: ${this.closedError.message}`, {
          cause: this.closedError,
        }),
      );
    }
    const signal = options.signal;
    if (signal?.aborted) {
      return Promise.reject(abortError(`cell ${this.label}: ${method} was cancelled`, signal));
    }

    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        if (this.pending.delete(id)) {
          reject(abortError(`cell ${this.label}: ${method} was cancelled`, signal as AbortSignal));
        }
      };
      this.pending.set(id, {
        method,
        resolve: (result) => {
          signal?.removeEventListener("abort", onAbort);
          resolve(result as AgentMethods[M]["result"]);
        },
        reject: (error) => {
          signal?.removeEventListener("abort", onAbort);
          reject(error);
        },
      });
      signal?.addEventListener("abort", onAbort, { once: true });
      this.channel.write(`${JSON.stringify({ id, method, params })}\n`);
    });
  }

  private handleResponseLine(line: string): void {
    if (line.trim() === "") {
      return;
    }
    let message: { id?: unknown; result?: unknown; error?: unknown };
    try {
      message = JSON.parse(line);
    } catch {
      this.log(`agent on ${this.label} wrote a stdout line that is not JSON, which was ignored: ${truncate(line, 200)}`);
      return;
    }

    const id = typeof message === "object" && message !== null ? message.id : undefined;
    const call = typeof id === "number" ? this.pending.get(id) : undefined;
    if (call === undefined) {
      // A response to a cancelled call lands here too, so this is not an error.
      this.log(`agent on ${this.label} sent a response for unknown request id ${String(id)}, which was ignored`);
      return;
    }
    this.pending.delete(id as number);

    if ("error" in message) {
      if (isErrorBody(message.error)) {
        call.reject(new AgentError(this.label, call.method, message.error));
      } else {
        call.reject(
          new AgentUnavailableError(
            this.label,
            call.method,
            `cell ${this.label}: ${call.method} failed: the agent sent a malformed error: ${truncate(JSON.stringify(message.error), 200)}`,
          ),
        );
      }
      return;
    }
    if (!("result" in message)) {
      call.reject(
        new AgentUnavailableError(
          this.label,
          call.method,
          `cell ${this.label}: ${call.method} failed: the agent's response has neither result nor error: ${truncate(line, 200)}`,
        ),
      );
      return;
    }
    call.resolve(message.result);
  }

  private handleLogLine(line: string): void {
    const text = truncate(line, MAX_LOG_LINE_CHARS);
    this.stderrTail.push(text);
    if (this.stderrTail.length > STDERR_TAIL_LINES) {
      this.stderrTail.shift();
    }
    this.log(`agent on ${this.label}: ${text}`);
  }

  private handleClose(): void {
    const status = this.exitStatus ?? "stopped without an exit status (the SSH connection may have dropped)";
    const lastLine = this.stderrTail.at(-1);
    const details = lastLine !== undefined ? `; its last stderr line: ${lastLine}` : "";
    this.closedError = new AgentUnavailableError(this.label, "run agent", `the agent on cell ${this.label} ${status}${details}`);

    for (const [, call] of this.pending) {
      call.reject(
        new AgentUnavailableError(this.label, call.method, `cell ${this.label}: ${call.method} failed: ${this.closedError.message}`, {
          cause: this.closedError,
        }),
      );
    }
    this.pending.clear();

    for (const listener of this.closeListeners) {
      listener(this.closedError);
    }
    this.closeListeners.clear();
  }

  /**
   * Ends the agent's stdin so that it exits, and waits for its channel to
   * close. After CLOSE_TIMEOUT_MS it closes the channel and resolves without
   * waiting further, because sshd keeps the channel until the process exits.
   */
  close(): Promise<void> {
    if (this.closedError !== undefined) {
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.log(`agent on ${this.label} did not exit within ${CLOSE_TIMEOUT_MS / 1000} s after its stdin closed, so the client closes its channel`);
        this.channel.close();
        resolve();
      }, CLOSE_TIMEOUT_MS);
      timer.unref();
      this.onClose(() => {
        clearTimeout(timer);
        resolve();
      });
      this.channel.end();
    });
  }
}
