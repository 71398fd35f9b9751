#!/usr/bin/env bash
# A 3-node hsmd cluster on this machine, everything under .cluster/ (ignored by git): 3 etcd members
# and 3 daemons on loopback, each daemon with its own SoftHSM2 token, in dev mode (plaintext gRPC on
# 127.0.0.1, plaintext etcd on 127.0.0.1). Runs in the background; the processes are recorded in
# .cluster/pids.
#
#   scripts/cluster.sh          first run: n1 runs `hsmd init`, n2 and n3 `hsmd join`, and the joins are
#                               approved (first officer + n1's SO PIN, scripts/cluster-approve.ts);
#                               later runs: `hsmd start` on every node that has joined
#   scripts/cluster.sh status   the cluster as GetClusterStatus reports it
#   scripts/cluster.sh stop     stops the processes recorded in .cluster/pids (daemons, then etcd)
#   scripts/cluster.sh clean    stop, then delete .cluster/
#
# Ports (node i = base + i - 1), overridable: HSMD_CLUSTER_ETCD_PORT (etcd clients, 23791..23793),
# HSMD_CLUSTER_PEER_PORT (etcd peers, 23801..23803), HSMD_CLUSTER_GRPC_PORT (gRPC, 7451..7453),
# HSMD_CLUSTER_ADMIN_PORT (admin HTTP, 7481..7483). HSMD_CLUSTER_NAME (default "local"), ETCD_BIN
# (default /usr/bin/etcd). HSMD_CLUSTER_SKIP_INSTALL=1 skips scripts/install-deps.sh (deps and build).
#
# etcd is sized for a million keys (README, "etcd at scale"): HSMD_ETCD_QUOTA_BYTES (backend quota,
# default 8 GiB), HSMD_ETCD_RETENTION (revisions kept by the revision compaction, default 1000000: a
# node that was down catches up from history while fewer were written).
#
# Secrets, all mode 600: .cluster/nN/pin (user PIN), .cluster/nN/so-pin (SO PIN: approving a join
# needs the serving member's), .cluster/officer-password (the first officer's password once its
# one-time password, .cluster/n1/data/first-officer-password, was changed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
C="$ROOT/.cluster"
N=3
NAME="${HSMD_CLUSTER_NAME:-local}"
ETCD_PORT="${HSMD_CLUSTER_ETCD_PORT:-23791}"
PEER_PORT="${HSMD_CLUSTER_PEER_PORT:-23801}"
GRPC_PORT="${HSMD_CLUSTER_GRPC_PORT:-7451}"
ADMIN_PORT="${HSMD_CLUSTER_ADMIN_PORT:-7481}"
ETCD_BIN="${ETCD_BIN:-/usr/bin/etcd}"
MODULE="${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
PIDS="$C/pids"
ETCD_QUOTA="${HSMD_ETCD_QUOTA_BYTES:-8589934592}"
ETCD_RETENTION="${HSMD_ETCD_RETENTION:-1000000}"

say() { printf '%s\n' "cluster: $*"; }
die() {
  printf '%s\n' "cluster: $*" >&2
  [ "${STARTING:-}" = 1 ] && [ -s "$PIDS" ] && printf '%s\n' "cluster: what was started is still running: scripts/cluster.sh stop (or clean to start over)" >&2
  exit 1
}

etcd_port() { echo $((ETCD_PORT + $1 - 1)); }
peer_port() { echo $((PEER_PORT + $1 - 1)); }
grpc_port() { echo $((GRPC_PORT + $1 - 1)); }
admin_port() { echo $((ADMIN_PORT + $1 - 1)); }
grpc_addr() { echo "127.0.0.1:$(grpc_port "$1")"; }

# True when the recorded pid is alive and still runs what we started (a reused pid is left alone).
alive() {
  local pid=$1 what=$2
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$what"
}

# Lines of .cluster/pids: "<name> <pid> <marker>", the marker being a string of its command line.
record() { echo "$1 $2 $3" >> "$PIDS"; }

