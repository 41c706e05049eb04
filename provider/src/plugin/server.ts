/**
 * The pulumirpc.ResourceProvider gRPC service. It decodes requests into
 * PropertyMaps, calls the ResourceHandler registered for the resource type
 * and encodes the response, adding what every handler needs: the provider
 * configuration, cancellation, secret handling and error translation.
 */
import * as grpc from "@grpc/grpc-js";
import { PluginAttach, PluginInfo } from "@pulumi/pulumi/proto/plugin_pb";
import { IResourceProviderServer, ResourceProviderService } from "@pulumi/pulumi/proto/provider_grpc_pb";
import * as rpc from "@pulumi/pulumi/proto/provider_pb";
import { Empty } from "google-protobuf/google/protobuf/empty_pb";
import { Struct } from "google-protobuf/google/protobuf/struct_pb";

import type { CellConfig } from "../transport/cell-config";
import { changedAddressKeys, checkProviderConfig, diffProviderConfig, inputsFromVariables, parseProviderConfig } from "./config";
import { describeError, initFailedError, RpcError } from "./errors";
import { PluginLogger, Redactor } from "./log";
import { defaultRegistry, ResourceRegistry } from "./registry";
import { DiffKind, DiffResult, OperationContext, PartialFailure, PropertyMap, ResourceHandler } from "./resource";
import { PACKAGE_VERSION, schemaJson } from "./schema";
import { annotateSecrets, collectSecretStrings, containsUnknowns, decodeStruct, encodeStruct, WireError } from "./wire";

/** The same limit that @pulumi/pulumi 3.276.0 sets on its gRPC channels (runtime/settings.js). */
const MAX_MESSAGE_BYTES = 400 * 1024 * 1024;

/** How long close() waits for in-flight calls before it drops them. */
const SHUTDOWN_GRACE_MS = 5000;

const DIFF_KINDS: Record<DiffKind, rpc.PropertyDiff.Kind> = {
  add: rpc.PropertyDiff.Kind.ADD,
  "add-replace": rpc.PropertyDiff.Kind.ADD_REPLACE,
  delete: rpc.PropertyDiff.Kind.DELETE,
  "delete-replace": rpc.PropertyDiff.Kind.DELETE_REPLACE,
  update: rpc.PropertyDiff.Kind.UPDATE,
  "update-replace": rpc.PropertyDiff.Kind.UPDATE_REPLACE,
};

type Operation = "check" | "diff" | "create" | "read" | "update" | "delete";

/** Whether Configure has run, and with what. "unknown" happens only in previews. */
export type ConfigState = "unconfigured" | "unknown" | "known";

export interface ProviderServerOptions {
  registry?: ResourceRegistry;
  logger?: PluginLogger;
  version?: string;
}

/** Returns the type token of a URN: "cellfleet:index:Container" for "urn:pulumi:dev::proj::parent$cellfleet:index:Container::web". */
export function typeFromUrn(urn: string): string {
  const qualifiedType = urn.split("::")[2] ?? "";
  return qualifiedType.split("$").pop() ?? "";
}

/** Decodes request properties; a value that cannot be decoded is the caller's error and names the resource. */
function decodeFor(operation: Operation | "configure", urn: string, struct: Struct | undefined): PropertyMap {
  try {
    return decodeStruct(struct);
  } catch (error) {
    if (!(error instanceof WireError)) throw error;
    const subject = urn === "" ? "the provider" : urn;
    throw new RpcError(grpc.status.INVALID_ARGUMENT, `cannot ${operation} ${subject}: ${error.message}`);
  }
}

function emptyStruct(): Struct {
  return new Struct();
}

export class ProviderServer {
  readonly registry: ResourceRegistry;
  readonly logger: PluginLogger;
  private readonly version: string;
  private readonly server: grpc.Server;
  private config: CellConfig | undefined;
  private configState: ConfigState = "unconfigured";
  /** Shared by every operation. Once Cancel aborts it, later operations start already cancelled, as the engine is shutting down. */
  private readonly cancellation = new AbortController();
  private inFlight = 0;

