/**
 * Errors raised by the SSH transport and the agent client. Each names the
 * cell as "user@host:port" and the step that failed, and keeps the original
 * error, if any, as `cause`, so a message in `pulumi up` output is enough to act on.
 */

/** A failure on one cell at one step, such as "dial" or "upload agent.js". */
export class CellTransportError extends Error {
  /** The cell as "user@host:port". */
  readonly cell: string;
  readonly step: string;

  constructor(cell: string, step: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CellTransportError";
    this.cell = cell;
    this.step = step;
  }
}

/** A dial that failed for good, after `attempts` tries or at a failure that a retry cannot fix. */
export class CellDialError extends CellTransportError {
  readonly attempts: number;

  constructor(cell: string, attempts: number, message: string, options?: { cause?: unknown; step?: string }) {
    super(cell, options?.step ?? "dial", message, options);
    this.name = "CellDialError";
    this.attempts = attempts;
  }
}

/** The cell or the bastion presented a host key that the pin or the known_hosts file does not accept. */
export class HostKeyMismatchError extends CellTransportError {
  /** The type of the presented key, such as "ssh-ed25519". */
  readonly presentedKeyType: string;
  /** The presented key's fingerprint as `ssh-keygen -lf` prints it: "SHA256:" and unpadded base64. */
  readonly presentedFingerprint: string;

  constructor(cell: string, presentedKeyType: string, presentedFingerprint: string, message: string) {
    super(cell, "verify host key", message);
    this.name = "HostKeyMismatchError";
    this.presentedKeyType = presentedKeyType;
    this.presentedFingerprint = presentedFingerprint;
  }
}

/** A command on the cell that exited with a nonzero status or was killed by a signal. */
export class CellCommandError extends CellTransportError {
  readonly command: string;
  readonly code: number | null;
  readonly signal?: string;
  readonly stderr: string;

  constructor(
    cell: string,
    step: string,
    details: { command: string; code: number | null; signal?: string; stderr: string },
  ) {
    const status = details.signal !== undefined ? `was killed by ${details.signal}` : `exited with code ${details.code}`;
    const stderr = details.stderr.trim();
    super(cell, step, `cell ${cell}: ${step} failed: \`${details.command}\` ${status}${stderr ? `: ${stderr}` : ""}`);
    this.name = "CellCommandError";
    this.command = details.command;
    this.code = details.code;
    this.signal = details.signal;
    this.stderr = details.stderr;
  }
}

/** Creates the error that an aborted operation rejects with, named "AbortError" as in Node's own APIs. */
export function abortError(message: string, signal: AbortSignal): Error {
  const error = new Error(message, { cause: signal.reason });
  error.name = "AbortError";
  return error;
}
