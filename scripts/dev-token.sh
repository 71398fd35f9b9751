#!/usr/bin/env bash
# Creates the development SoftHSM2 token under .dev/ (ignored by git): its own token directory and
# softhsm2.conf, a random user PIN in .dev/pin (mode 600). The SO PIN is random and not kept: a dev
# token is thrown away, not administered. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV="$PWD/.dev"
mkdir -p "$DEV/tokens" && chmod 700 "$DEV"
cat > "$DEV/softhsm2.conf" <<CONF
directories.tokendir = $DEV/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF="$DEV/softhsm2.conf"
if ! softhsm2-util --show-slots 2>/dev/null | grep -q "Label:.*hsmd-dev"; then
  umask 077
  head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$DEV/pin"
  so=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  softhsm2-util --init-token --free --label hsmd-dev --pin "$(cat "$DEV/pin")" --so-pin "$so" >/dev/null
  echo "created SoftHSM2 token hsmd-dev in $DEV/tokens (user PIN in $DEV/pin)"
fi
