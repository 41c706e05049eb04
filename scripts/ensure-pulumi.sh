#!/usr/bin/env bash
# Prints the path of a pulumi CLI binary on stdout and nothing else.
#
# Uses `pulumi` from PATH when there is one. Otherwise builds the CLI from the
# Go module github.com/pulumi/pulumi/pkg/v3 into a version-keyed cache, because
# the Go module proxy is the only source of Pulumi that CI machines reach.
# A first build takes minutes; later runs reuse the binary, and a rebuild
# after the binary was deleted reuses the Go module and build caches.
#
# Environment:
#   CELLFLEET_CACHE  cache root (default: $HOME/.cache/cellfleet)
set -euo pipefail

readonly pulumi_version=v3.276.0

# Keep stdout for the final path so that callers can use "$(ensure-pulumi.sh)".
exec 3>&1 1>&2

log() {
  echo "ensure-pulumi.sh: $*" >&2
}

if path=$(command -v pulumi); then
  echo "$path" >&3
  exit 0
fi

cache_root=${CELLFLEET_CACHE:-$HOME/.cache/cellfleet}
version_dir=$cache_root/pulumi/$pulumi_version
binary=$version_dir/pulumi
module_dir=$version_dir/module

# Checks that BINARY runs and reports the pinned version.
binary_is_current() {
  local reported
  [[ -x $1 ]] || return 1
  reported=$("$1" version 2>/dev/null) || return 1
  [[ $reported == "$pulumi_version" ]]
}

if binary_is_current "$binary"; then
  echo "$binary" >&3
  exit 0
fi

if ! command -v go >/dev/null; then
  PATH=/usr/local/go/bin:$PATH
fi
if ! command -v go >/dev/null; then
  log "go not found on PATH or in /usr/local/go/bin; install Go to build the Pulumi CLI"
  exit 1
fi

mkdir -p "$version_dir"

# Two CI steps may call this script at once. The lock makes the second wait
# for the first build instead of compiling the same packages in parallel.
exec 9>"$version_dir/.build.lock"
flock 9
if binary_is_current "$binary"; then
  echo "$binary" >&3
  exit 0
fi

log "building the Pulumi CLI $pulumi_version with $(go version) in $module_dir"
started=$SECONDS

rm -rf "$module_dir"
mkdir -p "$module_dir"
cd "$module_dir"

go mod init cellfleet.local/pulumi-cli
go mod edit \
  -require="github.com/pulumi/pulumi/pkg/v3@$pulumi_version" \
  -require="github.com/pulumi/pulumi/sdk/v3@$pulumi_version"

# The blank import keeps the CLI package, and so its whole dependency graph,
# in go.mod and go.sum when `go mod tidy` runs.
cat >tools.go <<'EOF'
//go:build tools

package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
EOF

go mod tidy
# Release builds stamp the version through the linker. Without the stamp
# `pulumi version` prints an empty line, and the Automation API of
# @pulumi/pulumi 3.276.0 rejects the CLI with "Failed to parse Pulumi CLI
# version" unless PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK is set.
go build \
  -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$pulumi_version" \
  -o "$binary.tmp" \
  github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
mv -f "$binary.tmp" "$binary"

if ! binary_is_current "$binary"; then
  log "built $binary, but '$binary version' did not print $pulumi_version"
  exit 1
fi

log "built $binary in $((SECONDS - started)) s"
echo "$binary" >&3
