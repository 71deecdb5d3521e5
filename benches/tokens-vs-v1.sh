#!/usr/bin/env bash
# Token streams against the v1 way (issue 13): the loadgen's `tokens`
# scenario — ROOMS rooms, an agent per room streaming a 100-token answer at
# 20 tokens/s, a reading browser per room, 20% of rooms with a late joiner,
# 10% with a browser that drops and reconnects mid-answer, 5% with one that
# stalls for most of the answer — with token streams (`--mode stream`:
# `stream`, `sub` with `streams: true`, rollups) and with plain
# publications resumed with `since` (`--mode v1`), interleaved round by
# round against one fresh server each (tuning/bench.toml). Prints each run
# and the medians.
#
#   benches/tokens-vs-v1.sh [ROUNDS] [ROOMS] [TOKENS_PER_SEC_PER_ROOM]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
ROOMS=${2:-1000}
RATE=${3:-20}
PORT=19393
OUT=target/tokens-bench
mkdir -p $OUT
cargo build --release --workspace -q
cpu_ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
for r in $(seq 1 "$ROUNDS"); do
    echo "== round $r"
    for mode in stream v1; do
        ./target/release/shardcast serve --config tuning/bench.toml --listen 127.0.0.1:$PORT >/dev/null 2>&1 &
        sp=$!
        trap 'kill $sp 2>/dev/null || true' EXIT
        sleep 1
        before=$(cpu_ticks $sp)
        ./target/release/shardcast-loadgen tokens --addr 127.0.0.1:$PORT --rooms "$ROOMS" --tokens 100 \
            --rate "$RATE" --late 0.2 --reconnect 0.1 --slow 0.05 --mode $mode --json "$OUT/$mode-$r.json" \
            | sed "s/^/$mode-$r: /"
        after=$(cpu_ticks $sp)
        python3 - "$OUT/$mode-$r.json" "$before" "$after" "$(getconf CLK_TCK)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r["server_cpu_us_per_token"] = (int(sys.argv[3]) - int(sys.argv[2])) * 1e6 / int(sys.argv[4]) / max(r["sent"], 1)
json.dump(r, open(sys.argv[1], "w"), indent=1)
print(f"   server CPU {r['server_cpu_us_per_token']:.1f} µs per token")
PY
        kill -INT $sp
        wait $sp || true
        trap - EXIT
    done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def med(mode, f):
    return statistics.median(f(json.load(open(f"{out}/{mode}-{r}.json"))) for r in range(1, rounds + 1))
role = lambda name: (lambda j: 100.0 * j["by_role"].get(name, {}).get("exact", 0) / max(j["by_role"].get(name, {}).get("texts", 1), 1))
rows = [
    ("tokens/s sent", lambda j: j["tokens_per_sec"]),
    ("token→screen p50 µs", lambda j: j["token_to_screen"]["p50_us"]),
    ("token→screen p99 µs", lambda j: j["token_to_screen"]["p99_us"]),
    ("token→screen p99.9 µs", lambda j: j["token_to_screen"]["p999_us"]),
    ("exact texts %: readers", role("reader")),
    ("exact texts %: late joiners", role("late")),
    ("exact texts %: reconnecting", role("reconnecting")),
    ("exact texts %: stalled", role("slow")),
    ("rollup frames", lambda j: j["rollups"]),
    ("tokens carried by rollups", lambda j: j["rollup_tokens"]),
    ("bytes saved by rollups", lambda j: j["bytes_saved_by_rollup"]),
    ("server CPU µs per token", lambda j: j["server_cpu_us_per_token"]),
]
print(f"== medians of {rounds} interleaved rounds")
print(f"{'':32} {'stream':>12} {'v1':>12}")
for name, f in rows:
    print(f"{name:32} {med('stream', f):>12.1f} {med('v1', f):>12.1f}")
ok = all(json.load(open(f"{out}/stream-{r}.json"))["exact"] == json.load(open(f"{out}/stream-{r}.json"))["texts"] for r in range(1, rounds + 1))
print("verify (stream):", "OK, every final text exact" if ok else "VIOLATIONS")
sys.exit(0 if ok else 1)
PY
