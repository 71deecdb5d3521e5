#!/usr/bin/env python3
"""What a NATS outage does to a durable shardcast node, measured (issue 15).

Starts a nats-server -js (own store) and one shardcast node on it (release
build), a subscriber and a publisher on loopback. The publisher publishes
every 10 ms (each with a msg_id; a refused one is sent again, same id, after
its retry_after_ms). At 2 s the nats-server is killed (SIGKILL); after
OUTAGE seconds it is started again on the same store. Reports: when the
first publish after the kill was refused or delayed (time to detect),
what clients saw meanwhile (errors by code, the longest ack wait),
recovery (restart → first ack of a publish sent after it), the node's NATS
metrics, and that no acked publication was lost (every acked seq delivered
to the subscriber, and replayed to a fresh one with `since`).

    python3 benches/nats-outage.py [OUTAGE_SECONDS ...]   (default: 1 5)

Loopback only, bounded (each run ends by itself: 2 s + outage + 8 s).
"""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "shardcast")


sys.path.insert(0, os.path.join(ROOT, "tests", "browser"))
from helpers import free_port, wait  # noqa: E402  (the tests' loopback helpers)


def wait_port(port, secs=15):
    wait(lambda: socket.create_connection(("127.0.0.1", port), 0.2).close() or True, secs, f"a listener on {port}")


def nats(port, store):
    p = subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p


def metrics(admin):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("shardcast_cluster_nats") or line.startswith("shardcast_publishes_rejected_total"):
            name, _, value = line.rpartition(" ")
            key = name.split("{")[0] + ("{" + name.split("{", 1)[1].split("reason=")[1].rstrip("}") + "}" if "reason=" in name else "")
            out[key] = out.get(key, 0) + float(value)
    return out


