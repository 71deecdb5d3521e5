#!/usr/bin/env bash
# Durable mode next to in-memory (issue 15): the same loadgen scenarios
# against tuning/bench.toml, once in memory and once with [cluster]
# nats_url (a fresh nats-server -js with its own store per run), rounds
# interleaved on the same two cores. The loadgen's latency is publish →
# delivery, which in durable mode includes the JetStream store. Prints one
# line per figure, plus the nats-server's CPU.
#
#   benches/durable-vs-memory.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
PORT=19397
NPORT=19398
DIR=target/durable-bench
mkdir -p $DIR
command -v nats-server >/dev/null || { apt-get update -qq && apt-get install -y -qq nats-server >/dev/null; }
cargo build --release --workspace -q
{ cat tuning/bench.toml; printf '\n[cluster]\nnats_url = "nats://127.0.0.1:%s"\n' $NPORT; } > $DIR/bench-durable.toml
SERVER= NATS=
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null; [ -n "$NATS" ] && kill $NATS 2>/dev/null; true' EXIT
cpu_of() { awk '{print $14+$15}' /proc/$1/stat; }
run() { # config label loadgen-args...
    local cfg=$1 label=$2
    shift 2
    if [ "$cfg" = "$DIR/bench-durable.toml" ]; then
        rm -rf $DIR/js && mkdir -p $DIR/js
        nats-server -js -a 127.0.0.1 -p $NPORT -sd $DIR/js >/dev/null 2>&1 &
        NATS=$!
        sleep 0.5
    fi
    ./target/release/shardcast serve --config "$cfg" --listen 127.0.0.1:$PORT >/dev/null 2>&1 &
    SERVER=$!
    sleep 1
    local n0=0
    [ -n "$NATS" ] && n0=$(cpu_of $NATS)
    ./target/release/shardcast-loadgen "$@" --addr 127.0.0.1:$PORT --server-pid $SERVER \
        | awk -v l="$label" '/^deliveries|^publishes|^latency|^verify|^server/ {print l": "$0}'
    if [ -n "$NATS" ]; then
        local n1
        n1=$(cpu_of $NATS)
        echo "$label: nats-server   cpu $(( (n1 - n0) * 10 )) ms"
    fi
    kill -INT $SERVER
    wait $SERVER || true
    SERVER=
    if [ -n "$NATS" ]; then kill $NATS; wait $NATS || true; NATS=; fi
}
FANOUT=(fanout --subscribers 1000 --publishers 1 --rate 1000 --duration 5 --drain 2 --processes 2)
ROOMS=(rooms --rooms 2000 --per-room 2 --publishers 8 --rate 5000 --duration 5 --processes 2
       --sources 127.0.0.2,127.0.0.3)
for r in $(seq 1 "$ROUNDS"); do
    echo "== round $r"
    run tuning/bench.toml "fanout-1k memory " "${FANOUT[@]}"
    run $DIR/bench-durable.toml "fanout-1k durable" "${FANOUT[@]}"
    run tuning/bench.toml "rooms-5k memory " "${ROOMS[@]}"
    run $DIR/bench-durable.toml "rooms-5k durable" "${ROOMS[@]}"
done
