/**
 * The contract between the gRPC server and each resource type. The server
 * turns wire values into PropertyMaps (secrets and unknowns kept as markers)
 * and calls these methods; each resource lives in resources/<name>/.
 */

/** Marks a value that must stay secret in state, outputs and logs. */
export class Secret<T = PropertyValue> {
  constructor(readonly value: T) {}
}

/** A value not known until apply time; only ever seen during preview. */
export const UNKNOWN: unique symbol = Symbol("cellfleet.unknown");

export type PropertyValue =
  | null
  | boolean
  | number
  | string
  | PropertyValue[]
  | { [key: string]: PropertyValue }
  | Secret
  | typeof UNKNOWN;

export type PropertyMap = Record<string, PropertyValue>;

export interface CheckFailure {
  property: string;
  reason: string;
}

export type DiffKind = "add" | "add-replace" | "delete" | "delete-replace" | "update" | "update-replace";

export interface DiffResult {
  changes: boolean;
  /** Top-level property names whose change forces a replacement. */
  replaces: string[];
  /** Keyed by property path, such as "env.TOKEN" or "command[0]". */
  detailedDiff: Record<string, { kind: DiffKind; inputDiff: boolean }>;
  deleteBeforeReplace: boolean;
}

export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** The context a handler gets besides its inputs. */
export interface OperationContext {
  urn: string;
  /** Set when the engine sent Cancel; long operations should stop at the next safe point. */
  signal: AbortSignal;
  log: Logger;
  /**
   * True during a preview in which some provider configuration value is not
   * known yet, so the handler's config getter returns undefined: predict
   * outputs without the cell. Absent or false otherwise.
   */
  configUnknown?: boolean;
}

/** The error that create and update throw when the cell has a resource that is not fully set up. */
export class PartialFailure extends Error {
  constructor(
    message: string,
    readonly id: string,
    readonly outputs: PropertyMap,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface ResourceHandler {
  readonly token: string;

  /** Validates and normalises inputs; failures are shown by `pulumi preview`. */
  check(olds: PropertyMap, news: PropertyMap, context: OperationContext): Promise<{ inputs: PropertyMap; failures: CheckFailure[] }>;

  /** Compares the last outputs with new inputs. Must not touch the cell. */
  diff(id: string, olds: PropertyMap, news: PropertyMap, context: OperationContext): Promise<DiffResult>;

  /**
   * Creates the resource, all or nothing. With preview set it only predicts
   * outputs (unknowns allowed) and must not touch the cell.
   */
  create(inputs: PropertyMap, preview: boolean, context: OperationContext): Promise<{ id: string; outputs: PropertyMap }>;

  /**
   * Reads what is really there. Returns null when the resource is gone,
   * which the engine shows as a deletion on refresh.
   */
  read(
    id: string,
    state: PropertyMap,
    inputs: PropertyMap,
    context: OperationContext,
  ): Promise<{ id: string; outputs: PropertyMap; inputs: PropertyMap } | null>;

  update(id: string, olds: PropertyMap, news: PropertyMap, preview: boolean, context: OperationContext): Promise<{ outputs: PropertyMap }>;

  /** Deletes the resource. Throwing means it still exists. Deleting a missing resource succeeds. */
  delete(id: string, outputs: PropertyMap, context: OperationContext): Promise<void>;
}
