import assert from "node:assert/strict";
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, utimesSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { AgentClient, AgentError, AgentUnavailableError, loadAgentBundle } from "../../../provider/src/transport/agent-client";
import type { AgentBundle } from "../../../provider/src/transport/agent-bundle";
import { CellTransportError } from "../../../provider/src/transport/errors";
import { closeAllCellSessions, getCellSession } from "../../../provider/src/transport/pool";
import { CellConnection } from "../../../provider/src/transport/ssh";
import { canRunSshd, generateKeyPair, startSshd, type KeyPair, type SshdServer } from "../../helpers/sshd";

import { cellConfigFor, writeStandInBundle } from "./fixtures";

describe("AgentClient against a real sshd", function () {
  this.timeout(30_000);

  let workDir: string;
  let bundleDir: string;
  let client: KeyPair;
  let sshd: SshdServer;
  let bundle: AgentBundle;
  /** Stands in for /var/lib/cellfleet/agent, so the tests never write to the host's real path. */
  let agentRoot: string;
  const connections: CellConnection[] = [];
  const agents: AgentClient[] = [];
  let messages: string[];

  async function connect(): Promise<CellConnection> {
    const connection = await CellConnection.open(cellConfigFor(sshd, client));
    connections.push(connection);
    return connection;
  }

  async function startAgent(connection?: CellConnection, agentBundle: AgentBundle = bundle): Promise<AgentClient> {
    const agent = await AgentClient.start(connection ?? (await connect()), agentBundle, {
      agentRoot,
      log: (message) => messages.push(message),
    });
    agents.push(agent);
    return agent;
  }

  before(async function () {
    if (!canRunSshd()) {
      console.log("    skipped: the sshd fixture needs root");
      this.skip();
    }
    workDir = mkdtempSync(join(tmpdir(), "cellfleet-agent-test-"));
    client = await generateKeyPair(workDir, "client");
    sshd = await startSshd({ authorizedKeys: [client.publicKeyLine] });
    bundleDir = join(workDir, "bundle");
    mkdirSync(bundleDir);
    writeStandInBundle(bundleDir);
    bundle = loadAgentBundle(bundleDir);
  });

  beforeEach(() => {
    messages = [];
    agentRoot = mkdtempSync(join(workDir, "agent-root-"));
  });

  afterEach(async () => {
    await Promise.all(agents.splice(0).map((agent) => agent.close()));
    await Promise.all(connections.splice(0).map((connection) => connection.close()));
  });

  after(async () => {
    await closeAllCellSessions();
    await sshd?.stop();
    if (workDir !== undefined) {
      rmSync(workDir, { recursive: true, force: true });
    }
  });

  describe("install", () => {
    it("installs into the digest directory", async () => {
      const agent = await startAgent();
      const installDir = join(agentRoot, bundle.digest);
      assert.equal(agent.installDir, installDir);
      assert.deepEqual(readdirSync(agentRoot), [bundle.digest]);
      assert.deepEqual(readdirSync(installDir).sort(), ["agent.js", "koffi.node"]);
      assert.equal(statSync(installDir).mode & 0o777, 0o755);
      for (const name of ["agent.js", "koffi.node"]) {
        assert.equal(statSync(join(installDir, name)).mode & 0o777, 0o644, `${name} must be world-readable`);
      }
      assert.ok(messages.some((message) => message.includes(`installed agent ${bundle.digest}`)));
      assert.match(agent.nodeVersion, /^v\d+\.\d+\.\d+$/);
    });

    it("second start reuses the install", async () => {
      await startAgent();
      const agentFile = join(agentRoot, bundle.digest, "agent.js");
      const inode = statSync(agentFile).ino;
      messages = [];

      const second = await startAgent();

      assert.equal(statSync(agentFile).ino, inode);
      assert.ok(!messages.some((message) => message.includes("installed agent")));
      assert.equal((await second.call("probe", {})).cell, "stand-in");
    });

    it("tampered install fails verification", async () => {
      const first = await startAgent();
      await first.close();
      appendFileSync(join(agentRoot, bundle.digest, "agent.js"), "// changed on the cell\n");

      await assert.rejects(startAgent(), (error: unknown) => {
        assert.ok(error instanceof CellTransportError);
        assert.equal(error.step, "verify installed agent");
        assert.match(error.message, /failed verification: agent\.js has sha256 [0-9a-f]{64}, the manifest lists [0-9a-f]{64}/);
        assert.match(error.message, /remove .* to reinstall/);
        return true;
      });
    });

    it("upload that differs from the manifest is rejected", async () => {
      const tamperedDir = join(workDir, "tampered-bundle");
      mkdirSync(tamperedDir, { recursive: true });
      writeStandInBundle(tamperedDir, "tampered");
      const tampered = loadAgentBundle(tamperedDir);
      // The file changes after the manifest was checked, as a concurrent
      // rebuild would change it.
      appendFileSync(join(tamperedDir, "koffi.node"), "x");

      await assert.rejects(startAgent(undefined, tampered), (error: unknown) => {
        assert.ok(error instanceof CellTransportError);
        assert.equal(error.step, "verify uploaded agent");
        assert.match(error.message, /koffi\.node has sha256 [0-9a-f]{64}, the manifest lists/);
        return true;
      });
      assert.deepEqual(readdirSync(agentRoot), [], "the staging directory must be removed and nothing installed");
    });

    it("concurrent installs keep one copy", async () => {
      const [first, second] = await Promise.all([startAgent(), startAgent()]);
      assert.deepEqual(readdirSync(agentRoot), [bundle.digest]);
      assert.equal((await first.call("probe", {})).cell, "stand-in");
      assert.equal((await second.call("probe", {})).cell, "stand-in");
    });

    it("removes stale versions only", async () => {
      const twoDaysAgo = new Date(Date.now() - 2 * 24 * 3600 * 1000);
      const stale = join(agentRoot, "a".repeat(64));
      const fresh = join(agentRoot, "b".repeat(64));
      const staleStaging = join(agentRoot, ".staging-0123456789ab");
      const unrelated = join(agentRoot, "notes");
      for (const dir of [stale, fresh, staleStaging, unrelated]) {
        mkdirSync(dir);
      }
      for (const dir of [stale, staleStaging, unrelated]) {
        utimesSync(dir, twoDaysAgo, twoDaysAgo);
      }

      await startAgent();

      assert.deepEqual(readdirSync(agentRoot).sort(), [bundle.digest, "b".repeat(64), "notes"].sort());
      assert.ok(messages.some((message) => message.includes("removed old agent versions")));
    });

    it("old install of the current digest is kept", async () => {
      await startAgent();
      const installDir = join(agentRoot, bundle.digest);
      const twoDaysAgo = new Date(Date.now() - 2 * 24 * 3600 * 1000);
      utimesSync(installDir, twoDaysAgo, twoDaysAgo);

      await startAgent();

      assert.ok(existsSync(installDir));
      assert.ok(Date.now() - statSync(installDir).mtimeMs < 60_000, "start marks the version as used");
    });
  });

  describe("calls", () => {
    it("round-trips a result", async () => {
      const agent = await startAgent();
      const facts = await agent.call("probe", {});
      assert.equal(facts.cell, "stand-in");
      assert.equal(facts.cgroupVersion, 2);
      assert.equal(await agent.call("container.inspect", { id: "web" }), null);
    });

    it("matches out-of-order responses", async () => {
      const agent = await startAgent();
      const order: string[] = [];
      const slow = agent.call("image.has", { digest: "sha256:slow" }).then((result) => {
        order.push("slow");
        return result;
      });
      const fast = agent.call("image.has", { digest: "sha256:present" }).then((result) => {
        order.push("fast");
        return result;
      });
      assert.deepEqual(await Promise.all([slow, fast]), [{ present: false }, { present: true }]);
      assert.deepEqual(order, ["fast", "slow"]);
    });

    it("agent error becomes AgentError", async () => {
      const agent = await startAgent();
      const params = { id: "web", imageDigest: "sha256:abc", spec: {} as never };
      await assert.rejects(agent.call("container.create", params), (error: unknown) => {
        assert.ok(error instanceof AgentError);
        assert.equal(error.code, "CONTAINER_EXISTS");
        assert.equal(error.step, "create container directory");
        assert.equal(error.cell, agent.label);
        assert.equal(error.cellName, "stand-in");
        assert.equal(error.message, `cell ${agent.label}: create container directory failed: container web already exists`);
        return true;
      });
    });

    it("forwards stderr to the log", async () => {
      const agent = await startAgent();
      await agent.call("probe", {});
      assert.ok(messages.includes(`agent on ${agent.label}: stand-in agent ready`), messages.join("\n"));
    });

    it("abort rejects only that call", async () => {
      const agent = await startAgent();
      const controller = new AbortController();
      const slow = agent.call("image.has", { digest: "sha256:slow" }, { signal: controller.signal });
      controller.abort();
      await assert.rejects(slow, { name: "AbortError" });
      assert.deepEqual(await agent.call("image.has", { digest: "sha256:present" }), { present: true });
    });

    it("agent exit rejects pending and later calls", async () => {
      const agent = await startAgent();
      const pending = agent.call("image.has", { digest: "sha256:slow" });
      const exiting = agent.call("container.delete", { id: "exit-now" });

      for (const call of [pending, exiting]) {
        await assert.rejects(call, (error: unknown) => {
          assert.ok(error instanceof AgentUnavailableError);
          assert.match(
            error.message,
            new RegExp(`^cell ${agent.label}: (image\\.has|container\\.delete) failed: the agent on cell ${agent.label} exited with code 7; its last stderr line: stand-in agent exits on request$`),
          );
          return true;
        });
      }
      assert.equal(agent.isClosed, true);
      await assert.rejects(agent.call("probe", {}), (error: unknown) => error instanceof AgentUnavailableError && /probe failed: the agent on cell .* exited with code 7/.test(error.message));
    });

    it("close ends the agent", async () => {
      const agent = await startAgent();
      await agent.call("probe", {});
      await agent.close();
      assert.equal(agent.isClosed, true);
      assert.ok(messages.includes(`agent on ${agent.label}: stand-in agent stdin closed`), messages.join("\n"));
    });
  });

  describe("session pool", () => {
    afterEach(async () => {
      await closeAllCellSessions();
    });

    it("shares one session between concurrent callers", async () => {
      const config = cellConfigFor(sshd, client);
      const connectionsBefore = sshd.connectionCount();
      const [first, second] = await Promise.all([
        getCellSession(config, { bundle, agentRoot }),
        getCellSession(config, { bundle, agentRoot }),
      ]);
      assert.equal(first, second);
      assert.equal((await first.agent.call("probe", {})).cell, "stand-in");
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.equal(sshd.connectionCount() - connectionsBefore, 1);
    });

    it("redials after the connection closes", async () => {
      const config = cellConfigFor(sshd, client);
      const first = await getCellSession(config, { bundle, agentRoot });
      await first.connection.close();

      const second = await getCellSession(config, { bundle, agentRoot });
      assert.notEqual(second, first);
      assert.equal(second.connection.isClosed, false);
      assert.equal((await second.agent.call("probe", {})).cell, "stand-in");
    });

    it("drops the session when the agent exits", async () => {
      const config = cellConfigFor(sshd, client);
      const first = await getCellSession(config, { bundle, agentRoot });
      await assert.rejects(first.agent.call("container.delete", { id: "exit-now" }), AgentUnavailableError);

      const second = await getCellSession(config, { bundle, agentRoot });
      assert.notEqual(second, first);
      assert.equal((await second.agent.call("probe", {})).cell, "stand-in");
    });

    it("failed dial is not cached", async () => {
      const wrongPin = cellConfigFor(sshd, client, { hostKey: (await generateKeyPair(workDir, `pool-other-${Date.now()}`)).fingerprint });
      await assert.rejects(getCellSession(wrongPin, { bundle, agentRoot }), /does not match the pin/);
      const session = await getCellSession(cellConfigFor(sshd, client), { bundle, agentRoot });
      assert.equal((await session.agent.call("probe", {})).cell, "stand-in");
    });

    it("closeAllCellSessions closes everything", async () => {
      const session = await getCellSession(cellConfigFor(sshd, client), { bundle, agentRoot });
      await closeAllCellSessions();
      assert.equal(session.agent.isClosed, true);
      assert.equal(session.connection.isClosed, true);
    });
  });
});
