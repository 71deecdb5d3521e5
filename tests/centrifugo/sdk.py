"""The unmodified centrifuge-python SDK (PyPI `centrifuge-python` 0.7)
against the real shardcast binary's Centrifugo endpoint (issue 14): connect
with a token from get_token, token refresh past exp, subscribe, receive,
publish, presence; an abrupt disconnect (a proxy between the SDK and the
server cuts every socket) while 50 publications are made, then recovery
with zero loss and no duplicate; drain (SIGTERM) -> the SDK is told 3001 and
reconnects to the next process, resubscribing.

    python3 tests/centrifugo/sdk.py [path to the shardcast binary]

Loopback only; every wait is bounded; exits non-zero on any failure.
"""
import asyncio, base64, hashlib, hmac, json, os, socket, subprocess, sys, tempfile, time, urllib.request

from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "shardcast")
SECRET = b"sdk-test-secret"
API_KEY = "sdk-test-key"


def b64(o):
    return base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=").decode()


def mint(sub, ttl):
    head, body = b64({"alg": "HS256", "typ": "JWT"}), b64({"sub": sub, "tenant": "acme", "exp": int(time.time()) + ttl})
    sig = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


async def until(cond, secs, what):
    end = time.time() + secs
    while time.time() < end:
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def start_server(port, admin):
    cfg = os.path.join(tempfile.mkdtemp(), "server.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[server]\nlisten = "127.0.0.1:{port}"\n[shards]\ncpus = [0, 1]\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
            f'[auth]\nrequired = true\nhs256_secrets = ["{SECRET.decode()}"]\nleeway_secs = 2\n'
            f'[centrifugo]\napi_key = "{API_KEY}"\n'
        )
    proc = subprocess.Popen([BIN, "serve", "--config", cfg], stdout=subprocess.DEVNULL,
                            env={**os.environ, "RUST_LOG": "warn"})
    end = time.time() + 10
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the server did not start")


def api(port, method, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/{method}", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": API_KEY}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        v = json.loads(r.read())
    assert "error" not in v, v
    return v


class Proxy:
    """A TCP proxy that can cut every connection at once (an abrupt network
    loss) and refuse new ones."""

    def __init__(self, port, upstream):
        self.port, self.upstream, self.open, self.conns = port, upstream, True, set()

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port)

    async def handle(self, r, w):
        if not self.open:
            w.transport.abort()
            return
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            w.transport.abort()
            return
        self.conns.update([w, uw])

        async def pipe(a, b):
            try:
                while data := await a.read(65536):
                    b.write(data)
                    await b.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                b.transport.abort()

        try:
            await asyncio.gather(pipe(r, uw), pipe(ur, w))
        except asyncio.CancelledError:
            pass

    def cut(self):
        self.open = False
        for w in list(self.conns):
            w.transport.abort()
        self.conns.clear()


async def main():
    p1, a1, p2, a2, pp = (free_port() for _ in range(5))
    server = start_server(p1, a1)
    px = Proxy(pp, p1)
    await px.start()
    tokens, events, seen, subscribed = [0], [], [], []

    async def get_token():
        tokens[0] += 1
        return mint("sdk-py", 3)

    class Events(ClientEventHandler):
        async def on_connecting(self, ctx):
            events.append(("connecting", ctx.code, ctx.reason))

        async def on_connected(self, ctx):
            events.append(("connected", ctx.client))

        async def on_disconnected(self, ctx):
            events.append(("disconnected", ctx.code, ctx.reason))

    class SubEvents(SubscriptionEventHandler):
        async def on_publication(self, ctx):
            seen.append((ctx.pub.offset, ctx.pub.data))

        async def on_subscribed(self, ctx):
            subscribed.append(ctx)

    client = Client(f"ws://127.0.0.1:{pp}/connection/websocket", events=Events(), get_token=get_token,
                    min_reconnect_delay=0.05, max_reconnect_delay=0.3, timeout=3.0)
    sub = client.new_subscription("acme/sdk-py", events=SubEvents(), recoverable=True, positioned=True)
    try:
        await client.connect()
        await sub.subscribe()
        await sub.ready(5)
        assert subscribed[0].recoverable and subscribed[0].positioned, subscribed[0]
        epoch = subscribed[0].stream_position.epoch

        for i in range(1, 6):
            api(p1, "publish", {"channel": "acme/sdk-py", "data": {"i": i}})
        await sub.publish({"i": 6, "from": "sdk"})
        await until(lambda: len(seen) == 6, 5, "6 publications")
        assert [s[0] for s in seen] == [1, 2, 3, 4, 5, 6], seen
        pres = await sub.presence()
        assert any(m.user == "sdk-py" for m in pres.clients.values()), pres
        stats = await sub.presence_stats()
        assert stats.num_clients == 1, stats

        # Token refresh: exp is 3 s out; stay connected past it.
        await asyncio.sleep(6)
        assert tokens[0] >= 2, f"get_token called for the refresh ({tokens[0]})"
        assert not any(e[0] == "connecting" and e[1] != 0 for e in events), events

        # An abrupt disconnect while 50 publications are made, then recovery.
        px.cut()
        await until(lambda: any(e[0] == "connecting" and e[1] != 0 for e in events), 15, "the SDK to notice")
        for i in range(7, 57):
            api(p1, "publish", {"channel": "acme/sdk-py", "data": {"i": i}})
        px.open = True
        await until(lambda: len(seen) >= 56, 15, "the 50 missed publications")
        await asyncio.sleep(0.3)
        offs = [s[0] for s in seen]
        assert offs == list(range(1, 57)), f"zero loss, no duplicate: {offs}"
        assert all(d["i"] == o for o, d in seen)
        rec = subscribed[-1]
        assert rec.was_recovering and rec.recovered, rec
        assert rec.stream_position.epoch == epoch

        # Drain: SIGTERM; the SDK is told 3001 and reconnects to the next
        # process behind the same address, resubscribing (in-memory epochs
        # change with the process: the recovery is reported failed).
        nxt = start_server(p2, a2)
        px.upstream = p2
        before = len(events)
        server.terminate()
        await until(lambda: any(e[0] == "connecting" and e[1] == 3001 for e in events[before:]), 10, "close 3001")
        n = len(subscribed)
        await until(lambda: len(subscribed) > n, 10, "the resubscribe")
        server = nxt
        after = subscribed[-1]
        assert after.was_recovering and not after.recovered, after
        api(p2, "publish", {"channel": "acme/sdk-py", "data": {"i": "after"}})
        await until(lambda: any(s[1]["i"] == "after" for s in seen), 5, "a publication from the next process")
        print(f"centrifuge-python: tokens {tokens[0]}, publications {len(seen)}, events {len(events)}: OK")
    finally:
        await client.disconnect()
        px.server.close()
        server.kill()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), 120))
