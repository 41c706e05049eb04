import type { AgentErrorCode } from "../common/protocol";

/** A failure the agent reports to the provider: a stable code and the step that failed. */
export class AgentFailure extends Error {
  constructor(
    readonly code: AgentErrorCode,
    readonly step: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Runs one named step and wraps any failure with that step's name. */
export async function step<T>(name: string, code: AgentErrorCode, action: () => Promise<T> | T): Promise<T> {
  try {
    return await action();
  } catch (error) {
    if (error instanceof AgentFailure) throw error;
    throw new AgentFailure(code, name, (error as Error).message ?? String(error), { cause: error });
  }
}
