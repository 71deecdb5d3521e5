#!/usr/bin/env bash
# The soak of issue 9: loadgen `rooms` at RATE publishes/s (default 10,000)
# over 2,000 rooms x 2 subscribers, every subscriber dropping its connection
# and resuming with `since` every STORM seconds, for SECS seconds (default
# 600), against the release binary on tuning/soak.toml. Prints the server's
# RSS every 10 s and the loadgen's verdict; exits non-zero if verify fails.
#
#   benches/soak.sh [SECS] [RATE] [STORM]
#
# Loopback only; bounded by SECS (the loadgen refuses more than 600 s).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-600}
RATE=${2:-10000}
STORM=${3:-60}
PORT=${SOAK_PORT:-19210}
cargo build --release --workspace -q
OUT=target/soak
mkdir -p "$OUT"
./target/release/shardcast serve --config tuning/soak.toml --listen 127.0.0.1:$PORT >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null || true' EXIT
sleep 1
(
    t=0
    while kill -0 $SERVER 2>/dev/null && [ $t -le $((SECS + 40)) ]; do
        echo "$t $(awk '/VmRSS/ {print $2}' /proc/$SERVER/status)"
        sleep 10
        t=$((t + 10))
    done
) >"$OUT/rss.txt" &
SAMPLER=$!
set +e
./target/release/shardcast-loadgen rooms --addr 127.0.0.1:$PORT --rooms 2000 --per-room 2 --publishers 4 \
    --rate "$RATE" --duration "$SECS" --drain 10 --processes 2 --reconnect-every "$STORM" \
    --sources 127.0.0.2,127.0.0.3,127.0.0.4 --server-pid $SERVER --json "$OUT/soak.json" | tee "$OUT/loadgen.txt"
rc=${PIPESTATUS[0]}
set -e
kill $SAMPLER 2>/dev/null || true
echo "server RSS (s KiB):"
cat "$OUT/rss.txt"
grep -q "verify        OK" "$OUT/loadgen.txt" || { echo "soak: verify failed"; exit 1; }
exit $rc
