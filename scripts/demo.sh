#!/usr/bin/env bash
# `npm run demo`: creates the local cell "demo" (a network namespace with its
# own sshd), then runs `pulumi up` on examples/quickstart against it.
# `npm run demo -- destroy` destroys the stack and removes the cell.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

action=${1:-up}
cell_file=.cache/demo-cell.json

eval "$(bash scripts/prepare.sh)"

cell_exists() {
  bash scripts/cell.sh list | grep -qx demo
}

case $action in
  up)
    if ! cell_exists || [[ ! -s $cell_file ]]; then
      bash scripts/cell.sh remove demo >/dev/null 2>&1 || true
      # State recorded against an earlier demo cell describes containers that went with it.
      rm -rf .cache/pulumi-state
      bash scripts/cell.sh create demo > "$cell_file.tmp"
      mv "$cell_file.tmp" "$cell_file"
    fi
    node dist/scripts/demo.js up "$cell_file"
    ;;
  destroy)
    if cell_exists && [[ -s $cell_file ]]; then
      node dist/scripts/demo.js destroy "$cell_file"
    fi
    bash scripts/cell.sh remove demo
    rm -rf "$cell_file" .cache/pulumi-state
    echo "The demo stack's resources and the cell \"demo\" are gone."
    ;;
  *)
    echo "usage: npm run demo [-- up|destroy] (got \"$action\")" >&2
    exit 2
    ;;
esac
