// The traffic stack: a security group loaded from an existing Cloud Foundry
// rules file, and two containers where only the frontend may open
// connections to the backend, on port 8080, through a network policy.
import path from "node:path";

import * as pulumi from "@pulumi/pulumi";

import * as cellfleet from "@cellfleet/sdk";

export function traffic(): Record<string, pulumi.Output<unknown>> {
  const config = new pulumi.Config();

  const cell = new cellfleet.Provider("cell", {
    host: config.require("host"),
    port: config.getNumber("port") ?? 22,
    user: config.get("user") ?? "root",
    privateKey: config.requireSecret("privateKey"),
    hostKey: config.require("hostKey"),
  });

  // The same file `cf create-security-group public-web web.json` takes.
  const web = new cellfleet.SecurityGroup(
    "public-web",
    { rulesFile: config.get("rulesFile") ?? path.join(__dirname, "..", "..", "..", "examples", "security-groups", "web.json") },
    { provider: cell },
  );

  const image = config.require("image");

  const backend = new cellfleet.Container(
    "backend",
    {
      image,
      command: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"],
      labels: { app: "backend" },
      memory: "64MiB",
    },
    { provider: cell },
  );

  const frontend = new cellfleet.Container(
    "frontend",
    {
      image,
      // A listener of its own, so a test can show that the policy is one-way.
      command: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"],
      labels: { app: "frontend" },
      securityGroups: [web.name],
      memory: "64MiB",
    },
    { provider: cell },
  );

  new cellfleet.NetworkPolicy(
    "frontend-to-backend",
    { sourceLabels: { app: "frontend" }, destinationLabels: { app: "backend" }, protocol: "tcp", ports: "8080" },
    { provider: cell },
  );

  return {
    backendAddress: backend.address,
    frontendAddress: frontend.address,
    frontendPid: frontend.pid,
    securityGroup: web.name,
  };
}
