/**
 * Facts about the cell the agent runs on, read once per agent process:
 * its name and cgroup parent from /var/lib/cellfleet/cell.json (optional),
 * and what the kernel supports.
 */
import { promises as fs } from "node:fs";
import os from "node:os";

import { CELL_PATHS, CellFacts } from "../common/protocol";
import { detectCgroupVersion } from "./container/cgroup";
import { quotaSupport } from "./container/quota";
import { readJson } from "./files";

export const AGENT_VERSION = "0.1.0";

export interface CellSettings {
  name: string;
  /** The cgroup every container of this cell is created under, such as "cellfleet". */
  cgroupParent: string;
  cgroupVersion: 1 | 2;
}

let cached: Promise<CellSettings> | undefined;

export function cellSettings(): Promise<CellSettings> {
  cached ??= (async () => {
    const file = await readJson<{ name?: string; cgroupParent?: string }>(CELL_PATHS.cellConfig);
    const cgroupParent = file?.cgroupParent ?? "cellfleet";
    if (!/^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/.test(cgroupParent)) {
      throw new Error(`cgroupParent ${JSON.stringify(cgroupParent)} in ${CELL_PATHS.cellConfig} must be a relative cgroup path such as "cellfleet"`);
    }
    return { name: file?.name ?? os.hostname(), cgroupParent, cgroupVersion: await detectCgroupVersion() };
  })();
  return cached;
}

async function overlaySupported(): Promise<boolean> {
  const filesystems = await fs.readFile("/proc/filesystems", "utf8").catch(() => "");
  return /\toverlay$/m.test(filesystems);
}

export async function probeCell(): Promise<CellFacts> {
  const settings = await cellSettings();
  return {
    cell: settings.name,
    agentVersion: AGENT_VERSION,
    nodeVersion: process.version,
    kernel: os.release(),
    cgroupVersion: settings.cgroupVersion,
    overlay: await overlaySupported(),
    quota: await quotaSupport(),
  };
}

/** Creates the state directories with the modes containers rely on. */
export async function ensureLayout(): Promise<void> {
  await fs.mkdir(CELL_PATHS.incoming, { recursive: true, mode: 0o700 });
  await fs.mkdir(CELL_PATHS.containers, { recursive: true, mode: 0o711 });
  await fs.mkdir(CELL_PATHS.run, { recursive: true, mode: 0o700 });
  // Mapped container roots traverse these to reach their layers; 0711 lets them pass without listing.
  for (const directory of [CELL_PATHS.root, CELL_PATHS.images, CELL_PATHS.containers]) await fs.chmod(directory, 0o711);
}
