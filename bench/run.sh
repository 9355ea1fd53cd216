#!/usr/bin/env bash
# The scenario matrix of issue 4 over ssehub and its peers, alternately (A B A B ...), each server
# pinned to one core with one worker thread and the load generator pinned to the other.
#
#   bench/run.sh                 # full matrix: 3 rounds, 15 s runs (about 1.5 to 2 hours)
#   bench/run.sh --quick         # smoke test: 1 round, 5 s runs, scenarios a, l, f
#   bench/run.sh --help          # every option
#
# Writes every loadgen JSON line to bench/results/<timestamp>.jsonl (server output beside it in
# .log), prints medians as markdown (also saved as .md) and, unless --no-plot, draws
# docs/img/*.svg with bench/plot.py. Every run is bounded: the server gets --exit-after, the
# load generator a timeout, and the server is killed by its PID after each run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release

ROUNDS=3
DURATION=15
WARMUP=3
G_DURATION=60
SEND_BUFFER=16384
SERVERS="ssehub-native,ssehub-axum,axum-broadcast,floor-writev,floor-epoll"
SCENARIOS="a,b,c,d,l,m,e,f,g"
MAX_CLIENTS=0
SERVER_CPU=0
LOADGEN_CPU=1
BUILD=1
PLOT=1
QUICK=0
BY_SERVER=0
declare -A EXTRA_SERVERS=()
OUT=""
IMG_DIR="$ROOT/docs/img"

