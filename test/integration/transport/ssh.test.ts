import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { CellDialError, CellTransportError, HostKeyMismatchError } from "../../../provider/src/transport/errors";
import { CellConnection } from "../../../provider/src/transport/ssh";
import { canRunSshd, freeLoopbackPort, generateKeyPair, startSshd, type KeyPair, type SshdServer } from "../../helpers/sshd";

import { cellConfigFor } from "./fixtures";

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

describe("CellConnection against a real sshd", function () {
  this.timeout(30_000);

  let keyDir: string;
  let client: KeyPair;
  let sshd: SshdServer;
  const connections: CellConnection[] = [];

  async function open(overrides: Parameters<typeof cellConfigFor>[2] = {}, log?: (message: string) => void) {
    const connection = await CellConnection.open(cellConfigFor(sshd, client, overrides), { log });
    connections.push(connection);
    return connection;
  }

  before(async function () {
    if (!canRunSshd()) {
      console.log("    skipped: the sshd fixture needs root");
      this.skip();
    }
    keyDir = mkdtempSync(join(tmpdir(), "cellfleet-ssh-test-"));
    client = await generateKeyPair(keyDir, "client");
    // Two host key types, so that pinning the second one checks that the
    // client asks for the pinned type instead of the default ed25519.
    sshd = await startSshd({ authorizedKeys: [client.publicKeyLine], hostKeyTypes: ["ed25519", "ecdsa"] });
  });

  afterEach(async () => {
    await Promise.all(connections.splice(0).map((connection) => connection.close()));
  });

  after(async () => {
    await sshd?.stop();
    if (keyDir !== undefined) {
      rmSync(keyDir, { recursive: true, force: true });
    }
  });

  describe("exec", () => {
    it("returns stdout, stderr and code", async () => {
      const connection = await open();
      const result = await connection.exec("echo out; echo err >&2; exit 3");
      assert.equal(result.stdout.toString(), "out\n");
      assert.equal(result.stderr.toString(), "err\n");
      assert.equal(result.code, 3);
      assert.equal(result.signal, undefined);
    });

    it("feeds stdin", async () => {
      const connection = await open();
      const result = await connection.exec("tr a-z A-Z", { stdin: "hello cell\n" });
      assert.equal(result.stdout.toString(), "HELLO CELL\n");
      assert.equal(result.code, 0);
    });

    it("reports a killing signal", async () => {
      const connection = await open();
      const result = await connection.exec("kill -KILL $$");
      assert.equal(result.code, null);
      assert.equal(result.signal, "SIGKILL");
    });

    it("abort ends a long command", async () => {
      const connection = await open();
      const pidFile = join(keyDir, "sleep.pid");
      const controller = new AbortController();
      const started = Date.now();
      const running = connection.exec(`echo $$ > ${pidFile}; exec sleep 30`, { signal: controller.signal });
      // Abort once the remote command runs; a fixed delay raced a slow session start on a busy machine.
      for (let poll = 0; poll < 100 && !existsSync(pidFile); poll++) await delay(50);
      controller.abort();
      await assert.rejects(running, { name: "AbortError" });
      assert.ok(Date.now() - started < 10000);

      // The pid is in sshd's PID namespace, so the check runs there too.
      const pid = readFileSync(pidFile, "utf8").trim();
      let alive = true;
      for (let poll = 0; poll < 40 && alive; poll++) {
        alive = (await connection.exec(`kill -0 ${pid}`)).code === 0;
        if (alive) {
          await delay(50);
        }
      }
      assert.equal(alive, false, "SIGTERM must end the remote command");
    });

    it("abortable exec keeps stderr clean", async () => {
      const connection = await open();
      const result = await connection.exec("echo err >&2; echo out", { signal: new AbortController().signal });
      assert.equal(result.stderr.toString(), "err\n");
      assert.equal(result.stdout.toString(), "out\n");
    });

    it("execChecked names the step on failure", async () => {
      const connection = await open();
      await assert.rejects(connection.execChecked("echo broken >&2; exit 4", "check the cell"), (error: unknown) => {
        assert.ok(error instanceof CellTransportError);
        assert.equal(error.step, "check the cell");
        assert.equal(
          error.message,
          `cell ${connection.label}: check the cell failed: \`echo broken >&2; exit 4\` exited with code 4: broken`,
        );
        return true;
      });
    });

    it("exposes label and sudoPrefix", async () => {
      const connection = await open();
      assert.equal(connection.label, `${sshd.user}@127.0.0.1:${sshd.port}`);
      assert.equal(connection.sudoPrefix, "");
    });
  });

  describe("host key pinning", () => {
    it("accepts a pinned fingerprint", async () => {
      const connection = await open({ hostKey: sshd.hostKeys[0].fingerprint });
      assert.equal((await connection.exec("true")).code, 0);
    });

    it("accepts a pinned public key of the second type", async () => {
      const ecdsa = sshd.hostKeys[1];
      assert.equal(ecdsa.type, "ecdsa-sha2-nistp256");
      const connection = await open({ hostKey: ecdsa.publicKeyLine });
      assert.equal((await connection.exec("true")).code, 0);
    });

    it("wrong pin fails without retry", async () => {
      const other = await generateKeyPair(keyDir, "other-host-key");
      const before = sshd.connectionCount();
      const messages: string[] = [];
      const started = Date.now();

      await assert.rejects(open({ hostKey: other.fingerprint, dialRetries: 3 }, (message) => messages.push(message)), (error: unknown) => {
        assert.ok(error instanceof HostKeyMismatchError);
        assert.equal(error.presentedFingerprint, sshd.hostKeys[0].fingerprint);
        assert.equal(error.presentedKeyType, "ssh-ed25519");
        assert.equal(
          error.message,
          `host key of ${sshd.user}@127.0.0.1:${sshd.port} does not match the pin: the cell presented ssh-ed25519 ${sshd.hostKeys[0].fingerprint}; if the cell was rebuilt, verify that fingerprint out of band and set hostKey to it`,
        );
        return true;
      });

      assert.ok(Date.now() - started < 1000, "a host key failure must not wait for a retry");
      assert.deepEqual(messages, []);
      await delay(200);
      assert.equal(sshd.connectionCount() - before, 1);
    });

    it("accepts a plain known_hosts entry", async () => {
      const file = join(keyDir, "known_hosts_plain");
      const [type, key] = sshd.hostKeys[0].publicKeyLine.split(" ");
      writeFileSync(file, `# test cell\n[127.0.0.1]:${sshd.port},cell-test ${type} ${key}\n`);
      const connection = await open({ hostKey: undefined, knownHostsFile: file });
      assert.equal((await connection.exec("true")).code, 0);
    });

    it("accepts a hashed known_hosts entry", async () => {
      const file = join(keyDir, "known_hosts_hashed");
      const [type, key] = sshd.hostKeys[1].publicKeyLine.split(" ");
      writeFileSync(file, `[127.0.0.1]:${sshd.port} ${type} ${key}\n`);
      execFileSync("ssh-keygen", ["-H", "-f", file], { stdio: "ignore" });
      assert.match(readFileSync(file, "utf8"), /^\|1\|/);

      const connection = await open({ hostKey: undefined, knownHostsFile: file });
      assert.equal((await connection.exec("true")).code, 0);
    });

    it("known_hosts with another key fails", async () => {
      const other = await generateKeyPair(keyDir, "stale-host-key");
      const file = join(keyDir, "known_hosts_stale");
      writeFileSync(file, `[127.0.0.1]:${sshd.port} ${other.publicKeyLine}\n`);
      await assert.rejects(open({ hostKey: undefined, knownHostsFile: file, dialRetries: 2 }), (error: unknown) => {
        assert.ok(error instanceof HostKeyMismatchError);
        assert.match(error.message, /does not match the known_hosts file .* on lines 1\)/);
        assert.ok(error.message.includes(error.presentedFingerprint));
        return true;
      });
    });
  });

  describe("dial failures", () => {
    it("refused dial is retried and counted", async function () {
      this.timeout(20_000);
      const port = await freeLoopbackPort();
      const messages: string[] = [];
      const started = Date.now();

      await assert.rejects(
        CellConnection.open(cellConfigFor(sshd, client, { port, dialRetries: 2 }), { log: (message) => messages.push(message) }),
        (error: unknown) => {
          assert.ok(error instanceof CellDialError);
          assert.equal(error.attempts, 3);
          assert.equal(error.cell, `${sshd.user}@127.0.0.1:${port}`);
          assert.match(error.message, new RegExp(`^dial ${sshd.user}@127\\.0\\.0\\.1:${port} failed after 3 attempts: ECONNREFUSED`));
          assert.equal((error.cause as NodeJS.ErrnoException).code, "ECONNREFUSED");
          return true;
        },
      );

      assert.equal(messages.length, 2);
      assert.match(messages[0], new RegExp(`^dial ${sshd.user}@127\\.0\\.0\\.1:${port} attempt 1/3 failed: ECONNREFUSED; retrying in 1(\\.\\d)? s$`));
      assert.match(messages[1], /attempt 2\/3 failed: ECONNREFUSED; retrying in 2(\.\d)? s$/);
      assert.ok(Date.now() - started >= 3000, "the backoff waits 1 s and then 2 s");
    });

    it("rejected client key is not retried", async () => {
      const stranger = await generateKeyPair(keyDir, "stranger");
      const started = Date.now();
      await assert.rejects(open({ privateKey: stranger.privateKey, dialRetries: 3 }), (error: unknown) => {
        assert.ok(error instanceof CellDialError);
        assert.equal(error.step, "authenticate");
        assert.equal(error.attempts, 1);
        assert.match(error.message, /^authentication to cell .* failed: the server rejected privateKey for user /);
        return true;
      });
      assert.ok(Date.now() - started < 1000);
    });

    it("encrypted client key needs its passphrase", async () => {
      const encrypted = await generateKeyPair(keyDir, "encrypted", "ed25519", "correct horse");
      const authorized = join(sshd.dir, "authorized_keys");
      writeFileSync(authorized, `${readFileSync(authorized, "utf8")}${encrypted.publicKeyLine}\n`);

      const connection = await open({ privateKey: encrypted.privateKey, passphrase: "correct horse" });
      assert.equal((await connection.exec("true")).code, 0);

      await assert.rejects(open({ privateKey: encrypted.privateKey }), (error: unknown) => {
        assert.ok(error instanceof CellDialError);
        assert.equal(error.step, "parse privateKey");
        assert.match(error.message, /privateKey for .* could not be parsed: .*; if the key is encrypted, set the passphrase/);
        assert.ok(!error.message.includes("PRIVATE KEY"), "the message must not contain key material");
        return true;
      });
    });

    it("abort cancels the backoff wait", async () => {
      const port = await freeLoopbackPort();
      const controller = new AbortController();
      setTimeout(() => controller.abort(), 300);
      const started = Date.now();
      await assert.rejects(
        CellConnection.open(cellConfigFor(sshd, client, { port, dialRetries: 5 }), { signal: controller.signal }),
        (error: unknown) => (error as Error).name === "AbortError" && /was cancelled after 1 attempt/.test((error as Error).message),
      );
      assert.ok(Date.now() - started < 1000);
    });
  });

  describe("upload", () => {
    let remoteDir: string;
    let localFile: string;

    beforeEach(() => {
      remoteDir = mkdtempSync(join(tmpdir(), "cellfleet-upload-"));
      localFile = join(remoteDir, "source.bin");
      writeFileSync(localFile, Buffer.alloc(200_000, 7));
    });

    afterEach(() => {
      rmSync(remoteDir, { recursive: true, force: true });
    });

    it("writes content and mode", async () => {
      const connection = await open();
      const target = join(remoteDir, "target.bin");
      await connection.upload(localFile, target, 0o640);
      assert.deepEqual(readFileSync(target), readFileSync(localFile));
      assert.equal(statSync(target).mode & 0o777, 0o640);
    });

    it("replaces an existing file and leaves no temporary file", async () => {
      const connection = await open();
      const target = join(remoteDir, "target.bin");
      writeFileSync(target, "old content");
      await connection.upload(localFile, target, 0o600);
      assert.deepEqual(readFileSync(target), readFileSync(localFile));
      assert.equal(statSync(target).mode & 0o777, 0o600);
      assert.deepEqual(readdirSync(remoteDir).sort(), ["source.bin", "target.bin"]);
    });

    it("missing parent directory fails clearly", async () => {
      const connection = await open();
      const target = join(remoteDir, "absent", "target.bin");
      await assert.rejects(connection.upload(localFile, target, 0o644), (error: unknown) => {
        assert.ok(error instanceof CellTransportError);
        assert.equal(error.step, `upload source.bin to ${target}`);
        assert.match(error.message, /the parent directory or the local file does not exist/);
        return true;
      });
      assert.equal(existsSync(join(remoteDir, "absent")), false);
    });
  });

  describe("spawn and close", () => {
    it("spawned process talks over stdio", async () => {
      const connection = await open();
      const channel = await connection.spawn("cat");
      const echoed = new Promise<string>((resolve) => {
        let text = "";
        channel.on("data", (chunk: Buffer) => {
          text += chunk.toString();
          if (text.endsWith("\n")) {
            resolve(text);
          }
        });
      });
      channel.write("ping\n");
      assert.equal(await echoed, "ping\n");
      const closed = new Promise((resolve) => channel.once("close", resolve));
      channel.end();
      await closed;
    });

    it("onClose fires on close", async () => {
      const connection = await open();
      let calls = 0;
      connection.onClose(() => calls++);
      await connection.close();
      assert.equal(connection.isClosed, true);
      assert.equal(calls, 1);
      await assert.rejects(connection.exec("true"), /the SSH connection is closed/);
    });

    it("onClose fires when the server goes away", async () => {
      const lonely = await startSshd({ authorizedKeys: [client.publicKeyLine] });
      try {
        const connection = await CellConnection.open(cellConfigFor(lonely, client));
        const closed = new Promise<void>((resolve) => connection.onClose(() => resolve()));
        await lonely.stop();
        await closed;
        assert.equal(connection.isClosed, true);
      } finally {
        await lonely.stop();
      }
    });
  });
});

