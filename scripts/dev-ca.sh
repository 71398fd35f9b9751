#!/usr/bin/env bash
# Development certificates for hsmd's gRPC TLS, made with the openssl CLI:
#
#   bash scripts/dev-ca.sh DIR [CLIENT_CN]
#
#   DIR/ca.pem      ca.key       a dev CA (EC P-256, 10 years)
#   DIR/server.pem  server.key   the daemon's certificate: DNS localhost, IP 127.0.0.1 and ::1 (serverAuth)
#   DIR/client.pem  client.key   a client certificate for mutual TLS, CN=CLIENT_CN (default hsmd-client; clientAuth)
#
# Keys are mode 600. Idempotent: existing files are kept; a missing pair is created. When the CA itself
# has to be created, the server and client pairs are made again too (old ones would not chain to it).
# For development and tests only: the CA key sits next to the certificates, unencrypted.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ] || [ -z "$1" ]; then
  echo "usage: $0 DIR [CLIENT_CN]" >&2
  exit 2
fi
DIR="$1"
CLIENT_CN="${2:-hsmd-client}"
DAYS_CA=3650
DAYS_LEAF=825

mkdir -p "$DIR"
cd "$DIR"
umask 077
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

have() { [ -s "$1.pem" ] && [ -s "$1.key" ]; }

# quiet COMMAND...: runs it, showing its stderr only when it fails.
quiet() { "$@" 2>"$TMP/err" || { cat "$TMP/err" >&2; echo "dev-ca: failed: $1 $2" >&2; exit 1; }; }

newkey() { quiet openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; chmod 600 "$1"; }

# leaf NAME CN EXTENSIONS: a key and a certificate signed by the dev CA.
leaf() {
  local name="$1" cn="$2" ext="$3"
  newkey "$TMP/$name.key"
  quiet openssl req -new -key "$TMP/$name.key" -subj "/CN=$cn" -out "$TMP/$name.csr"
  printf '%s\n' "[ext]" "$ext" > "$TMP/$name.ext"
  quiet openssl x509 -req -in "$TMP/$name.csr" -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
    -days "$DAYS_LEAF" -sha256 -extfile "$TMP/$name.ext" -extensions ext -out "$TMP/$name.pem"
  mv "$TMP/$name.key" "$name.key"
  mv "$TMP/$name.pem" "$name.pem"
  chmod 600 "$name.key"
  chmod 644 "$name.pem"
  echo "dev-ca: created $DIR/$name.pem and $name.key (CN=$cn)"
}

fresh_ca=0
if ! have ca; then
  newkey "$TMP/ca.key"
  quiet openssl req -x509 -new -key "$TMP/ca.key" -subj "/CN=hsmd dev CA $(openssl rand -hex 4)" -days "$DAYS_CA" -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$TMP/ca.pem"
  mv "$TMP/ca.key" ca.key
  mv "$TMP/ca.pem" ca.pem
  chmod 600 ca.key
  chmod 644 ca.pem
  fresh_ca=1
  echo "dev-ca: created $DIR/ca.pem and ca.key"
fi

if [ "$fresh_ca" = 1 ] || ! have server; then
  leaf server localhost "$(printf '%s\n' \
    'basicConstraints=critical,CA:FALSE' \
    'keyUsage=critical,digitalSignature' \
    'extendedKeyUsage=serverAuth' \
    'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1')"
fi

if [ "$fresh_ca" = 1 ] || ! have client; then
  leaf client "$CLIENT_CN" "$(printf '%s\n' \
    'basicConstraints=critical,CA:FALSE' \
    'keyUsage=critical,digitalSignature' \
    'extendedKeyUsage=clientAuth')"
fi

chmod 600 ca.key server.key client.key
echo "dev-ca: $DIR holds ca.pem, server.pem/server.key (localhost, 127.0.0.1), client.pem/client.key"
