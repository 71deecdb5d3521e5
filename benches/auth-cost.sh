#!/usr/bin/env bash
# The cost of identity (issue 11): the same loadgen scenarios against
# tuning/bench.toml (anonymous) and tuning/bench-auth.toml (tokens required,
# every connection presents an HS256 token; every msg carries `from`),
# interleaved round by round on the same two cores. Prints one line per run.
#
#   benches/auth-cost.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
SECRET=bench-secret-0123456789abcdef
PORT=19380
cargo build --release --workspace -q
run() { # config label extra-loadgen-args...
    local cfg=$1 label=$2
    shift 2
    ./target/release/shardcast serve --config "$cfg" --listen 127.0.0.1:$PORT >/dev/null 2>&1 &
    local sp=$!
    sleep 1
    ./target/release/shardcast-loadgen "$@" --addr 127.0.0.1:$PORT --server-pid $sp \
        | awk -v l="$label" '/^deliveries|^latency|^verify|^server/ {print l": "$0}'
    kill -INT $sp
    wait $sp || true
}
SAT=(fanout --publishers 1 --payload 100 --sources 127.0.0.2,127.0.0.3,127.0.0.4 --subscribers 10000
     --rate 0 --window 256 --duration 5 --drain 60 --processes 2)
LAT=(fanout --publishers 1 --payload 100 --sources 127.0.0.2,127.0.0.3 --subscribers 1000
     --rate 20 --duration 10 --drain 2 --processes 2)
for r in $(seq 1 "$ROUNDS"); do
    echo "== round $r"
    run tuning/bench.toml "saturation anonymous" "${SAT[@]}"
    run tuning/bench-auth.toml "saturation tokens   " "${SAT[@]}" --hs256-secret $SECRET
    run tuning/bench.toml "latency-1k anonymous" "${LAT[@]}"
    run tuning/bench-auth.toml "latency-1k tokens   " "${LAT[@]}" --hs256-secret $SECRET
done