describe("CellConnection through a bastion", function () {
  this.timeout(30_000);

  let keyDir: string;
  let client: KeyPair;
  let cell: SshdServer;
  let bastion: SshdServer;
  let strictBastion: SshdServer;

  before(async function () {
    if (!canRunSshd()) {
      console.log("    skipped: the sshd fixture needs root");
      this.skip();
    }
    keyDir = mkdtempSync(join(tmpdir(), "cellfleet-bastion-test-"));
    client = await generateKeyPair(keyDir, "client");
    cell = await startSshd({ authorizedKeys: [client.publicKeyLine] });
    // DEBUG1 makes sshd log each direct-tcpip request, which proves the hop.
    bastion = await startSshd({ authorizedKeys: [client.publicKeyLine], allowTcpForwarding: true, logLevel: "DEBUG1" });
    strictBastion = await startSshd({ authorizedKeys: [client.publicKeyLine], allowTcpForwarding: false });
  });

  after(async () => {
    await cell?.stop();
    await bastion?.stop();
    await strictBastion?.stop();
    if (keyDir !== undefined) {
      rmSync(keyDir, { recursive: true, force: true });
    }
  });

  function bastionFor(server: SshdServer, hostKey = server.hostKeys[0].fingerprint) {
    return { host: server.host, port: server.port, user: server.user, privateKey: client.privateKey, hostKey };
  }

  it("reaches the cell through the bastion", async () => {
    const connection = await CellConnection.open(cellConfigFor(cell, client, { bastion: bastionFor(bastion) }));
    try {
      const result = await connection.exec("echo through");
      assert.equal(result.stdout.toString(), "through\n");
      assert.match(bastion.logs(), new RegExp(`server_request_direct_tcpip: originator .* target 127\\.0\\.0\\.1 port ${cell.port}\\b`));
    } finally {
      await connection.close();
    }
  });

  it("bastion without forwarding fails at once", async () => {
    const started = Date.now();
    await assert.rejects(
      CellConnection.open(cellConfigFor(cell, client, { bastion: bastionFor(strictBastion), dialRetries: 3 })),
      (error: unknown) => {
        assert.ok(error instanceof CellDialError);
        assert.equal(error.step, "forward through bastion");
        assert.match(error.message, /administratively prohibited.*set AllowTcpForwarding yes/);
        return true;
      },
    );
    assert.ok(Date.now() - started < 1000);
  });

  it("wrong bastion pin names the bastion", async () => {
    await assert.rejects(
      CellConnection.open(cellConfigFor(cell, client, { bastion: bastionFor(bastion, cell.hostKeys[0].fingerprint), dialRetries: 3 })),
      (error: unknown) => {
        assert.ok(error instanceof HostKeyMismatchError);
        assert.equal(error.cell, `${bastion.user}@127.0.0.1:${bastion.port}`);
        assert.match(error.message, /the bastion presented ssh-ed25519 .*set bastion\.hostKey to it$/);
        return true;
      },
    );
  });

  it("cell behind the bastion refusing is retried", async function () {
    this.timeout(20_000);
    const port = await freeLoopbackPort();
    const messages: string[] = [];
    await assert.rejects(
      CellConnection.open(cellConfigFor(cell, client, { port, bastion: bastionFor(bastion), dialRetries: 1 }), {
        log: (message) => messages.push(message),
      }),
      (error: unknown) => {
        assert.ok(error instanceof CellDialError);
        assert.equal(error.attempts, 2);
        assert.match(error.message, new RegExp(`failed after 2 attempts: bastion ${bastion.user}@127\\.0\\.0\\.1:${bastion.port}: forwarding failed`));
        return true;
      },
    );
    assert.equal(messages.length, 1);
    assert.match(messages[0], /attempt 1\/2 failed: bastion .*: forwarding failed .*; retrying in/);
  });
});
