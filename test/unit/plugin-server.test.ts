// The ResourceProvider server in-process, over real gRPC on 127.0.0.1, with a
// fake resource handler: what handlers receive, and how their responses
// and errors reach the engine.
import assert from "node:assert/strict";
import { Writable } from "node:stream";

import * as grpc from "@grpc/grpc-js";
import { EngineService } from "@pulumi/pulumi/proto/engine_grpc_pb";
import { LogRequest, LogSeverity } from "@pulumi/pulumi/proto/engine_pb";
import { ResourceProviderClient } from "@pulumi/pulumi/proto/provider_grpc_pb";
import * as rpc from "@pulumi/pulumi/proto/provider_pb";
import { Empty } from "google-protobuf/google/protobuf/empty_pb";

import { PluginLogger } from "../../provider/src/plugin/log";
import { ResourceRegistry } from "../../provider/src/plugin/registry";
import {
  DiffResult,
  OperationContext,
  PartialFailure,
  PropertyMap,
  ResourceHandler,
  Secret,
  UNKNOWN,
} from "../../provider/src/plugin/resource";
import { ProviderServer } from "../../provider/src/plugin/server";
import { decodeStruct, SECRET_SIGNATURE, SIGNATURE_KEY, UNKNOWN_VALUE } from "../../provider/src/plugin/wire";
import { callProvider, connectProvider, expectRpcError, initFailedDetail, toStruct } from "../helpers/provider-client";

const TOKEN = "cellfleet:index:Fake";
const URN = `urn:pulumi:dev::proj::${TOKEN}::web`;
const SECRET_VALUE = "t0ps3cret-value";
const HOST_KEY = "SHA256:" + "a".repeat(43);
const PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAprivatekeymaterialAAAA\n-----END OPENSSH PRIVATE KEY-----\n";

const secret = (value: unknown) => ({ [SIGNATURE_KEY]: SECRET_SIGNATURE, value });

/** A handler whose every method can be replaced per test; calls are recorded. */
class FakeHandler implements ResourceHandler {
  readonly token = TOKEN;
  readonly contexts: OperationContext[] = [];
  readonly calls: { method: string; args: unknown[] }[] = [];

  checkImpl = async (_olds: PropertyMap, news: PropertyMap) => ({ inputs: news, failures: [] as { property: string; reason: string }[] });
  diffImpl = async (): Promise<DiffResult> => ({ changes: false, replaces: [], detailedDiff: {}, deleteBeforeReplace: false });
  createImpl = async (inputs: PropertyMap, _preview: boolean, _context: OperationContext) => ({ id: "c-1", outputs: { ...inputs } as PropertyMap });
  readImpl = async (id: string, state: PropertyMap, inputs: PropertyMap): Promise<{ id: string; outputs: PropertyMap; inputs: PropertyMap } | null> => ({
    id,
    outputs: state,
    inputs,
  });
  updateImpl = async (_id: string, _olds: PropertyMap, news: PropertyMap) => ({ outputs: { ...news } as PropertyMap });
  deleteImpl = async (): Promise<void> => undefined;

  private record(method: string, context: OperationContext, args: unknown[]): void {
    this.contexts.push(context);
    this.calls.push({ method, args });
  }

  check(olds: PropertyMap, news: PropertyMap, context: OperationContext) {
    this.record("check", context, [olds, news]);
    return this.checkImpl(olds, news);
  }
  diff(id: string, olds: PropertyMap, news: PropertyMap, context: OperationContext) {
    this.record("diff", context, [id, olds, news]);
    return this.diffImpl();
  }
  create(inputs: PropertyMap, preview: boolean, context: OperationContext) {
    this.record("create", context, [inputs, preview]);
    return this.createImpl(inputs, preview, context);
  }
  read(id: string, state: PropertyMap, inputs: PropertyMap, context: OperationContext) {
    this.record("read", context, [id, state, inputs]);
    return this.readImpl(id, state, inputs);
  }
  update(id: string, olds: PropertyMap, news: PropertyMap, preview: boolean, context: OperationContext) {
    this.record("update", context, [id, olds, news, preview]);
    return this.updateImpl(id, olds, news);
  }
  delete(id: string, outputs: PropertyMap, context: OperationContext) {
    this.record("delete", context, [id, outputs]);
    return this.deleteImpl();
  }
}

