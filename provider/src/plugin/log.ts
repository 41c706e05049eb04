/**
 * The plugin's one logger. Messages go to the Pulumi engine through its Log
 * RPC when the engine address is known, so they appear under the resource in
 * the CLI, and to stderr otherwise. Stdout is never written: the engine reads
 * the plugin's port from its first line.
 */
import * as grpc from "@grpc/grpc-js";
import { EngineClient } from "@pulumi/pulumi/proto/engine_grpc_pb";
import { LogRequest, LogSeverity } from "@pulumi/pulumi/proto/engine_pb";

import type { Logger } from "./resource";

export type LogLevel = "debug" | "info" | "warn" | "error";

const LEVEL_RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

const ENGINE_SEVERITY: Record<LogLevel, LogSeverity> = {
  debug: LogSeverity.DEBUG,
  info: LogSeverity.INFO,
  warn: LogSeverity.WARNING,
  error: LogSeverity.ERROR,
};

/** After this many failed Log calls the logger stops using the engine and writes to stderr only. */
const MAX_ENGINE_FAILURES = 5;

/** Lines of a multi-line secret shorter than this are not redacted on their own, such as PEM armour lines' dashes. */
const MIN_SECRET_LINE_LENGTH = 16;

export const REDACTED = "[secret]";

/**
 * Replaces secret strings in text with "[secret]". Besides each secret as
 * is, it also matches the secret's JSON-escaped form and each long line of a
 * multi-line secret such as a private key. Numbers and booleans inside
 * secrets are not redacted, because their text matches too much else.
 */
export class Redactor {
  private readonly patterns: string[];

  constructor(secrets: Iterable<string> = []) {
    const patterns = new Set<string>();
    for (const secret of secrets) {
      if (secret === "") continue;
      patterns.add(secret);
      const escaped = JSON.stringify(secret).slice(1, -1);
      if (escaped !== secret) patterns.add(escaped);
      if (secret.includes("\n")) {
        for (const line of secret.split(/\r?\n/)) {
          const trimmed = line.trim();
          if (trimmed.length >= MIN_SECRET_LINE_LENGTH) patterns.add(trimmed);
        }
      }
    }
    // Longest first, so a secret that contains another is replaced whole.
    this.patterns = [...patterns].sort((a, b) => b.length - a.length);
  }

  /** Returns a redactor that also hides `secrets`. */
  with(secrets: Iterable<string>): Redactor {
    return new Redactor([...this.patterns, ...secrets]);
  }

  redact(text: string): string {
    let result = text;
    for (const pattern of this.patterns) {
      if (result.includes(pattern)) result = result.split(pattern).join(REDACTED);
    }
    return result;
  }
}

/** Parses CELLFLEET_LOG_LEVEL; unset or invalid means "info". */
export function logLevelFromEnvironment(value: string | undefined): LogLevel {
  const level = value?.trim().toLowerCase();
  return level === "debug" || level === "info" || level === "warn" || level === "error" ? level : "info";
}

/** True for 127.0.0.0/8, ::1 and localhost, with or without a port. */
export function isLoopbackAddress(address: string): boolean {
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(address);
  const host = bracketed ? bracketed[1] : address.replace(/:\d+$/, "");
  return host === "localhost" || host === "::1" || /^127(\.\d{1,3}){3}$/.test(host);
}

export interface PluginLoggerOptions {
  /** Minimum level written to stderr. The engine gets every level and filters by its own verbosity. */
  stderrLevel?: LogLevel;
  stderr?: NodeJS.WritableStream;
}

export class PluginLogger {
  private readonly stderrLevel: LogLevel;
  private readonly stderr: NodeJS.WritableStream;
  private engine: EngineClient | undefined;
  private engineFailures = 0;
  private redactor = new Redactor();

  constructor(options: PluginLoggerOptions = {}) {
    this.stderrLevel = options.stderrLevel ?? "info";
    this.stderr = options.stderr ?? process.stderr;
  }

  /**
   * Sends further messages to the engine at `address`. Only loopback
   * addresses are used, because the engine always listens on one and log
   * messages must not leave the machine.
   */
  connectEngine(address: string): void {
    if (this.engine !== undefined || address === "") return;
    if (!isLoopbackAddress(address)) {
      this.write("warn", `engine address ${address} is not a loopback address, so log messages go to stderr only`);
      return;
    }
    this.engine = new EngineClient(address, grpc.credentials.createInsecure());
  }

  get engineConnected(): boolean {
    return this.engine !== undefined;
  }

  /** Sets the secrets hidden from every message, such as the provider's private key. */
  setSecrets(secrets: Iterable<string>): void {
    this.redactor = new Redactor(secrets);
  }

  get baseRedactor(): Redactor {
    return this.redactor;
  }

  debug(message: string, urn?: string): void {
    this.write("debug", message, urn);
  }

  info(message: string, urn?: string): void {
    this.write("info", message, urn);
  }

  warn(message: string, urn?: string): void {
    this.write("warn", message, urn);
  }

  error(message: string, urn?: string): void {
    this.write("error", message, urn);
  }

  /** Returns a Logger for one operation that tags messages with the URN and hides the operation's secrets too. */
  forOperation(urn: string, redactor: Redactor): Logger {
    return {
      debug: (message) => this.write("debug", message, urn, redactor),
      info: (message) => this.write("info", message, urn, redactor),
      warn: (message) => this.write("warn", message, urn, redactor),
      error: (message) => this.write("error", message, urn, redactor),
    };
  }

  close(): void {
    this.engine?.close();
    this.engine = undefined;
  }

  private write(level: LogLevel, message: string, urn = "", redactor: Redactor = this.redactor): void {
    const text = this.redactor.redact(redactor.redact(message));
    if (this.engine !== undefined) {
      this.sendToEngine(this.engine, level, text, urn);
      return;
    }
    this.writeToStderr(level, text, urn);
  }

  private sendToEngine(engine: EngineClient, level: LogLevel, text: string, urn: string): void {
    const request = new LogRequest();
    request.setSeverity(ENGINE_SEVERITY[level]);
    request.setMessage(text);
    request.setUrn(urn);
    engine.log(request, (error) => {
      if (error === null) return;
      this.engineFailures += 1;
      this.writeToStderr(level, text, urn);
      if (this.engineFailures === MAX_ENGINE_FAILURES && this.engine === engine) {
        this.writeToStderr("warn", `engine Log RPC failed ${MAX_ENGINE_FAILURES} times (last: ${error.message}); logging to stderr from now on`, "");
        this.close();
      }
    });
  }

  private writeToStderr(level: LogLevel, text: string, urn: string): void {
    if (LEVEL_RANK[level] < LEVEL_RANK[this.stderrLevel]) return;
    const where = urn === "" ? "" : ` (${urn})`;
    this.stderr.write(`cellfleet ${level}: ${text}${where}\n`);
  }
}