usage() {
  cat <<EOF
usage: bench/run.sh [options]

  --quick              1 round, 5 s runs (2 s warm-up), scenarios a,l,f, no plots
  --rounds N           rounds over all servers                      [$ROUNDS]
  --duration S         measured seconds per run                     [$DURATION]
  --warmup S           warm-up seconds per run                      [$WARMUP]
  --stall-duration S   measured seconds of scenario g               [$G_DURATION]
  --servers LIST       comma-separated, from: ssehub-native ssehub-axum ssehub-hyper
                       axum-broadcast floor-epoll floor-write floor-writev, and
                       ssehub-native-sb floor-epoll-sb floor-writev-sb (the same with
                       SO_SNDBUF fixed at --send-buffer)
                       [$SERVERS]
  --send-buffer BYTES  SO_SNDBUF of the -sb servers                 [$SEND_BUFFER]
  --extra-server LABEL=COMMAND
                       one more server for --servers, e.g. an older build of bench_server
                       for an A/B comparison (repeatable; run.sh appends the common flags)
  --scenarios LIST     comma-separated, from: a b c d l m e f g k mw l1100   [$SCENARIOS]
                       (k: an extra clients sweep at 100 ev/s, for the plots;
                       mw and l1100: the controls of m, see below)
  --max-clients N      cap every scenario's client count (smoke tests)
  --by-server          in each round, run every scenario for one server before the next
                       (pairs a server's scenarios closely in time, for ratios such as
                       m/l; the default pairs the servers within each scenario)
  --server-cpu N       CPU the server is pinned to                  [$SERVER_CPU]
  --loadgen-cpu N      CPU the load generator is pinned to          [$LOADGEN_CPU]
  --out FILE           JSON lines output                            [bench/results/<timestamp>.jsonl]
  --no-build           use the binaries already in \$CARGO_TARGET_DIR/release
  --plot / --no-plot   draw docs/img/*.svg with bench/plot.py at the end
  --img-dir DIR        where plots go                               [docs/img]

Scenarios (issue 4): a 1,000 clients 1 topic 1,000 ev/s 128 B; b 10,000 clients 1 topic 100 ev/s
128 B; c 10,000 clients 100 topics 1,000 ev/s 256 B; d b's load with 9,900 clients plus 100
stalled ones (10,000 sockets per process at most); l 1,000 clients 1 topic 100 ev/s 128 B;
m l plus 100 stalled; e saturation ladders at 10,000 and 1,000 clients (rate doubled until
deliveries/s stop growing or a run, tried twice, is not kept up with); f connect storm of 10,000 held 10 s;
g a 1,000 ev/s stall run of --stall-duration seconds with 100 stalled clients.
Controls of m: mw is m with the stalled clients' receive buffer fixed at 16 KiB (SO_RCVBUF
before connect), so their window closes as over a real network (on loopback an unread socket's
buffer keeps growing and takes every write), and an 8 s warm-up (at least), so the window opens
once their sockets are full; l1100 is l with 1,100 readers, what 100 more clients cost when
they read.
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; ROUNDS=1; DURATION=5; WARMUP=2; SCENARIOS="a,l,f"; PLOT=0 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --stall-duration) G_DURATION=$2; shift ;;
    --send-buffer) SEND_BUFFER=$2; shift ;;
    --servers) SERVERS=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --max-clients) MAX_CLIENTS=$2; shift ;;
    --by-server) BY_SERVER=1 ;;
    --extra-server) EXTRA_SERVERS[${2%%=*}]=${2#*=}; shift ;;
    --server-cpu) SERVER_CPU=$2; shift ;;
    --loadgen-cpu) LOADGEN_CPU=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-build) BUILD=0 ;;
    --plot) PLOT=1 ;;
    --no-plot) PLOT=0 ;;
    --img-dir) IMG_DIR=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$ROOT/bench/results"
OUT=${OUT:-$ROOT/bench/results/$STAMP.jsonl}
LOG=${OUT%.jsonl}.log
MD=${OUT%.jsonl}.md
: >"$LOG"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [ "$BUILD" = 1 ]; then
  log "building (CARGO_TARGET_DIR=$TARGET)"
  export CARGO_TARGET_DIR=$TARGET
  (cd "$ROOT" && cargo build --release --quiet --example bench_server)
  cargo build --release --quiet --manifest-path "$ROOT/bench/loadgen/Cargo.toml"
  cargo build --release --quiet --manifest-path "$ROOT/bench/peers/Cargo.toml"
fi
for bin in examples/bench_server loadgen summarize axum_broadcast floor floor_epoll; do
  [ -x "$BIN/$bin" ] || { echo "run.sh: $BIN/$bin is missing (build first)" >&2; exit 1; }
done

# The command line of a server, by label.
server_cmd() {
  if [ -n "${EXTRA_SERVERS[$1]+set}" ]; then echo "${EXTRA_SERVERS[$1]}"; return; fi
  case "$1" in
    ssehub-native) echo "$BIN/examples/bench_server --listener native" ;;
    ssehub-axum) echo "$BIN/examples/bench_server --listener axum" ;;
    ssehub-hyper) echo "$BIN/examples/bench_server --listener hyper" ;;
    axum-broadcast) echo "$BIN/axum_broadcast" ;;
    floor-write) echo "$BIN/floor --mode write" ;;
    floor-writev) echo "$BIN/floor --mode writev" ;;
    floor-epoll) echo "$BIN/floor_epoll" ;;
    ssehub-native-sb) echo "$BIN/examples/bench_server --listener native --send-buffer $SEND_BUFFER" ;;
    floor-writev-sb) echo "$BIN/floor --mode writev --send-buffer $SEND_BUFFER" ;;
    floor-epoll-sb) echo "$BIN/floor_epoll --send-buffer $SEND_BUFFER" ;;
    *) echo "run.sh: unknown server $1" >&2; return 1 ;;
  esac
}
IFS=, read -r -a SERVER_LIST <<<"$SERVERS"
IFS=, read -r -a SCENARIO_LIST <<<"$SCENARIOS"
for s in "${SERVER_LIST[@]}"; do server_cmd "$s" >/dev/null; done

cap() { if [ "$MAX_CLIENTS" -gt 0 ] && [ "$1" -gt "$MAX_CLIENTS" ]; then echo "$MAX_CLIENTS"; else echo "$1"; fi; }

SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# run_one LABEL SCENARIO ROUND CLIENTS TOPICS RATE PAYLOAD SLOW DURATION [loadgen flags...]
# Starts the server, runs the load generator, appends its JSON line to $OUT and keeps it in LINE
# (not echoed: called in this shell, so the traps know the server's PID).
run_one() {
  local label=$1 scenario=$2 round=$3 clients=$4 topics=$5 rate=$6 payload=$7 slow=$8 duration=$9
  shift 9
  local port budget cmd line=""
  port=$("$BIN/loadgen" --print-free-port)
  # Setup of 10,000 connections, warm-up, window, drain and margin.
  budget=$(awk -v w="$WARMUP" -v d="$duration" 'BEGIN { printf "%d", w + d + 150 }')
  cmd=$(server_cmd "$label")
  echo "=== $label $scenario round $round: clients=$clients slow=$slow topics=$topics rate=$rate payload=$payload" >>"$LOG"
  # shellcheck disable=SC2086 # the command is split on purpose
  taskset -c "$SERVER_CPU" $cmd --addr "127.0.0.1:$port" --rate "$rate" --topics "$topics" \
    --payload "$payload" --workers 1 --exit-after "$budget" >>"$LOG" 2>&1 &
  SERVER_PID=$!
  line=$(timeout "$((budget + 30))" taskset -c "$LOADGEN_CPU" "$BIN/loadgen" \
    --addr "127.0.0.1:$port" --server-pid "$SERVER_PID" --threads 1 \
    --clients "$clients" --slow "$slow" --topics "$topics" --rate "$rate" --payload "$payload" \
    --warmup "$WARMUP" --duration "$duration" \
    --label "$label" --scenario "$scenario" --round "$round" "$@" 2>>"$LOG") || true
  stop_server
  if [ -z "$line" ]; then
    line="{\"kind\":\"run\",\"label\":\"$label\",\"scenario\":\"$scenario\",\"round\":$round,\"ok\":false,\"error\":\"loadgen printed nothing (timeout or crash)\"}"
  fi
  echo "$line" >>"$OUT"
  LINE=$line
}

# A short line for the progress log.
brief() {
  local line=$1
  for key in ok deliveries_per_s keep_up gaps disconnects slow_dropped server_cpu_ns_per_delivery loadgen_cpu_util rss_per_conn_bytes error; do
    printf '%s=%s ' "$key" "$(grep -o "\"$key\":[^,}]*" <<<"$line" | head -1 | cut -d: -f2-)"
  done
}

# scenario NAME ROUND LABEL: one scenario for one server.
scenario() {
  local name=$1 round=$2 label=$3 line
  LINE=""
  case "$name" in
    a) run_one "$label" a "$round" "$(cap 1000)" 1 1000 128 0 "$DURATION"; line=$LINE ;;
    b) run_one "$label" b "$round" "$(cap 10000)" 1 100 128 0 "$DURATION"; line=$LINE ;;
    c) run_one "$label" c "$round" "$(cap 10000)" 100 1000 256 0 "$DURATION"; line=$LINE ;;
    d) run_one "$label" d "$round" "$(cap 9900)" 1 100 128 100 "$DURATION"; line=$LINE ;;
    l) run_one "$label" l "$round" "$(cap 1000)" 1 100 128 0 "$DURATION"; line=$LINE ;;
    m) run_one "$label" m "$round" "$(cap 1000)" 1 100 128 100 "$DURATION"; line=$LINE ;;
    mw)
      # A longer warm-up: the window opens once the stalled sockets have filled (about 5 s).
      run_one "$label" mw "$round" "$(cap 1000)" 1 100 128 100 "$DURATION" --slow-rcvbuf 16384 \
        --warmup "$(( ${WARMUP%.*} > 8 ? ${WARMUP%.*} : 8 ))"; line=$LINE ;;
    l1100) run_one "$label" l1100 "$round" "$(cap 1100)" 1 100 128 0 "$DURATION"; line=$LINE ;;
    g) run_one "$label" g "$round" "$(cap 1000)" 1 1000 128 100 "$G_DURATION"; line=$LINE ;;
    f) run_one "$label" f "$round" "$(cap 10000)" 1 100 128 0 0 --connect-only --hold 10; line=$LINE ;;
    k)
      for clients in 1000 2000 5000 10000; do
        run_one "$label" "k-$clients" "$round" "$(cap $clients)" 1 100 128 0 "$DURATION"; line=$LINE
        log "  $label k-$clients: $(brief "$line")"
      done
      return ;;
    e)
      local clients start rate prev dps kept step
      for clients in 10000 1000; do
        # Start well below every server's limit; 10 doublings at most.
        if [ "$clients" = 10000 ]; then start=25; else start=250; fi
        rate=$start; prev=0
        for step in $(seq 10); do
          run_one "$label" "e-$clients" "$round" "$(cap $clients)" 1 "$rate" 128 0 "$DURATION"; line=$LINE
          log "  $label e-$clients rate=$rate: $(brief "$line")"
          kept=$(grep -c '"kept_up":true' <<<"$line" || true)
          if [ "$kept" != 1 ]; then
            # One retry: wall-clock throughput on these machines varies between identical runs.
            run_one "$label" "e-$clients" "$round" "$(cap $clients)" 1 "$rate" 128 0 "$DURATION"; line=$LINE
            log "  $label e-$clients rate=$rate (retry): $(brief "$line")"
            kept=$(grep -c '"kept_up":true' <<<"$line" || true)
          fi
          dps=$(grep -o '"deliveries_per_s":[0-9.]*' <<<"$line" | cut -d: -f2)
          dps=${dps:-0}
          [ "$kept" = 1 ] || break
          # Stop when deliveries/s grew by less than 5% over the previous rate.
          awk -v d="$dps" -v p="$prev" 'BEGIN { exit !(d > p * 1.05) }' || break
          prev=$dps; rate=$((rate * 2))
        done
      done
      return ;;
    *) echo "run.sh: unknown scenario $name" >&2; return 1 ;;
  esac
  log "  $label $name: $(brief "$line")"
}

log "results: $OUT (servers: $SERVERS; scenarios: $SCENARIOS; $ROUNDS round(s); ${DURATION}s runs)"
for round in $(seq "$ROUNDS"); do
  if [ "$BY_SERVER" = 1 ]; then
    for label in "${SERVER_LIST[@]}"; do
      log "round $round, server $label"
      for name in "${SCENARIO_LIST[@]}"; do
        scenario "$name" "$round" "$label"
      done
    done
  else
    for name in "${SCENARIO_LIST[@]}"; do
      log "round $round, scenario $name"
      for label in "${SERVER_LIST[@]}"; do
        scenario "$name" "$round" "$label"
      done
    done
  fi
done

# Ratios against the epoll floor when it ran, else the older writev floor.
BASELINE=floor-writev
for s in "${SERVER_LIST[@]}"; do [ "$s" = floor-epoll ] && BASELINE=floor-epoll; done
"$BIN/summarize" --baseline "$BASELINE" "$OUT" | tee "$MD"
log "medians: $MD"
if [ "$PLOT" = 1 ]; then
  python3 "$ROOT/bench/plot.py" --out "$IMG_DIR" "$OUT" || log "plotting failed (see above)"
fi
