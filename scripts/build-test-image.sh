#!/usr/bin/env bash
# Builds the busybox test image that container tests run in, in two forms:
#
#   OUTDIR/busybox-rootfs.tar  plain root file system archive
#   OUTDIR/busybox-oci.tar     the same files as a one-layer OCI image layout
#                              (oci-layout, index.json, blobs/sha256/...)
#
# Both archives are reproducible: fixed mtimes, sorted names and numeric
# owners, and gzip without a name or timestamp, so the image digest only
# changes when this script or the busybox-static package changes. The build
# is skipped when both archives are newer than this script and /bin/busybox.
#
# Must run as root, because the archive records /home/app as owned by
# 1000:1000 and only root can set that owner on the staged files.
set -euo pipefail

readonly busybox=/bin/busybox
# 1970-01-01T00:00:00Z for every file and for the image creation time.
readonly fixed_epoch=0
readonly fixed_created=1970-01-01T00:00:00Z

log() {
  echo "build-test-image.sh: $*" >&2
}

die() {
  log "$*"
  exit 1
}

if [[ $# -ne 1 ]]; then
  echo "Usage: build-test-image.sh OUTDIR" >&2
  exit 2
fi

outdir=$1
rootfs_tar=$outdir/busybox-rootfs.tar
oci_tar=$outdir/busybox-oci.tar
script_path=$(readlink -f "${BASH_SOURCE[0]}")

[[ $(id -u) -eq 0 ]] || die "must run as root to give /home/app the owner 1000:1000 in the archive"
[[ -x $busybox ]] || die "$busybox not found; run scripts/ensure-system.sh to install busybox-static"
command -v node >/dev/null || die "node not found; install Node.js, which this script uses to write the OCI JSON documents"

if [[ $rootfs_tar -nt $script_path && $rootfs_tar -nt $busybox &&
  $oci_tar -nt $script_path && $oci_tar -nt $busybox ]]; then
  log "$rootfs_tar and $oci_tar are up to date"
  exit 0
fi

mkdir -p "$outdir"
work=$(mktemp -d "${TMPDIR:-/tmp}/cellfleet-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Writes a tar archive of the entries of directory $2 to file $1. The fixed
# mtime, name order and numeric owners make the bytes depend only on the file
# contents, modes and owners. The ustar format stores no access or change
# times, unlike pax, and tar fails on a path that its 100-byte name and
# 155-byte prefix fields cannot hold.
write_reproducible_tar() {
  local archive=$1 dir=$2 entries=()
  mapfile -t entries < <(cd "$dir" && LC_ALL=C ls -A)
  tar --create --file="$archive" --directory="$dir" \
    --format=ustar --sort=name --numeric-owner --mtime="@$fixed_epoch" \
    -- "${entries[@]}"
}

# --- root file system ------------------------------------------------------

rootfs=$work/rootfs
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,proc,sys,dev,root,home/app}
cp "$busybox" "$rootfs/bin/busybox"

# busybox --list-full prints each applet's conventional path relative to /
# (bin/sh, sbin/ifconfig, usr/bin/awk, ...). Absolute links resolve inside the
# container, where the rootfs is /.
applet_count=0
while read -r applet_path; do
  if [[ $applet_path == bin/busybox || -e $rootfs/$applet_path ]]; then
    continue
  fi
  mkdir -p "$(dirname "$rootfs/$applet_path")"
  ln -s /bin/busybox "$rootfs/$applet_path"
  applet_count=$((applet_count + 1))
done < <("$busybox" --list-full)
[[ $applet_count -gt 0 ]] || die "$busybox --list-full printed no applets"

cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
app:x:1000:
nobody:x:65534:
EOF

# Set every mode explicitly, so that the caller's umask cannot change the
# archive.
find "$rootfs" -type d -exec chmod 0755 {} +
find "$rootfs" -type f -exec chmod 0644 {} +
chmod 0755 "$rootfs/bin/busybox"
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root"
chown -R 0:0 "$rootfs"
chown 1000:1000 "$rootfs/home/app"

write_reproducible_tar "$work/busybox-rootfs.tar" "$rootfs"
log "root file system: $applet_count applet links, $(stat -c %s "$work/busybox-rootfs.tar") bytes"

# --- OCI image layout --------------------------------------------------------

layout=$work/oci
blobs=$layout/blobs/sha256
mkdir -p "$blobs"

sha256_of() {
  sha256sum "$1" | awk '{ print $1 }'
}

# Moves file $1 into the blob store under its digest and prints the digest.
store_blob() {
  local digest
  digest=$(sha256_of "$1")
  mv "$1" "$blobs/$digest"
  echo "$digest"
}

# The config lists the digest of the uncompressed layer (diff_id), and the
# manifest lists the digest and size of the compressed blob.
diff_id=$(sha256_of "$work/busybox-rootfs.tar")
gzip -n -9 <"$work/busybox-rootfs.tar" >"$work/layer.tar.gz"
layer_size=$(stat -c %s "$work/layer.tar.gz")
layer_digest=$(store_blob "$work/layer.tar.gz")

case $(dpkg --print-architecture) in
  amd64) architecture=amd64 variant= ;;
  arm64) architecture=arm64 variant=v8 ;;
  armhf) architecture=arm variant=v7 ;;
  i386) architecture=386 variant= ;;
  *) die "no OCI architecture name known for Debian architecture $(dpkg --print-architecture)" ;;