  constructor(options: ProviderServerOptions = {}) {
    this.registry = options.registry ?? defaultRegistry;
    this.logger = options.logger ?? new PluginLogger();
    this.version = options.version ?? PACKAGE_VERSION;
    this.server = new grpc.Server({
      "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
      "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    });
    this.server.addService(ResourceProviderService, this.implementation());
  }

  /** Returns the configuration from Configure, or undefined before Configure or while it is unknown. */
  readonly getConfig = (): CellConfig | undefined => this.config;

  get configurationState(): ConfigState {
    return this.configState;
  }

  /** Binds to 127.0.0.1 on a free port and returns the port. */
  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, port) => {
        if (error) reject(error);
        else resolve(port);
      });
    });
  }

  /** Aborts in-flight operations. */
  cancel(): void {
    if (!this.cancellation.signal.aborted) {
      // The engine also sends Cancel when it shuts a plugin down after a normal run (seen with Pulumi 3.276.0), so an
      // idle cancel is only debug.
      const message = `cancellation requested; ${this.inFlight} operation(s) in flight`;
      if (this.inFlight > 0) this.logger.warn(message);
      else this.logger.debug(message);
      this.cancellation.abort(new Error("the Pulumi engine cancelled the operation"));
    }
  }

  /**
   * Waits up to 5 seconds for in-flight calls, then drops every connection
   * and closes the engine log connection. grpc-js's tryShutdown is not used:
   * it waits for clients to disconnect, and the engine keeps its connection
   * open until the plugin exits, so the two would wait on each other.
   */
  async close(): Promise<void> {
    const deadline = Date.now() + SHUTDOWN_GRACE_MS;
    while (this.inFlight > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    this.server.forceShutdown();
    this.logger.close();
  }

  // -------------------------------------------------------------------------
  // gRPC plumbing

  private implementation(): IResourceProviderServer {
    const unimplemented = (name: string, detail: string) =>
      this.unary(name, async () => {
        throw new RpcError(grpc.status.UNIMPLEMENTED, detail);
      });
    return {
      handshake: this.unary("Handshake", (request: rpc.ProviderHandshakeRequest) => this.handshake(request)),
      parameterize: unimplemented("Parameterize", "cellfleet does not take parameters"),
      getSchema: this.unary("GetSchema", async () => new rpc.GetSchemaResponse().setSchema(schemaJson())),
      checkConfig: this.unary("CheckConfig", (request: rpc.CheckRequest) => this.checkConfig(request)),
      diffConfig: this.unary("DiffConfig", (request: rpc.DiffRequest) => this.diffConfig(request)),
      configure: this.unary("Configure", (request: rpc.ConfigureRequest) => this.configure(request)),
      invoke: this.unary("Invoke", async (request: rpc.InvokeRequest) => {
        throw new RpcError(grpc.status.UNIMPLEMENTED, `cellfleet has no functions, so ${request.getTok()} cannot be invoked`);
      }),
      call: unimplemented("Call", "cellfleet has no resource methods"),
      check: this.unary("Check", (request: rpc.CheckRequest) => this.check(request)),
      diff: this.unary("Diff", (request: rpc.DiffRequest) => this.diff(request)),
      create: this.unary("Create", (request: rpc.CreateRequest) => this.create(request)),
      read: this.unary("Read", (request: rpc.ReadRequest) => this.read(request)),
      list: (call: grpc.ServerWritableStream<rpc.ListRequest, rpc.ListResponse>) => {
        call.emit("error", new RpcError(grpc.status.UNIMPLEMENTED, "cellfleet cannot list resources").toStatus());
      },
      update: this.unary("Update", (request: rpc.UpdateRequest) => this.update(request)),
      delete: this.unary("Delete", (request: rpc.DeleteRequest) => this.delete(request)),
      construct: unimplemented("Construct", "cellfleet has no component resources"),
      cancel: this.unary("Cancel", async () => {
        this.cancel();
        return new Empty();
      }),
      getPluginInfo: this.unary("GetPluginInfo", async () => new PluginInfo().setVersion(this.version)),
      attach: this.unary("Attach", async (request: PluginAttach) => {
        this.logger.connectEngine(request.getAddress());
        return new Empty();
      }),
      getMapping: this.unary("GetMapping", async () => new rpc.GetMappingResponse()),
      getMappings: this.unary("GetMappings", async () => new rpc.GetMappingsResponse()),
    };
  }

  /** Adapts an async method to a unary call; errors other than RpcError have already been translated by the method. */
  private unary<Request, Response>(name: string, body: (request: Request) => Promise<Response>): grpc.handleUnaryCall<Request, Response> {
    return (call, callback) => {
      body(call.request).then(
        (response) => callback(null, response),
        (error: unknown) => {
          if (error instanceof RpcError) {
            callback(error.toStatus());
            return;
          }
          // Only a bug in the plugin gets here, and its message may contain anything, so it is redacted.
          const message = this.logger.baseRedactor.redact(`${name} failed: ${describeError(error)}`);
          this.logger.error(message);
          callback(new RpcError(grpc.status.INTERNAL, message).toStatus());
        },
      );
    };
  }

  // -------------------------------------------------------------------------
  // Provider configuration

  private async handshake(request: rpc.ProviderHandshakeRequest): Promise<rpc.ProviderHandshakeResponse> {
    this.logger.connectEngine(request.getEngineAddress());
    return new rpc.ProviderHandshakeResponse().setAcceptSecrets(true).setAcceptResources(true).setAcceptOutputs(false);
  }

  private async checkConfig(request: rpc.CheckRequest): Promise<rpc.CheckResponse> {
    const { inputs, failures } = checkProviderConfig(decodeFor("configure", "", request.getNews()));
    const redactor = this.logger.baseRedactor.with(collectSecretStrings(inputs));
    const response = new rpc.CheckResponse().setInputs(encodeStruct(inputs));
    response.setFailuresList(failures.map((failure) => new rpc.CheckFailure().setProperty(failure.property).setReason(redactor.redact(failure.reason))));
    return response;
  }

  private async diffConfig(request: rpc.DiffRequest): Promise<rpc.DiffResponse> {
    const olds = decodeFor("configure", "", request.getOlds());
    const diff = diffProviderConfig(olds, decodeFor("configure", "", request.getNews()), request.getIgnorechangesList());
    const moved = changedAddressKeys(diff);
    if (moved.length > 0 && Object.keys(olds).length > 0) {
      this.logger.warn(
        `provider ${moved.join(", ")} changed: containers created through the old address are now looked up through the new one, ` +
          "so point the provider at the same cell or replace the containers",
        request.getUrn(),
      );
    }
    const response = new rpc.DiffResponse()
      .setChanges(diff.changes ? rpc.DiffResponse.DiffChanges.DIFF_SOME : rpc.DiffResponse.DiffChanges.DIFF_NONE)
      .setDiffsList(diff.changedKeys)
      .setReplacesList([])
      .setDeletebeforereplace(false)
      .setHasdetaileddiff(true);
    for (const [path, entry] of Object.entries(diff.detailedDiff)) {
      response.getDetaileddiffMap().set(path, new rpc.PropertyDiff().setKind(DIFF_KINDS[entry.kind]).setInputdiff(entry.inputDiff));
    }
    return response;
  }

  private async configure(request: rpc.ConfigureRequest): Promise<rpc.ConfigureResponse> {
    const variables: [string, string][] = [];
    request.getVariablesMap().forEach((value, key) => variables.push([key, value]));
    const inputs = request.hasArgs() ? decodeFor("configure", "", request.getArgs()) : inputsFromVariables(variables);

    const parsed = parseProviderConfig(inputs);
    switch (parsed.state) {
      case "unknown":
        this.config = undefined;
        this.configState = "unknown";
        this.logger.debug("configured with values that are not known until apply; handlers see configUnknown");
        break;
      case "invalid": {
        const redactor = this.logger.baseRedactor.with(collectSecretStrings(checkProviderConfig(inputs).inputs));
        const list = parsed.failures.map((failure) => `${failure.property}: ${failure.reason}`).join("; ");
        throw new RpcError(grpc.status.INVALID_ARGUMENT, redactor.redact(`invalid provider configuration: ${list}`));
      }
      case "known":
        this.config = parsed.config;
        this.configState = "known";
        this.logger.setSecrets(parsed.secrets);
        this.logger.debug(`configured for ${parsed.config.user}@${parsed.config.host}:${parsed.config.port}`);
        break;
    }
    return new rpc.ConfigureResponse().setAcceptsecrets(true).setSupportspreview(true).setAcceptresources(true).setAcceptoutputs(false);
  }

  // -------------------------------------------------------------------------
  // Resource operations

  private async check(request: rpc.CheckRequest): Promise<rpc.CheckResponse> {
    const urn = request.getUrn();
    const news = decodeFor("check", urn, request.getNews());
    const olds = decodeFor("check", urn, request.getOlds());
    return this.run("check", urn, request.getType(), [olds, news], async (handler, context, redactor) => {
      const result = await handler.check(olds, news, context);
      const response = new rpc.CheckResponse().setInputs(encodeStruct(annotateSecrets(result.inputs, news)));
      response.setFailuresList(
        result.failures.map((failure) => new rpc.CheckFailure().setProperty(failure.property).setReason(redactor.redact(failure.reason))),
      );
      return response;
    });
  }

  private async diff(request: rpc.DiffRequest): Promise<rpc.DiffResponse> {
    const urn = request.getUrn();
    const olds = decodeFor("diff", urn, request.getOlds());
    const news = decodeFor("diff", urn, request.getNews());
    return this.run("diff", urn, request.getType(), [olds, news], async (handler, context) => {
      const result = await handler.diff(request.getId(), olds, news, context);
      return diffResponse(result, request.getIgnorechangesList());
    });
  }

  private async create(request: rpc.CreateRequest): Promise<rpc.CreateResponse> {
    const urn = request.getUrn();
    const preview = request.getPreview();
    const inputs = decodeFor("create", urn, request.getProperties());
    if (!preview) {
      this.requireKnownConfig("create", urn);
      rejectUnknowns(inputs, "create", urn);
    }
    return this.run("create", urn, request.getType(), [inputs], async (handler, context) => {
      const { id, outputs } = await handler.create(inputs, preview, context);
      const encoded = encodeResult("create", urn, preview, id, annotateSecrets(outputs, inputs), inputs);
      return new rpc.CreateResponse().setId(id).setProperties(encoded);
    }, { id: "", inputs });
  }

  private async read(request: rpc.ReadRequest): Promise<rpc.ReadResponse> {
    const urn = request.getUrn();
    const id = request.getId();
    const state = decodeFor("read", urn, request.getProperties());
    const inputs = decodeFor("read", urn, request.getInputs());
    this.requireKnownConfig("read", urn);
    return this.run("read", urn, request.getType(), [state, inputs], async (handler, context) => {
      const result = await handler.read(id, state, inputs, context);
      if (result === null) return new rpc.ReadResponse();
      const outputs = annotateSecrets(annotateSecrets(result.outputs, state), inputs);
      const response = new rpc.ReadResponse().setId(result.id).setProperties(encodeResult("read", urn, false, result.id, outputs));
      return response.setInputs(encodeStruct(annotateSecrets(result.inputs, inputs)));
    }, { id, inputs });
  }

  private async update(request: rpc.UpdateRequest): Promise<rpc.UpdateResponse> {
    const urn = request.getUrn();
    const id = request.getId();
    const preview = request.getPreview();
    const olds = decodeFor("update", urn, request.getOlds());
    const news = decodeFor("update", urn, request.getNews());
    if (!preview) {
      this.requireKnownConfig("update", urn);
      rejectUnknowns(news, "update", urn);
    }
    return this.run("update", urn, request.getType(), [olds, news], async (handler, context) => {
      const { outputs } = await handler.update(id, olds, news, preview, context);
      return new rpc.UpdateResponse().setProperties(encodeResult("update", urn, preview, id, annotateSecrets(outputs, news), news));
    }, { id, inputs: news });
  }

  private async delete(request: rpc.DeleteRequest): Promise<Empty> {
    const urn = request.getUrn();
    const outputs = decodeFor("delete", urn, request.getProperties());
    this.requireKnownConfig("delete", urn);
    return this.run("delete", urn, request.getType(), [outputs], async (handler, context) => {
      await handler.delete(request.getId(), outputs, context);
      return new Empty();
    });
  }

  private requireKnownConfig(operation: Operation, urn: string): void {
    if (this.configState === "known") return;
    const reason = this.configState === "unknown" ? "has values that are not known yet" : "has not been sent by the engine (no Configure call)";
    throw new RpcError(grpc.status.FAILED_PRECONDITION, `cannot ${operation} ${urn}: the provider configuration ${reason}`);
  }

  /**
   * Runs one handler method with an operation context, and translates what
   * it throws. A PartialFailure becomes ErrorResourceInitFailed. Any other
   * error from create or delete is sent as ABORTED, because create is all or
   * nothing and a failed delete leaves the resource in place. The engine
   * then treats the resource's state as known. An error from update or read
   * is sent as UNKNOWN, which makes the engine treat the state as uncertain.
   */
  private async run<T>(
    operation: Operation,
    urn: string,
    requestType: string,
    secretSources: PropertyMap[],
    body: (handler: ResourceHandler, context: OperationContext, redactor: Redactor) => Promise<T>,
    partial?: { id: string; inputs: PropertyMap },
  ): Promise<T> {
    const type = requestType !== "" ? requestType : typeFromUrn(urn);
    const handler = this.registry.get(type);
    if (handler === undefined) {
      const known = this.registry.tokens();
      const list = known.length === 0 ? "no resource types are registered" : `the known types are ${known.join(", ")}`;
      throw new RpcError(grpc.status.INVALID_ARGUMENT, `cannot ${operation} ${urn}: cellfleet has no resource type ${JSON.stringify(type)}; ${list}`);
    }

    const secrets = new Set<string>();
    for (const source of secretSources) collectSecretStrings(source, secrets);
    const redactor = this.logger.baseRedactor.with(secrets);
    const context: OperationContext = {
      urn,
      signal: this.cancellation.signal,
      log: this.logger.forOperation(urn, redactor),
      configUnknown: this.configState === "unknown",
    };

    this.inFlight += 1;
    try {
      return await body(handler, context, redactor);
    } catch (error) {
      throw this.translateError(error, operation, urn, redactor, partial);
    } finally {
      this.inFlight -= 1;
    }
  }

  private translateError(error: unknown, operation: Operation, urn: string, redactor: Redactor, partial?: { id: string; inputs: PropertyMap }): RpcError {
    if (error instanceof RpcError) return new RpcError(error.code, redactor.redact(error.message), error.metadata);

    const message = redactor.redact(`failed to ${operation} ${urn}: ${describeError(error)}`);
    const stack = error instanceof Error && error.stack !== undefined ? redactor.redact(error.stack) : "";
    this.logger.debug(`${message}${stack === "" ? "" : `\n${stack}`}`, urn);

    if (error instanceof PartialFailure) {
      const inputs = partial?.inputs;
      const outputs = inputs === undefined ? error.outputs : annotateSecrets(error.outputs, inputs);
      const id = error.id !== "" ? error.id : (partial?.id ?? "");
      return initFailedError(message, {
        id,
        outputs: encodeOrEmpty(outputs, (problem) => this.logger.error(redactor.redact(`outputs of ${urn} could not be encoded: ${problem}`), urn)),
        inputs: inputs === undefined ? undefined : encodeOrEmpty(inputs, () => undefined),
        reasons: [message],
      });
    }
    const code = operation === "create" || operation === "delete" ? grpc.status.ABORTED : grpc.status.UNKNOWN;
    return new RpcError(code, message);
  }
}