interface Harness {
  server: ProviderServer;
  client: ResourceProviderClient;
  handler: FakeHandler;
  stderr: string[];
}

async function startHarness(): Promise<Harness> {
  const stderr: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      stderr.push(String(chunk));
      done();
    },
  });
  const registry = new ResourceRegistry();
  const handler = new FakeHandler();
  registry.register(handler);
  const server = new ProviderServer({ registry, logger: new PluginLogger({ stderrLevel: "debug", stderr: sink }) });
  const port = await server.listen();
  return { server, client: connectProvider(port), handler, stderr };
}

async function stopHarness(harness: Harness | undefined): Promise<void> {
  if (harness === undefined) return;
  harness.client.close();
  await harness.server.close();
}

function configureRequest(args: Record<string, unknown>): rpc.ConfigureRequest {
  return new rpc.ConfigureRequest().setArgs(toStruct(args)).setAcceptsecrets(true).setAcceptresources(true);
}

const VALID_CONFIG = { host: "198.18.0.2", privateKey: secret(PRIVATE_KEY), hostKey: HOST_KEY };

async function configure(harness: Harness, args: Record<string, unknown> = VALID_CONFIG): Promise<rpc.ConfigureResponse> {
  return callProvider(harness.client, harness.client.configure, configureRequest(args));
}

function createRequest(properties: Record<string, unknown>, preview = false): rpc.CreateRequest {
  return new rpc.CreateRequest().setUrn(URN).setType(TOKEN).setProperties(toStruct(properties)).setPreview(preview);
}

