/**
 * The retry policy for dialling a cell: which failures are worth another
 * attempt and how long to wait before it. A cell that is booting refuses or
 * drops connections for a while, but a rejected key or host key will not fix
 * itself, so those fail at once.
 */
import { abortError, CellDialError, CellTransportError, HostKeyMismatchError } from "./errors";

export interface BackoffPolicy {
  /** Delay after the first failed attempt, in milliseconds. */
  initialDelayMs: number;
  /** Upper bound of the doubled delay before jitter, in milliseconds. */
  maxDelayMs: number;
  /** Random extra delay as a fraction of the delay, so that many dialers do not retry in step. */
  jitterRatio: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = { initialDelayMs: 1000, maxDelayMs: 15000, jitterRatio: 0.2 };

/**
 * Returns the delay in milliseconds after failed attempt number
 * `failedAttempt` (1-based): 1 s, 2 s, 4 s and so on up to 15 s, plus up to
 * 20% jitter. `random` returns a value in [0, 1).
 */
export function backoffDelayMs(
  failedAttempt: number,
  random: () => number = Math.random,
  policy: BackoffPolicy = DEFAULT_BACKOFF,
): number {
  const doubled = policy.initialDelayMs * 2 ** Math.max(0, failedAttempt - 1);
  const capped = Math.min(policy.maxDelayMs, doubled);
  return Math.round(capped * (1 + policy.jitterRatio * random()));
}

/** Socket error codes that a cell that is booting, rebooting or briefly unreachable produces. */
const RETRYABLE_CODES = new Set([
  "ECONNREFUSED",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ECONNRESET",
  "EPIPE",
  // A temporary DNS failure. ENOTFOUND, for a name that does not exist, is not retried.
  "EAI_AGAIN",
]);

/** ssh2's reason code when the bastion could not connect to the cell (RFC 4254, section 5.1). */
const OPEN_CONNECT_FAILED = 2;

export interface DialFailure {
  retryable: boolean;
  /** A short cause for the log, such as "ECONNREFUSED" or "handshake timed out". */
  reason: string;
}

/** An error from the bastion hop of one attempt. Its message names the bastion. */
export class BastionHopError extends Error {
  readonly bastion: string;

  constructor(bastion: string, cause: unknown) {
    super(`bastion ${bastion}: ${(cause as Error)?.message ?? String(cause)}`, { cause });
    this.name = "BastionHopError";
    this.bastion = bastion;
  }
}

/** Sorts a dial error into retryable or not, as described in the file header. */
export function classifyDialError(error: unknown): DialFailure {
  if (error instanceof BastionHopError) {
    const inner = classifyDialError(error.cause);
    return { retryable: inner.retryable, reason: `bastion ${error.bastion}: ${inner.reason}` };
  }
  if (error instanceof HostKeyMismatchError || error instanceof CellTransportError) {
    return { retryable: false, reason: error.message };
  }

  const candidate = error as { code?: unknown; level?: unknown; reason?: unknown; message?: unknown };
  const message = typeof candidate?.message === "string" ? candidate.message : String(error);
  const code = typeof candidate?.code === "string" ? candidate.code : undefined;

  if (code !== undefined && RETRYABLE_CODES.has(code)) {
    return { retryable: true, reason: code };
  }
  if (candidate?.level === "client-timeout" && /handshake/i.test(message)) {
    return { retryable: true, reason: "handshake timed out" };
  }
  // sshd drops connections before its banner while it starts or when
  // MaxStartups throttles, which behaves like ECONNRESET.
  if (/Connection lost before handshake/i.test(message)) {
    return { retryable: true, reason: "connection lost before handshake" };
  }
  // The bastion tried to connect to the cell and failed, for example because
  // the cell's sshd is not up yet.
  if (candidate?.reason === OPEN_CONNECT_FAILED) {
    return { retryable: true, reason: `forwarding failed (${message.replace(/^\(SSH\) /, "")})` };
  }
  if (candidate?.level === "client-authentication") {
    return { retryable: false, reason: `authentication failed (${message})` };
  }
  return { retryable: false, reason: code !== undefined ? `${code} (${message})` : message };
}

/** Waits `ms` milliseconds and rejects early when `signal` aborts. It uses setTimeout, so fake timers control it. */
function sleep(ms: number, signal: AbortSignal | undefined, onAbort: () => Error): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(onAbort());
      return;
    }
    const abortListener = (): void => {
      clearTimeout(timer);
      reject(onAbort());
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", abortListener);
      resolve();
    }, ms);
    signal?.addEventListener("abort", abortListener, { once: true });
  });
}

export interface DialRetryOptions {
  /** The cell as "user@host:port", for messages. */
  label: string;
  /** Further attempts after the first, from `dialRetries` in the configuration. */
  retries: number;
  log?: (message: string) => void;
  signal?: AbortSignal;
  random?: () => number;
  policy?: BackoffPolicy;
}

function formatSeconds(ms: number): string {
  const seconds = ms / 1000;
  return Number.isInteger(seconds) ? `${seconds} s` : `${seconds.toFixed(1)} s`;
}

/**
 * Runs `attempt` until it succeeds, fails with a non-retryable error, or
 * 1 + `retries` attempts have failed. Each failed attempt is logged with the
 * delay before the next. The final error is a CellDialError that names the
 * attempt count and keeps the last error as `cause`, except a
 * HostKeyMismatchError or CellTransportError, which is rethrown as it is
 * because it already names the cell and the fix.
 */
export async function dialWithRetry<T>(
  options: DialRetryOptions,
  attempt: (attemptNumber: number) => Promise<T>,
): Promise<T> {
  const total = options.retries + 1;
  const cancelled = (attempts: number): Error =>
    abortError(`dial ${options.label} was cancelled after ${attempts} attempt${attempts === 1 ? "" : "s"}`, options.signal as AbortSignal);

  for (let attemptNumber = 1; ; attemptNumber++) {
    if (options.signal?.aborted) {
      throw cancelled(attemptNumber - 1);
    }

    try {
      return await attempt(attemptNumber);
    } catch (error) {
      if (options.signal?.aborted) {
        throw cancelled(attemptNumber);
      }

      const failure = classifyDialError(error);
      if (!failure.retryable) {
        if (error instanceof CellTransportError) {
          throw error;
        }
        throw new CellDialError(
          options.label,
          attemptNumber,
          `dial ${options.label} failed at attempt ${attemptNumber}/${total} with an error that a retry cannot fix: ${failure.reason}`,
          { cause: error },
        );
      }
      if (attemptNumber >= total) {
        throw new CellDialError(
          options.label,
          attemptNumber,
          `dial ${options.label} failed after ${attemptNumber} attempt${attemptNumber === 1 ? "" : "s"}: ${failure.reason}. Check that the cell is up and that host and port are right`,
          { cause: error },
        );
      }

      const delay = backoffDelayMs(attemptNumber, options.random, options.policy);
      options.log?.(
        `dial ${options.label} attempt ${attemptNumber}/${total} failed: ${failure.reason}; retrying in ${formatSeconds(delay)}`,
      );
      await sleep(delay, options.signal, () => cancelled(attemptNumber));
    }
  }
}
