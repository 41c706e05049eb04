/**
 * Cell-wide locks. Several agents can run on one cell at once (one per SSH
 * connection, so one per concurrent `pulumi up`), and shared state such as the
 * image store must change under a lock that all of them see. The lock is a
 * directory created with mkdir(2), which is atomic. Its owner file contains
 * the agent's pid, so a lock left by a crashed agent is taken over.
 */
import { promises as fs } from "node:fs";
import path from "node:path";

import { CELL_PATHS } from "../common/protocol";

const POLL_MS = 25;
const inProcess = new Map<string, Promise<void>>();

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

async function acquire(directory: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await fs.mkdir(directory);
      await fs.writeFile(path.join(directory, "owner"), String(process.pid));
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
    const owner = Number(await fs.readFile(path.join(directory, "owner"), "utf8").catch(() => "0"));
    // An owner file not yet written belongs to an agent between its mkdir and its write; wait for it.
    if (owner > 0 && owner !== process.pid && !processAlive(owner)) {
      await fs.rm(directory, { recursive: true, force: true });
      continue;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for lock ${directory} held by pid ${owner || "unknown"}`);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** Runs action while holding the named lock, in this process and across agents on the cell. */
export async function withLock<T>(name: string, action: () => Promise<T>, timeoutMs = 120_000): Promise<T> {
  const directory = path.join(CELL_PATHS.run, "locks", `${name}.lock`);
  await fs.mkdir(path.dirname(directory), { recursive: true, mode: 0o700 });

  // Requests inside one agent queue on a promise chain first, so they never poll against each other.
  const previous = inProcess.get(directory) ?? Promise.resolve();
  let release!: () => void;
  const current = new Promise<void>((resolve) => (release = resolve));
  const chained = previous.then(() => current);
  inProcess.set(directory, chained);
  await previous;
  try {
    await acquire(directory, timeoutMs);
    try {
      return await action();
    } finally {
      await fs.rm(directory, { recursive: true, force: true });
    }
  } finally {
    release();
    if (inProcess.get(directory) === chained) inProcess.delete(directory);
  }
}
