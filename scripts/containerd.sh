#!/usr/bin/env bash
# containerd and an OCI registry for Baton's containerd runtime and its tests,
# on a machine without systemd (Debian 12). Everything runs from one temporary
# directory and is removed by "stop".
#
#   scripts/containerd.sh install        apt-get install containerd, runc, the CNI plugins,
#                                        docker-registry and iptables (as root; skips what is there)
#   scripts/containerd.sh start DIR      start containerd and the registry with their state in DIR
#                                        (created; must be empty) and print the variables to export:
#                                          eval "$(scripts/containerd.sh start "$dir")"
#   scripts/containerd.sh stop DIR       kill what runs in containerd, stop both daemons by PID,
#                                        unmount what is left under DIR and remove DIR
#
# containerd gets a config of its own (version 2, its own root, state, gRPC
# and ttrpc addresses, the CRI plugin disabled), so it leaves any other
# containerd on the machine alone. The registry (Debian's docker-registry, the
# CNCF distribution registry) listens on a free loopback port from 5055 on,
# or BATON_REGISTRY_PORT.
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

# port_free PORT: nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  local dir=$1
  mkdir -p "$dir"
  [ -z "$(ls -A "$dir")" ] || die "$dir is not empty"
  dir=$(cd "$dir" && pwd)
  local sock=$dir/containerd.sock
  cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  level = "warn"
EOF
  containerd --config "$dir/containerd.toml" >"$dir/containerd.log" 2>&1 &
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
  # Shims of this containerd still running (their PIDs are in its state).
  local f
  for f in "$dir"/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
    [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
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
  start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start "$2" ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