running() {
  [ -f "$PIDS" ] || return 1
  local name pid marker
  while read -r name pid marker; do
    alive "$pid" "$marker" && return 0
  done < "$PIDS"
  return 1
}

stop_all() {
  [ -f "$PIDS" ] || { say "nothing recorded in $PIDS: not running"; return 0; }
  local name pid marker kind
  # Daemons first (they close their etcd connections cleanly), then the etcd members.
  for kind in hsmd etcd; do
    local waiting=()
    while read -r name pid marker; do
      [[ "$name" == "$kind"* ]] || continue
      if alive "$pid" "$marker"; then
        kill -TERM "$pid" 2>/dev/null || true
        waiting+=("$name:$pid:$marker")
      fi
    done < "$PIDS"
    for w in "${waiting[@]+"${waiting[@]}"}"; do
      IFS=: read -r name pid marker <<< "$w"
      for _ in $(seq 1 100); do alive "$pid" "$marker" || break; sleep 0.1; done
      if alive "$pid" "$marker"; then
        say "$name (pid $pid) did not stop within 10 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      else
        say "stopped $name (pid $pid)"
      fi
    done
  done
  rm -f "$PIDS"
}

# Starts a command in the background in its own session, output appended to a log; echoes its pid.
launch() {
  local log=$1; shift
  local pidfile
  pidfile=$(mktemp "$C/.pid.XXXXXX")
  if command -v setsid >/dev/null; then
    setsid bash -c 'echo $$ > "$0"; exec "$@"' "$pidfile" "$@" >> "$log" 2>&1 < /dev/null &
  else
    nohup bash -c 'echo $$ > "$0"; exec "$@"' "$pidfile" "$@" >> "$log" 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 50); do [ -s "$pidfile" ] && break; sleep 0.05; done
  cat "$pidfile"
  rm -f "$pidfile"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits until a log (from byte offset $2 on) contains a pattern; fails if the process dies first.
wait_log() {
  local log=$1 from=$2 pattern=$3 pid=$4 marker=$5 seconds=$6 what=$7
  for _ in $(seq 1 $((seconds * 10))); do
    tail -c +"$((from + 1))" "$log" 2>/dev/null | grep -qE -- "$pattern" && return 0
    alive "$pid" "$marker" || { tail -n 30 "$log" >&2; die "$what exited (log: $log)"; }
    sleep 0.1
  done
  tail -n 30 "$log" >&2
  die "$what: no \"$pattern\" within $seconds s (log: $log)"
}

approve() {
  node "$ROOT/dist/scripts/cluster-approve.js" "$@" \
    --password-file "$C/officer-password" --otp-file "$C/n1/data/first-officer-password"
}

all_endpoints() { local a=(); for i in $(seq 1 $N); do a+=(--endpoint "$(grpc_addr "$i")"); done; echo "${a[@]}"; }

case "${1:-}" in
  stop) stop_all; exit 0 ;;
  clean) stop_all; rm -rf "$C"; say "removed $C"; exit 0 ;;
  status)
    running || die "not running (start it with scripts/cluster.sh)"
    # shellcheck disable=SC2046
    approve status $(all_endpoints); exit $? ;;
  "") ;;
  *) die "usage: scripts/cluster.sh [stop|status|clean]" ;;
esac

running && die "already running (scripts/cluster.sh status; scripts/cluster.sh stop)"

if [ "${HSMD_CLUSTER_SKIP_INSTALL:-}" != 1 ]; then
  bash scripts/install-deps.sh --cluster
fi
[ -x "$ETCD_BIN" ] || die "etcd not found at $ETCD_BIN (Debian: etcd-server; or set ETCD_BIN)"
[ -f dist/src/main.js ] && [ -f dist/scripts/cluster-approve.js ] && [ -f dist/scripts/init-token.js ] || die "dist/ is not built: npm run build"