// ---------------------------------------------------------------------------
// Helpers for the resource operations

function rejectUnknowns(inputs: PropertyMap, operation: Operation, urn: string): void {
  if (containsUnknowns(inputs)) {
    throw new RpcError(grpc.status.INVALID_ARGUMENT, `cannot ${operation} ${urn}: inputs contain values that are not known, which only a preview may send`);
  }
}

function encodeOrEmpty(map: PropertyMap, onError: (problem: string) => void): Struct {
  try {
    return encodeStruct(map);
  } catch (error) {
    onError(describeError(error));
    return emptyStruct();
  }
}

/**
 * Encodes the outputs of create, update or read. Outside a preview the
 * resource exists on the cell once the handler returns. So outputs that
 * cannot be stored, because they are unknown or not encodable, become a
 * partial failure that carries the id. The engine then keeps the resource
 * in its state, and a refresh can repair the outputs.
 */
function encodeResult(operation: Operation, urn: string, preview: boolean, id: string, outputs: PropertyMap, inputs?: PropertyMap): Struct {
  if (preview) return encodeStruct(outputs);
  if (id === "") {
    throw new RpcError(grpc.status.INTERNAL, `failed to ${operation} ${urn}: the resource handler returned an empty id`);
  }
  let problem: string | undefined;
  let encoded: Struct | undefined;
  if (containsUnknowns(outputs)) {
    problem = "the resource handler returned unknown outputs outside a preview";
  } else {
    try {
      encoded = encodeStruct(outputs);
    } catch (error) {
      problem = `the resource handler returned outputs that cannot be stored: ${describeError(error)}`;
    }
  }
  if (encoded !== undefined) return encoded;
  const message = `failed to ${operation} ${urn}: ${problem}; run pulumi refresh to read the real outputs`;
  return throwInitFailed(message, id, inputs);
}

