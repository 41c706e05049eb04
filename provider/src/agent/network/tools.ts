/**
 * Runs the iproute2, procps, util-linux and conntrack tools that set up
 * container networking, behind a small interface so unit tests can check the
 * exact argv and input without touching the cell.
 */
import { spawn } from "node:child_process";

export interface CommandResult {
  /** Exit code; null when a signal ended the process. */
  code: number | null;
  stdout: string;
  stderr: string;
}

export type Runner = (argv: string[], input?: string) => Promise<CommandResult>;

export const spawnRunner: Runner = (argv, input) =>
  new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { stdio: ["pipe", "pipe", "pipe"], env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" } });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on("data", (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout: Buffer.concat(stdout).toString("utf8"), stderr: Buffer.concat(stderr).toString("utf8") }));
    // A child that exits before reading its input reports the failure through its exit code.
    child.stdin.on("error", () => undefined);
    child.stdin.end(input ?? "");
  });

export type CommandErrorKind = "MISSING_BINARY" | "FAILED";

/** A tool that could not run or exited non-zero, with its argv and stderr. */
export class CommandError extends Error {
  constructor(
    readonly kind: CommandErrorKind,
    readonly argv: string[],
    readonly exitCode: number | null,
    readonly stderr: string,
    options?: { cause?: unknown },
  ) {
    const command = argv.join(" ");
    super(
      kind === "MISSING_BINARY"
        ? `${argv[0]} was not found on the cell: install it (iproute2, procps, util-linux and conntrack are needed for container networking)`
        : `\`${command}\` failed with exit code ${exitCode}: ${stderr.trim() || "no error output"}`,
      options,
    );
  }
}

/** Runs a command and returns its stdout; throws CommandError when it cannot start or exits non-zero. */
export async function runChecked(runner: Runner, argv: string[], input?: string): Promise<string> {
  let result: CommandResult;
  try {
    result = await runner(argv, input);
  } catch (error) {
    const kind = (error as NodeJS.ErrnoException).code === "ENOENT" ? "MISSING_BINARY" : "FAILED";
    throw new CommandError(kind, argv, null, (error as Error).message, { cause: error });
  }
  if (result.code !== 0) throw new CommandError("FAILED", argv, result.code, result.stderr);
  return result.stdout;
}

/** Prefixes argv so it runs in the network namespace of the process pid; every other namespace stays the agent's. */
export function inNetworkNamespace(pid: number, argv: string[]): string[] {
  return ["nsenter", `--net=/proc/${pid}/ns/net`, "--", ...argv];
}
