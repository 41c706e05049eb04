/** The cell session of the configured provider, shared by every resource handler. */
import type { CellConfig } from "../../transport/cell-config";
import { getCellSession, type CellSession } from "../../transport/pool";
import type { OperationContext } from "../resource";

export function sessionFor(getConfig: () => CellConfig | undefined, context: OperationContext): Promise<CellSession> {
  const config = getConfig();
  if (!config) throw new Error("the cellfleet provider is not configured: set cellfleet:host, privateKey and hostKey (or knownHostsFile)");
  return getCellSession(config, { log: (message) => context.log.info(message), signal: context.signal });
}
