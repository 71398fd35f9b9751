#!/usr/bin/env bash
# Checks, before scripts/dev.sh spends time installing and building, that the ports the dev daemon
# will listen on are valid and free on 127.0.0.1: HSMD_GRPC_PORT (gRPC, default 7443) and
# HSMD_ADMIN_PORT (admin HTTP, default 7480). A busy or bad port is answered in one line naming it and
# the variable that moves it; exit 1 (busy) or 2 (not a port). Prints nothing when both are free.
set -euo pipefail

grpc="${HSMD_GRPC_PORT:-7443}"
admin="${HSMD_ADMIN_PORT:-7480}"

fail() {
  printf '%s\n' "dev.sh: $2" >&2
  exit "$1"
}

for v in "HSMD_GRPC_PORT=$grpc" "HSMD_ADMIN_PORT=$admin"; do
  name=${v%%=*} port=${v#*=}
  if ! [[ "$port" =~ ^[1-9][0-9]{0,4}$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    fail 2 "$name=$port is not a port number (1 to 65535)"
  fi
done
[ "$grpc" != "$admin" ] || fail 2 "HSMD_GRPC_PORT and HSMD_ADMIN_PORT are both $grpc: give them different ports"

# Something accepts connections there (a previous dev.sh still running, another service).
busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if busy "$grpc"; then
  fail 1 "port $grpc on 127.0.0.1 (hsmd gRPC) is in use: stop what listens there (a dev.sh already running?) or choose another port, e.g. HSMD_GRPC_PORT=$((grpc == 65535 ? 7444 : grpc + 1)) bash scripts/dev.sh (admin HTTP: HSMD_ADMIN_PORT)"
fi
if busy "$admin"; then
  fail 1 "port $admin on 127.0.0.1 (hsmd admin HTTP) is in use: stop what listens there (a dev.sh already running?) or choose another port, e.g. HSMD_ADMIN_PORT=$((admin == 65535 ? 7481 : admin + 1)) bash scripts/dev.sh (gRPC: HSMD_GRPC_PORT)"
fi
