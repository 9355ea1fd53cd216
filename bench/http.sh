#!/usr/bin/env bash
# Servers fed over HTTP (issue 17, items 4 and 6): ssehub's hub server (`ssehub`, BENCH-CONTRACT
# section 2) and nginx + nchan, each fed by `loadgen --publish-path` (one POST per event over
# kept-alive connections, the publish time and a per-topic sequence number in each event's data),
# beside the in-process saturation of `bench_server` (scenario e of run.sh) in the same run.
#
#   bench/http.sh                  # ladders (10,000 clients, 1 topic) and scenario c over HTTP
#   bench/http.sh --help           # every option
#
# The server is pinned to CPU 0 (nginx: worker_processes 1; ssehub: one stream worker, as the
# pinning leaves it one core), the load generator (subscribers and publishing threads) to CPU 1.
# nginx runs from a generated nginx.conf in a temporary directory on a loopback port, in the
# foreground, started and stopped by its PID: the system's nginx service is never touched. Every
# record carries the machine's load average (`loadavg`); compare ratios within one run only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
LOADGEN_TARGET=${LOADGEN_TARGET_DIR:-$TARGET/loadgen}
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so

DURATION=5
WARMUP=2
CLIENTS=10000
START_RATE=10
STEPS=9
LADDER_CONNECTIONS=8
SERVERS="inprocess,hub,hub-fanout10,nchan"
SCENARIOS="ladder,c"
BUILD=1
SERVER_CPU=0
LOADGEN_CPU=1
OUT=""

usage() {
  cat <<EOF
usage: bench/http.sh [options]

  --servers LIST       from: inprocess (bench_server, published in-process: the ladder only),
                       hub (ssehub's hub server, defaults), hub-fanout10 (the same with
                       --fanout-nice 10), nchan (nginx + nchan)        [$SERVERS]
  --scenarios LIST     ladder: --clients clients on one topic, the event rate doubled from
                       --start-rate until a run, tried twice, is not kept up with (at least
                       95% of the expected deliveries, no gap, no disconnect), servers
                       alternating at each rate; c: --clients clients over 100 topics,
                       1,000 POSTs/s, 256 B (run.sh's scenario c, fed over HTTP) [$SCENARIOS]
  --clients N          subscribers                                     [$CLIENTS]
  --start-rate R       the ladder's first rate, events/s               [$START_RATE]
  --steps N            most rates on the ladder                        [$STEPS]
  --ladder-connections C
                       publishing connections on the ladder (c uses 10): each sends its
                       POSTs one after the other, so a server that answers late is fed
                       by the others meanwhile                         [$LADDER_CONNECTIONS]
  --duration S         measured seconds per run                        [$DURATION]
  --warmup S           seconds published before measuring              [$WARMUP]
  --server-cpu N       CPU the server is pinned to                     [$SERVER_CPU]
  --loadgen-cpu N      CPU the load generator is pinned to             [$LOADGEN_CPU]
  --out FILE           JSON lines output           [bench/results/http-<timestamp>.jsonl]
  --no-build           use the binaries already built
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --servers) SERVERS=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --start-rate) START_RATE=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    --ladder-connections) LADDER_CONNECTIONS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --server-cpu) SERVER_CPU=$2; shift ;;
    --loadgen-cpu) LOADGEN_CPU=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "http.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$ROOT/bench/results"
OUT=${OUT:-$ROOT/bench/results/http-$STAMP.jsonl}
LOG=${OUT%.jsonl}.log
: >"$LOG"
WORK=$(mktemp -d /tmp/ssehub-http-bench.XXXXXX)

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

IFS=, read -r -a SERVER_LIST <<<"$SERVERS"
IFS=, read -r -a SCENARIO_LIST <<<"$SCENARIOS"

# nginx and the nchan module, from Debian's packages, only when missing.
if [[ ",$SERVERS," == *,nchan,* ]] && { ! command -v nginx >/dev/null || [ ! -f "$NCHAN_MODULE" ]; }; then
  log "installing nginx and libnginx-mod-nchan"
  DEBIAN_FRONTEND=noninteractive apt-get install -y nginx libnginx-mod-nchan >>"$LOG" 2>&1
fi

if [ "$BUILD" = 1 ]; then
  log "building (CARGO_TARGET_DIR=$TARGET)"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --quiet -p ssehub-server --no-default-features)
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --quiet --example bench_server)
  CARGO_TARGET_DIR=$LOADGEN_TARGET cargo build --release --quiet --manifest-path "$ROOT/bench/loadgen/Cargo.toml"
