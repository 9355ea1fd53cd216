#!/usr/bin/env bash
# A rate tier against real-time through the hub server, fed over HTTP (issue 15 item 8): the
# server (`target/release/ssehub`) on CPU 0, the load generator on CPU 1; 40 topics t0..t39,
# created first, then RATE (1,000) POSTs/s of 128 bytes spread over them; every client on
# /events?pattern=t* (all 40 topics), at every event (`rt`) or at 250 ms (`tier`). Prints the
# load generator's JSON record (bench/README.md) on stdout.
#
#   cargo build --release -p ssehub-server
#   (cd bench/loadgen && cargo build --release)
#   bench/tiers.sh CLIENTS rt|tier ROUND
#
# Loopback only; only the server started here is stopped (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 3 ] || { [ "$2" != rt ] && [ "$2" != tier ]; }; then
  echo "usage: bench/tiers.sh CLIENTS rt|tier ROUND" >&2
  exit 2
fi
CLIENTS=$1 MODE=$2 ROUND=$3 RATE=${RATE:-1000}
PORT=$((18100 + RANDOM % 500))
EVENTS='/events?pattern=t*'
if [ "$MODE" = tier ]; then EVENTS='/events?pattern=t*&interval=250ms'; fi
LOG="$(mktemp)"
taskset -c 0 "${SSEHUB:-target/release/ssehub}" --addr "127.0.0.1:$PORT" --heartbeat 0 >"$LOG" 2>&1 &
SERVER=$!
trap 'kill -INT "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 50); do
  if curl -s -m 1 -o /dev/null "http://127.0.0.1:$PORT/stats"; then break; fi
  sleep 0.1
done
# The topics exist before the clients come (keyed state is on, so they stay): a topic created
# after 10,000 pattern subscribers connected attaches them all at once, a start-up transient
# this run does not measure.
for i in $(seq 0 39); do
  curl -s -m 5 -o /dev/null -X POST -H 'content-type: application/json' \
    --data '{"data":"0 0 warm"}' "http://127.0.0.1:$PORT/publish?topic=t$i"
done
taskset -c 1 bench/loadgen/target/release/loadgen --addr "127.0.0.1:$PORT" --server-pid "$SERVER" \
  --clients "$CLIENTS" --topics 40 --rate "$RATE" --payload 128 --warmup 3 --duration 8 \
  --publish-path '/publish?topic={topic}' --publish-connections 4 --events-path "$EVENTS" \
  --label "$MODE" --round "$ROUND" | tail -n 1