for i in $(seq 1 $N); do
  for p in "$(etcd_port "$i")" "$(peer_port "$i")" "$(grpc_port "$i")" "$(admin_port "$i")"; do
    port_busy "$p" && die "port $p on 127.0.0.1 is in use (override the HSMD_CLUSTER_*_PORT bases)"
  done
done

mkdir -p "$C" && chmod 700 "$C"
umask 077
rm -f "$PIDS"
STARTING=1

# --- etcd: 3 members, one Raft group ---------------------------------------------------------------
initial=""
for i in $(seq 1 $N); do initial+="${initial:+,}e$i=http://127.0.0.1:$(peer_port "$i")"; done
endpoints_json=""
for i in $(seq 1 $N); do endpoints_json+="${endpoints_json:+, }\"127.0.0.1:$(etcd_port "$i")\""; done
token_file="$C/etcd/cluster-token"
mkdir -p "$C/etcd"
[ -s "$token_file" ] || echo "hsmd-$NAME-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$token_file"
for i in $(seq 1 $N); do
  dir="$C/etcd/e$i"
  mkdir -p "$dir"
  pid=$(launch "$C/etcd/e$i.log" "$ETCD_BIN" \
    --name "e$i" --data-dir "$dir/data" \
    --listen-client-urls "http://127.0.0.1:$(etcd_port "$i")" --advertise-client-urls "http://127.0.0.1:$(etcd_port "$i")" \
    --listen-peer-urls "http://127.0.0.1:$(peer_port "$i")" --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port "$i")" \
    --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token "$(cat "$token_file")" \
    --quota-backend-bytes "$ETCD_QUOTA" --auto-compaction-mode revision --auto-compaction-retention "$ETCD_RETENTION" \
    --logger zap --log-outputs stderr)
  record "etcd-e$i" "$pid" "$dir/data"
done
for i in $(seq 1 $N); do
  ok=""
  for _ in $(seq 1 300); do
    if curl -fsS -m 1 "http://127.0.0.1:$(etcd_port "$i")/health" 2>/dev/null | grep -q '"health":"true"'; then ok=1; break; fi
    sleep 0.1
  done
  [ -n "$ok" ] || { tail -n 20 "$C/etcd/e$i.log" >&2; die "etcd member e$i not healthy within 30 s (log: $C/etcd/e$i.log)"; }
done
say "etcd: 3 members healthy on 127.0.0.1:$(etcd_port 1)-$(etcd_port $N)"

# --- per node: token, PINs, config ------------------------------------------------------------------
for i in $(seq 1 $N); do
  d="$C/n$i"
  mkdir -p "$d/tokens" "$d/data"
  cat > "$d/softhsm2.conf" <<CONF
directories.tokendir = $d/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
  if ! SOFTHSM2_CONF="$d/softhsm2.conf" softhsm2-util --show-slots 2>/dev/null | grep -q "Label:.*hsmd-n$i\b"; then
    head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$d/pin"
    head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$d/so-pin"
    chmod 600 "$d/pin" "$d/so-pin"
    # PINs from their files, never on a command line (/proc/<pid>/cmdline would show them).
    SOFTHSM2_CONF="$d/softhsm2.conf" node "$ROOT/dist/scripts/init-token.js" --label "hsmd-n$i" --pin-file "$d/pin" --so-pin-file "$d/so-pin" --module "$MODULE" >/dev/null
  fi
  cat > "$d/hsmd.json" <<JSON
{
  "node": { "id": "n$i", "dataDir": "$d/data" },
  "listen": { "grpc": "$(grpc_addr "$i")", "admin": "127.0.0.1:$(admin_port "$i")" },
  "devMode": true,
  "device": { "profile": "softhsm2", "module": "$MODULE", "tokenLabel": "hsmd-n$i", "pin": { "file": "$d/pin" }, "poolSize": 4 },
  "cluster": { "name": "$NAME", "etcd": { "endpoints": [$endpoints_json] }, "advertise": "$(grpc_addr "$i")" }
}
JSON
done

