#!/usr/bin/env bash
# Regenerates src/gen/ from proto/ with ts-proto. Generated code is never edited by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || { echo "protoc not found: install Debian's protobuf-compiler (scripts/install-deps.sh does)" >&2; exit 1; }
rm -rf src/gen && mkdir -p src/gen
# forceLong=bigint: 64-bit fields never lose precision above 2^53 (the API has none today).
protoc \
  --plugin=protoc-gen-ts_proto=./node_modules/.bin/protoc-gen-ts_proto \
  --ts_proto_out=src/gen \
  --ts_proto_opt=outputServices=grpc-js,env=node,esModuleInterop=true,forceLong=bigint,useOptionals=none,oneof=unions-value,exportCommonSymbols=false \
  -I proto proto/hsm/v1/*.proto
