#!/usr/bin/env bash
# The cost of TLS (issue 11): the same loadgen scenarios against
# tuning/bench.toml in plain TCP and with [tls] (a self-signed P-256
# certificate made here with openssl), interleaved round by round on the
# same two cores. Prints one line per figure.
#
#   benches/tls-cost.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
PORT=19390
DIR=target/tls-bench
mkdir -p $DIR
if [ ! -f $DIR/cert.pem ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
        -keyout $DIR/key.pem -out $DIR/cert.pem 2>/dev/null
fi
{ cat tuning/bench.toml; printf '\n[tls]\ncert_file = "%s"\nkey_file = "%s"\n' "$PWD/$DIR/cert.pem" "$PWD/$DIR/key.pem"; } > $DIR/bench-tls.toml
cargo build --release --workspace -q
run() { # config label extra-loadgen-args...
    local cfg=$1 label=$2
    shift 2
    ./target/release/shardcast serve --config "$cfg" --listen 127.0.0.1:$PORT >/dev/null 2>&1 &
    local sp=$!
    sleep 1
    ./target/release/shardcast-loadgen "$@" --addr 127.0.0.1:$PORT --server-pid $sp \
        | awk -v l="$label" '/^deliveries|^publishes|^latency|^verify|^server|^rss|^idle|^connections/ {print l": "$0}'
    kill -INT $sp
    wait $sp || true
}
TLS=(--tls-ca $DIR/cert.pem)
SAT=(fanout --publishers 1 --payload 100 --sources 127.0.0.2,127.0.0.3,127.0.0.4 --subscribers 10000
     --rate 0 --window 256 --duration 5 --drain 60 --processes 2)
ROOMS=(rooms --rooms 2000 --per-room 2 --publishers 8 --rate 20000 --duration 8 --processes 2
       --sources 127.0.0.2,127.0.0.3)
IDLE=(idle --connections 15000 --rooms 100 --duration 2 --drain 0 --processes 3
      --sources 127.0.0.2,127.0.0.3,127.0.0.4)
for r in $(seq 1 "$ROUNDS"); do
    echo "== round $r"
    run tuning/bench.toml "saturation plain" "${SAT[@]}"
    run $DIR/bench-tls.toml "saturation tls  " "${SAT[@]}" "${TLS[@]}"
    run tuning/bench.toml "rooms-20k plain" "${ROOMS[@]}"
    run $DIR/bench-tls.toml "rooms-20k tls  " "${ROOMS[@]}" "${TLS[@]}"
    run tuning/bench.toml "idle-15k plain" "${IDLE[@]}"
    run $DIR/bench-tls.toml "idle-15k tls  " "${IDLE[@]}" "${TLS[@]}"
done
