#!/usr/bin/env bash
# First README command: install everything, create a dev token and data directory under .dev/,
# initialize the node (domain key inside the HSM) and run hsmd on 127.0.0.1 in the foreground, in dev
# mode: plaintext gRPC, loopback only (see the README's TLS section for certificates). Ports:
# HSMD_GRPC_PORT (gRPC, default 7443) and HSMD_ADMIN_PORT (admin HTTP, default 7480).
set -euo pipefail
cd "$(dirname "$0")/.."
# Ports first: a busy one is answered in one line now, not after the install and the build.
bash scripts/dev-ports.sh
bash scripts/install-deps.sh
bash scripts/dev-token.sh
DEV="${HSMD_DEV_DIR:-$PWD/.dev}"
export SOFTHSM2_CONF="$DEV/softhsm2.conf"
export HSMD_PIN_FILE="$DEV/pin"
cat > "$DEV/hsmd.json" <<JSON
{
  "node": { "id": "dev", "dataDir": "$DEV/data" },
  "listen": { "grpc": "127.0.0.1:${HSMD_GRPC_PORT:-7443}", "admin": "127.0.0.1:${HSMD_ADMIN_PORT:-7480}" },
  "devMode": true,
  "device": { "profile": "softhsm2", "tokenLabel": "hsmd-dev", "pin": { "file": "$DEV/pin" } }
}
JSON
exec node dist/src/main.js init --config "$DEV/hsmd.json"
