// The real plugin executable, started as the Pulumi engine starts it: the
// port comes from the first line of stdout, and every call goes over gRPC
// on 127.0.0.1 through the client generated from Pulumi's protocol.
import assert from "node:assert/strict";
import { ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";

import { ResourceProviderClient } from "@pulumi/pulumi/proto/provider_grpc_pb";
import * as rpc from "@pulumi/pulumi/proto/provider_pb";
import { Empty } from "google-protobuf/google/protobuf/empty_pb";

import { Secret, UNKNOWN } from "../../provider/src/plugin/resource";
import { decodeStruct } from "../../provider/src/plugin/wire";
import { callProvider, connectProvider, toStruct } from "../helpers/provider-client";

// dist/test/integration -> repository root
const REPOSITORY = path.resolve(__dirname, "..", "..", "..");
const PLUGIN = path.join(REPOSITORY, "provider", "bin", "pulumi-resource-cellfleet");
const PROVIDER_URN = "urn:pulumi:dev::proj::pulumi:providers:cellfleet::cell";
const CONTAINER_URN = "urn:pulumi:dev::proj::cellfleet:index:Container::web";
const HOST_KEY = "SHA256:" + "a".repeat(43);
const PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAintegrationkeymaterialAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
const STARTUP_TIMEOUT_MS = 20_000;

/** Starts the plugin and resolves with the port from its first stdout line. */
function startPlugin(child: ChildProcess, output: { stdout: string; stderr: string }): Promise<number> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the plugin printed no port within ${STARTUP_TIMEOUT_MS} ms; stderr: ${output.stderr}`)), STARTUP_TIMEOUT_MS);
    child.stdout?.on("data", (chunk: Buffer) => {
      output.stdout += chunk.toString();
      const newline = output.stdout.indexOf("\n");
      if (newline >= 0) {
        clearTimeout(timer);
        resolve(Number(output.stdout.slice(0, newline)));
      }
    });
    child.stderr?.on("data", (chunk: Buffer) => (output.stderr += chunk.toString()));
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the plugin exited before printing its port (code ${code}, signal ${signal}); stderr: ${output.stderr}`));
    });
  });
}

function stopPlugin(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) {
      resolve();
      return;
    }
    const pid = child.pid;
    const force = setTimeout(() => process.kill(pid, "SIGKILL"), 5000);
    child.once("exit", () => {
      clearTimeout(force);
      resolve();
    });
    process.kill(pid, "SIGTERM");
  });
}

describe("plugin executable", function () {
  this.timeout(60_000);
  const output = { stdout: "", stderr: "" };
  let child: ChildProcess;
  let client: ResourceProviderClient;
  let port: number;

  before(async () => {
    child = spawn(PLUGIN, [], { cwd: REPOSITORY, stdio: ["ignore", "pipe", "pipe"] });
    port = await startPlugin(child, output);
    client = connectProvider(port);
  });

  after(async () => {
    client?.close();
    if (child !== undefined) await stopPlugin(child);
  });

  it("prints only its port on stdout", () => {
    assert.ok(Number.isInteger(port), `port ${port}`);
    assert.ok(port > 0, `port ${port}`);
    assert.ok(port < 65536, `port ${port}`);
    assert.equal(output.stdout, `${port}\n`);
  });

  it("reports the package version", async () => {
    const manifest = JSON.parse(readFileSync(path.join(REPOSITORY, "provider", "package.json"), "utf8")) as { version: string };
    const info = await callProvider(client, client.getPluginInfo, new Empty());
    assert.equal(info.getVersion(), manifest.version);
  });

  it("returns a JSON schema with Container", async () => {
    const response = await callProvider(client, client.getSchema, new rpc.GetSchemaRequest());
    const schema = JSON.parse(response.getSchema()) as { name: string; resources: Record<string, unknown> };
    assert.equal(schema.name, "cellfleet");
    assert.ok(schema.resources["cellfleet:index:Container"]);
  });

  it("names the properties of a bad config", async () => {
    const request = new rpc.CheckRequest().setUrn(PROVIDER_URN).setNews(toStruct({ host: "198.18.0.2", privateKey: PRIVATE_KEY, port: 70000 }));
    const response = await callProvider(client, client.checkConfig, request);
    const failures = new Map(response.getFailuresList().map((failure) => [failure.getProperty(), failure.getReason()]));
    assert.match(failures.get("hostKey") ?? "", /host key is not pinned/);
    assert.match(failures.get("port") ?? "", /at most 65535/);
    assert.ok(!JSON.stringify([...failures]).includes("integrationkeymaterial"));
  });

  it("keeps privateKey secret in checked config", async () => {
    const request = new rpc.CheckRequest().setUrn(PROVIDER_URN).setNews(toStruct({ host: "198.18.0.2", privateKey: PRIVATE_KEY, hostKey: HOST_KEY }));
    const response = await callProvider(client, client.checkConfig, request);
    assert.deepEqual(response.getFailuresList(), []);
    const inputs = decodeStruct(response.getInputs());
    assert.ok(inputs.privateKey instanceof Secret);
    assert.equal(inputs.privateKey.value, PRIVATE_KEY);
    assert.equal(inputs.host, "198.18.0.2");
  });

  it("serves Container checks", async () => {
    const request = new rpc.CheckRequest()
      .setUrn(CONTAINER_URN)
      .setType("cellfleet:index:Container")
      .setNews(toStruct({ image: "no/such/image.tar", command: ["/bin/true"] }));
    const response = await callProvider(client, client.check, request);
    const image = response.getFailuresList().find((failure) => failure.getProperty() === "image");
    assert.ok(image, "a failure for image");
    assert.match(image.getReason(), /not found/);
  });

  it("previews a Container without a cell", async () => {
    const request = new rpc.CreateRequest()
      .setUrn(CONTAINER_URN)
      .setType("cellfleet:index:Container")
      .setPreview(true)
      .setProperties(toStruct({ image: "img.tar", command: ["/bin/true"], memory: "64MiB" }));
    const response = await callProvider(client, client.create, request);
    const outputs = decodeStruct(response.getProperties());
    assert.equal(outputs.containerId, UNKNOWN);
    assert.equal(outputs.memoryBytes, 64 * 1024 * 1024);
  });

  it("accepts Cancel and keeps serving", async () => {
    await callProvider(client, client.cancel, new Empty());
    const info = await callProvider(client, client.getPluginInfo, new Empty());
    assert.ok(info.getVersion().length > 0);
  });
});
