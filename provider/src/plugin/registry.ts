/**
 * Resource handlers by type token. The server looks a handler up on every
 * request, so handlers registered after the server starts are still served.
 */
import type { ResourceHandler } from "./resource";

const TOKEN_PATTERN = /^cellfleet:[A-Za-z0-9_]+:[A-Za-z][A-Za-z0-9_]*$/;

export class ResourceRegistry {
  private readonly handlers = new Map<string, ResourceHandler>();

  /** Adds a handler. Throws if its token is malformed or already registered. */
  register(handler: ResourceHandler): void {
    if (!TOKEN_PATTERN.test(handler.token)) {
      throw new Error(`resource token ${JSON.stringify(handler.token)} is invalid: use "cellfleet:<module>:<Type>", such as "cellfleet:index:Container"`);
    }
    if (this.handlers.has(handler.token)) {
      throw new Error(`a handler for ${handler.token} is already registered`);
    }
    this.handlers.set(handler.token, handler);
  }

  get(token: string): ResourceHandler | undefined {
    return this.handlers.get(token);
  }

  tokens(): string[] {
    return [...this.handlers.keys()].sort();
  }
}

/** The registry that main.ts serves. */
export const defaultRegistry = new ResourceRegistry();

/** Registers a handler in the default registry. */
export function registerResource(handler: ResourceHandler): void {
  defaultRegistry.register(handler);
}
