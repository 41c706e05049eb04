// `npm run demo`: runs the quickstart stack on the local cell "demo" and
// prints what it made. `npm run demo -- destroy` removes the stack's
// resources; scripts/demo.sh then removes the cell.
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import path from "node:path";

import { configureForCell, quickstartStack, type CellDescription } from "./quickstart-stack";

const repoRoot = path.resolve(__dirname, "..", "..");
const stateDir = path.join(repoRoot, ".cache", "pulumi-state");
const passphrase = "cellfleet-demo";

/** Finds a command on PATH, which here includes the Pulumi CLI's build cache that the user's own PATH lacks. */
function findOnPath(command: string): string | undefined {
  for (const directory of (process.env.PATH ?? "").split(":")) {
    const candidate = path.join(directory, command);
    if (directory && existsSync(candidate)) return candidate;
  }
  return undefined;
}

async function main(): Promise<void> {
  const action = process.argv[2] ?? "up";
  const cellFile = process.argv[3];
  const cell = JSON.parse(readFileSync(cellFile, "utf8")) as CellDescription;
  mkdirSync(stateDir, { recursive: true });
  const stack = await quickstartStack({ workDir: repoRoot, stackName: "demo", backendUrl: `file://${stateDir}`, passphrase });
  const log = (line: string) => process.stdout.write(line);

  if (action === "destroy") {
    await stack.destroy({ onOutput: log });
    return;
  }

  await configureForCell(stack, cell, readFileSync(cell.privateKeyPath, "utf8"), path.join(repoRoot, ".cache/images/busybox-rootfs.tar"));
  const started = Date.now();
  const result = await stack.up({ onOutput: log });
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  const outputs = Object.fromEntries(Object.entries(result.outputs).map(([name, output]) => [name, output.value]));

  const env = `PULUMI_BACKEND_URL=file://${stateDir} PULUMI_CONFIG_PASSPHRASE=${passphrase}`;
  const pulumi = findOnPath("pulumi") ?? "pulumi";
  process.stdout.write(
    [
      "",
      `pulumi up finished in ${seconds} s.`,
      `Container ${outputs.containerId} on cell ${cell.name} (${cell.host}) is ${outputs.status}: pid ${outputs.pid}, cpu.shares ${outputs.cpuShares}.`,
      "",
      "Inspect it:",
      `  bash scripts/cell.sh exec ${cell.name} -- tail /var/lib/cellfleet/containers/${outputs.containerId}/stdout.log`,
      `  bash scripts/cell.sh exec ${cell.name} -- ps -o pid,user,args -p ${outputs.pid}`,
      `  ${env} ${pulumi} stack output --stack demo --show-secrets`,
      `  PATH=${path.join(repoRoot, "provider/bin")}:$PATH ${env} ${pulumi} refresh --stack demo   # reads the container back from the cell`,
      "Destroy the container and the cell:",
      "  npm run demo -- destroy",
      "",
    ].join("\n"),
  );
}

main().catch((error) => {
  process.stderr.write(`demo failed: ${(error as Error).message}\n`);
  process.exit(1);
});
