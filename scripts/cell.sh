#!/usr/bin/env bash
# Creates, enters, lists and removes local test cells.
#
# A cell imitates a remote Linux host. It is a network namespace cf-NAME,
# joined to the host by a veth pair, with its own sshd on its own address.
# The sshd runs in a private mount namespace in which /var/lib/cellfleet and
# /run/cellfleet are bind mounts of directories in the cell's state
# directory, so two cells on one machine never see each other's agent state.
#
# Addressing: cell INDEX (0..255) owns 198.18.INDEX.0/30 from the RFC 2544
# benchmarking range. The host side of the veth is 198.18.INDEX.1 and the cell
# side, where sshd listens, is 198.18.INDEX.2. Cells get no default route, so
# their traffic can only reach the host end of their own veth.
#
# Must run as root. Log lines go to stderr; `create` prints one JSON object on
# stdout and nothing else.
set -euo pipefail

readonly state_root=/var/tmp/cellfleet-cells
# Serializes index allocation and the bookkeeping of host-wide changes between
# concurrent runs. /run/lock is the standard place for such lock files.
readonly lock_file=/run/lock/cellfleet-cells.lock
# Lists the host-wide directories and mounts that cell.sh created, one
# "<kind> <path>" line each, so that removing the last cell can undo them.
readonly host_changes_file=$state_root/.host-changes
readonly ssh_port=22
readonly start_timeout_seconds=10
readonly term_grace_seconds=3
readonly kill_timeout_seconds=5
readonly cgroup_timeout_seconds=5

usage() {
  cat >&2 <<'EOF'
Usage:
  cell.sh create NAME [INDEX]   create cell NAME; INDEX (0..255) selects 198.18.INDEX.0/30,
                                default: the lowest free index
  cell.sh remove NAME           remove cell NAME and everything it started (idempotent)
  cell.sh exec NAME -- CMD...   run CMD in the cell's network and mount namespaces
  cell.sh list                  print the names of existing cells, one per line

NAME is 1 to 11 characters from a-z, 0-9 and '-'.
EOF
}

log() {
  echo "cell.sh: $*" >&2
}

die() {
  log "$*"
  exit 1
}

require_root() {
  [[ $(id -u) -eq 0 ]] || die "must run as root, because cells need network and mount namespaces"
}

# The kernel limits interface names to 15 bytes, and the longest link name
# derived from NAME is "cfh-NAME", so NAME may have at most 11 characters.
validate_name() {
  [[ $1 =~ ^[a-z0-9-]{1,11}$ ]] ||
    die "invalid cell name '$1': use 1 to 11 characters from a-z, 0-9 and '-'"
}

# Sets the global names derived from cell name $1.
set_cell_names() {
  name=$1
  netns=cf-$name
  host_link=cfh-$name
  cell_link=cfc-$name
  state_dir=$state_root/$name
  cgroup_parent=cellfleet-$name
}

