#!/usr/bin/env bash
# containerd and an OCI registry for Baton's containerd runtime and its tests,
# on a machine without systemd (Debian 12). Everything runs from one temporary
# directory and is removed by "stop".
#
#   scripts/containerd.sh install        apt-get install containerd, runc, the CNI plugins,
#                                        docker-registry and iptables (as root; skips what is there)
#   scripts/containerd.sh install2       build containerd 2 and its runc shim from the Go module
#                                        proxy (once; cached) and print their directory
#   scripts/containerd.sh start DIR      start containerd and the registry with their state in DIR
#                                        (created; must be empty) and print the variables to export:
#                                          eval "$(scripts/containerd.sh start "$dir")"
#   scripts/containerd.sh start2 DIR     the same with containerd 2 (install2 first if need be)
#   scripts/containerd.sh stop DIR       kill what runs in containerd, stop both daemons by PID,
#                                        unmount what is left under DIR and remove DIR
#
# containerd gets a config of its own (its own root, state, gRPC and ttrpc
# addresses, the CRI plugins disabled), so it leaves any other containerd on
# the machine alone. It is Debian's (1.6, config version 2) unless
# BATON_CONTAINERD_BIN names another containerd binary: a 2.x one gets a
# config of version 3, and its directory goes first on the daemon's PATH so
# that it finds its own containerd-shim-runc-v2 (runc stays Debian's). The
# registry (Debian's docker-registry, the CNCF distribution registry) listens
# on a free loopback port from 5055 on, or BATON_REGISTRY_PORT.
#
# install2 builds BATON_CONTAINERD2_VERSION (default below) into
# BATON_CONTAINERD2_CACHE (default ~/.cache/baton)/containerd-VERSION/bin
# with go install: 75-105 s on 2 cores with empty Go caches, 4-6 s with warm
# ones, nothing when the binaries are there. Debian 12 has no containerd 2
# package, and GitHub's release downloads may be out of reach.
set -euo pipefail

die() { echo "containerd.sh: $*" >&2; exit 1; }

