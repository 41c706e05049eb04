/**
 * Shared setup for the transport integration tests: cell configurations
 * for a test sshd, and a stand-in agent bundle that serves the RPC
 * protocol until the real agent exists.
 */
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

import { cellConfigSchema, type CellConfig, type CellConfigInput } from "../../../provider/src/transport/cell-config";
import type { KeyPair, SshdServer } from "../../helpers/sshd";

/** Builds a parsed cell configuration for `sshd`, pinned to its first host key unless `overrides` sets another pin. */
export function cellConfigFor(sshd: SshdServer, client: KeyPair, overrides: Partial<CellConfigInput> = {}): CellConfig {
  return cellConfigSchema.parse({
    host: sshd.host,
    port: sshd.port,
    user: sshd.user,
    privateKey: client.privateKey,
    hostKey: sshd.hostKeys[0].fingerprint,
    dialTimeout: 5,
    dialRetries: 0,
    ...overrides,
  });
}

/**
 * Source of the stand-in agent. It speaks the agent's JSON-lines protocol
 * with canned results: "image.has" with digest "sha256:slow" responds after 300 ms,
 * "container.inspect" returns null,
 * "container.create" always fails with CONTAINER_EXISTS, and
 * "container.delete" with id "exit-now" makes the process exit with code 7.
 */
export const STAND_IN_AGENT_SOURCE = String.raw`"use strict";
const os = require("node:os");
const readline = require("node:readline");

if (process.argv[2] !== "serve") {
  process.stderr.write("usage: agent.js serve\n");
  process.exit(2);
}

const send = (message) => process.stdout.write(JSON.stringify(message) + "\n");
const fail = (id, code, message, step) => send({ id, error: { code, message, step, cell: "stand-in" } });

process.stderr.write("stand-in agent ready\n");

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const { id, method, params } = JSON.parse(line);
  switch (method) {
    case "probe":
      send({ id, result: { cell: "stand-in", agentVersion: "stand-in", nodeVersion: process.version, kernel: os.release(), cgroupVersion: 2, overlay: true, quota: "none" } });
      break;
    case "image.has":
      setTimeout(() => send({ id, result: { present: params.digest === "sha256:present" } }), params.digest === "sha256:slow" ? 300 : 0);
      break;
    case "container.inspect":
      send({ id, result: null });
      break;
    case "container.create":
      fail(id, "CONTAINER_EXISTS", "container " + params.id + " already exists", "create container directory");
      break;
    case "container.delete":
      if (params.id === "exit-now") {
        process.stderr.write("stand-in agent exits on request\n");
        process.exit(7);
      }
      send({ id, result: { existed: false } });
      break;
    default:
      fail(id, "INVALID_REQUEST", "unknown method " + method, "dispatch request");
  }
});
lines.on("close", () => {
  process.stderr.write("stand-in agent stdin closed\n");
  process.exit(0);
});
`;

function sha256(data: string | Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/**
 * Writes the stand-in agent, a small binary file in place of koffi.node and
 * their manifest.json into `dir`, as the bundler does for the real agent.
 * `variant` changes agent.js, and so the digest.
 */
export function writeStandInBundle(dir: string, variant = ""): void {
  const agent = `${STAND_IN_AGENT_SOURCE}// variant: ${variant}\n`;
  const native = Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00]);
  writeFileSync(join(dir, "agent.js"), agent);
  writeFileSync(join(dir, "koffi.node"), native);
  const manifest = {
    files: [
      { name: "agent.js", sha256: sha256(agent) },
      { name: "koffi.node", sha256: sha256(native) },
    ],
  };
  writeFileSync(join(dir, "manifest.json"), `${JSON.stringify(manifest, null, 2)}\n`);
}
