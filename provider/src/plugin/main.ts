/**
 * Entry point of pulumi-resource-cellfleet. The engine starts the plugin
 * with its own gRPC address as the last argument and reads the plugin's port
 * from the first line of stdout, so nothing else may ever be written there.
 */
import { format } from "node:util";

import { logLevelFromEnvironment, PluginLogger } from "./log";
import { registerResource } from "./registry";
import { createContainerHandler } from "./resources/container/handler";
import { createNetworkPolicyHandler } from "./resources/network-policy/handler";
import { createSecurityGroupHandler } from "./resources/security-group/handler";
import { closeAllCellSessions } from "../transport/pool";
import { ProviderServer } from "./server";

/** How long a fatal error waits for its log message to reach the engine before the process exits. */
const FATAL_EXIT_DELAY_MS = 200;

/**
 * Returns the engine address from the plugin's arguments. The engine may put
 * flags before it: "--logtostderr", "-v=9" and "--tracing <endpoint>".
 */
export function parsePluginArguments(argv: readonly string[]): { engineAddress?: string } {
  for (let index = 0; index < argv.length; index++) {
    const argument = argv[index];
    if (argument === "--tracing") {
      index += 1;
    } else if (!argument.startsWith("-")) {
      return { engineAddress: argument };
    }
  }
  return {};
}

/**
 * Sends console output through the plugin logger. A library that prints
 * with console.log would otherwise write to stdout, which the engine reads,
 * and would bypass the redaction of secrets.
 */
function redirectConsole(logger: PluginLogger): void {
  console.log = (...args: unknown[]) => logger.debug(format(...args));
  console.info = (...args: unknown[]) => logger.info(format(...args));
  console.debug = (...args: unknown[]) => logger.debug(format(...args));
  console.warn = (...args: unknown[]) => logger.warn(format(...args));
  console.error = (...args: unknown[]) => logger.error(format(...args));
}

/** Returns the stack of an error, or its text when it has none. */
function errorText(error: unknown): string {
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}

async function main(argv: readonly string[]): Promise<void> {
  const logger = new PluginLogger({ stderrLevel: logLevelFromEnvironment(process.env.CELLFLEET_LOG_LEVEL) });
  redirectConsole(logger);

  const fatal = (event: string, error: unknown) => {
    logger.error(`${event}: ${errorText(error)}`);
    process.exitCode = 1;
    setTimeout(() => process.exit(1), FATAL_EXIT_DELAY_MS);
  };
  process.on("uncaughtException", (error) => fatal("uncaught exception", error));
  // A stray rejection is logged but does not stop operations that are still running on cells.
  process.on("unhandledRejection", (reason) => logger.error(`unhandled promise rejection: ${errorText(reason)}`));

  const { engineAddress } = parsePluginArguments(argv);
  if (engineAddress !== undefined) logger.connectEngine(engineAddress);

  const server = new ProviderServer({ logger });
  registerResource(createContainerHandler(server.getConfig));
  registerResource(createSecurityGroupHandler(server.getConfig));
  registerResource(createNetworkPolicyHandler(server.getConfig));
  const port = await server.listen();
  process.stdout.write(`${port}\n`);

  const stop = (signal: NodeJS.Signals) => {
    logger.debug(`received ${signal}; shutting down`);
    server.cancel();
    // Ending the SSH sessions lets each cell's agent exit at once rather than when the connection times out.
    const shutdown = server.close().then(() => closeAllCellSessions());
    shutdown.then(
      () => process.exit(0),
      (error: unknown) => fatal("shutdown failed", error),
    );
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    process.stderr.write(`cellfleet error: plugin failed to start: ${errorText(error)}\n`);
    process.exit(1);
  });
}
