#!/usr/bin/env bash
# Regenerates the Go code of every .proto under api/. Needs protoc (Debian:
# protobuf-compiler) and the two generators, pinned here:
#   go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.10
#   go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:$(go env GOPATH)/bin"
for f in $(find api -name '*.proto'); do
  protoc -I . --go_out=. --go_opt=module=github.com/batonfaas/baton \
    --go-grpc_out=. --go-grpc_opt=module=github.com/batonfaas/baton "$f"
done
