#!/usr/bin/env bash
# Steady-state cost of the control plane (issue 3): 1,000 emulated workers
# and 10,000 registered functions, nothing invoked. Prints the control
# plane's CPU use (share of one core) over a window, and its resident memory.
# Usage: scripts/bench-steady.sh [WORKERS] [FUNCTIONS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
workers=${1:-1000} functions=${2:-10000} window=${3:-30}
go build -o bin/baton ./cmd/baton
dir=$(mktemp -d)
cp=127.0.0.1:19190 dirigent=127.0.0.1:19191 dp=127.0.0.1:19180
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
bin/baton controlplane --listen $cp --dirigent-listen $dirigent --data-dir "$dir" --log-level warn & pids+=($!)
sleep 0.5
bin/baton dataplane --listen $dp --controlplane $cp --log-level warn & pids+=($!)
bin/baton worker --runtime fake --emulate "$workers" --worker-id emu --controlplane $cp --log-level warn & pids+=($!)
for _ in $(seq 100); do # until the data plane and the workers are connected
  st=$(bin/baton status --controlplane $cp 2>/dev/null || true)
  [[ "$st" == *"$dp"* ]] && [ "$(grep -c ' up ' <<<"$st")" -ge "$workers" ] && break
  sleep 0.2
done
echo "registering $functions functions..."
seq 0 $((functions - 1)) | xargs -P 8 -I{} curl -sf -o /dev/null -X POST "http://$dirigent/" \
  -d name=steady-{} -d image=fake -d port_forwarding=80 -d port_forwarding=tcp
bin/baton status --controlplane $cp | awk '/^WORKERS/{w=1;next} /^FUNCTIONS/{w=0} w && / up /{n++} END{print n" workers up"}'
bin/baton fn list --controlplane $cp | tail -n +2 | wc -l | sed 's/$/ functions registered/'
sleep 5 # let start-up settle
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' /proc/${pids[0]}/stat; }
a=$(cpu); sleep "$window"; b=$(cpu)
rss=$(awk '/VmRSS/{print $2}' /proc/${pids[0]}/status)
echo "control plane over ${window}s: $(echo "scale=2; ($b-$a)*100/$ticks/$window" | bc)% of one core, RSS $((rss/1024)) MiB"