fi
LOADGEN=$LOADGEN_TARGET/release/loadgen
NEEDED=("$LOADGEN")
[[ ",$SERVERS," == *,hub* ]] && NEEDED+=("$TARGET/release/ssehub")
[[ ",$SERVERS," == *,inprocess,* ]] && NEEDED+=("$TARGET/release/examples/bench_server")
for bin in "${NEEDED[@]}"; do
  [ -x "$bin" ] || { echo "http.sh: $bin is missing (build first)" >&2; exit 1; }
done

SERVER_PID=""   # what we started (nginx: its master)
MEASURE_PID=""  # whose CPU is measured (nginx: its one worker)
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    # nginx's worker leaves with its master; if not, it goes by its own PID.
    if [ -n "$MEASURE_PID" ] && [ "$MEASURE_PID" != "$SERVER_PID" ]; then
      for _ in $(seq 50); do kill -0 "$MEASURE_PID" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$MEASURE_PID" 2>/dev/null || true
    fi
    SERVER_PID=""; MEASURE_PID=""
  fi
}
cleanup() { stop_server; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# nchan_conf PORT DIR: nginx.conf for one worker on a loopback port. Publishers POST to
# /pub/TOPIC, subscribers GET /sub/TOPIC as an EventSource; nothing is buffered or logged per
# request, temp files stay in DIR.
nchan_conf() {
  local port=$1 dir=$2
  cat <<EOF
load_module $NCHAN_MODULE;
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 16384; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  sendfile off;
  tcp_nodelay on;
  proxy_buffering off;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  nchan_max_reserved_memory 256M;
  server {
    listen 127.0.0.1:$port backlog=4096;
    location ~ ^/pub/(\w+)\$ {
      nchan_publisher;
      nchan_channel_id \$1;
      nchan_message_buffer_length 100;
      nchan_message_timeout 60s;
    }
    location ~ ^/sub/(\w+)\$ {
      nchan_subscriber eventsource;
      nchan_channel_id \$1;
    }
  }
}
EOF
}

# start_server LABEL PORT RATE TOPICS PAYLOAD BUDGET: sets SERVER_PID, MEASURE_PID and the
# loadgen flags that feed it (FEED).
start_server() {
  local label=$1 port=$2 rate=$3 topics=$4 payload=$5 budget=$6
  FEED=(--publish-path "/publish?topic={topic}" --publish-body json)
  case "$label" in
    inprocess)
      taskset -c "$SERVER_CPU" "$TARGET/release/examples/bench_server" --listener native \
        --addr "127.0.0.1:$port" --rate "$rate" --topics "$topics" --payload "$payload" \
        --workers 1 --exit-after "$budget" >>"$LOG" 2>&1 &
      SERVER_PID=$!; MEASURE_PID=$SERVER_PID; FEED=() ;;
    hub|hub-fanout10)
      local extra=()
      [ "$label" = hub-fanout10 ] && extra=(--fanout-nice 10)
      taskset -c "$SERVER_CPU" "$TARGET/release/ssehub" --addr "127.0.0.1:$port" \
        "${extra[@]}" >>"$LOG" 2>&1 &
      SERVER_PID=$!; MEASURE_PID=$SERVER_PID ;;
    nchan)
      local dir=$WORK/nginx-$port
      mkdir -p "$dir"
      nchan_conf "$port" "$dir" >"$dir/nginx.conf"
      taskset -c "$SERVER_CPU" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
        >>"$LOG" 2>&1 &
      SERVER_PID=$!; MEASURE_PID=""
      # The worker is the master's one child.
      for _ in $(seq 50); do
        MEASURE_PID=$(cat "/proc/$SERVER_PID/task/$SERVER_PID/children" 2>/dev/null | awk '{print $1}')
        [ -n "$MEASURE_PID" ] && break
        sleep 0.1
      done
      [ -n "$MEASURE_PID" ] || { echo "http.sh: nginx started no worker" >&2; MEASURE_PID=$SERVER_PID; }
      FEED=(--publish-path "/pub/{topic}" --publish-body raw --events-path "/sub/{topic}") ;;
    *) echo "http.sh: unknown server $label" >&2; return 1 ;;
  esac
}

