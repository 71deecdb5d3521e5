#!/usr/bin/env bash
# Side-by-side fanout comparison, one run, interleaved rounds, medians:
# shardcast vs the raw coalescing server (the kernel's ceiling for one
# thread), the raw per-message server (a floor) and the naive
# tokio-tungstenite broadcast server. Loopback only; every run is bounded.
#
#   benches/compare.sh [--quick] [SUBSCRIBERS] [RATE] [SECONDS] [ROUNDS]
#
# Prints a table of absolute figures and ratios to shardcast; the per-run
# JSON documents and a summary go to target/compare/.
# Redis pub/sub and NATS core are not wired in yet (issue 4).
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; shift; fi
SUBS=${1:-1000}; RATE=${2:-1000}; SECS=${3:-5}; ROUNDS=${4:-2}
if [ $QUICK = 1 ]; then SUBS=100; RATE=200; SECS=1; ROUNDS=1; fi
OUT=target/compare; mkdir -p "$OUT"
cargo build --release --workspace -q
BIN=target/release
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
$BIN/shardcast serve --config tuning/bench.toml --listen 127.0.0.1:9200 >/dev/null 2>&1 & pids+=($!)
$BIN/raw-fanout --listen 127.0.0.1:9201 --mode coalescing 2>/dev/null & pids+=($!)
$BIN/raw-fanout --listen 127.0.0.1:9202 --mode per-message 2>/dev/null & pids+=($!)
$BIN/naive-ws --listen 127.0.0.1:9203 2>/dev/null & pids+=($!)
names=(shardcast raw-coalescing raw-per-message naive-tokio)
sleep 1.5
for round in $(seq 1 "$ROUNDS"); do
    for i in 0 1 2 3; do
        port=$((9200 + i))
        # Violations (loss in the floor and naive servers) are results here,
        # not failures of the script.
        $BIN/shardcast-loadgen fanout --addr 127.0.0.1:$port --subscribers "$SUBS" --publishers 1 \
            --rate "$RATE" --duration "$SECS" --drain 1 --processes 2 --server-pid "${pids[$i]}" \
            --label "${names[$i]}" --json "$OUT/${names[$i]}-r$round.json" >/dev/null 2>&1 || true
    done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
names = ["shardcast", "raw-coalescing", "raw-per-message", "naive-tokio"]
rows = {}
for n in names:
    runs = []
    for r in range(1, rounds + 1):
        try:
            runs.append(json.load(open(f"{out}/{n}-r{r}.json")))
        except (OSError, ValueError):
            pass
    if not runs:
        continue
    med = lambda f: statistics.median(f(j) for j in runs)
    rows[n] = {
        "deliveries_per_sec": med(lambda j: j["deliveries_per_sec"]),
        "p99_us": med(lambda j: j["latency_us"]["p99"]),
        "p999_us": med(lambda j: j["latency_us"]["p999"]),
        "cpu_us_per_delivery": med(lambda j: (j["server"] or {}).get("cpu_us_per_delivery", 0)),
        "lost": med(lambda j: j["verify"]["lost"]),
        "runs": len(runs),
    }
base = rows.get("shardcast")
print(f"{'system':<16}{'deliveries/s':>14}{'ratio':>8}{'p99 µs':>10}{'p99.9 µs':>10}{'CPU µs/dlv':>12}{'lost':>10}")
for n, r in rows.items():
    ratio = r["deliveries_per_sec"] / base["deliveries_per_sec"] if base and base["deliveries_per_sec"] else 0
    print(f"{n:<16}{r['deliveries_per_sec']:>14.0f}{ratio:>8.2f}{r['p99_us']:>10.0f}{r['p999_us']:>10.0f}{r['cpu_us_per_delivery']:>12.3f}{r['lost']:>10.0f}")
json.dump(rows, open(f"{out}/summary.json", "w"), indent=2)
PY
