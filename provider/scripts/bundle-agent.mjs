// Bundles the agent into one file with koffi's native module beside it, and
// writes manifest.json with each file's sha256 so the provider can install
// the bundle on a cell content-addressed and verify it there.
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const providerRoot = path.resolve(here, "..");
const outDir = path.join(providerRoot, "dist-agent");
const require = createRequire(import.meta.url);

// koffi picks its native binary at run time from a list of paths next to its
// own package, and in a bundle those paths do not exist. This plugin replaces
// koffi's platform package with a direct require of koffi.node beside the
// bundle, for the platform the bundle is built on.
const platformPackage = `@koromix/koffi-${process.platform}-${process.arch}`;
const nativeSource = path.join(path.dirname(require.resolve(`${platformPackage}/package.json`)), `${process.platform}_${process.arch}`, "koffi.node");

const koffiNative = {
  name: "koffi-native",
  setup(builder) {
    // koffi's ESM entry locates itself through import.meta.url, which a CommonJS bundle lacks.
    builder.onResolve({ filter: /^koffi$/ }, () => ({ path: require.resolve("koffi") }));
    builder.onResolve({ filter: new RegExp(`^${platformPackage.replace("/", "\\/")}$`) }, () => ({ path: "koffi-native", namespace: "koffi-native" }));
    builder.onLoad({ filter: /.*/, namespace: "koffi-native" }, () => ({
      contents: 'module.exports = require(require("node:path").join(__dirname, "koffi.node"));',
      loader: "js",
    }));
  },
};

rmSync(outDir, { recursive: true, force: true });
mkdirSync(outDir, { recursive: true });
await build({
  entryPoints: [path.join(providerRoot, "src/agent/main.ts")],
  bundle: true,
  platform: "node",
  target: "node18",
  format: "cjs",
  outfile: path.join(outDir, "agent.js"),
  external: ["koffi-native"],
  plugins: [koffiNative],
  legalComments: "none",
  logLevel: "warning",
});
copyFileSync(nativeSource, path.join(outDir, "koffi.node"));

const files = ["agent.js", "koffi.node"].map((name) => ({
  name,
  sha256: createHash("sha256").update(readFileSync(path.join(outDir, name))).digest("hex"),
}));
writeFileSync(path.join(outDir, "manifest.json"), `${JSON.stringify({ files }, null, 2)}\n`);