describe("provider server", () => {
  let harness: Harness | undefined;

  beforeEach(async () => {
    harness = await startHarness();
  });

  afterEach(async () => {
    await stopHarness(harness);
    harness = undefined;
  });

  function h(): Harness {
    assert.ok(harness);
    return harness;
  }

  describe("plugin calls", () => {
    it("reports the plugin version", async () => {
      const info = await callProvider(h().client, h().client.getPluginInfo, new Empty());
      assert.equal(info.getVersion(), "0.1.0");
    });

    it("returns the schema", async () => {
      const response = await callProvider(h().client, h().client.getSchema, new rpc.GetSchemaRequest());
      assert.equal((JSON.parse(response.getSchema()) as { name: string }).name, "cellfleet");
    });

    it("answers Handshake with the protocol flags", async () => {
      const response = await callProvider(h().client, h().client.handshake, new rpc.ProviderHandshakeRequest());
      assert.equal(response.getAcceptSecrets(), true);
      assert.equal(response.getAcceptResources(), true);
      assert.equal(response.getAcceptOutputs(), false);
    });

    it("answers GetMapping with no mapping", async () => {
      const response = await callProvider(h().client, h().client.getMapping, new rpc.GetMappingRequest().setKey("terraform"));
      assert.equal(response.getProvider(), "");
      assert.equal(response.getData_asU8().length, 0);
    });

    it("rejects Invoke as unimplemented", async () => {
      const error = await expectRpcError(callProvider(h().client, h().client.invoke, new rpc.InvokeRequest().setTok("cellfleet:index:nothing")));
      assert.equal(error.code, grpc.status.UNIMPLEMENTED);
      assert.match(error.details, /cellfleet:index:nothing/);
    });

    it("rejects List as unimplemented", async () => {
      const stream = h().client.list(new rpc.ListRequest().setToken(TOKEN));
      const error = await new Promise<grpc.ServiceError>((resolve) => stream.on("error", resolve));
      assert.equal(error.code, grpc.status.UNIMPLEMENTED);
    });
  });

  describe("configuration", () => {
    it("accepts secrets and previews", async () => {
      const response = await configure(h());
      assert.equal(response.getAcceptsecrets(), true);
      assert.equal(response.getSupportspreview(), true);
      assert.equal(response.getAcceptresources(), true);
      assert.equal(response.getAcceptoutputs(), false);
    });

    it("hands the parsed configuration to the getter", async () => {
      await configure(h(), { ...VALID_CONFIG, port: "2222" });
      assert.equal(h().server.getConfig()?.port, 2222);
      assert.equal(h().server.configurationState, "known");
    });

    it("accepts legacy configuration variables", async () => {
      const request = new rpc.ConfigureRequest();
      request.getVariablesMap().set("cellfleet:config:host", "198.18.0.3");
      request.getVariablesMap().set("cellfleet:config:privateKey", PRIVATE_KEY);
      request.getVariablesMap().set("cellfleet:config:hostKey", HOST_KEY);
      request.getVariablesMap().set("cellfleet:config:dialRetries", "2");
      await callProvider(h().client, h().client.configure, request);
      assert.equal(h().server.getConfig()?.host, "198.18.0.3");
      assert.equal(h().server.getConfig()?.dialRetries, 2);
    });

    it("remembers an unknown configuration", async () => {
      await configure(h(), { ...VALID_CONFIG, host: UNKNOWN_VALUE });
      assert.equal(h().server.getConfig(), undefined);
      assert.equal(h().server.configurationState, "unknown");
    });

    it("rejects an invalid configuration without the key", async () => {
      const error = await expectRpcError(configure(h(), { privateKey: secret(PRIVATE_KEY), hostKey: HOST_KEY, port: 0 }));
      assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
      assert.match(error.details, /host: host is required/);
      assert.match(error.details, /port: port must be at least 1/);
      assert.ok(!error.details.includes("privatekeymaterial"), error.details);
    });

    it("reports config changes without replacement", async () => {
      const request = new rpc.DiffRequest()
        .setUrn("urn:pulumi:dev::proj::pulumi:providers:cellfleet::cell")
        .setOlds(toStruct({ ...VALID_CONFIG, port: 22 }))
        .setNews(toStruct({ ...VALID_CONFIG, port: 2222 }));
      const response = await callProvider(h().client, h().client.diffConfig, request);
      assert.equal(response.getChanges(), rpc.DiffResponse.DiffChanges.DIFF_SOME);
      assert.deepEqual(response.getReplacesList(), []);
      assert.deepEqual(response.getDiffsList(), ["port"]);
      assert.equal(response.getHasdetaileddiff(), true);
      assert.equal(response.getDetaileddiffMap().get("port")?.getKind(), rpc.PropertyDiff.Kind.UPDATE);
    });

    it("reports unchanged config as DIFF_NONE", async () => {
      const request = new rpc.DiffRequest().setOlds(toStruct(VALID_CONFIG)).setNews(toStruct(VALID_CONFIG));
      const response = await callProvider(h().client, h().client.diffConfig, request);
      assert.equal(response.getChanges(), rpc.DiffResponse.DiffChanges.DIFF_NONE);
    });
  });

  describe("check", () => {
    it("passes secrets and unknowns as markers", async () => {
      const request = new rpc.CheckRequest().setUrn(URN).setType(TOKEN).setNews(toStruct({ token: secret("t"), pid: UNKNOWN_VALUE }));
      await callProvider(h().client, h().client.check, request);
      const [, news] = h().handler.calls[0].args as PropertyMap[];
      assert.ok(news.token instanceof Secret);
      assert.equal(news.pid, UNKNOWN);
    });

    it("keeps inputs secret when the handler unwraps them", async () => {
      h().handler.checkImpl = async (_olds, news) => ({ inputs: { ...news, token: (news.token as Secret).value }, failures: [] });
      const request = new rpc.CheckRequest().setUrn(URN).setType(TOKEN).setNews(toStruct({ token: secret("t") }));
      const response = await callProvider(h().client, h().client.check, request);
      assert.ok(decodeStruct(response.getInputs()).token instanceof Secret);
    });

    it("redacts secrets from failure reasons", async () => {
      h().handler.checkImpl = async (_olds, news) => ({ inputs: news, failures: [{ property: "token", reason: `token ${SECRET_VALUE} is too short` }] });
      const request = new rpc.CheckRequest().setUrn(URN).setType(TOKEN).setNews(toStruct({ token: secret(SECRET_VALUE) }));
      const response = await callProvider(h().client, h().client.check, request);
      assert.equal(response.getFailuresList()[0].getProperty(), "token");
      assert.equal(response.getFailuresList()[0].getReason(), "token [secret] is too short");
    });

    it("rejects an unknown resource type", async () => {
      const request = new rpc.CheckRequest().setUrn("urn:pulumi:dev::proj::cellfleet:index:Nope::x").setNews(toStruct({}));
      const error = await expectRpcError(callProvider(h().client, h().client.check, request));
      assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
      assert.match(error.details, /no resource type "cellfleet:index:Nope"; the known types are cellfleet:index:Fake/);
    });

    it("rejects assets with the resource URN", async () => {
      const asset = { [SIGNATURE_KEY]: "c44067f5952c0a294b673a41bacd8c17", path: "/x" };
      const request = new rpc.CheckRequest().setUrn(URN).setType(TOKEN).setNews(toStruct({ file: asset }));
      const error = await expectRpcError(callProvider(h().client, h().client.check, request));
      assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
      assert.ok(error.details.includes(URN), error.details);
    });
  });

  describe("diff", () => {
    it("maps a replacement diff", async () => {
      h().handler.diffImpl = async () => ({
        changes: true,
        replaces: ["image"],
        detailedDiff: { image: { kind: "update-replace", inputDiff: true }, "env.TOKEN": { kind: "add", inputDiff: true } },
        deleteBeforeReplace: true,
      });
      const request = new rpc.DiffRequest().setId("c-1").setUrn(URN).setType(TOKEN).setOlds(toStruct({})).setNews(toStruct({}));
      const response = await callProvider(h().client, h().client.diff, request);
      assert.equal(response.getChanges(), rpc.DiffResponse.DiffChanges.DIFF_SOME);
      assert.deepEqual(response.getReplacesList(), ["image"]);
      assert.deepEqual(response.getDiffsList(), ["env", "image"]);
      assert.equal(response.getDeletebeforereplace(), true);
      assert.equal(response.getHasdetaileddiff(), true);
      assert.equal(response.getDetaileddiffMap().get("image")?.getKind(), rpc.PropertyDiff.Kind.UPDATE_REPLACE);
      assert.equal(response.getDetaileddiffMap().get("env.TOKEN")?.getKind(), rpc.PropertyDiff.Kind.ADD);
    });

    it("maps no change to DIFF_NONE", async () => {
      const request = new rpc.DiffRequest().setId("c-1").setUrn(URN).setType(TOKEN);
      const response = await callProvider(h().client, h().client.diff, request);
      assert.equal(response.getChanges(), rpc.DiffResponse.DiffChanges.DIFF_NONE);
      assert.equal(response.getHasdetaileddiff(), true);
      assert.equal(response.getDetaileddiffMap().getLength(), 0);
    });

    it("drops paths under ignoreChanges", async () => {
      h().handler.diffImpl = async () => ({
        changes: true,
        replaces: ["image"],
        detailedDiff: { image: { kind: "update-replace", inputDiff: true } },
        deleteBeforeReplace: false,
      });
      const request = new rpc.DiffRequest().setId("c-1").setUrn(URN).setType(TOKEN).setIgnorechangesList(["image"]);
      const response = await callProvider(h().client, h().client.diff, request);
      assert.equal(response.getChanges(), rpc.DiffResponse.DiffChanges.DIFF_NONE);
      assert.deepEqual(response.getReplacesList(), []);
    });

    it("passes the resource id", async () => {
      const request = new rpc.DiffRequest().setId("c-9").setUrn(URN).setType(TOKEN);
      await callProvider(h().client, h().client.diff, request);
      assert.equal(h().handler.calls[0].args[0], "c-9");
    });
  });

  describe("create", () => {
    it("refuses to apply before Configure", async () => {
      const error = await expectRpcError(callProvider(h().client, h().client.create, createRequest({ image: "a" })));
      assert.equal(error.code, grpc.status.FAILED_PRECONDITION);
      assert.ok(error.details.includes(URN), error.details);
      assert.equal(h().handler.calls.length, 0);
    });

    it("previews without Configure", async () => {
      const response = await callProvider(h().client, h().client.create, createRequest({ image: "a" }, true));
      assert.equal(h().handler.calls[0].args[1], true);
      assert.equal(decodeStruct(response.getProperties()).image, "a");
    });

    it("tells a preview that the configuration is unknown", async () => {
      await configure(h(), { ...VALID_CONFIG, host: UNKNOWN_VALUE });
      h().handler.createImpl = async (inputs) => ({ id: "", outputs: { ...inputs, pid: UNKNOWN } });
      const response = await callProvider(h().client, h().client.create, createRequest({ image: "a" }, true));
      assert.equal(h().handler.contexts[0].configUnknown, true);
      assert.equal(decodeStruct(response.getProperties()).pid, UNKNOWN);
    });

    it("refuses to apply with an unknown configuration", async () => {
      await configure(h(), { ...VALID_CONFIG, host: UNKNOWN_VALUE });
      const error = await expectRpcError(callProvider(h().client, h().client.create, createRequest({ image: "a" })));
      assert.equal(error.code, grpc.status.FAILED_PRECONDITION);
    });

    it("returns the id and re-wraps secret outputs", async () => {
      await configure(h());
      h().handler.createImpl = async (inputs) => ({ id: "c-1", outputs: { env: { TOKEN: "t", PLAIN: "p" }, image: inputs.image } });
      const response = await callProvider(h().client, h().client.create, createRequest({ image: "a", env: { TOKEN: secret("t"), PLAIN: "p" } }));
      assert.equal(response.getId(), "c-1");
      const env = decodeStruct(response.getProperties()).env as Record<string, unknown>;
      assert.ok(env.TOKEN instanceof Secret);
      assert.equal(env.PLAIN, "p");
      assert.equal(h().handler.contexts[0].configUnknown, false);
    });

    it("sends a partial failure as ErrorResourceInitFailed", async () => {
      await configure(h());
      h().handler.createImpl = async () => {
        throw new PartialFailure(`workload exited; token ${SECRET_VALUE}`, "c-2", { env: { TOKEN: SECRET_VALUE }, status: "stopped" });
      };
      const error = await expectRpcError(callProvider(h().client, h().client.create, createRequest({ env: { TOKEN: secret(SECRET_VALUE) } })));
      const detail = initFailedDetail(error);
      assert.ok(detail, "the error carries ErrorResourceInitFailed");
      assert.equal(detail.getId(), "c-2");
      const outputs = decodeStruct(detail.getProperties());
      assert.equal(outputs.status, "stopped");
      assert.ok((outputs.env as Record<string, unknown>).TOKEN instanceof Secret);
      assert.equal(detail.getReasonsList().length, 1);
      assert.ok(detail.getReasonsList()[0].includes(URN));
      assert.ok(!error.details.includes(SECRET_VALUE), error.details);
      assert.ok(!detail.getReasonsList()[0].includes(SECRET_VALUE));
    });

    it("sends other failures as ABORTED with the URN", async () => {
      await configure(h());
      h().handler.createImpl = async () => {
        throw new Error(`image upload failed for token ${SECRET_VALUE}`, { cause: new Error("connection reset") });
      };
      const error = await expectRpcError(callProvider(h().client, h().client.create, createRequest({ token: secret(SECRET_VALUE) })));
      assert.equal(error.code, grpc.status.ABORTED);
      assert.equal(error.details, `failed to create ${URN}: image upload failed for token [secret]: connection reset`);
    });

    it("redacts the private key from errors", async () => {
      await configure(h());
      h().handler.createImpl = async () => {
        throw new Error(`bad key ${PRIVATE_KEY}`);
      };
      const error = await expectRpcError(callProvider(h().client, h().client.create, createRequest({})));
      assert.ok(!error.details.includes("privatekeymaterial"), error.details);
    });

    it("keeps a resource whose outputs are unknown after apply", async () => {
      await configure(h());
      h().handler.createImpl = async () => ({ id: "c-3", outputs: { pid: UNKNOWN } });
      const error = await expectRpcError(callProvider(h().client, h().client.create, createRequest({})));
      assert.equal(initFailedDetail(error)?.getId(), "c-3");
      assert.match(error.details, /unknown outputs outside a preview/);
    });

    it("rejects an empty id after apply", async () => {
      await configure(h());
      h().handler.createImpl = async () => ({ id: "", outputs: {} });
      const error = await expectRpcError(callProvider(h().client, h().client.create, createRequest({})));
      assert.equal(error.code, grpc.status.INTERNAL);
    });
  });

  describe("read, update and delete", () => {
    beforeEach(async () => {
      await configure(h());
    });

    it("reports a vanished resource with an empty id", async () => {
      h().handler.readImpl = async () => null;
      const request = new rpc.ReadRequest().setId("c-1").setUrn(URN).setType(TOKEN);
      const response = await callProvider(h().client, h().client.read, request);
      assert.equal(response.getId(), "");
    });

    it("keeps secret state secret on read", async () => {
      h().handler.readImpl = async (id) => ({ id, outputs: { token: "t", pid: 7 }, inputs: { token: "t" } });
      const request = new rpc.ReadRequest()
        .setId("c-1")
        .setUrn(URN)
        .setType(TOKEN)
        .setProperties(toStruct({ token: secret("t"), pid: 6 }))
        .setInputs(toStruct({ token: secret("t") }));
      const response = await callProvider(h().client, h().client.read, request);
      assert.ok(decodeStruct(response.getProperties()).token instanceof Secret);
      assert.equal(decodeStruct(response.getProperties()).pid, 7);
      assert.ok(decodeStruct(response.getInputs()).token instanceof Secret);
    });

    it("passes old outputs and new inputs to update", async () => {
      const request = new rpc.UpdateRequest().setId("c-1").setUrn(URN).setType(TOKEN).setOlds(toStruct({ memory: "64MiB" })).setNews(toStruct({ memory: "128MiB" }));
      const response = await callProvider(h().client, h().client.update, request);
      assert.deepEqual(h().handler.calls[0].args, ["c-1", { memory: "64MiB" }, { memory: "128MiB" }, false]);
      assert.equal(decodeStruct(response.getProperties()).memory, "128MiB");
    });

    it("sends update failures as UNKNOWN", async () => {
      h().handler.updateImpl = async () => {
        throw new Error("cgroup write failed");
      };
      const request = new rpc.UpdateRequest().setId("c-1").setUrn(URN).setType(TOKEN);
      const error = await expectRpcError(callProvider(h().client, h().client.update, request));
      assert.equal(error.code, grpc.status.UNKNOWN);
      assert.equal(initFailedDetail(error), undefined);
    });

    it("uses the request id for an update partial failure", async () => {
      h().handler.updateImpl = async () => {
        throw new PartialFailure("restarted but not running", "", { status: "stopped" });
      };
      const request = new rpc.UpdateRequest().setId("c-5").setUrn(URN).setType(TOKEN).setNews(toStruct({ memory: "1GiB" }));
      const detail = initFailedDetail(await expectRpcError(callProvider(h().client, h().client.update, request)));
      assert.equal(detail?.getId(), "c-5");
      assert.equal(decodeStruct(detail?.getInputs()).memory, "1GiB");
    });

    it("passes id and outputs to delete", async () => {
      const request = new rpc.DeleteRequest().setId("c-1").setUrn(URN).setType(TOKEN).setProperties(toStruct({ pid: 3 }));
      await callProvider(h().client, h().client.delete, request);
      assert.deepEqual(h().handler.calls[0].args, ["c-1", { pid: 3 }]);
    });

    it("sends delete failures as ABORTED", async () => {
      h().handler.deleteImpl = async () => {
        throw new Error("cell unreachable");
      };
      const request = new rpc.DeleteRequest().setId("c-1").setUrn(URN).setType(TOKEN);
      const error = await expectRpcError(callProvider(h().client, h().client.delete, request));
      assert.equal(error.code, grpc.status.ABORTED);
      assert.match(error.details, /cell unreachable/);
    });
  });

  describe("cancellation", () => {
    it("aborts an operation in flight", async () => {
      await configure(h());
      let started: () => void = () => undefined;
      const running = new Promise<void>((resolve) => (started = resolve));
      h().handler.createImpl = async (_inputs, _preview, context) => {
        started();
        await new Promise((_resolve, reject) => context.signal.addEventListener("abort", () => reject(context.signal.reason)));
        return { id: "never", outputs: {} };
      };
      const create = expectRpcError(callProvider(h().client, h().client.create, createRequest({})));
      await running;
      await callProvider(h().client, h().client.cancel, new Empty());
      const error = await create;
      assert.equal(error.code, grpc.status.ABORTED);
      assert.match(error.details, /cancelled/);
      assert.equal(h().handler.contexts[0].signal.aborted, true);
    });
  });

  describe("logging", () => {
    let engine: grpc.Server | undefined;

    afterEach(async () => {
      await new Promise<void>((resolve) => (engine ? engine.tryShutdown(() => resolve()) : resolve()));
      engine = undefined;
    });

    it("sends handler logs to the engine without secrets", async () => {
      const received: LogRequest[] = [];
      const logged = new Promise<void>((resolve) => {
        engine = new grpc.Server();
        engine.addService(EngineService, {
          log: (call: grpc.ServerUnaryCall<LogRequest, Empty>, callback: grpc.sendUnaryData<Empty>) => {
            received.push(call.request);
            callback(null, new Empty());
            if (call.request.getMessage().includes("uploading")) resolve();
          },
          getRootResource: (_call: unknown, callback: grpc.sendUnaryData<unknown>) => callback({ code: grpc.status.UNIMPLEMENTED }),
        });
      });
      const port = await new Promise<number>((resolve, reject) =>
        engine?.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
      );
      await callProvider(h().client, h().client.handshake, new rpc.ProviderHandshakeRequest().setEngineAddress(`127.0.0.1:${port}`));

      h().handler.createImpl = async (inputs, _preview, context) => {
        context.log.warn(`uploading with token ${SECRET_VALUE}`);
        return { id: "", outputs: inputs };
      };
      await callProvider(h().client, h().client.create, createRequest({ token: secret(SECRET_VALUE) }, true));
      await logged;

      const message = received.find((request) => request.getMessage().includes("uploading"));
      assert.ok(message);
      assert.equal(message.getMessage(), "uploading with token [secret]");
      assert.equal(message.getUrn(), URN);
      assert.equal(message.getSeverity(), LogSeverity.WARNING);
    });

    it("writes to stderr without an engine", async () => {
      h().handler.createImpl = async (inputs, _preview, context) => {
        context.log.info(`using ${SECRET_VALUE}`);
        return { id: "", outputs: inputs };
      };
      await callProvider(h().client, h().client.create, createRequest({ token: secret(SECRET_VALUE) }, true));
      const text = h().stderr.join("");
      assert.ok(text.includes(`cellfleet info: using [secret] (${URN})`), text);
      assert.ok(!text.includes(SECRET_VALUE), text);
    });
  });
});
