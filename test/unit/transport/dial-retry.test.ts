import assert from "node:assert/strict";

import sinon from "sinon";

import {
  BastionHopError,
  backoffDelayMs,
  classifyDialError,
  dialWithRetry,
} from "../../../provider/src/transport/dial-retry";
import { CellDialError, CellTransportError, HostKeyMismatchError } from "../../../provider/src/transport/errors";

function socketError(code: string): Error {
  return Object.assign(new Error(`connect ${code} 127.0.0.1:22`), { code, level: "client-socket" });
}

describe("backoffDelayMs", () => {
  it("doubles from 1 s and caps at 15 s", () => {
    const noJitter = (): number => 0;
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6, 10].map((attempt) => backoffDelayMs(attempt, noJitter)),
      [1000, 2000, 4000, 8000, 15000, 15000, 15000],
    );
  });

  it("adds up to 20% jitter", () => {
    assert.equal(backoffDelayMs(2, () => 0.5), 2200);
    assert.ok(backoffDelayMs(5, () => 0.999) < 18000);
  });
});

describe("classifyDialError", () => {
  const retryable: [string, unknown, string][] = [
    ["refused", socketError("ECONNREFUSED"), "ECONNREFUSED"],
    ["timed out", socketError("ETIMEDOUT"), "ETIMEDOUT"],
    ["unreachable", socketError("EHOSTUNREACH"), "EHOSTUNREACH"],
    ["reset", socketError("ECONNRESET"), "ECONNRESET"],
    [
      "handshake timeout",
      Object.assign(new Error("Timed out while waiting for handshake"), { level: "client-timeout" }),
      "handshake timed out",
    ],
    ["lost before handshake", new Error("Connection lost before handshake"), "connection lost before handshake"],
    [
      "forward connect failed",
      Object.assign(new Error("(SSH) Channel open failure: Connection refused"), { reason: 2 }),
      "forwarding failed (Channel open failure: Connection refused)",
    ],
    ["bastion refused", new BastionHopError("ops@jump:22", socketError("ECONNREFUSED")), "bastion ops@jump:22: ECONNREFUSED"],
  ];
  for (const [name, error, reason] of retryable) {
    it(`retries ${name}`, () => {
      assert.deepEqual(classifyDialError(error), { retryable: true, reason });
    });
  }

  const final: [string, unknown][] = [
    ["authentication", Object.assign(new Error("All configured authentication methods failed"), { level: "client-authentication" })],
    ["host key", new HostKeyMismatchError("root@h:22", "ssh-ed25519", "SHA256:x", "host key of root@h:22 does not match")],
    ["unknown host name", socketError("ENOTFOUND")],
    ["transport error", new CellTransportError("root@h:22", "parse privateKey", "bad key")],
    ["keepalive timeout", Object.assign(new Error("Keepalive timeout"), { level: "client-timeout" })],
    ["bastion authentication", new BastionHopError("ops@jump:22", Object.assign(new Error("denied"), { level: "client-authentication" }))],
  ];
  for (const [name, error] of final) {
    it(`does not retry ${name}`, () => {
      assert.equal(classifyDialError(error).retryable, false);
    });
  }
});

describe("dialWithRetry", () => {
  let clock: sinon.SinonFakeTimers;

  beforeEach(() => {
    clock = sinon.useFakeTimers();
  });

  afterEach(() => {
    clock.restore();
  });

  it("retries then succeeds and logs each failure", async () => {
    const messages: string[] = [];
    const attempt = sinon.stub();
    attempt.onCall(0).rejects(socketError("ECONNREFUSED"));
    attempt.onCall(1).rejects(socketError("ECONNREFUSED"));
    attempt.onCall(2).resolves("connected");

    const result = dialWithRetry(
      { label: "root@h:22", retries: 5, log: (message) => messages.push(message), random: () => 0 },
      attempt,
    );
    await clock.tickAsync(999);
    assert.equal(attempt.callCount, 1);
    await clock.tickAsync(1);
    assert.equal(attempt.callCount, 2);
    await clock.tickAsync(2000);

    assert.equal(await result, "connected");
    assert.equal(attempt.callCount, 3);
    assert.deepEqual(attempt.args.map((args) => args[0]), [1, 2, 3]);
    assert.deepEqual(messages, [
      "dial root@h:22 attempt 1/6 failed: ECONNREFUSED; retrying in 1 s",
      "dial root@h:22 attempt 2/6 failed: ECONNREFUSED; retrying in 2 s",
    ]);
  });

  it("final error names the attempt count", async () => {
    const last = socketError("ECONNREFUSED");
    const attempt = sinon.stub().rejects(last);
    const result = dialWithRetry({ label: "root@h:22", retries: 2, random: () => 0 }, attempt);
    const settled = assert.rejects(result, (error: unknown) => {
      assert.ok(error instanceof CellDialError);
      assert.equal(error.attempts, 3);
      assert.equal(error.cell, "root@h:22");
      assert.equal(error.cause, last);
      assert.match(error.message, /^dial root@h:22 failed after 3 attempts: ECONNREFUSED/);
      return true;
    });
    await clock.tickAsync(1000 + 2000);
    await settled;
    assert.equal(attempt.callCount, 3);
  });

  it("host key mismatch is not retried", async () => {
    const mismatch = new HostKeyMismatchError("root@h:22", "ssh-ed25519", "SHA256:x", "host key of root@h:22 does not match");
    const attempt = sinon.stub().rejects(mismatch);
    const messages: string[] = [];
    await assert.rejects(
      dialWithRetry({ label: "root@h:22", retries: 5, log: (message) => messages.push(message) }, attempt),
      (error: unknown) => error === mismatch,
    );
    assert.equal(attempt.callCount, 1);
    assert.deepEqual(messages, []);
  });

  it("authentication failure is not retried", async () => {
    const denied = Object.assign(new Error("All configured authentication methods failed"), {
      level: "client-authentication",
    });
    const attempt = sinon.stub().rejects(denied);
    await assert.rejects(
      dialWithRetry({ label: "root@h:22", retries: 5 }, attempt),
      (error: unknown) =>
        error instanceof CellDialError &&
        error.attempts === 1 &&
        error.cause === denied &&
        /a retry cannot fix: authentication failed/.test(error.message),
    );
    assert.equal(attempt.callCount, 1);
  });

  it("abort during backoff stops retrying", async () => {
    const controller = new AbortController();
    const attempt = sinon.stub().rejects(socketError("ETIMEDOUT"));
    const result = dialWithRetry({ label: "root@h:22", retries: 5, signal: controller.signal, random: () => 0 }, attempt);
    const settled = assert.rejects(result, (error: unknown) => {
      assert.equal((error as Error).name, "AbortError");
      assert.match((error as Error).message, /dial root@h:22 was cancelled after 1 attempt$/);
      return true;
    });
    await clock.tickAsync(500);
    controller.abort();
    await settled;
    await clock.tickAsync(60_000);
    assert.equal(attempt.callCount, 1);
  });

  it("aborted signal prevents any attempt", async () => {
    const controller = new AbortController();
    controller.abort();
    const attempt = sinon.stub().resolves("connected");
    await assert.rejects(dialWithRetry({ label: "root@h:22", retries: 5, signal: controller.signal }, attempt), {
      name: "AbortError",
    });
    assert.equal(attempt.callCount, 0);
  });
});
