#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine with Go and gcc:
# installs what the tests need, builds, vets and runs every test (race
# detector on the packages with concurrency of their own), then the
# benchmarks once as a smoke check. .ci/run calls exactly this.
#
# Process sandboxes need root (namespaces, cgroups). Under CI=true a test
# that would skip for want of root fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."

# run_e2e LOG [GO-TEST-FLAGS...]: the end-to-end tests, verbose, with their
# whole output kept in LOG and only the lines that say how they went shown.
# The pipeline's status is ignored; whether they passed is read from LOG, so
# it fails (and set -e stops the script) unless go test printed "ok".
run_e2e() {
  local log=$1
  shift
  go test -count=1 -timeout 15m -v "$@" ./internal/e2e/ 2>&1 | tee "$log" | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)' || true
  tail -n 3 "$log"
  grep -q '^ok' "$log"
}

need_apt=()
command -v gcc >/dev/null || need_apt+=(gcc)
command -v ip >/dev/null || need_apt+=(iproute2)         # the chaos tests' network namespaces
command -v nsenter >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi

# The containerd runtime's tests: containerd, runc, the CNI plugins and a
# registry, started from a temporary directory and stopped on exit.
if [ "$(id -u)" = 0 ]; then
  scripts/containerd.sh install
  ctr_dir=$(mktemp -d /tmp/baton-ctr.XXXXXX)
  trap 'scripts/containerd.sh stop "$ctr_dir"' EXIT
  eval "$(scripts/containerd.sh start "$ctr_dir")" # exports BATON_CONTAINERD_SOCKET, BATON_REGISTRY
fi

echo "== go mod download"
go mod download
echo "== build"
go build ./...
echo "== vet"
go vet ./...
# The C relay the warm-path benchmark can use in place of testdata/relay.
gcc -fsyntax-only -Wall -Wextra -Werror -pthread internal/e2e/testdata/crelay/relay.c
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi

echo "== unit tests (race detector)"
# One package at a time (-p 1): several packages' tests use machine-wide
# resources (network namespaces, links, mounts, cgroups, sandbox ports) and
# some count them to prove nothing leaked.
go test -race -count=1 -p 1 -timeout 15m $(go list ./... | grep -v /internal/e2e)
echo "== end-to-end tests"
run_e2e /tmp/baton-e2e.log
echo "== benchmarks (one short pass, as a smoke check)"
go test -run '^$' -bench . -benchtime 100x -benchmem ./internal/... | grep -E '^(Benchmark|ok|FAIL)' 

# The containerd runtime's package and end-to-end tests again, against
# containerd 2 (Debian 12 ships 1.6): scripts/containerd.sh install2 builds
# it from the Go module proxy once (75-105 s on 2 cores with empty Go
# caches) and caches it in ~/.cache/baton; the tests take about 95 s. The
# 1.6 containerd is stopped first, so that one daemon runs at a time.
if [ "$(id -u)" = 0 ]; then
  echo "== containerd 2: containerd runtime package and end-to-end tests"
  ctr2_t0=$SECONDS
  scripts/containerd.sh stop "$ctr_dir"
  ctr2_dir=$(mktemp -d /tmp/baton-ctr2.XXXXXX)
  trap 'scripts/containerd.sh stop "$ctr2_dir"' EXIT
  (
    ctr2_env=$(scripts/containerd.sh start2 "$ctr2_dir") # builds containerd 2 if it is not in the cache
    eval "$ctr2_env"                                      # exports BATON_CONTAINERD_SOCKET, BATON_REGISTRY
    ctr -a "$BATON_CONTAINERD_SOCKET" version 2>/dev/null | sed -n '/Server/,$p'
    go test -race -count=1 -p 1 -timeout 15m ./internal/sandbox/containerd/...
    run_e2e /tmp/baton-e2e-ctr2.log -run '^TestContainerd'
  )
  scripts/containerd.sh stop "$ctr2_dir"
  echo "containerd 2 stage: $((SECONDS - ctr2_t0)) s"
elif [ "${CI:-}" = true ]; then
  echo "the containerd 2 stage needs root, and CI=true forbids skipping it" >&2
  exit 1
else
  echo "== containerd 2 stage skipped: it needs root"
fi
