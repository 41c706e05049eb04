/**
 * The agent bundle on the provider's side: the files that the bundler wrote
 * into dist-agent/ and their manifest. The digest over the manifest names the
 * install directory on the cell, so each agent version is installed once and
 * never changed in place.
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";

import { z } from "zod";

export interface AgentBundleFile {
  /** A plain file name, such as "agent.js", which the file keeps on the cell. */
  name: string;
  localPath: string;
  /** Lowercase hex SHA-256 of the file, from the manifest. */
  sha256: string;
  /** File mode on the cell. */
  mode: number;
}

export interface AgentBundle {
  /** Lowercase hex SHA-256 over the sorted "name sha256\n" lines of the manifest. */
  digest: string;
  files: AgentBundleFile[];
}

/** The file that the agent's main module has in every bundle. */
export const AGENT_ENTRY_FILE = "agent.js";
const PROVIDER_PACKAGE_NAME = "@cellfleet/provider";

/**
 * Mode of every bundle file on the cell. World-readable, because the
 * container init that loads the agent's native module runs as an
 * unprivileged mapped uid.
 */
const BUNDLE_FILE_MODE = 0o644;

const manifestSchema = z.object({
  files: z
    .array(
      z.object({
        name: z
          .string()
          .regex(/^[A-Za-z0-9_][A-Za-z0-9._-]*$/, "a file name must be a plain name without a slash or a leading dot"),
        sha256: z.string().regex(/^[0-9a-f]{64}$/, "sha256 must be 64 lowercase hex digits"),
      }),
    )
    .min(1, "the manifest lists no files"),
});

/** Computes the bundle digest from the manifest's names and hashes, in any order of the entries. */
export function bundleDigest(files: { name: string; sha256: string }[]): string {
  const lines = files
    .map((file) => `${file.name} ${file.sha256}\n`)
    .sort()
    .join("");
  return createHash("sha256").update(lines).digest("hex");
}

/**
 * Returns the root of the provider package, which contains dist-agent/. The
 * compiled code runs from <repo>/dist/provider/src/transport/, outside the
 * package, so the search checks a "provider" folder beside each ancestor
 * and falls back to resolving the workspace package by name.
 */
export function providerPackageRoot(start: string = __dirname): string {
  const isProviderPackage = (dir: string): boolean => {
    const packageJson = join(dir, "package.json");
    if (!existsSync(packageJson)) {
      return false;
    }
    try {
      return JSON.parse(readFileSync(packageJson, "utf8")).name === PROVIDER_PACKAGE_NAME;
    } catch {
      return false;
    }
  };

  for (let dir = start; ; dir = dirname(dir)) {
    if (isProviderPackage(dir)) {
      return dir;
    }
    if (isProviderPackage(join(dir, "provider"))) {
      return join(dir, "provider");
    }
    if (dirname(dir) === dir) {
      break;
    }
  }
  try {
    return dirname(require.resolve(`${PROVIDER_PACKAGE_NAME}/package.json`));
  } catch (error) {
    throw new Error(`the package ${PROVIDER_PACKAGE_NAME} was not found above ${start} or through require.resolve`, {
      cause: error,
    });
  }
}

export function defaultAgentBundleDir(): string {
  return join(providerPackageRoot(), "dist-agent");
}

function sha256OfFile(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

/**
 * Reads `manifest.json` in `dir` and checks every listed file against its
 * hash, so that a stale or half-written bundle fails here with a clear
 * message instead of failing verification on every cell.
 */
export function loadAgentBundle(dir: string = defaultAgentBundleDir()): AgentBundle {
  const manifestPath = join(dir, "manifest.json");
  const rebuild = "run `npm run build`, which bundles the agent";

  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(manifestPath, "utf8"));
  } catch (error) {
    const missing = (error as NodeJS.ErrnoException).code === "ENOENT";
    throw new Error(
      missing
        ? `agent bundle manifest ${manifestPath} not found: ${rebuild}`
        : `agent bundle manifest ${manifestPath} could not be read: ${(error as Error).message}`,
      { cause: error },
    );
  }

  const parsed = manifestSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join(".") || "(root)"}: ${issue.message}`);
    throw new Error(`agent bundle manifest ${manifestPath} is invalid: ${problems.join("; ")}`);
  }

  const names = parsed.data.files.map((file) => file.name);
  const duplicate = names.find((name, index) => names.indexOf(name) !== index);
  if (duplicate !== undefined) {
    throw new Error(`agent bundle manifest ${manifestPath} is invalid: it lists ${duplicate} twice`);
  }
  if (!names.includes(AGENT_ENTRY_FILE)) {
    throw new Error(`agent bundle manifest ${manifestPath} is invalid: it does not list ${AGENT_ENTRY_FILE}`);
  }

  const files: AgentBundleFile[] = [];
  for (const entry of parsed.data.files) {
    const localPath = join(dir, entry.name);
    let actual: string;
    try {
      actual = sha256OfFile(localPath);
    } catch (error) {
      throw new Error(`agent bundle file ${localPath} could not be read: ${(error as Error).message}; ${rebuild}`, {
        cause: error,
      });
    }
    if (actual !== entry.sha256) {
      throw new Error(
        `agent bundle file ${localPath} has sha256 ${actual}, but ${manifestPath} lists ${entry.sha256}: ${rebuild}`,
      );
    }
    files.push({ name: entry.name, localPath, sha256: entry.sha256, mode: BUNDLE_FILE_MODE });
  }

  return { digest: bundleDigest(files), files };
}
