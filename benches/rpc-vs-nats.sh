#!/usr/bin/env bash
# Request/reply against NATS core request/reply (issue 12): the loadgen's
# `rpc` scenario — clients calling a service at a fixed rate, responders
# streaming CHUNKS chunks, 1 in 8 responders too slow (timeout → fallback)
# — against shardcast (tuning/bench.toml, request/reply of
# PROTOCOL-EXTENSIONS §3) and against nats-server (`--proto nats`: a queue
# group, reply inboxes, the client keeping its own deadline and fallback),
# interleaved round by round on the same two cores. Prints each run's
# figures, the server's CPU per request from /proc, and the medians.
#
#   [SLOW=0.125] benches/rpc-vs-nats.sh [ROUNDS] [RATE] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
RATE=${2:-2000}
SECS=${3:-10}
SLOW=${SLOW:-0.125}  # fraction of main responders that are too slow
PORT=19391
NATS_PORT=19392
OUT=target/rpc-bench
mkdir -p $OUT
command -v nats-server >/dev/null || { echo "nats-server not installed (apt-get install nats-server)"; exit 1; }
cargo build --release --workspace -q
cpu_ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
run() { # label pid port proto
    local label=$1 pid=$2 port=$3 proto=$4
    local before after
    before=$(cpu_ticks "$pid")
    ./target/release/shardcast-loadgen rpc --proto "$proto" --addr 127.0.0.1:"$port" --rate "$RATE" \
        --duration "$SECS" --clients 8 --responders 8 --slow "$SLOW" --slow-ms 1000 --fallback-responders 2 \
        --chunks 4 --timeout-ms 200 --json "$OUT/$label.json" | sed "s/^/$label: /"
    after=$(cpu_ticks "$pid")
    python3 - "$OUT/$label.json" "$before" "$after" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
ticks = int(sys.argv[3]) - int(sys.argv[2])
r["server_cpu_us_per_request"] = ticks * 1e6 / int(sys.argv[4]) / max(r["sent"], 1)
json.dump(r, open(sys.argv[1], "w"), indent=1)
print(f"   server CPU {r['server_cpu_us_per_request']:.1f} µs per request")
EOF
}
for r in $(seq 1 "$ROUNDS"); do
    echo "== round $r"
    ./target/release/shardcast serve --config tuning/bench.toml --listen 127.0.0.1:$PORT >/dev/null 2>&1 &
    sp=$!
    trap 'kill $sp 2>/dev/null || true' EXIT
    sleep 1
    run "shardcast-$r" $sp $PORT ws
    kill -INT $sp
    wait $sp || true
    nats-server -a 127.0.0.1 -p $NATS_PORT >/dev/null 2>&1 &
    np=$!
    trap 'kill $np 2>/dev/null || true' EXIT
    sleep 0.5
    run "nats-$r" $np $NATS_PORT nats
    kill $np
    wait $np || true
    trap - EXIT
done
python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def med(sys_, f):
    return statistics.median(f(json.load(open(f"{out}/{sys_}-{r}.json"))) for r in range(1, rounds + 1))
rows = [
    ("first chunk p50 µs", lambda j: j["first_chunk"]["p50_us"]),
    ("first chunk p99 µs", lambda j: j["first_chunk"]["p99_us"]),
    ("first chunk p99.9 µs", lambda j: j["first_chunk"]["p999_us"]),
    ("final p50 µs", lambda j: j["final"]["p50_us"]),
    ("final p99 µs", lambda j: j["final"]["p99_us"]),
    ("final p99.9 µs", lambda j: j["final"]["p999_us"]),
    ("answered by the fallback", lambda j: j["answered_by_fallback"]),
    ("timeouts", lambda j: j["timeouts"]),
    ("cancels seen by responders", lambda j: j["cancels_seen"]),
    ("chunks sent nobody waited for", lambda j: j["wasted_chunks"]),
    ("server CPU µs per request", lambda j: j["server_cpu_us_per_request"]),
]
print(f"== medians of {rounds} interleaved rounds")
print(f"{'':32} {'shardcast':>12} {'nats':>12}")
for name, f in rows:
    print(f"{name:32} {med('shardcast', f):>12.1f} {med('nats', f):>12.1f}")
ok = all(json.load(open(f"{out}/{s}-{r}.json"))["verify"]["ok"] for s in ("shardcast", "nats") for r in range(1, rounds + 1))
print("verify:", "OK (every request exactly one final outcome, chunks complete and in order)" if ok else "VIOLATIONS")
sys.exit(0 if ok else 1)
EOF
