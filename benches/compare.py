#!/usr/bin/env python3
"""Side-by-side benchmark: shardcast against Redis pub/sub, NATS core, the
naive tokio-tungstenite server and the two raw servers, driven by the same
shardcast-loadgen scenarios, interleaved round by round, medians quoted.

Run through benches/compare.sh (which builds and installs what is missing).
Every server gets a fresh process for every run (so RSS per connection and
storm times are not polluted by earlier runs), bound to loopback; every
loadgen run is bounded in connections and time.

Sections (the bars of issue 4):
  saturation   10,000 subscribers, one topic, 100-byte payloads, closed loop
               with at most WINDOW publications in flight per subscriber
  latency-10k  10,000 subscribers at 2 publishes/s
  latency-1k   1,000 subscribers at 20 publishes/s
  idle         15,000 idle subscribed connections: server RSS per connection
  storm        10,000 clients connect and subscribe as fast as they can
  loadgen      the loadgen alone on one core against raw-coalescing on the
               other: its own ceiling

Outputs (under --out, default target/compare): every run's JSON, a
summary.json with medians, ratios and the bars, and one HTML page per
latency-bearing section with every system's percentile curve (round 1).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
LOADGEN = os.path.join(BIN, "shardcast-loadgen")
SOURCES = "127.0.0.2,127.0.0.3,127.0.0.4"

# name -> (loadgen --proto, argv for a server listening on port p)
SYSTEMS = {
    "shardcast": ("ws", lambda p: [os.path.join(BIN, "shardcast"), "serve", "--config",
                                   os.path.join(ROOT, "tuning", "bench.toml"), "--listen", f"127.0.0.1:{p}"]),
    "redis": ("redis", lambda p: ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--protected-mode", "no",
                                  "--save", "", "--appendonly", "no", "--maxclients", "19000", "--logfile", "",
                                  "--tcp-backlog", "4096"]),
    "nats": ("nats", lambda p: ["nats-server", "-a", "127.0.0.1", "-p", str(p)]),
    "naive-tokio": ("ws", lambda p: [os.path.join(BIN, "naive-ws"), "--listen", f"127.0.0.1:{p}"]),
    "raw-coalescing": ("ws", lambda p: [os.path.join(BIN, "raw-fanout"), "--listen", f"127.0.0.1:{p}",
                                        "--mode", "coalescing"]),
    "raw-per-message": ("ws", lambda p: [os.path.join(BIN, "raw-fanout"), "--listen", f"127.0.0.1:{p}",
                                         "--mode", "per-message"]),
}

# A before/after comparison of shardcast itself: SHARDCAST_BEFORE_BIN names
# an older build of the binary, run as system "shardcast-before" with the
# same bench config, interleaved with the others in the same rounds.
if os.environ.get("SHARDCAST_BEFORE_BIN"):
    SYSTEMS["shardcast-before"] = ("ws", lambda p: [os.environ["SHARDCAST_BEFORE_BIN"], "serve", "--config",
                                                    os.path.join(ROOT, "tuning", "bench.toml"),
                                                    "--listen", f"127.0.0.1:{p}"])


def wait_port(port, proc, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server on {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not listen within {timeout} s")


def start(system, port, pin=None):
    argv = SYSTEMS[system][1](port)
    if pin is not None:
        argv = ["taskset", "-c", str(pin)] + argv
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    time.sleep(0.3)  # let it settle before the "before" RSS sample
    return proc


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def loadgen(args, timeout):
    r = subprocess.run([LOADGEN] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return r.returncode, r.stdout


class Bench:
    def __init__(self, opts):
        self.o = opts
        self.port = 19300
        self.runs = {}  # (section, system) -> [json]
        os.makedirs(opts.out, exist_ok=True)

    def run(self, section, system, round_, scenario_args, processes, server_pin=None, secs=30):
        self.port += 1
        proc = start(system, self.port, server_pin)
        path = os.path.join(self.o.out, f"{section}-{system}-r{round_}.json")
        if os.path.exists(path):
            os.remove(path)
        try:
            args = scenario_args + ["--addr", f"127.0.0.1:{self.port}", "--proto", SYSTEMS[system][0],
                                    "--processes", str(processes), "--server-pid", str(proc.pid),
                                    "--label", system, "--json", path]
            code, out = loadgen(args, timeout=secs + 120)
        finally:
            stop(proc)
        try:
            with open(path) as f:
                j = json.load(f)
        except (OSError, ValueError):
            print(f"  {section:<12} {system:<16} round {round_}: no report (exit {code})\n{out[-2000:]}", flush=True)
            return
        self.runs.setdefault((section, system), []).append(j)
        v = j["verify"]
        print(f"  {section:<12} {system:<16} round {round_}: {j['deliveries_per_sec']:>12.0f} deliveries/s  "
              f"p99 {j['latency_us']['p99']:>8} µs  setup {j['setup_secs']:.2f} s  "
              f"{'OK' if v['ok'] else 'VIOLATIONS lost=' + str(v['lost'])}", flush=True)

    def med(self, section, system, f):
        runs = self.runs.get((section, system), [])
        vals = [f(j) for j in runs]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one round: proves the harness works")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "compare"))
    ap.add_argument("--sections", default="saturation,latency-10k,latency-1k,idle,storm,loadgen")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--window", type=int, default=256, help="saturation: publications in flight per subscriber")
    o = ap.parse_args()
    b = Bench(o)
    q = o.quick
    subs_sat = 300 if q else 10_000
    secs = 1 if q else 5
    lat_secs = 2 if q else 10
    idle_n = 600 if q else 15_000
    storm_n = 600 if q else 10_000
    rounds = 1 if q else o.rounds
    systems = [s for s in o.systems.split(",") if s in SYSTEMS]
    sections = o.sections.split(",")
    fan = ["fanout", "--publishers", "1", "--payload", "100", "--sources", SOURCES]
    plans = {
        "saturation": (fan + ["--subscribers", str(subs_sat), "--rate", "0", "--window", str(o.window),
                              "--duration", str(secs), "--drain", "60"], 2, secs + 60),
        "latency-10k": (fan + ["--subscribers", str(subs_sat), "--rate", "2", "--duration", str(lat_secs),
                               "--drain", "3"], 2, lat_secs),
        "latency-1k": (fan + ["--subscribers", str(100 if q else 1000), "--rate", "20", "--duration", str(lat_secs),
                              "--drain", "2"], 2, lat_secs),
        "idle": (["idle", "--connections", str(idle_n), "--rooms", "100", "--duration", "2", "--drain", "0",
                  "--sources", SOURCES], 3, 2),
        "storm": (["storm", "--connections", str(storm_n), "--rooms", "100", "--duration", "1", "--drain", "0",
                   "--sources", SOURCES, "--connect-window", "512"], 2, 1),
    }
    # Interleaved: every round runs every system once per section, in order.
    for r in range(1, rounds + 1):
        print(f"== round {r}", flush=True)
        for section in sections:
            if section == "loadgen":
                # The loadgen on core 1 alone, the raw coalescing server on core 0.
                b.run("loadgen", "raw-coalescing", r,
                      fan + ["--subscribers", "100" if q else "1000", "--rate", "0", "--window", "256",
                             "--duration", str(secs), "--drain", "2", "--pin", "1"], 1, server_pin=0, secs=secs)
                continue
            args, processes, s = plans[section]
            for system in systems:
                b.run(section, system, r, args, processes, secs=s)
    summarise(b, systems, sections, o)


def summarise(b, systems, sections, o):
    summary = {"rounds": o.rounds if not o.quick else 1, "window": o.window, "sections": {}, "bars": []}
    lines = []

    def table(section, cols):
        rows = {}
        for s in systems:
            if not b.runs.get((section, s)):
                continue
            rows[s] = {name: b.med(section, s, f) for name, f in cols}
            rows[s]["runs"] = len(b.runs[(section, s)])
        summary["sections"][section] = rows
        return rows

    dps = ("deliveries_per_sec", lambda j: j["deliveries_per_sec"])
    p99 = ("p99_us", lambda j: j["latency_us"]["p99"])
    p999 = ("p999_us", lambda j: j["latency_us"]["p999"])
    cpu = ("cpu_us_per_delivery", lambda j: (j.get("server") or {}).get("cpu_us_per_delivery"))
    lost = ("lost", lambda j: j["verify"]["lost"])
    rss = ("rss_per_connection_bytes", lambda j: (j.get("server") or {}).get("rss_per_connection_bytes"))
    setup = ("setup_secs", lambda j: j["setup_secs"])
    subscribed = ("subscribed", lambda j: j["subscribed"])

    def show(section, rows, fields, ratio_field=None):
        lines.append(f"\n{section}")
        head = f"  {'system':<16}" + "".join(f"{f:>22}" for f in fields)
        if ratio_field:
            head += f"{'shardcast/system':>18}"
        lines.append(head)
        base = rows.get("shardcast", {}).get(ratio_field) if ratio_field else None
        for s, r in rows.items():
            line = f"  {s:<16}" + "".join(
                f"{r[f]:>22.3f}" if isinstance(r[f], float) and r[f] < 100 else
                (f"{r[f]:>22.0f}" if r[f] is not None else f"{'-':>22}") for f in fields)
            if ratio_field and base and r.get(ratio_field):
                line += f"{base / r[ratio_field]:>18.2f}"
            lines.append(line)

    def bar(name, value, limit, ok):
        summary["bars"].append({"bar": name, "value": value, "limit": limit, "met": ok})
        lines.append(f"  [{'MET ' if ok else 'MISS'}] {name}: {value} (bar {limit})")

    def val(section, system, field):
        return summary["sections"].get(section, {}).get(system, {}).get(field)

    if "saturation" in sections:
        rows = table("saturation", [dps, cpu, p99, lost])
        show("saturation (deliveries/s, closed loop, window %d per subscriber)" % o.window, rows,
             ["deliveries_per_sec", "cpu_us_per_delivery", "p99_us", "lost"], "deliveries_per_sec")
    for sec in ("latency-10k", "latency-1k"):
        if sec in sections:
            rows = table(sec, [p99, p999, dps, cpu, lost])
            show(sec + " (µs)", rows, ["p99_us", "p999_us", "deliveries_per_sec", "lost"])
    if "idle" in sections:
        rows = table("idle", [rss, subscribed])
        show("idle (server RSS bytes per idle subscribed connection)", rows, ["rss_per_connection_bytes", "subscribed"])
    if "storm" in sections:
        rows = table("storm", [setup, subscribed])
        show("storm (seconds to all connected and subscribed)", rows, ["setup_secs", "subscribed"])
    if "loadgen" in sections:
        runs = b.runs.get(("loadgen", "raw-coalescing"), [])
        if runs:
            d = statistics.median(j["deliveries_per_sec"] for j in runs)
            c = statistics.median(j["loadgen"]["cpu_us_per_delivery"] for j in runs)
            summary["sections"]["loadgen"] = {"deliveries_per_sec": d, "loadgen_cpu_us_per_delivery": c}
            lines.append(f"\nloadgen alone on one core vs raw-coalescing: {d:.0f} deliveries/s, "
                         f"{c:.3f} µs of loadgen CPU per delivery ({1 / c if c else 0:.1f}M/s per core of loadgen CPU)")

    lines.append("\nbars (issue 4)" + (" — QUICK MODE: sizes far below the bars' definitions; shown only to "
                                        "exercise the harness, not as results" if o.quick else ""))
    sc = lambda sec, f: val(sec, "shardcast", f)
    if sc("saturation", "deliveries_per_sec"):
        d = sc("saturation", "deliveries_per_sec")
        for peer, k in (("redis", 2.0), ("nats", 2.5), ("naive-tokio", 10.0)):
            pv = val("saturation", peer, "deliveries_per_sec")
            if pv:
                bar(f"saturation vs {peer} >= {k}x", round(d / pv, 2), k, d / pv >= k)
        rc = val("saturation", "raw-coalescing", "deliveries_per_sec")
        if rc:
            bar("saturation vs raw-coalescing >= 0.70", round(d / rc, 2), 0.70, d / rc >= 0.70)
        c = sc("saturation", "cpu_us_per_delivery")
        if c is not None:
            bar("server CPU per delivery <= 0.25 µs", round(c, 3), 0.25, c <= 0.25)
    for sec in ("latency-10k", "latency-1k"):
        mine = summary["sections"].get(sec, {}).get("shardcast")
        peers = {s: r for s, r in summary["sections"].get(sec, {}).items()
                 if s in ("redis", "nats", "naive-tokio")}
        if mine and peers:
            for f in ("p99_us", "p999_us"):
                best = min((r[f], s) for s, r in peers.items() if r[f])
                bar(f"{sec} {f} <= 0.7x best peer ({best[1]} {best[0]:.0f})", round(mine[f] / best[0], 2), 0.7,
                    mine[f] / best[0] <= 0.7)
    m = sc("idle", "rss_per_connection_bytes")
    if m is not None:
        bar("idle RSS per connection <= 2048 B", round(m), 2048, m <= 2048)
    st, rd = sc("storm", "setup_secs"), val("storm", "redis", "setup_secs")
    if st and rd:
        bar("storm time <= 1.5x redis", round(st / rd, 2), 1.5, st / rd <= 1.5)
    lg = summary["sections"].get("loadgen", {}).get("deliveries_per_sec")
    if lg:
        bar("loadgen on one core vs raw-coalescing >= 5M/s", round(lg), 5_000_000, lg >= 5_000_000)

    text = "\n".join(lines)
    print(text)
    with open(os.path.join(o.out, "summary.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(o.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    # One HTML page per latency-bearing section, merged into report.html.
    pages = []
    for sec in ("saturation", "latency-10k", "latency-1k"):
        if sec not in sections:
            continue
        files = [os.path.join(o.out, f"{sec}-{s}-r1.json") for s in systems]
        files = [p for p in files if os.path.exists(p)]
        if files:
            page = os.path.join(o.out, f"{sec}.html")
            subprocess.run([LOADGEN, "html", "--out", page, "--title", f"{sec}: publish → deliver latency (round 1)"]
                           + files, check=False, stdout=subprocess.DEVNULL)
            pages.append(page)
    print(f"\nJSON: {o.out}/summary.json and one file per run; HTML: " + ", ".join(pages))


if __name__ == "__main__":
    for tool in ("redis-server", "nats-server"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: run benches/compare.sh, which installs it")
    main()
