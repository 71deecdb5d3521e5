#!/usr/bin/env bash
# Issue 15, side by side on the same two cores, rounds interleaved: one node
# in memory, one node on JetStream (durable), and three nodes on the same
# nats-server (the cluster: each room's subscribers and publishers spread
# over the nodes, publishes forwarded to the owner, deliveries from the
# stream). Fanout and rooms shapes. The loadgen's latency is publish →
# delivery; `ack` is publish → ack (with durability it waits for the
# store). A fresh nats-server -js with its own store per run. Prints one
# line per figure, with the servers' CPU (all nodes and nats-server).
#
#   benches/cluster-vs-single.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
SECS=${2:-5}
NPORT=19498
PORTS=(19491 19492 19493)
DIR=target/cluster-bench
mkdir -p $DIR
command -v nats-server >/dev/null || { apt-get update -qq && apt-get install -y -qq nats-server >/dev/null; }
cargo build --release --workspace -q
for i in 1 2 3; do
    { cat tuning/bench.toml; printf '\n[cluster]\nnats_url = "nats://127.0.0.1:%s"\nnode_id = "bench-%s"\nlease_ms = 3000\n' $NPORT $i; } > $DIR/node-$i.toml
done
PIDS=()
NATS=
cleanup() { for p in "${PIDS[@]}" $NATS; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
cpu_of() { awk '{print $14+$15}' /proc/$1/stat; }
start_nats() {
    rm -rf $DIR/js && mkdir -p $DIR/js
    nats-server -js -a 127.0.0.1 -p $NPORT -sd $DIR/js >/dev/null 2>&1 &
    NATS=$!
    for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/$NPORT) 2>/dev/null && break; sleep 0.1; done
}
start_node() { # config port [cpus]
    ./target/release/shardcast serve --config "$1" --listen 127.0.0.1:$2 ${3:+--cpus $3} >/dev/null 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$2) 2>/dev/null && break; sleep 0.1; done
}
run() { # mode label loadgen-args...
    local mode=$1 label=$2
    shift 2
    PIDS=()
    NATS=
    local extra=()
    case $mode in
        memory) start_node tuning/bench.toml ${PORTS[0]} ;;
        durable) start_nats; start_node $DIR/node-1.toml ${PORTS[0]} ;;
        cluster)
            start_nats
            # Three nodes share the two cores: one shard each (CPU 0, 1, 0)
            # unless CLUSTER_SHARDS=2 (two each, six shards on two cores).
            for i in 0 1 2; do
                local cpus=$((i % 2))
                [ "${CLUSTER_SHARDS:-1}" = 2 ] && cpus=0,1
                start_node $DIR/node-$((i + 1)).toml ${PORTS[$i]} $cpus
            done
            extra=(--nodes 127.0.0.1:${PORTS[1]},127.0.0.1:${PORTS[2]})
            # The streams spread over the three nodes before the run.
            sleep 4
            ;;
    esac
    sleep 1
    local c0=0 p
    for p in "${PIDS[@]}" $NATS; do c0=$((c0 + $(cpu_of $p))); done
    ./target/release/shardcast-loadgen "$@" "${extra[@]}" --addr 127.0.0.1:${PORTS[0]} --server-pid ${PIDS[0]} \
        | awk -v l="$label" '/^deliveries|^publishes|^latency|^ack|^verify/ {print l": "$0}'
    local c1=0
    for p in "${PIDS[@]}" $NATS; do c1=$((c1 + $(cpu_of $p))); done
    echo "$label: servers cpu $(( (c1 - c0) * 10 )) ms (${#PIDS[@]} node(s)${NATS:+ + nats-server})"
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
    if [ -n "$NATS" ]; then kill $NATS; wait $NATS 2>/dev/null || true; NATS=; fi
}
FANOUT=(fanout --subscribers 1000 --publishers 1 --rate 1000 --duration "$SECS" --drain 2 --processes 2)
ROOMS=(rooms --rooms 2000 --per-room 2 --publishers 8 --rate 5000 --duration "$SECS" --processes 2
       --sources 127.0.0.2,127.0.0.3)
MODES=${MODES:-memory durable cluster}
for r in $(seq 1 "$ROUNDS"); do
    echo "== round $r"
    for mode in $MODES; do
        run $mode "fanout-1k $mode" "${FANOUT[@]}"
    done
    for mode in $MODES; do
        run $mode "rooms-5k $mode" "${ROOMS[@]}"
    done
done
