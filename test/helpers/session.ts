// Provider-side access to a test cell: the CellConfig a stack would use, and
// a pooled SSH session with the real agent bundle.
import path from "node:path";

import { cellConfigSchema, type CellConfig } from "../../provider/src/transport/cell-config";
import { getCellSession, type CellSession } from "../../provider/src/transport/pool";
import type { Cell } from "./cell";
import { findRepoRoot } from "./cell";

export function cellConfigFor(cell: Cell, overrides: Partial<CellConfig> = {}): CellConfig {
  return cellConfigSchema.parse({
    host: cell.host,
    port: cell.port,
    user: cell.user,
    privateKey: cell.privateKey,
    hostKey: cell.hostPublicKey,
    dialTimeout: 10,
    dialRetries: 2,
    ...overrides,
  });
}

export function sessionFor(cell: Cell): Promise<CellSession> {
  return getCellSession(cellConfigFor(cell));
}

/** Returns the path of a busybox test image that scripts/build-test-image.sh builds. */
export function testImagePath(name: "busybox-rootfs.tar" | "busybox-oci.tar" = "busybox-rootfs.tar"): string {
  return path.join(findRepoRoot(), ".cache", "images", name);
}