# run_one LABEL SCENARIO CLIENTS TOPICS RATE PAYLOAD CONNECTIONS: one run; its JSON line goes to
# $OUT and into LINE.
run_one() {
  local label=$1 scenario=$2 clients=$3 topics=$4 rate=$5 payload=$6 connections=$7
  local port budget line=""
  port=$("$LOADGEN" --print-free-port)
  budget=$(awk -v w="$WARMUP" -v d="$DURATION" 'BEGIN { printf "%d", w + d + 150 }')
  echo "=== $label $scenario: clients=$clients topics=$topics rate=$rate payload=$payload" >>"$LOG"
  start_server "$label" "$port" "$rate" "$topics" "$payload" "$budget"
  local feed=("${FEED[@]}")
  [ "${#feed[@]}" -gt 0 ] && feed+=(--publish-connections "$connections")
  line=$(timeout "$((budget + 30))" taskset -c "$LOADGEN_CPU" "$LOADGEN" \
    --addr "127.0.0.1:$port" --server-pid "$MEASURE_PID" --threads 1 \
    --clients "$clients" --topics "$topics" --rate "$rate" --payload "$payload" \
    --warmup "$WARMUP" --duration "$DURATION" --label "$label" --scenario "$scenario" \
    "${feed[@]}" 2>>"$LOG") || true
  stop_server
  if [ -z "$line" ]; then
    line="{\"kind\":\"run\",\"label\":\"$label\",\"scenario\":\"$scenario\",\"rate\":$rate,\"ok\":false,\"error\":\"loadgen printed nothing (timeout or crash)\"}"
  fi
  echo "$line" >>"$OUT"
  LINE=$line
}

field() { grep -o "\"$2\":[^,}]*" <<<"$1" | head -1 | cut -d: -f2-; }
brief() {
  local line=$1 p99
  p99=$(grep -o '"latency_us":{[^}]*}' <<<"$line" | grep -o '"p99":[0-9.]*' | cut -d: -f2)
  printf 'kept_up=%s keep_up=%s dps=%s gaps=%s disc=%s ns/del=%s p99_us=%s posts/s=%s load=%s %s' \
    "$(field "$line" kept_up)" "$(field "$line" keep_up)" "$(field "$line" deliveries_per_s)" \
    "$(field "$line" gaps)" "$(field "$line" disconnects)" \
    "$(field "$line" server_cpu_ns_per_delivery)" "$p99" "$(field "$line" posts_per_s)" \
    "$(grep -o '"loadavg":\[[0-9.]*' <<<"$line" | cut -d[ -f2)" "$(field "$line" error)"
}

ladder() {
  local active=("${SERVER_LIST[@]}") rate=$START_RATE step label line kept next
  for step in $(seq "$STEPS"); do
    [ "${#active[@]}" -gt 0 ] || break
    next=()
    for label in "${active[@]}"; do
      run_one "$label" "ladder-$CLIENTS" "$CLIENTS" 1 "$rate" 128 "$LADDER_CONNECTIONS"; line=$LINE
      log "  $label rate=$rate: $(brief "$line")"
      kept=$(grep -c '"kept_up":true' <<<"$line" || true)
      if [ "$kept" != 1 ]; then
        # One retry: wall-clock throughput on a shared machine varies between identical runs.
        run_one "$label" "ladder-$CLIENTS" "$CLIENTS" 1 "$rate" 128 "$LADDER_CONNECTIONS"; line=$LINE
        log "  $label rate=$rate (retry): $(brief "$line")"
        kept=$(grep -c '"kept_up":true' <<<"$line" || true)
      fi
      [ "$kept" = 1 ] && next+=("$label")
    done
    active=("${next[@]+"${next[@]}"}")
    rate=$((rate * 2))
  done
}

scenario_c() {
  local label line
  for label in "${SERVER_LIST[@]}"; do
    # In-process publishing is run.sh's scenario c; this one is about the HTTP feed.
    [ "$label" = inprocess ] && continue
    run_one "$label" "c-http" "$CLIENTS" 100 1000 256 10; line=$LINE
    log "  $label c-http: $(brief "$line")"
  done
}

log "results: $OUT (servers: $SERVERS; scenarios: $SCENARIOS; ${DURATION}s runs; load $(cut -d' ' -f1-3 /proc/loadavg))"
for name in "${SCENARIO_LIST[@]}"; do
  log "scenario $name"
  case "$name" in
    ladder) ladder ;;
    c) scenario_c ;;
    *) echo "http.sh: unknown scenario $name" >&2; exit 2 ;;
  esac
done
log "done: $OUT"
