#!/usr/bin/env bash
# Compressed streams against identity: server CPU per delivery and wire bytes, codings
# alternating, server pinned to CPU 0 and the load generator (decoding every stream) to CPU 1.
# usage (from the repository root): bench/compress.sh OUT.jsonl CLIENTS TOPICS RATE ROUNDS SECONDS
set -u
OUT=$1; CLIENTS=$2; TOPICS=$3; RATE=$4; ROUNDS=$5; DUR=$6
SRV=${SSEHUB_BENCH_SERVER:-target/release/examples/bench_server}
LG=${LOADGEN:-bench/loadgen/target/release/loadgen}
for round in $(seq 1 "$ROUNDS"); do
  for coding in identity zstd gzip; do
    PORT=$($LG --print-free-port)
    taskset -c 0 $SRV --listener native --addr 127.0.0.1:$PORT --rate "$RATE" --topics "$TOPICS" --payload 128 --compress --exit-after 120 > /tmp/srv.log 2>&1 &
    PID=$!
    sleep 0.5
    EXTRA=()
    if [ "$coding" != identity ]; then EXTRA=(--accept-encoding "$coding"); fi
    taskset -c 1 timeout 150 $LG --addr 127.0.0.1:$PORT --clients "$CLIENTS" --topics "$TOPICS" --rate "$RATE" --payload 128 \
      --warmup 3 --duration "$DUR" --server-pid $PID --label "ssehub-$coding" --scenario "c$CLIENTS-t$TOPICS-r$RATE" --round "$round" "${EXTRA[@]}" >> "$OUT" 2>/tmp/lg.err
    kill $PID 2>/dev/null; wait $PID 2>/dev/null
  done
done