install() {
  local need=()
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  command -v docker-registry >/dev/null || need+=(docker-registry)
  command -v iptables >/dev/null || need+=(iptables)
  command -v ip >/dev/null || need+=(iproute2)
  [ ${#need[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "installing ${need[*]} needs root"
  echo "containerd.sh: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
}

containerd2_version=${BATON_CONTAINERD2_VERSION:-v2.2.9}
containerd2_dir=${BATON_CONTAINERD2_CACHE:-$HOME/.cache/baton}/containerd-$containerd2_version/bin

# install2: build containerd 2 and its shim into $containerd2_dir (into a
# temporary directory first, so that an interrupted build is not taken for
# a finished one) and print the directory.
install2() {
  local d=$containerd2_dir
  if [ ! -x "$d/containerd" ] || [ ! -x "$d/containerd-shim-runc-v2" ]; then
    command -v go >/dev/null || die "building containerd $containerd2_version needs go"
    mkdir -p "$(dirname "$d")"
    local tmp
    tmp=$(mktemp -d "$d.XXXXXX")
    echo "containerd.sh: building containerd $containerd2_version into $d" >&2
    local mod=github.com/containerd/containerd/v2
    if ! GOBIN=$tmp go install -tags 'no_btrfs no_devmapper no_zfs' \
      -ldflags "-X $mod/version.Version=$containerd2_version" \
      "$mod/cmd/containerd@$containerd2_version" "$mod/cmd/containerd-shim-runc-v2@$containerd2_version" >&2; then
      rm -rf "$tmp"
      die "go install containerd $containerd2_version failed"
    fi
    rm -rf "$d"
    mv "$tmp" "$d"
  fi
  echo "$d"
}

# port_free PORT: nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  local dir=$1
  mkdir -p "$dir"
  [ -z "$(ls -A "$dir")" ] || die "$dir is not empty"
  dir=$(cd "$dir" && pwd)
  local sock=$dir/containerd.sock
  local bin=${BATON_CONTAINERD_BIN:-containerd} path=$PATH
  command -v "$bin" >/dev/null || die "no containerd at $bin"
  local ver config_version disabled
  ver=$("$bin" --version) || die "$bin --version failed"
  case "$ver" in
  *" 1."* | *" v1."*)
    config_version=2
    disabled=(
      io.containerd.grpc.v1.cri
      io.containerd.snapshotter.v1.aufs
      io.containerd.snapshotter.v1.btrfs
      io.containerd.snapshotter.v1.zfs
      io.containerd.snapshotter.v1.devmapper
    )
    ;;
  *" 2."* | *" v2."*)
    # CRI is three plugins in 2.x; NRI would open /var/run/nri/nri.sock.
    [[ $bin == */* ]] && path=$(cd "$(dirname "$bin")" && pwd):$PATH
    config_version=3
    disabled=(
      io.containerd.grpc.v1.cri
      io.containerd.cri.v1.images
      io.containerd.cri.v1.runtime
      io.containerd.podsandbox.controller.v1.podsandbox
      io.containerd.nri.v1.nri
      io.containerd.snapshotter.v1.btrfs
      io.containerd.snapshotter.v1.zfs
      io.containerd.snapshotter.v1.devmapper
    )
    ;;
  *) die "$bin: unknown version: $ver" ;;
  esac
  cat >"$dir/containerd.toml" <<EOF
version = $config_version
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [
$(printf '  "%s",\n' "${disabled[@]}")
]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  level = "warn"
EOF
  PATH=$path "$bin" --config "$dir/containerd.toml" >"$dir/containerd.log" 2>&1 &
  echo $! >"$dir/containerd.pid"

  local port=${BATON_REGISTRY_PORT:-5055}
  if [ -z "${BATON_REGISTRY_PORT:-}" ]; then
    while ! port_free "$port"; do port=$((port + 1)); done
  fi
  mkdir -p "$dir/registry"
  cat >"$dir/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
  docker-registry serve "$dir/registry.yml" >"$dir/registry.log" 2>&1 &
  echo $! >"$dir/registry.pid"

  local i
  for i in $(seq 200); do
    ctr -a "$sock" version >/dev/null 2>&1 && break
    kill -0 "$(cat "$dir/containerd.pid")" 2>/dev/null || { cat "$dir/containerd.log" >&2; die "containerd exited"; }
    sleep 0.05
  done
  ctr -a "$sock" version >/dev/null 2>&1 || { tail "$dir/containerd.log" >&2; die "containerd does not answer on $sock"; }
  for i in $(seq 200); do
    port_free "$port" || break
    kill -0 "$(cat "$dir/registry.pid")" 2>/dev/null || { cat "$dir/registry.log" >&2; die "docker-registry exited"; }
    sleep 0.05
  done
  port_free "$port" && { tail "$dir/registry.log" >&2; die "docker-registry does not answer on 127.0.0.1:$port"; }
  echo "export BATON_CONTAINERD_SOCKET=$sock"
  echo "export BATON_REGISTRY=127.0.0.1:$port"
}

# stop_pid FILE: SIGTERM the process whose PID is in FILE, SIGKILL after 10 s.
stop_pid() {
  [ -f "$1" ] || return 0
  local pid i
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.05
  done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  local dir=$1
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  local sock=$dir/containerd.sock ns id nss=()
  # Tasks left running (a failed test) would keep their shims and mounts.
  if [ -S "$sock" ] && ctr -a "$sock" version >/dev/null 2>&1; then
    for ns in $(ctr -a "$sock" namespaces ls -q 2>/dev/null); do
      nss+=("$ns")
      for id in $(ctr -a "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
        ctr -a "$sock" -n "$ns" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
        ctr -a "$sock" -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 || true
      done
      for id in $(ctr -a "$sock" -n "$ns" containers ls -q 2>/dev/null); do
        ctr -a "$sock" -n "$ns" containers delete "$id" >/dev/null 2>&1 || true
      done
    done
  fi
  stop_pid "$dir/registry.pid"
  stop_pid "$dir/containerd.pid"
  # Shims of this containerd still running: those started with "-address
  # SOCKET" (containerd 2.x writes no shim.pid, and a forgotten task, below,
  # has no bundle left), with the sockets they would have removed, named by
  # a hash of SOCKET/NAMESPACE/ID; then those whose PIDs are in its state.
  local p args i ns id addr
  for p in /proc/[0-9]*; do
    case "$(readlink "$p/exe" 2>/dev/null)" in */containerd-shim*) ;; *) continue ;; esac
    mapfile -t args < <(tr '\0' '\n' <"$p/cmdline" 2>/dev/null)
    ns='' id='' addr=''
    for ((i = 0; i + 1 < ${#args[@]}; i++)); do
      case "${args[i]}" in
      -namespace) ns=${args[i + 1]} ;;
      -id) id=${args[i + 1]} ;;
      -address) addr=${args[i + 1]} ;;
      esac
    done
    [ "$addr" = "$sock" ] || continue
    kill -9 "${p#/proc/}" 2>/dev/null || true
    rm -f "/run/containerd/s/$(printf '%s' "$sock/$ns/$id" | sha256sum | cut -d' ' -f1)"
  done
  local f
  for f in "$dir"/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
    [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  # runc containers of this containerd that no task accounts for: when a
  # client dies while its task is being created, containerd (1.6 and 2.x)
  # can forget the task and leave its shim and runc's container, "created".
  # Their state names a root file system under DIR.
  local st
  for st in /run/containerd/runc/*/*/state.json; do
    [ -f "$st" ] && grep -qF "\"rootfs\":\"$dir/" "$st" || continue
    runc --root "$(dirname "$(dirname "$st")")" delete --force "$(basename "$(dirname "$st")")" >/dev/null 2>&1 || true
  done
  local m
  for m in $(awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$dir"
  # runc's state and the shims' sockets live in /run/containerd whatever the
  # config says: remove what is left there of ours, if empty.
  local d
  for d in "${nss[@]/#//run/containerd/runc/}" /run/containerd/runc/baton-test-* /run/containerd/runc/baton-e2e-*; do
    [ -d "$d" ] && rmdir "$d" 2>/dev/null || true
  done
  rmdir /run/containerd/runc /run/containerd/s /run/containerd 2>/dev/null || true
}

case "${1:-}" in
  install) install ;;
  install2) install2 ;;
  start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start "$2" ;;
  start2)
    [ $# -eq 2 ] || die "usage: $0 start2 DIR"
    BATON_CONTAINERD_BIN=$(install2)/containerd
    start "$2"
    ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  *) die "usage: $0 install | install2 | start DIR | start2 DIR | stop DIR" ;;
esac
