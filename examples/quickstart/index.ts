// The quickstart stack: one cell, one hardened container that prints a
// greeting every few seconds. The cell's address, key and host key come
// from stack configuration, so the same program runs against any cell.
//
// The Node.js language host is not needed: `npm run demo` and the tests run
// this program inline through the Pulumi Automation API.
import * as pulumi from "@pulumi/pulumi";

import * as cellfleet from "@cellfleet/sdk";

export function quickstart(): Record<string, pulumi.Output<unknown>> {
  const config = new pulumi.Config();

  const cell = new cellfleet.Provider("cell", {
    host: config.require("host"),
    port: config.getNumber("port") ?? 22,
    user: config.get("user") ?? "root",
    privateKey: config.requireSecret("privateKey"),
    hostKey: config.require("hostKey"),
    dialRetries: config.getNumber("dialRetries"),
  });

  const hello = new cellfleet.Container(
    "hello",
    {
      image: config.require("image"),
      command: ["/bin/sh", "-c", 'while true; do echo "$GREETING from $(hostname)"; sleep 5; done'],
      env: {
        GREETING: config.get("greeting") ?? "hello",
        // Secret inputs stay secret in state and in outputs.
        API_TOKEN: config.requireSecret("apiToken"),
      },
      hostname: "hello",
      memory: config.get("memory") ?? "64MiB",
      diskQuota: config.get("diskQuota"),
      user: "app",
      workingDir: "/home/app",
    },
    { provider: cell },
  );

  return {
    containerId: hello.containerId,
    status: hello.status,
    pid: hello.pid,
    cpuShares: hello.cpuShares,
    imageDigest: hello.imageDigest,
  };
}
