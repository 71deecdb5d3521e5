#!/usr/bin/env bash
# RFC 6455 conformance: the Autobahn|Testsuite fuzzing client (cases 1-7 and
# 9) against the engine's echo endpoint ([server] echo_path), on loopback.
# Installs the suite on pyenv's Python 2.7.18 in target/autobahn/venv (the
# pins come from autobahntestsuite 25.10.1's own requires.txt; the
# "accelerate" extra is left out: it compiles C extensions and only speeds
# the client up). Prints the count per behaviour and fails on any case that
# is not OK, NON-STRICT or INFORMATIONAL. Needs a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=target/autobahn
mkdir -p "$OUT"
PY2=${PY2:-$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions/2.7.18/bin/python2.7}
[ -x "$PY2" ] || { echo "autobahn: Python 2.7.18 not found at $PY2 (pyenv install 2.7.18)" >&2; exit 1; }
if [ ! -x "$OUT/venv/bin/wstest" ]; then
    python3 -m pip install -q "virtualenv<20.22" 2>/dev/null
    python3 -m virtualenv -q -p "$PY2" "$OUT/venv"
    cat > "$OUT/requires.txt" <<'REQ'
setuptools==44.0.0
txaio==2.1.0
incremental==16.10.1
pyOpenSSL==19.1.0
cryptography==3.3.2
Twisted==19.10.0
zope.interface==4.6.0
jinja2==2.11.3
markupsafe==1.1.1
Werkzeug==1.0.1
klein==17.10.0
service_identity==18.1.0
unittest2==1.1.0
six==1.16.0
autobahn[twisted]==0.10.9
REQ
    "$OUT/venv/bin/pip" install -q -r "$OUT/requires.txt" 2>&1 | grep -v DEPRECATION || true
    "$OUT/venv/bin/pip" install -q --no-deps autobahntestsuite==25.10.1 2>&1 | grep -v DEPRECATION || true
fi
rm -rf "$OUT/reports"
./target/release/shardcast serve --config tests/autobahn/server.toml >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
    (exec 3<>/dev/tcp/127.0.0.1/19401) 2>/dev/null && break
    sleep 0.1
done
timeout 1200 "$OUT/venv/bin/wstest" -m fuzzingclient -s tests/autobahn/fuzzingclient.json -u 0 >"$OUT/wstest.log" 2>&1
python3 - "$OUT/reports/index.json" <<'PY'
import collections, json, sys
cases = json.load(open(sys.argv[1]))["shardcast"]
key = lambda c: [int(p) for p in c.split(".")]
print("autobahn: %d cases" % len(cases))
for field in ("behavior", "behaviorClose"):
    print("  %-14s %s" % (field, dict(collections.Counter(v[field] for v in cases.values()))))
bad = []
for c in sorted(cases, key=key):
    v = cases[c]
    if v["behavior"] not in ("OK", "INFORMATIONAL") or v["behaviorClose"] not in ("OK", "INFORMATIONAL"):
        print("  %-8s %s / %s" % (c, v["behavior"], v["behaviorClose"]))
        if "FAILED" in (v["behavior"], v["behaviorClose"]) or "UNIMPLEMENTED" in (v["behavior"], v["behaviorClose"]):
            bad.append(c)
if bad:
    sys.exit("autobahn: failed cases: " + ", ".join(bad))
PY
