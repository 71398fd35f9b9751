#!/usr/bin/env bash
# Creates the development SoftHSM2 token under .dev/ (ignored by git; HSMD_DEV_DIR moves it): its own
# token directory and softhsm2.conf, a random user PIN in .dev/pin (mode 600). The SO PIN is random
# and not kept: a dev token is thrown away, not administered. No PIN is ever on a command line (where
# /proc/<pid>/cmdline shows it): dist/scripts/init-token.js reads both from files. Needs the build
# (scripts/dev.sh builds first). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV="${HSMD_DEV_DIR:-$PWD/.dev}"
mkdir -p "$DEV/tokens" && chmod 700 "$DEV"
cat > "$DEV/softhsm2.conf" <<CONF
directories.tokendir = $DEV/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF="$DEV/softhsm2.conf"
if ! softhsm2-util --show-slots 2>/dev/null | grep -q "Label:.*hsmd-dev"; then
  [ -f dist/scripts/init-token.js ] || { echo "dev-token.sh: dist/ is not built: npm run build (scripts/dev.sh does it)" >&2; exit 1; }
  umask 077
  head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$DEV/pin"
  so_file=$(mktemp "$DEV/.so-pin.XXXXXX")
  trap 'rm -f "$so_file"' EXIT
  head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$so_file"
  node dist/scripts/init-token.js --label hsmd-dev --pin-file "$DEV/pin" --so-pin-file "$so_file" >/dev/null
  echo "created SoftHSM2 token hsmd-dev in $DEV/tokens (user PIN in $DEV/pin)"
fi
