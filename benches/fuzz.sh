#!/usr/bin/env bash
# The long fuzz run (issue 11 item 10): every property of
# tests/fuzz_decoders.rs for CASES cases each (default 10,000,000), release
# build, one property per thread. Prints each property's result and time.
#
#   benches/fuzz.sh [CASES]
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${1:-10000000}
cargo test --release --test fuzz_decoders --no-run -q
export PROPTEST_CASES=$CASES
time cargo test --release -q --test fuzz_decoders -- --test-threads 2 --report-time -Z unstable-options 2>/dev/null \
    || PROPTEST_CASES=$CASES cargo test --release --test fuzz_decoders -- --test-threads 2
