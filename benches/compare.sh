#!/usr/bin/env bash
# Side-by-side comparison, one command: installs Redis and NATS if missing
# (Debian packages), builds everything, then runs shardcast, Redis pub/sub,
# NATS core, the naive tokio-tungstenite server and the two raw servers
# through the same loadgen scenarios, interleaved, and prints absolute
# figures, ratios to shardcast and the bars of issue 4.
#
#   benches/compare.sh [--quick] [--rounds N] [--sections a,b] [--systems a,b] [--window W]
#
# JSON (every run + summary.json) and HTML pages go to target/compare/.
# Loopback only; every run is bounded. See benches/compare.py for details.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nats-server >/dev/null || missing+=(nats-server)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian package starts a system redis on 6379; the comparison runs its
# own instances and does not need it.
cargo build --release --workspace -q
exec python3 benches/compare.py "$@"