async def run(outage):
    work = tempfile.mkdtemp(prefix="sc-outage-")
    nport, port, admin = free_port(), free_port(), free_port()
    cfg = os.path.join(work, "node.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\n[shards]\ncpus = [0, 1]\n'
                f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
                f'[rates]\nconnection_per_sec = 1e6\nconnection_burst = 1e6\n'
                f'[cluster]\nnats_url = "nats://127.0.0.1:{nport}"\nnode_id = "outage"\n'
                f'request_timeout_ms = 1000\nlease_ms = 3000\n')
    store = os.path.join(work, "js")
    ns = nats(nport, store)
    log = open(os.environ.get("NODE_LOG", os.devnull), "w")
    node = subprocess.Popen([BIN, "serve", "--config", cfg], stdout=subprocess.DEVNULL, stderr=log,
                            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")})
    try:
        wait_port(port)
        wait_port(admin)
        url = f"ws://127.0.0.1:{port}/ws"
        topic = f"acme/outage-{int(time.time() * 1000) % 1000000}"
        sub = await websockets.connect(url)
        await sub.send(json.dumps({"op": "sub", "id": 1, "topic": topic}))
        subscribed = json.loads(await sub.recv())
        epoch = subscribed["epoch"]
        delivered = []

        async def read_sub():
            async for m in sub:
                v = json.loads(m)
                if v.get("op") == "msg":
                    delivered.append(v["seq"])

        reader = asyncio.create_task(read_sub())
        pub = await websockets.connect(url)
        t0 = time.monotonic()
        sent = {}  # id -> (first send time, last send time, i)
        answers = []  # (id, time, op, seq or code)

        async def read_pub():
            async for m in pub:
                v = json.loads(m)
                now = time.monotonic()
                i = v.get("id")
                if v.get("op") == "ack":
                    answers.append((i, now, "ack", v["seq"]))
                elif v.get("op") == "error":
                    answers.append((i, now, "error", v.get("code")))
                    retries.append(asyncio.create_task(resend(i, v.get("retry_after_ms") or 100)))

        async def resend(i, wait):
            # Each refused publish again after its retry_after_ms, same id.
            await asyncio.sleep(wait / 1000)
            sent[i] = (sent[i][0], time.monotonic())
            await pub.send(json.dumps({"op": "pub", "id": i, "topic": topic, "data": {"i": i}, "msg_id": f"m-{i}"}))

        retries = []
        preader = asyncio.create_task(read_pub())
        kill_at, back_at = 2.0, 2.0 + outage
        end_at = back_at + 8.0
        killed = restarted = None
        i = 0
        while time.monotonic() - t0 < end_at:
            el = time.monotonic() - t0
            if killed is None and el >= kill_at:
                ns.send_signal(signal.SIGKILL)
                ns.wait()
                killed = time.monotonic()
            if killed is not None and restarted is None and el >= back_at:
                ns = nats(nport, store)
                restarted = time.monotonic()
            if el < end_at - 1.5:
                i += 1
                now = time.monotonic()
                sent[i] = (now, now)
                await pub.send(json.dumps({"op": "pub", "id": i, "topic": topic, "data": {"i": i}, "msg_id": f"m-{i}"}))
            await asyncio.sleep(0.01)
        for t in retries:
            t.cancel()
        m = metrics(admin)
        # The last answer per id decides; acked ones must all be delivered.
        acked = {}
        for (pid, at, op, val) in answers:
            if op == "ack":
                acked[pid] = (at, val)
        first_bad = None
        for (pid, at, op, val) in sorted(answers, key=lambda a: a[1]):
            if at >= killed and (op == "error" or at - sent[pid][1] > 0.2):
                first_bad = at
                break
        waits = [acked[p][0] - sent[p][0] for p in acked]
        during = [a for a in answers if killed <= a[1] <= restarted + 0.5]
        codes = {}
        for a in answers:
            if a[2] == "error":
                codes[a[3]] = codes.get(a[3], 0) + 1
        after = [acked[p][0] - restarted for p in acked if sent[p][0] >= restarted]
        seqs = sorted(v for (_, v) in acked.values())
        await asyncio.sleep(1.0)
        missing = sorted(set(seqs) - set(delivered))
        fresh = await websockets.connect(url)
        await fresh.send(json.dumps({"op": "sub", "id": 1, "topic": topic, "since": {"seq": 0, "epoch": epoch}}))
        r = json.loads(await fresh.recv())
        replay = []
        items = []
        while len(replay) < r.get("seq", 0):
            v = json.loads(await asyncio.wait_for(fresh.recv(), 5))
            if v.get("op") == "msg":
                replay.append(v["seq"])
                items.append(v["data"]["i"])
        dups = len(items) - len(set(items))
        unacked_stored = len(set(replay) - set(seqs))
        lost = sorted(set(seqs) - set(replay))
        print(f"outage {outage:.0f} s: {i} publishes, {len(acked)} acked (seqs {seqs[0]}..{seqs[-1]}, "
              f"{'contiguous' if seqs == list(range(seqs[0], seqs[-1] + 1)) else 'NOT contiguous'}), "
              f"{len(answers) - len(acked)} refusals {codes}")
        print(f"  detect: first refusal or ack later than 200 ms at +{(first_bad - killed) * 1000:.0f} ms after the kill"
              if first_bad else "  detect: no publish refused or delayed")
        print(f"  during: {len(during)} answers while NATS was down; longest ack wait {max(waits) * 1000:.0f} ms")
        print(f"  recovery: NATS back → first ack of a new publish in "
              f"{min(after) * 1000:.0f} ms" if after else "  recovery: no publish acked after the restart")
        print(f"  node metrics: {m}")
        print(f"  stored: {len(replay)} publications, {unacked_stored} of them never acked (refused or timed out, "
              f"stored anyway), {dups} stored twice (a msg_id not deduped)")
        print(f"  acked lost: {len(missing)} not delivered live, {len(lost)} missing from a replay "
              f"({'OK' if not missing and not lost else 'LOSS'})")
        for t in (reader, preader):
            t.cancel()
        return not missing and not lost and dups == 0
    finally:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(10)
        except subprocess.TimeoutExpired:
            node.kill()
        ns.kill()
        shutil.rmtree(work, ignore_errors=True)


def main():
    outages = [float(a) for a in sys.argv[1:]] or [1.0, 5.0]
    ok = True
    for o in outages:
        ok = asyncio.run(run(o)) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
