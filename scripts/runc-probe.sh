#!/usr/bin/env bash
# Runs the hardening probe (test/fixtures/probe.sh) in a runc container with
# the default configuration of `runc spec`, on the same image the cellfleet
# hardening tests use, and prints the probe's output. docs/SECURITY.md
# compares the two. Needs root and runc (Debian package runc).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

image=.cache/images/probe-rootfs.tar
if [[ ! -f $image ]]; then
  echo "runc-probe.sh: $image is missing; run the hardening tests once (npm test) to build it" >&2
  exit 1
fi
command -v runc >/dev/null || { echo "runc-probe.sh: runc not found; apt-get install runc" >&2; exit 1; }

bundle=$(mktemp -d /tmp/cellfleet-runc-probe-XXXXXX)
id=cellfleet-probe-$$
cleanup() {
  runc delete --force "$id" >/dev/null 2>&1 || true
  rm -rf "$bundle"
}
trap cleanup EXIT

mkdir "$bundle/rootfs"
tar -xf "$image" -C "$bundle/rootfs" --numeric-owner
(cd "$bundle" && runc spec)

# Keep the default configuration; only the process changes: no terminal, the probe as the command.
node -e '
  const fs = require("fs");
  const [file, script] = process.argv.slice(1);
  const spec = JSON.parse(fs.readFileSync(file, "utf8"));
  spec.process.terminal = false;
  spec.process.args = ["/bin/sh", "-c", fs.readFileSync(script, "utf8")];
  spec.process.cwd = "/tmp";
  fs.writeFileSync(file, JSON.stringify(spec, null, 2));
' "$bundle/config.json" test/fixtures/probe.sh

runc run --bundle "$bundle" "$id"
