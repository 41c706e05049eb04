#!/usr/bin/env bash
# Runs the whole suite: unit tests, integration tests against local cells
# (network namespaces with their own sshd), and end-to-end tests through the
# real Pulumi CLI. Needs root; installs what it needs on first use.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

eval "$(bash scripts/prepare.sh)"

# Cells left by an interrupted earlier run would hold addresses and cgroups.
for cell in $(bash scripts/cell.sh list); do
  case $cell in
    t-*) bash scripts/cell.sh remove "$cell" >&2 ;;
  esac
done

# A schema change without a regenerated SDK would ship an SDK that lies about the provider.
node dist/scripts/gen-sdk.js --check

exec npx mocha --config test/.mocharc.json "$@"
