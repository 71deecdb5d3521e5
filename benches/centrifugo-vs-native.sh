#!/usr/bin/env bash
# The Centrifugo endpoint next to the native one (issue 14): the same
# loadgen scenarios against tuning/bench.toml, subscribers speaking
# shardcast's `/ws` protocol or the Centrifugo client protocol at
# `/connection/websocket` (`--proto centrifugo`; publishers speak `/ws` in
# both), interleaved round by round on the same two cores, a fresh server
# per run. Prints one line per figure.
#
#   benches/centrifugo-vs-native.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
PORT=19395
cargo build --release --workspace -q
SERVER=
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null || true' EXIT
run() { # label extra-loadgen-args...
    local label=$1
    shift
    ./target/release/shardcast serve --config tuning/bench.toml --listen 127.0.0.1:$PORT >/dev/null 2>&1 &
    SERVER=$!
    sleep 1
    ./target/release/shardcast-loadgen "$@" --addr 127.0.0.1:$PORT --server-pid $SERVER \
        | awk -v l="$label" '/^deliveries|^publishes|^latency|^verify|^server|^rss|^loadgen/ {print l": "$0}'
    kill -INT $SERVER
    wait $SERVER || true
    SERVER=
}
SAT=(fanout --publishers 1 --payload 100 --sources 127.0.0.2,127.0.0.3,127.0.0.4 --subscribers 10000
     --rate 0 --window 256 --duration 5 --drain 60 --processes 2)
ROOMS=(rooms --rooms 2000 --per-room 2 --publishers 8 --rate 20000 --duration 8 --processes 2
       --sources 127.0.0.2,127.0.0.3)
for r in $(seq 1 "$ROUNDS"); do
    echo "== round $r"
    run "saturation native    " "${SAT[@]}"
    run "saturation centrifugo" "${SAT[@]}" --proto centrifugo
    run "rooms-20k native    " "${ROOMS[@]}"
    run "rooms-20k centrifugo" "${ROOMS[@]}" --proto centrifugo
done
