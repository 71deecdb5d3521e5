#!/usr/bin/env bash
# A noisy tenant at its quota next to a quiet one (issue 11): one server
# with tokens required, the noisy tenant's [quotas.tenants."noisy-ID"]
# publish_per_sec = Q (burst 2Q), the quiet tenant unlimited, the loadgen's
# noisy-tenant scenario with N = 0 and N = 4 closed-loop noisy publishers
# alternated ROUNDS times. The quiet tenant's p99 with N = 4 should stay
# within 1.5x of its p99 with N = 0.
#
#   benches/noisy-tenant.sh [Q] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${1:-10000}
ROUNDS=${2:-2}
PORT=19395
SECRET=bench-secret-0123456789abcdef
mkdir -p target/noisy
cat > target/noisy/server.toml <<TOML
[server]
listen = "127.0.0.1:$PORT"
[shards]
cpus = [0, 1]
[rates]
connection_per_sec = 1e7
connection_burst = 1e7
tenant_per_sec = 1e7
tenant_burst = 1e7
[admin]
listen = "127.0.0.1:0"
[auth]
required = true
hs256_secrets = ["$SECRET"]
TOML
for r in $(seq 1 "$ROUNDS"); do
    for n in 0 4; do
        printf '[quotas.tenants."noisy-%s"]\npublish_per_sec = %s\npublish_burst = %s\n' "$((r * 10 + n))" "$Q" "$((2 * Q))" \
            >> target/noisy/server.toml
    done
done
cargo build --release --workspace -q
./target/release/shardcast serve --config target/noisy/server.toml >/dev/null 2>&1 &
SP=$!
trap 'kill $SP 2>/dev/null || true' EXIT
sleep 1
for r in $(seq 1 "$ROUNDS"); do
    for n in 0 4; do
        ./target/release/shardcast-loadgen noisy-tenant --addr 127.0.0.1:$PORT --rooms 200 --per-room 4 \
            --publishers 4 --rate 2000 --noisy $n --noisy-inflight 64 --duration 8 --drain 2 --processes 2 \
            --sources 127.0.0.2,127.0.0.3 --hs256-secret $SECRET --server-pid $SP --run-id $((r * 10 + n)) \
            | awk -v l="round $r N=$n" '/^latency|^publishes|^noisy|^verify|^server/ {print l": "$0}'
    done
done
kill -INT $SP
wait $SP || true
trap - EXIT