esac

# JSON.stringify keeps the key order written here and adds no whitespace, so
# the documents, and with them their digests, are stable.
write_json() {
  local file=$1 program=$2
  node -e "$program" >"$file"
}

export architecture variant diff_id layer_digest layer_size fixed_created
write_json "$work/config.json" '
const env = process.env;
const platform = { architecture: env.architecture, os: "linux" };
if (env.variant) platform.variant = env.variant;
process.stdout.write(JSON.stringify({
  created: env.fixed_created,
  ...platform,
  config: {
    Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    Cmd: ["/bin/sh"],
    WorkingDir: "/",
  },
  rootfs: { type: "layers", diff_ids: ["sha256:" + env.diff_id] },
  history: [{ created: env.fixed_created, created_by: "scripts/build-test-image.sh" }],
}));
'
config_size=$(stat -c %s "$work/config.json")
config_digest=$(store_blob "$work/config.json")

export config_digest config_size
write_json "$work/manifest.json" '
const env = process.env;
process.stdout.write(JSON.stringify({
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {
    mediaType: "application/vnd.oci.image.config.v1+json",
    digest: "sha256:" + env.config_digest,
    size: Number(env.config_size),
  },
  layers: [{
    mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
    digest: "sha256:" + env.layer_digest,
    size: Number(env.layer_size),
  }],
}));
'
manifest_size=$(stat -c %s "$work/manifest.json")
manifest_digest=$(store_blob "$work/manifest.json")

export manifest_digest manifest_size
write_json "$layout/index.json" '
const env = process.env;
const platform = { architecture: env.architecture, os: "linux" };
if (env.variant) platform.variant = env.variant;
process.stdout.write(JSON.stringify({
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.index.v1+json",
  manifests: [{
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    digest: "sha256:" + env.manifest_digest,
    size: Number(env.manifest_size),
    platform,
    annotations: { "org.opencontainers.image.ref.name": "latest" },
  }],
}));
'
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

find "$layout" -type d -exec chmod 0755 {} +
find "$layout" -type f -exec chmod 0644 {} +
chown -R 0:0 "$layout"
write_reproducible_tar "$work/busybox-oci.tar" "$layout"

# Replace the outputs only once both are complete, so an interrupted build
# never leaves an archive that the up-to-date check would accept.
mv -f "$work/busybox-rootfs.tar" "$rootfs_tar"
mv -f "$work/busybox-oci.tar" "$oci_tar"
log "wrote $rootfs_tar"
log "wrote $oci_tar (manifest sha256:$manifest_digest)"
