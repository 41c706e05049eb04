// Builds the image the hardening tests use: the busybox test rootfs plus a
// static probe program (test/fixtures/probe.c), a setuid-root copy of it,
// and decoy binaries named like runtime tools that leave a mark if run.
import { execFile } from "node:child_process";
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

import { findRepoRoot } from "./cell";
import { testImagePath } from "./session";

const run = promisify(execFile);

/** Decoys: if the runtime ever ran one of these from the image, /tmp/planted-ran would appear. */
export const DECOY_PATHS = ["usr/bin/node", "usr/bin/nsenter", "usr/bin/unshare", "sbin/init", "usr/local/bin/cellfleet-init"];

export async function buildProbeImage(): Promise<string> {
  const repoRoot = findRepoRoot();
  const output = path.join(repoRoot, ".cache", "images", "probe-rootfs.tar");
  const staging = mkdtempSync(path.join(os.tmpdir(), "cellfleet-probe-image-"));
  try {
    const bin = path.join(staging, "usr/local/bin");
    mkdirSync(bin, { recursive: true });
    await run("gcc", ["-static", "-O1", "-o", path.join(bin, "probe"), path.join(repoRoot, "test/fixtures/probe.c")]);
    copyFileSync(path.join(bin, "probe"), path.join(bin, "probe-suid"));
    chmodSync(path.join(bin, "probe-suid"), 0o4755);
    for (const decoy of DECOY_PATHS) {
      mkdirSync(path.dirname(path.join(staging, decoy)), { recursive: true });
      writeFileSync(path.join(staging, decoy), "#!/bin/sh\necho ran > /tmp/planted-ran\n", { mode: 0o755 });
    }
    copyFileSync(testImagePath(), output);
    const members = ["./usr/local/bin/probe", "./usr/local/bin/probe-suid", ...DECOY_PATHS.map((decoy) => `./${decoy}`)];
    await run("tar", ["-rf", output, "--numeric-owner", "--owner=0", "--group=0", "-C", staging, ...members]);
    return output;
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}

export interface PlantedEntry {
  path: string;
  symlinkTo?: string;
  content?: string;
}

/**
 * Builds a variant of the busybox test image with entries removed and
 * planted, for images crafted to attack the runtime.
 */
export async function buildVariantImage(name: string, remove: string[], plant: PlantedEntry[]): Promise<string> {
  const output = path.join(findRepoRoot(), ".cache", "images", `${name}.tar`);
  const staging = mkdtempSync(path.join(os.tmpdir(), "cellfleet-variant-image-"));
  try {
    copyFileSync(testImagePath(), output);
    if (remove.length > 0) await run("tar", ["--delete", "-f", output, ...remove]);
    for (const entry of plant) {
      const target = path.join(staging, entry.path);
      mkdirSync(path.dirname(target), { recursive: true });
      if (entry.symlinkTo !== undefined) symlinkSync(entry.symlinkTo, target);
      else writeFileSync(target, entry.content ?? "");
    }
    await run("tar", ["-rf", output, "--numeric-owner", "--owner=0", "--group=0", "-C", staging, ...plant.map((entry) => entry.path)]);
    return output;
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}
