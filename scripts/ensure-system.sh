#!/usr/bin/env bash
# Installs the Debian packages that the test cells, the test image build and
# the agent need. Installs nothing when every package is already present, so
# it is safe to run at the start of every CI run.
set -euo pipefail

packages=(
  openssh-server
  openssh-client
  nftables
  conntrack
  iproute2
  util-linux
  busybox-static
  sudo
  tar
  xz-utils
  coreutils
  procps
  e2fsprogs
  gcc
  libc6-dev
)

if [[ $(id -u) -ne 0 ]]; then
  echo "ensure-system.sh: must run as root to install Debian packages; rerun with sudo" >&2
  exit 1
fi

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  if [[ $status != installed ]]; then
    missing+=("$package")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "ensure-system.sh: all required packages are installed" >&2
  exit 0
fi

echo "ensure-system.sh: installing ${missing[*]}" >&2

# The openssh-server maintainer script starts a host-wide sshd through
# invoke-rc.d, which first runs policy-rc.d, and exit code 101 from it means
# "action forbidden". Tests run sshd only inside cell namespaces, so a
# temporary policy-rc.d keeps the host free of an sshd on its real interfaces.
# An existing policy-rc.d is left as it is.
policy=/usr/sbin/policy-rc.d
temporary_policy=false
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  temporary_policy=true
fi
remove_temporary_policy() {
  if [[ $temporary_policy == true ]]; then
    rm -f "$policy"
  fi
}
trap remove_temporary_policy EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update >&2
apt-get install -y --no-install-recommends "${missing[@]}" >&2

echo "ensure-system.sh: installed ${missing[*]}" >&2
