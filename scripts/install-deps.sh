#!/usr/bin/env bash
# Installs what hsmd needs on Debian with Node 20: apt packages (only those missing), npm
# dependencies (npm ci builds pkcs11js, allowed in package.json's allowScripts), the ts-proto code
# and the build. Usage: scripts/install-deps.sh [--test|--cluster]   (--test adds what the test suite
# needs, --cluster what scripts/cluster.sh needs: both add etcd-server)
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(softhsm2 protobuf-compiler opensc openssl)
case "${1:-}" in
  --test | --cluster) pkgs+=(etcd-server) ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ] || [ ! -f node_modules/pkcs11js/build/Release/pkcs11.node ]; then
  npm ci --no-audit --no-fund
fi
npm run --silent build
