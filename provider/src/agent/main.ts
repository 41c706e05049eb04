/**
 * Entry point of the agent bundle on a cell:
 *   node agent.js serve   RPC loop for one provider connection, as root
 *   node agent.js init    container init, started by the launcher only
 */
import { runInit } from "./container/init";
import { serve } from "./server";

const mode = process.argv[2];
if (mode === "serve") {
  serve().then(
    () => process.exit(0),
    (error) => {
      process.stderr.write(`cellfleet agent: ${(error as Error).stack ?? error}\n`);
      process.exit(1);
    },
  );
} else if (mode === "init") {
  runInit();
} else {
  process.stderr.write(`usage: node agent.js serve|init (got ${JSON.stringify(mode)})\n`);
  process.exit(2);
}
