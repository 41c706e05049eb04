// Runs the quickstart program against a local cell through the Automation
// API: shared by `npm run demo` and the end-to-end tests.
import { existsSync } from "node:fs";
import path from "node:path";

import { LocalWorkspace, type Stack } from "@pulumi/pulumi/automation";

import { quickstart } from "../examples/quickstart";

/** The description of a cell that `scripts/cell.sh create` prints. */
export interface CellDescription {
  name: string;
  host: string;
  port: number;
  user: string;
  privateKeyPath: string;
  hostPublicKey: string;
}

export interface StackOptions {
  /** The directory holding Pulumi.yaml and the stack settings file Pulumi.<stack>.yaml. */
  workDir: string;
  stackName: string;
  /** A file:// URL of the directory that contains the stack's state. */
  backendUrl: string;
  passphrase: string;
}

export async function quickstartStack(options: StackOptions): Promise<Stack> {
  const workspaceEnv = {
    PULUMI_BACKEND_URL: options.backendUrl,
    PULUMI_CONFIG_PASSPHRASE: options.passphrase,
    PULUMI_SKIP_UPDATE_CHECK: "true",
    PULUMI_DIY_BACKEND_NO_LEGACY_WARNING: "true",
  };
  return LocalWorkspace.createOrSelectStack(
    { stackName: options.stackName, projectName: "cellfleet-quickstart", program: async () => quickstart() },
    {
      workDir: options.workDir,
      envVars: workspaceEnv,
      // Given only where no Pulumi.yaml exists yet, because the Automation API
      // rewrites an existing one with these settings. The program runs inline,
      // so no main path is needed.
      projectSettings: existsSync(path.join(options.workDir, "Pulumi.yaml")) ? undefined : { name: "cellfleet-quickstart", runtime: "nodejs" },
    },
  );
}

export async function configureForCell(stack: Stack, cell: CellDescription, privateKey: string, image: string): Promise<void> {
  await stack.setAllConfig({
    host: { value: cell.host },
    port: { value: String(cell.port) },
    user: { value: cell.user },
    privateKey: { value: privateKey, secret: true },
    hostKey: { value: cell.hostPublicKey },
    image: { value: path.resolve(image) },
    apiToken: { value: "demo-token-not-a-real-secret", secret: true },
  });
}