json_string() {
  local value=$1
  value=${value//\\/\\\\}
  value=${value//\"/\\\"}
  printf '"%s"' "$value"
}

lock_held=false

# Takes the global lock once per process. A second flock on a new file
# descriptor would wait for this process's own lock, so later calls return
# at once.
take_lock() {
  if [[ $lock_held == true ]]; then
    return
  fi
  exec 8>"$lock_file"
  flock -w 60 8 || die "timed out after 60 s waiting for $lock_file"
  lock_held=true
}

release_lock() {
  if [[ $lock_held == true ]]; then
    flock -u 8
    exec 8>&-
    lock_held=false
  fi
}

# --- IPv4 arithmetic and route checks -------------------------------------

ipv4_to_int() {
  local a b c d
  IFS=. read -r a b c d <<<"$1"
  echo $(((a << 24) | (b << 16) | (c << 8) | d))
}

# Succeeds when prefixes $1 and $2 (CIDR; a bare address means /32) share at
# least one address, which is the case when the shorter prefix contains the
# network address of the longer one.
prefixes_overlap() {
  local address1=${1%/*} address2=${2%/*} length1=32 length2=32 shorter mask
  [[ $1 == */* ]] && length1=${1#*/}
  [[ $2 == */* ]] && length2=${2#*/}
  shorter=$((length1 < length2 ? length1 : length2))
  mask=$(((0xffffffff << (32 - shorter)) & 0xffffffff))
  (((($(ipv4_to_int "$address1") ^ $(ipv4_to_int "$address2")) & mask) == 0))
}

# Prints the destination of every IPv4 route in every routing table, except
# default routes. A default route matches every address, but a cell's /30 is
# more specific, so the kernel still sends cell traffic to the cell's veth.
route_destinations() {
  local first second
  while read -r first second _; do
    case $first in
      unicast | local | broadcast | multicast | blackhole | unreachable | prohibit | throw | nat | anycast)
        first=$second
        ;;
    esac
    if [[ $first != default ]]; then
      echo "$first"
    fi
  done < <(ip -4 -o route show table all)
}

# Prints the first route destination that overlaps prefix $1, if any.
find_overlapping_route() {
  local destination
  while read -r destination; do
    if prefixes_overlap "$1" "$destination"; then
      echo "$destination"
      return
    fi
  done < <(route_destinations)
}

# Prints the indexes reserved by cell state directories, including those of
# cells whose creation has not yet added an address and so has no route yet.
reserved_indexes() {
  local index_file
  for index_file in "$state_root"/*/index; do
    if [[ -f $index_file ]]; then
      cat "$index_file"
    fi
  done
  return 0
}

# Prints the lowest index whose /30 is neither reserved by another cell nor
# overlapping an existing route. Must run with the lock held.
allocate_index() {
  local index reserved
  reserved=" $(reserved_indexes | tr '\n' ' ') "
  for ((index = 0; index <= 255; index++)); do
    if [[ $reserved == *" $index "* ]]; then
      continue
    fi
    if [[ -z $(find_overlapping_route "198.18.$index.0/30") ]]; then
      echo "$index"
      return
    fi
  done
  die "no free cell subnet: every 198.18.INDEX.0/30 (INDEX 0..255) overlaps a route or belongs to a cell"
}

# --- host-wide changes ------------------------------------------------------

record_host_change() {
  echo "$1 $2" >>"$host_changes_file"
}

# Creates directory $1 if it is missing and records it for later undo.
ensure_host_dir() {
  if [[ ! -d $1 ]]; then
    mkdir -p "$1"
    record_host_change dir "$1"
  fi
}

# Undoes the recorded host-wide changes once no cell remains. Changes that
# cannot be undone yet, such as /run/netns while another tool still has a
# network namespace there, stay recorded for a later remove. Must run with the
# lock held.
undo_host_changes_if_idle() {
  local remaining kind path left=()

  remaining=$(list_cells)
  if [[ -n $remaining ]]; then
    return
  fi

  if [[ -f $host_changes_file ]]; then
    # Undo in reverse order, so that a mount goes before the directory under it.
    while read -r kind path; do
      case $kind in
        mount)
          if ! mountpoint -q "$path" 2>/dev/null; then
            continue
          fi
          if [[ -z $(ls -A "$path") ]] && umount "$path"; then
            continue
          fi
          ;;
        dir)
          if [[ ! -e $path ]]; then
            continue
          fi
          if ! mountpoint -q "$path" && rmdir "$path" 2>/dev/null; then
            continue
          fi
          ;;
      esac
      left+=("$kind $path")
    done < <(tac "$host_changes_file")

    if [[ ${#left[@]} -eq 0 ]]; then
      rm -f "$host_changes_file"
    else
      log "left in place because they are still in use: ${left[*]}"
      printf '%s\n' "${left[@]}" | tac >"$host_changes_file"
    fi
  fi

  rmdir "$state_root" 2>/dev/null || true
}

# --- process discovery and termination --------------------------------------

namespace_id() {
  stat -L -c '%d:%i' "$1" 2>/dev/null
}

# Prints the pid in $state_dir/sshd.pid if that process is still alive and in
# the cell's network namespace. The check guards against a recycled pid.
live_sshd_pid() {
  local pid netns_id
  [[ -f $state_dir/sshd.pid ]] || return 1
  pid=$(<"$state_dir/sshd.pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  netns_id=$(namespace_id "/run/netns/$netns") || return 1
  [[ $(namespace_id "/proc/$pid/ns/net") == "$netns_id" ]] || return 1
  echo "$pid"
}

# Prints the pids of every process that belongs to the cell: those in its
# network namespace, those in its mount namespace (containers may have their
# own network namespace but start in the cell's mount namespace), and all
# descendants of both. This script's own process and its ancestors are never
# listed.
cell_pids() {
  local seeds=() sshd_pid mount_ns_id proc pid ppid

  if [[ -e /run/netns/$netns ]]; then
    mapfile -t seeds < <(ip netns pids "$netns" 2>/dev/null || true)
  fi

  if sshd_pid=$(live_sshd_pid); then
    mount_ns_id=$(namespace_id "/proc/$sshd_pid/ns/mnt") || mount_ns_id=
    if [[ -n $mount_ns_id ]]; then
      for proc in /proc/[0-9]*; do
        if [[ $(namespace_id "$proc/ns/mnt") == "$mount_ns_id" ]]; then
          seeds+=("${proc#/proc/}")
        fi
      done
    fi
  fi

  if [[ ${#seeds[@]} -eq 0 ]]; then
    return
  fi

  # A process belongs to the cell when its parent does, so grow the set from
  # one snapshot of the process tree until it stops changing.
  local -A in_cell=() parent_of=()
  for pid in "${seeds[@]}"; do
    in_cell[$pid]=1
  done
  while read -r pid ppid; do
    parent_of[$pid]=$ppid
  done < <(ps -e -o pid=,ppid=)
  local grown=true
  while [[ $grown == true ]]; do
    grown=false
    for pid in "${!parent_of[@]}"; do
      if [[ -z ${in_cell[$pid]:-} && -n ${in_cell[${parent_of[$pid]}]:-} ]]; then
        in_cell[$pid]=1
        grown=true
      fi
    done
  done

  local self=$$ excluded=" "
  while [[ -n $self && $self != 0 ]]; do
    excluded+="$self "
    self=${parent_of[$self]:-}
  done
  excluded+="$BASHPID "

  for pid in "${!in_cell[@]}"; do
    if [[ $excluded != *" $pid "* && -d /proc/$pid ]]; then
      echo "$pid"
    fi
  done
}

# Succeeds while process $1 exists and is not a zombie. A zombie has exited
# and only waits for its parent to collect the status.
process_running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# Waits up to $1 seconds for the pids in the remaining arguments to exit, then
# prints those still running.
wait_for_exit() {
  local deadline=$((SECONDS + $1)) pid running=()
  shift
  while :; do
    running=()
    for pid in "$@"; do
      if process_running "$pid"; then
        running+=("$pid")
      fi
    done
    if [[ ${#running[@]} -eq 0 || $SECONDS -ge $deadline ]]; then
      break
    fi
    sleep 0.1
  done
  if [[ ${#running[@]} -gt 0 ]]; then
    printf '%s\n' "${running[@]}"
  fi
}

# Sends SIGTERM to every cell process, then SIGKILL to those still running
# after the grace period. Repeats in case a process forked while being
# stopped.
stop_cell_processes() {
  local pids=() running=()
  for _ in 1 2 3; do
    mapfile -t pids < <(cell_pids)
    if [[ ${#pids[@]} -eq 0 ]]; then
      return
    fi
    log "stopping ${#pids[@]} process(es) of cell $name: ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    mapfile -t running < <(wait_for_exit "$term_grace_seconds" "${pids[@]}")
    if [[ ${#running[@]} -gt 0 ]]; then
      log "killing process(es) that ignored SIGTERM: ${running[*]}"
      kill -KILL "${running[@]}" 2>/dev/null || true
      mapfile -t running < <(wait_for_exit "$kill_timeout_seconds" "${running[@]}")
      if [[ ${#running[@]} -gt 0 ]]; then
        log "process(es) still running after SIGKILL: ${running[*]}"
      fi
    fi
  done
}

# --- cgroups ----------------------------------------------------------------

# Prints the mount point of every cgroup v1 and v2 hierarchy on the host. This
# covers hybrid hosts (v1 controllers plus /sys/fs/cgroup/unified) and pure v2
# hosts (/sys/fs/cgroup) alike.
cgroup_mount_points() {
  local fields fstype
  while read -r -a fields; do
    # mountinfo has a variable number of optional fields, ended by "-".
    local i=6
    while [[ ${fields[i]} != - ]]; do
      i=$((i + 1))
    done
    fstype=${fields[i + 1]}
    if [[ $fstype == cgroup || $fstype == cgroup2 ]]; then
      printf '%b\n' "${fields[4]}"
    fi
  done </proc/self/mountinfo
}

# Prints every cgroup named $cgroup_parent, in any hierarchy and at any
# depth, except inside another cell's cgroup.
find_cell_cgroups() {
  local mount_point
  while read -r mount_point; do
    find "$mount_point" -mindepth 1 -type d \
      \( -name "$cgroup_parent" -prune -print \) -o \
      \( -name 'cellfleet-*' -prune \)
  done < <(cgroup_mount_points | sort -u)
}

# Thaws every cgroup below the cell's cgroups. A frozen process acts on no
# signal, not even SIGKILL, until it is thawed.
thaw_cgroups() {
  local group dir
  for group in "$@"; do
    while read -r dir; do
      if [[ -f $dir/freezer.state ]]; then
        echo THAWED >"$dir/freezer.state" 2>/dev/null || true
      fi
      if [[ -f $dir/cgroup.freeze ]]; then
        echo 0 >"$dir/cgroup.freeze" 2>/dev/null || true
      fi
    done < <(find "$group" -type d)
  done
}

# Removes the cgroup trees given as arguments. Kills the processes that are
# still members first, because the kernel refuses to remove a cgroup that has
# members.
remove_cgroups() {
  local group procs pid deadline
  for group in "$@"; do
    log "removing cgroup $group"

    if [[ -f $group/cgroup.kill ]]; then
      echo 1 >"$group/cgroup.kill" 2>/dev/null || true
    fi

    deadline=$((SECONDS + cgroup_timeout_seconds))
    while [[ -d $group ]]; do
      while read -r procs; do
        while read -r pid; do
          kill -KILL "$pid" 2>/dev/null || true
        done <"$procs"
      done < <(find "$group" -name cgroup.procs)

      # -depth lists children before their parent, the only order in which
      # rmdir can remove a cgroup tree.
      find "$group" -depth -type d -exec rmdir {} \; 2>/dev/null || true

      if [[ -d $group ]]; then
        if [[ $SECONDS -ge $deadline ]]; then
          log "failed to remove cgroup $group within ${cgroup_timeout_seconds} s"
          return 1
        fi
        sleep 0.1
      fi
    done
  done
}

# --- mounts and state -------------------------------------------------------

# Prints the mount points at or below $1 in this mount namespace, deepest
# first.
mounts_under() {
  local fields mount_point
  while read -r -a fields; do
    mount_point=$(printf '%b' "${fields[4]}")
    if [[ $mount_point == "$1" || $mount_point == "$1"/* ]]; then
      echo "$mount_point"
    fi
  done </proc/self/mountinfo | sort -r
}

unmount_under() {
  local mount_point
  while read -r mount_point; do
    log "unmounting $mount_point"
    umount "$mount_point" 2>/dev/null || umount --lazy "$mount_point"
  done < <(mounts_under "$1")
}

# --- subcommands -------------------------------------------------------------

# Removes cell $name and everything it started. Safe to run on a cell that
# does not exist or whose creation stopped half way.
remove_cell() {
  local failed=false cgroups=()

  mapfile -t cgroups < <(find_cell_cgroups)
  thaw_cgroups "${cgroups[@]}"
  stop_cell_processes
  # Search again for cgroups created while processes were stopping. Members
  # that were not found through the namespaces, such as container processes
  # with their own network and mount namespaces, are killed here.
  mapfile -t cgroups < <(find_cell_cgroups)
  remove_cgroups "${cgroups[@]}" || failed=true

  if ip link show "$host_link" >/dev/null 2>&1; then
    ip link delete "$host_link"
  fi
  if [[ -e /run/netns/$netns ]]; then
    ip netns delete "$netns"
  fi

  if [[ -d $state_dir ]]; then
    unmount_under "$state_dir"
    # --one-file-system keeps rm out of anything that is still mounted.
    rm -rf --one-file-system "$state_dir"
  fi

  take_lock
  undo_host_changes_if_idle
  release_lock

  if [[ $failed == true ]]; then
    die "removed cell $name except for the cgroups listed above; kill their members and rerun 'cell.sh remove $name'"
  fi
}

cmd_remove() {
  [[ $# -eq 1 ]] || {
    usage
    exit 2
  }
  validate_name "$1"
  require_root
  set_cell_names "$1"

  local started_ms
  started_ms=$(date +%s%3N)
  remove_cell
  log "removed cell $name in $(($(date +%s%3N) - started_ms)) ms"
}

# Runs inside the cell's new mount namespace, as `sh -c` with the state
# directory as $1, and ends by replacing itself with sshd, so that the pid
# started by cell.sh is the pid of sshd.
#
# nsenter joins the network namespace without touching mounts, unlike
# `ip netns exec`, which mounts a new /sys and so hides /sys/fs/cgroup. The
# script keeps the cgroup tree aside, mounts a sysfs that shows the cell's own
# network devices, and moves the cgroup tree back onto it.
# shellcheck disable=SC2016 # expanded by the inner sh
readonly cell_init_script='
set -e
state=$1
mount --bind "$state/lib" /var/lib/cellfleet
mount --bind "$state/run" /run/cellfleet
mount --rbind /sys/fs/cgroup "$state/cgroup-move"
umount --lazy /sys
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount --move "$state/cgroup-move" /sys/fs/cgroup
exec /usr/sbin/sshd -D -f "$state/sshd_config" -E "$state/sshd.log"
'

write_sshd_config() {
  cat >"$state_dir/sshd_config" <<EOF
# Generated by scripts/cell.sh for test cell $name.
ListenAddress $cell_address:$ssh_port
HostKey $state_dir/ssh_host_ed25519_key
PidFile $state_dir/sshd.pid
AuthorizedKeysFile $state_dir/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# StrictModes rejects any authorized_keys file below a group- or
# world-writable directory, and the state directory is below /var/tmp (mode
# 1777). The state directory itself is mode 0711 and owned by root.
StrictModes no
X11Forwarding no
PrintMotd no
Subsystem sftp internal-sftp
EOF
}

# Waits until sshd listens on the cell address. The check runs ss inside the
# cell's network namespace, so it sends no packets.
wait_for_sshd() {
  local deadline=$((SECONDS + start_timeout_seconds))
  while :; do
    if ! process_running "$sshd_pid"; then
      log "sshd of cell $name exited during startup; last lines of $state_dir/sshd.log:"
      tail -n 20 "$state_dir/sshd.log" >&2 2>/dev/null || true
      return 1
    fi
    if nsenter --net="/run/netns/$netns" ss -Htln |
      awk -v want="$cell_address:$ssh_port" '$4 == want { found = 1 } END { exit !found }'; then
      return 0
    fi
    if [[ $SECONDS -ge $deadline ]]; then
      log "timed out after ${start_timeout_seconds} s waiting for sshd of cell $name on $cell_address:$ssh_port"
      return 1
    fi
    sleep 0.05
  done
}

create_cell() {
  local index=$1 overlap netns_dir_existed=false netns_dir_was_mount=false

  take_lock

  if [[ -e $state_dir || -e /run/netns/$netns ]] || ip link show "$host_link" >/dev/null 2>&1; then
    die "cell $name already exists; run 'cell.sh remove $name' first"
  fi

  if [[ -z $index ]]; then
    index=$(allocate_index)
  else
    if [[ " $(reserved_indexes | tr '\n' ' ') " == *" $index "* ]]; then
      die "index $index is already used by another cell"
    fi
    overlap=$(find_overlapping_route "198.18.$index.0/30")
    if [[ -n $overlap ]]; then
      die "subnet 198.18.$index.0/30 overlaps the existing route $overlap; choose another INDEX"
    fi
  fi

  # From here on, a failure removes whatever this run created.
  create_started=true

  mkdir -p "$state_root"
  # 0711: sshd reads authorized_keys as the login user, who may not be root
  # (the sudo tests); the private key files stay 0600.
  mkdir -m 0711 "$state_dir"
  echo "$index" >"$state_dir/index"
  host_address=198.18.$index.1
  cell_address=198.18.$index.2

  log "creating cell $name: netns $netns, host $host_address, cell $cell_address"

  ensure_host_dir /var/lib/cellfleet
  ensure_host_dir /run/cellfleet
  # sshd requires its privilege separation directory to exist.
  ensure_host_dir /run/sshd

  # The first `ip netns add` on a machine creates /run/netns and turns it into
  # a shared bind mount of itself. Record both so the last remove undoes them.
  if [[ -d /run/netns ]]; then
    netns_dir_existed=true
  fi
  if mountpoint -q /run/netns 2>/dev/null; then
    netns_dir_was_mount=true
  fi
  ip netns add "$netns"
  if [[ $netns_dir_existed == false ]]; then
    record_host_change dir /run/netns
  fi
  if [[ $netns_dir_was_mount == false ]] && mountpoint -q /run/netns; then
    record_host_change mount /run/netns
  fi

  ip link add "$host_link" type veth peer name "$cell_link"
  ip link set "$cell_link" netns "$netns"
  ip address add "$host_address/30" dev "$host_link"
  ip link set "$host_link" up
  ip -n "$netns" address add "$cell_address/30" dev "$cell_link"
  ip -n "$netns" link set lo up
  ip -n "$netns" link set "$cell_link" up

  # The address now has a route, which reserves the subnet for later runs.
  release_lock

  mkdir -m 0755 "$state_dir/lib" "$state_dir/run" "$state_dir/cgroup-move"
  printf '{"name":%s,"cgroupParent":%s}\n' "$(json_string "$name")" "$(json_string "$cgroup_parent")" \
    >"$state_dir/lib/cell.json"

  ssh-keygen -q -t ed25519 -N '' -C "cellfleet-$name-host" -f "$state_dir/ssh_host_ed25519_key"
  ssh-keygen -q -t ed25519 -N '' -C "cellfleet-$name-client" -f "$state_dir/id_ed25519"
  install -m 0644 "$state_dir/id_ed25519.pub" "$state_dir/authorized_keys"
  write_sshd_config
  /usr/sbin/sshd -t -f "$state_dir/sshd_config" || die "sshd rejected $state_dir/sshd_config"

  # Every command in this chain replaces itself with the next one, because
  # nsenter forks only to enter a pid namespace, unshare forks only with
  # --fork, and the script ends in exec. So $! ends up being the pid of sshd. File descriptors 3 and 8 are closed so
  # that sshd holds neither this script's stdout nor the lock.
  nsenter --net="/run/netns/$netns" -- \
    unshare --mount --propagation private -- \
    /bin/sh -c "$cell_init_script" cell-init "$state_dir" \
    </dev/null >>"$state_dir/sshd.log" 2>&1 3>&- 8>&- &
  sshd_pid=$!
  echo "$sshd_pid" >"$state_dir/sshd.pid"

  wait_for_sshd
  if [[ $(readlink "/proc/$sshd_pid/exe") != /usr/sbin/sshd ]]; then
    die "process $sshd_pid is $(readlink "/proc/$sshd_pid/exe"), expected /usr/sbin/sshd"
  fi

  local host_key_type host_key_data fingerprint
  read -r host_key_type host_key_data _ <"$state_dir/ssh_host_ed25519_key.pub"
  fingerprint=$(ssh-keygen -l -E sha256 -f "$state_dir/ssh_host_ed25519_key.pub" | awk '{ print $2 }')

  cell_json=$(
    printf '{"name":%s,"netns":%s,"host":%s,"port":%d,"user":"root",' \
      "$(json_string "$name")" "$(json_string "$netns")" "$(json_string "$cell_address")" "$ssh_port"
    printf '"privateKeyPath":%s,"publicKeyPath":%s,' \
      "$(json_string "$state_dir/id_ed25519")" "$(json_string "$state_dir/id_ed25519.pub")"
    printf '"hostPublicKey":%s,"hostKeyFingerprint":%s,' \
      "$(json_string "$host_key_type $host_key_data")" "$(json_string "$fingerprint")"
    printf '"stateDir":%s,"sshdPid":%d,"cgroupParent":%s}' \
      "$(json_string "$state_dir")" "$sshd_pid" "$(json_string "$cgroup_parent")"
  )
  echo "$cell_json" >"$state_dir/cell.json"
}

create_started=false

on_create_exit() {
  local status=$?
  if [[ $status -ne 0 && $create_started == true ]]; then
    log "creating cell $name failed; removing what was created"
    trap - EXIT
    remove_cell || log "cleanup of cell $name failed; run 'cell.sh remove $name'"
  fi
  exit "$status"
}

cmd_create() {
  [[ $# -eq 1 || $# -eq 2 ]] || {
    usage
    exit 2
  }
  validate_name "$1"
  local index=${2:-}
  if [[ -n $index ]] && ! [[ $index =~ ^[0-9]{1,3}$ && $index -le 255 ]]; then
    die "invalid INDEX '$index': use an integer from 0 to 255"
  fi
  require_root
  for tool in ip nsenter unshare ss ssh-keygen flock mountpoint /usr/sbin/sshd; do
    command -v "$tool" >/dev/null || die "$tool not found; run scripts/ensure-system.sh"
  done
  set_cell_names "$1"

  # Keep stdout for the JSON object; everything else goes to stderr.
  exec 3>&1 1>&2

  local started_ms
  started_ms=$(date +%s%3N)
  trap on_create_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  create_cell "$index"
  trap - EXIT INT TERM

  log "created cell $name at $cell_address in $(($(date +%s%3N) - started_ms)) ms"
  echo "$cell_json" >&3
}

cmd_exec() {
  [[ $# -ge 3 && $2 == -- ]] || {
    usage
    exit 2
  }
  validate_name "$1"
  require_root
  set_cell_names "$1"
  shift 2

  local pid
  pid=$(live_sshd_pid) || die "cell $name is not running (no live sshd in network namespace $netns)"
  exec nsenter --target "$pid" --net --mount -- "$@"
}

# Prints the names of cells that have a state directory or a network
# namespace, so that a half-created cell is listed too.
list_cells() {
  {
    local dir
    for dir in "$state_root"/*/; do
      if [[ -d $dir ]]; then
        basename "$dir"
      fi
    done
    if [[ -d /run/netns ]]; then
      ip netns list 2>/dev/null | awk '$1 ~ /^cf-/ { print substr($1, 4) }'
    fi
  } | sort -u
}

cmd_list() {
  [[ $# -eq 0 ]] || {
    usage
    exit 2
  }
  list_cells
}

main() {
  local command=${1:-}
  [[ $# -gt 0 ]] && shift
  case $command in
    create) cmd_create "$@" ;;
    remove) cmd_remove "$@" ;;
    exec) cmd_exec "$@" ;;
    list) cmd_list "$@" ;;
    -h | --help | help)
      usage
      ;;
    *)
      usage
      exit 2
      ;;
  esac
}

main "$@"