function throwInitFailed(message: string, id: string, inputs?: PropertyMap): never {
  throw initFailedError(message, {
    id,
    outputs: emptyStruct(),
    inputs: inputs === undefined ? undefined : encodeOrEmpty(inputs, () => undefined),
    reasons: [message],
  });
}

function isIgnored(path: string, ignoreChanges: readonly string[]): boolean {
  return ignoreChanges.some((ignored) => path === ignored || path.startsWith(`${ignored}.`) || path.startsWith(`${ignored}[`));
}

/** Maps a handler's DiffResult to the wire, dropping paths that ignoreChanges covers. */
export function diffResponse(result: DiffResult, ignoreChanges: readonly string[] = []): rpc.DiffResponse {
  const detailed = Object.entries(result.detailedDiff).filter(([path]) => !isIgnored(path, ignoreChanges));
  const replaces = result.replaces.filter((key) => !isIgnored(key, ignoreChanges));
  const changedKeys = new Set<string>(replaces);
  for (const [path] of detailed) changedKeys.add(path.split(/[.[]/)[0]);

  // When the handler lists changed paths, the list decides, even against the changes flag, because hiding a change
  // is the worse error. Without a list, the flag decides.
  const listed = Object.keys(result.detailedDiff).length > 0 || result.replaces.length > 0;
  const changed = changedKeys.size > 0 || (result.changes && !listed);
  const response = new rpc.DiffResponse()
    .setChanges(changed ? rpc.DiffResponse.DiffChanges.DIFF_SOME : rpc.DiffResponse.DiffChanges.DIFF_NONE)
    .setReplacesList(replaces)
    .setDiffsList([...changedKeys].sort())
    .setDeletebeforereplace(result.deleteBeforeReplace && replaces.length > 0)
    .setHasdetaileddiff(true);
  for (const [path, entry] of detailed) {
    response.getDetaileddiffMap().set(path, new rpc.PropertyDiff().setKind(DIFF_KINDS[entry.kind]).setInputdiff(entry.inputDiff));
  }
  return response;
}
