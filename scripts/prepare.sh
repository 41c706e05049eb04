#!/usr/bin/env bash
# Prepares everything the demo and the tests need on this machine, and is
# safe to run again: Debian packages, the TypeScript build and agent bundle,
# the Pulumi CLI, and the busybox test images. Prints the export lines that
# put the Pulumi CLI and the provider plugin on PATH; callers eval them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $(id -u) -ne 0 ]]; then
  echo "cellfleet needs root on this machine: local cells use network namespaces, cgroups and mounts. Run as root." >&2
  exit 1
fi

bash scripts/ensure-system.sh >&2
npm run --silent build >&2
pulumi_binary=$(bash scripts/ensure-pulumi.sh)
bash scripts/build-test-image.sh .cache/images >&2

# The engine finds the plugin binary pulumi-resource-cellfleet on PATH.
printf 'export PATH=%q:%q:"$PATH"\n' "$(dirname "$pulumi_binary")" "$PWD/provider/bin"
