"""A real browser against the engine (issue 11): headless Chromium, driven by
Playwright through Debian's `chromium` (executable_path; never
`playwright install`). A page served from an allowed origin connects to
/ws with a token in ?token= and asks for the `shardcast.v1` subprotocol,
subscribes, publishes and receives its own msg stamped with `from`; the same
page from another origin is refused (403 before the upgrade: the browser
reports close 1006); a page with a bad token is refused too.

    python3 tests/browser/origins.py [path to the shardcast binary]

Loopback only; every wait is bounded.
"""
import base64, hashlib, hmac, http.server, json, os, socket, subprocess, sys, tempfile, threading, time

from playwright.sync_api import sync_playwright

from helpers import ROOT, binary, free_port, Quiet

BIN = binary()
SECRET = b"browser-test-secret-0123456789"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def mint(sub, tenant, secret=SECRET):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": sub, "tenant": tenant, "exp": int(time.time()) + 600}).encode())
    sig = b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


PAGE = """<!doctype html><html><head><title>pending</title></head><body><script>
const q = new URLSearchParams(location.search);
const ws = new WebSocket("ws://127.0.0.1:" + q.get("ws") + "/ws?token=" + q.get("token"), ["shardcast.v1"]);
const log = [];
ws.onopen = () => { log.push("open:" + ws.protocol); ws.send(JSON.stringify({op: "sub", id: 1, topic: "web/room"})); };
ws.onmessage = (e) => {
  const m = JSON.parse(e.data);
  log.push(m.op);
  if (m.op === "subscribed") ws.send(JSON.stringify({op: "pub", id: 2, topic: "web/room", data: {hello: "browser"}}));
  if (m.op === "msg") document.title = "ok:" + ws.protocol + ":" + m.from + ":" + m.data.hello;
};
ws.onclose = (e) => { if (!document.title.startsWith("ok")) document.title = "closed:" + e.code + ":" + log.join(","); };
</script></body></html>"""


def serve_pages(directory, port):
    handler = lambda *a, **k: Quiet(*a, directory=directory, **k)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def main():
    ws_port, good, evil, admin = free_port(), free_port(), free_port(), free_port()
    tmp = tempfile.mkdtemp()
    with open(os.path.join(tmp, "index.html"), "w") as f:
        f.write(PAGE)
    cfg = os.path.join(tmp, "server.toml")
    with open(cfg, "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{ws_port}"
[shards]
cpus = [0, 1]
[admin]
listen = "127.0.0.1:{admin}"
[auth]
required = true
hs256_secrets = ["{SECRET.decode()}"]
origins = ["http://127.0.0.1:{good}"]
""")
    server = subprocess.Popen([BIN, "serve", "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pages = [serve_pages(tmp, good), serve_pages(tmp, evil)]
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", ws_port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        token = mint("browser-user", "web")
        results = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            for name, port, tok in [("allowed", good, token), ("other-origin", evil, token),
                                    ("bad-token", good, mint("x", "web", b"wrong-secret-0123456789"))]:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/index.html?ws={ws_port}&token={tok}")
                deadline = time.time() + 10
                while page.title() == "pending" and time.time() < deadline:
                    time.sleep(0.05)
                results[name] = page.title()
                page.close()
            browser.close()
        print(json.dumps(results, indent=2))
        assert results["allowed"] == "ok:shardcast.v1:browser-user:browser", results
        assert results["other-origin"].startswith("closed:1006"), results
        assert results["bad-token"].startswith("closed:1006"), results
        # The browser sees 1006 for both refusals; the server says which.
        import urllib.request
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
        total = lambda prefix: sum(float(l.split()[-1]) for l in metrics.splitlines() if l.startswith(prefix))
        assert total("shardcast_origin_refused_total") == 1, metrics
        assert total('shardcast_auth_refused_total{shard="0",reason="bad_signature"}') + \
            total('shardcast_auth_refused_total{shard="1",reason="bad_signature"}') == 1
        print("browser: allowed origin connected (subprotocol shardcast.v1, from stamped); other origin and bad token refused")
    finally:
        server.terminate()
        server.wait(timeout=10)
        for s in pages:
            s.shutdown()


if __name__ == "__main__":
    main()
