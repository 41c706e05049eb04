/**
 * The agent's RPC loop: newline-delimited JSON requests on stdin, responses
 * on stdout, matched by id, served concurrently. Logs go to stderr, which
 * the provider forwards to the Pulumi engine.
 */
import readline from "node:readline";

import type { AgentErrorBody, AgentMethod, AgentRequest, AgentResponse } from "../common/protocol";
import { createContainer, deleteContainer, inspectContainer, listContainers, updateContainer } from "./container/engine";
import { hasImage, importImage } from "./container/image";
import { AgentFailure } from "./errors";
import { networkRuleHandlers } from "./network/rules-engine";
import { cellSettings, ensureLayout, probeCell } from "./settings";

type Handler = (params: never) => Promise<unknown>;

const HANDLERS: Partial<Record<AgentMethod, Handler>> = {
  probe: () => probeCell(),
  "image.has": async (params: { digest: string }) => ({ present: await hasImage(params.digest) }),
  "image.import": async (params: { digest: string; source?: string }) => {
    await importImage(params.digest, params.source);
    return { digest: params.digest };
  },
  "container.create": createContainer,
  "container.inspect": async (params: { id: string }) => inspectContainer(params.id),
  "container.update": updateContainer,
  "container.delete": async (params: { id: string }) => deleteContainer(params.id),
  "container.list": () => listContainers(),
  ...networkRuleHandlers,
};

function log(message: string): void {
  process.stderr.write(`${new Date().toISOString()} ${message}\n`);
}

async function errorBody(error: unknown, method: string): Promise<AgentErrorBody> {
  const cell = await cellSettings().then((settings) => settings.name).catch(() => "unknown cell");
  if (error instanceof AgentFailure) return { code: error.code, step: error.step, message: error.message, cell };
  return { code: "INTERNAL", step: method, message: (error as Error)?.message ?? String(error), cell };
}

async function handle(line: string): Promise<AgentResponse | undefined> {
  let request: AgentRequest;
  try {
    request = JSON.parse(line) as AgentRequest;
  } catch {
    log(`ignored a request line that is not JSON (${line.length} bytes)`);
    return undefined;
  }
  const handler = HANDLERS[request.method];
  if (!handler) {
    return { id: request.id, error: await errorBody(new AgentFailure("INVALID_REQUEST", "dispatch", `unknown method ${JSON.stringify(request.method)}`), "dispatch") };
  }
  const started = Date.now();
  try {
    const result = await handler(request.params as never);
    log(`${request.method} #${request.id} done in ${Date.now() - started} ms`);
    return { id: request.id, result: result ?? null };
  } catch (error) {
    const body = await errorBody(error, request.method);
    log(`${request.method} #${request.id} failed at ${body.step}: ${body.message}`);
    return { id: request.id, error: body };
  }
}

/** Serves requests until stdin closes, then waits for requests in flight. */
export async function serve(): Promise<void> {
  if (process.getuid?.() !== 0) {
    process.stderr.write("cellfleet agent: must run as root (use sudo on cells where the login user is not root)\n");
    process.exit(1);
  }
  await ensureLayout();
  const inFlight = new Set<Promise<void>>();
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const task = handle(line).then((response) => {
      if (response) process.stdout.write(`${JSON.stringify(response)}\n`);
    });
    inFlight.add(task);
    void task.finally(() => inFlight.delete(task));
  }
  await Promise.all(inFlight);
}