# Starts node i with a command; sets LOG_FROM (where this run's output starts) and NODE_PID.
start_node() {
  local i=$1 cmd=$2 d="$C/n$1"
  touch "$d/hsmd.log"
  LOG_FROM=$(stat -c %s "$d/hsmd.log")
  echo "--- $(date -u +%FT%TZ) hsmd $cmd" >> "$d/hsmd.log"
  NODE_PID=$(SOFTHSM2_CONF="$d/softhsm2.conf" launch "$d/hsmd.log" node "$ROOT/dist/src/main.js" "$cmd" --config "$d/hsmd.json")
  record "hsmd-n$i" "$NODE_PID" "$d/hsmd.json"
}

# --- n1: init (first run) or start ------------------------------------------------------------------
if [ -f "$C/n1/member" ]; then cmd=start; else cmd=init; fi
start_node 1 "$cmd"
wait_log "$C/n1/hsmd.log" "$LOG_FROM" "hsmd ready" "$NODE_PID" "$C/n1/hsmd.json" 60 "hsmd n1 ($cmd)"
touch "$C/n1/member"
say "n1: $cmd: ready on $(grpc_addr 1)"

# --- n2, n3: join (and approval) or start -----------------------------------------------------------
declare -A pid_of from_of
joining=()
for i in $(seq 2 $N); do
  if [ -f "$C/n$i/member" ]; then cmd=start; else cmd=join; joining+=("$i"); fi
  start_node "$i" "$cmd"
  pid_of[$i]=$NODE_PID
  from_of[$i]=$LOG_FROM
done
for i in "${joining[@]+"${joining[@]}"}"; do
  log="$C/n$i/hsmd.log"
  wait_log "$log" "${from_of[$i]}" "transport key sha256 [0-9a-f]{64}" "${pid_of[$i]}" "$C/n$i/hsmd.json" 60 "hsmd n$i (join)"
  fp=$(tail -c +"$((${from_of[$i]} + 1))" "$log" | grep -oE "transport key sha256 [0-9a-f]{64}" | tail -n 1 | awk '{print $4}')
  say "n$i asks to join: transport key sha256 $fp"
  approve approve --endpoint "$(grpc_addr 1)" --node "n$i" --fingerprint "$fp" --so-pin-file "$C/n1/so-pin" \
    || die "the join of n$i was not approved (logs: $C/n1/hsmd.log, $log)"
done
for i in $(seq 2 $N); do
  wait_log "$C/n$i/hsmd.log" "${from_of[$i]}" "hsmd ready" "${pid_of[$i]}" "$C/n$i/hsmd.json" 60 "hsmd n$i"
  touch "$C/n$i/member"
  say "n$i: ready on $(grpc_addr "$i")"
done

# --- the cluster as the members report it -----------------------------------------------------------
# shellcheck disable=SC2046
approve status $(all_endpoints) --expect "$N" --wait-seconds 30 || die "the cluster did not report $N healthy members"

cat <<EOF

hsmd cluster "$NAME" is running (dev mode: plaintext gRPC on loopback):
  gRPC   $(grpc_addr 1)  $(grpc_addr 2)  $(grpc_addr 3)
  admin  http://127.0.0.1:$(admin_port 1)  http://127.0.0.1:$(admin_port 2)  http://127.0.0.1:$(admin_port 3)  (/healthz /readyz /metrics /v1/status)
  etcd   http://127.0.0.1:$(etcd_port 1)  http://127.0.0.1:$(etcd_port 2)  http://127.0.0.1:$(etcd_port 3)
  first crypto officer "admin": password in $C/officer-password (mode 600)
  logs   $C/n*/hsmd.log, $C/etcd/e*.log

SDK: new HsmClient({ endpoints: ["$(grpc_addr 1)", "$(grpc_addr 2)", "$(grpc_addr 3)"] })
Status: scripts/cluster.sh status    Stop: scripts/cluster.sh stop    Delete everything: scripts/cluster.sh clean
EOF
