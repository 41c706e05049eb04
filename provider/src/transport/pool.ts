/**
 * One SSH connection and one agent per cell per provider process, shared by
 * every resource of a run. Concurrent callers for the same cell wait for the
 * same dial, and a session whose connection or agent closes is dropped so
 * that the next caller dials again.
 */
import { loadAgentBundle, type AgentBundle } from "./agent-bundle";
import { AgentClient } from "./agent-client";
import { cellLabel, type CellConfig } from "./cell-config";
import { abortError } from "./errors";
import { CellConnection } from "./ssh";

export interface CellSession {
  connection: CellConnection;
  agent: AgentClient;
}

export interface CellSessionOptions {
  /**
   * Receives the session's log. The first caller for a cell sets it for the
   * session's life, because later callers share that session.
   */
  log?: (message: string) => void;
  /** Stops this caller's wait. The shared dial goes on for the other callers. */
  signal?: AbortSignal;
  /** The agent bundle. loadAgentBundle() reads the default directory when not given. */
  bundle?: AgentBundle;
  /** Parent of the agent version directories on the cell. CELL_PATHS.agents when not given. */
  agentRoot?: string;
}

const sessions = new Map<string, Promise<CellSession>>();
let defaultBundle: AgentBundle | undefined;

/** Returns the pool key: the cell and, if any, the bastion it is reached through. */
export function cellSessionKey(config: CellConfig): string {
  const cell = cellLabel(config);
  return config.bastion !== undefined ? `${cell} via ${cellLabel(config.bastion)}` : cell;
}

/** Creates a session. `drop` removes it from the pool when its connection or agent closes. */
async function createSession(config: CellConfig, options: CellSessionOptions, drop: () => void): Promise<CellSession> {
  const log = options.log ?? (() => {});
  if (options.bundle === undefined && defaultBundle === undefined) {
    defaultBundle = loadAgentBundle();
  }
  const bundle = options.bundle ?? (defaultBundle as AgentBundle);

  const connection = await CellConnection.open(config, { log });
  let agent: AgentClient;
  try {
    agent = await AgentClient.start(connection, bundle, { log, agentRoot: options.agentRoot });
  } catch (error) {
    await connection.close();
    throw error;
  }

  const session: CellSession = { connection, agent };
  connection.onClose((error) => {
    drop();
    log(`connection to ${connection.label} closed${error ? ` after ${error.message}` : ""}; the next request dials again`);
  });
  // A session without a running agent is useless, and a fresh dial also
  // restarts the agent, so an agent exit closes the connection too.
  agent.onClose((error) => {
    drop();
    if (!connection.isClosed) {
      log(`${error.message}; closing the connection to ${connection.label}`);
      void connection.close();
    }
  });
  return session;
}

function waitWithSignal<T>(promise: Promise<T>, signal: AbortSignal | undefined, label: string): Promise<T> {
  if (signal === undefined) {
    return promise;
  }
  if (signal.aborted) {
    return Promise.reject(abortError(`opening a session to ${label} was cancelled`, signal));
  }
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(abortError(`opening a session to ${label} was cancelled`, signal));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}

/**
 * Returns the shared session for the cell, dialling it and starting its
 * agent on first use. A failed creation is not cached, so the next call
 * tries again.
 */
export function getCellSession(config: CellConfig, options: CellSessionOptions = {}): Promise<CellSession> {
  const key = cellSessionKey(config);
  let session = sessions.get(key);
  if (session === undefined) {
    // Removes only this session, because a later one for the same key may
    // already have replaced it.
    const drop = (): void => {
      if (sessions.get(key) === created) {
        sessions.delete(key);
      }
    };
    const created = createSession(config, options, drop);
    created.catch(drop);
    sessions.set(key, created);
    session = created;
  }
  return waitWithSignal(session, options.signal, key);
}

/** Stops every agent and closes every connection in the pool, for the end of a run. */
export async function closeAllCellSessions(): Promise<void> {
  const pending = [...sessions.values()];
  sessions.clear();
  const results = await Promise.allSettled(pending);
  await Promise.allSettled(
    results.map(async (result) => {
      if (result.status !== "fulfilled") {
        return;
      }
      await result.value.agent.close();
      await result.value.connection.close();
    }),
  );
}
