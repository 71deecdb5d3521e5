"""The unmodified centrifuge-js browser bundle in headless Chromium against
the real binary's Centrifugo endpoint (issue 14): a page connects with
centrifuge-js and, on the same topic, with a native /ws WebSocket; the
server API, the page (client publish) and a native publisher publish; both
subscribers must see the same publications with the same offset/seq. Then
the page's connection is cut abruptly by a proxy while 30 publications are
made: centrifuge-js reconnects and recovers them, zero loss, no duplicate.

    python3 tests/browser/centrifugo.py [path to the shardcast binary]

Needs tests/centrifugo/node_modules (npm install there) for the bundle.
Loopback only; every wait is bounded.
"""
import http.server, json, os, shutil, socket, subprocess, sys, tempfile, threading, time, urllib.request

from playwright.sync_api import sync_playwright

from helpers import ROOT, binary, free_port, Quiet, wait

BIN = binary()
BUNDLE = os.path.join(ROOT, "tests", "centrifugo", "node_modules", "centrifuge", "dist", "centrifuge.js")
KEY = "browser-key"


class Proxy:
    """A threaded TCP proxy that can cut every connection at once."""

    def __init__(self, upstream):
        self.upstream, self.open, self.socks, self.lock = upstream, True, [], threading.Lock()
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            if not self.open:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                c.close()
                continue
            with self.lock:
                self.socks += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    def pipe(self, a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.open = False
        with self.lock:
            for s in self.socks:
                # No close frame, no goodbye: the sockets just end (the
                # shutdown also wakes the pipe threads blocked on them).
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.socks = []


def api(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/publish", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "X-API-Key": KEY}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        v = json.loads(r.read())
    assert "result" in v, v
    return v["result"]


def main():
    port, admin, web = free_port(), free_port(), free_port()
    tmp = tempfile.mkdtemp()
    cfg = os.path.join(tmp, "server.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\n[shards]\ncpus = [0, 1]\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
                f'[centrifugo]\napi_key = "{KEY}"\n')
    shutil.copy(BUNDLE, os.path.join(tmp, "centrifuge.js"))
    shutil.copy(os.path.join(ROOT, "tests", "browser", "centrifugo_page.html"), os.path.join(tmp, "index.html"))
    server = subprocess.Popen([BIN, "serve", "--config", cfg], stdout=subprocess.DEVNULL,
                              env={**os.environ, "RUST_LOG": "warn"})
    pages = http.server.ThreadingHTTPServer(("127.0.0.1", web), lambda *a, **k: Quiet(*a, directory=tmp, **k))
    threading.Thread(target=pages.serve_forever, daemon=True).start()
    try:
        wait(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close() is None, 10, "the server")
        px = Proxy(port)
        topic = f"acme/browser-{port}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{web}/index.html?server=127.0.0.1:{px.port}&topic={topic}")
            wait(lambda: page.title() == "connected" and page.evaluate("state.nativeReady === true")
                 and page.evaluate("state.subscribed.length") == 1, 15, "the page to connect and subscribe")
            for i in range(1, 21):
                if i % 5 == 0:
                    assert page.evaluate(f"publish({{i: {i}}})") == "ok"
                else:
                    api(port, {"channel": topic, "data": {"i": i}})
            wait(lambda: len(page.evaluate("state.cf")) == 20 and len(page.evaluate("state.native")) == 20, 10,
                 "20 publications on both")
            cf, native = page.evaluate("state.cf"), page.evaluate("state.native")
            assert cf == native, f"same publications, same offset/seq: {cf} vs {native}"
            assert [o for o, _ in cf] == list(range(1, 21)), cf
            epoch = page.evaluate("state.subscribed[0].epoch")

            # Cut the Centrifugo connection abruptly (the native one rides
            # the same proxy and is cut too; only centrifuge-js reconnects).
            px.cut()
            wait(lambda: any(e[0] == "connecting" and e[1] != 0 for e in page.evaluate("state.events")), 15,
                 "centrifuge-js to notice the loss")
            for i in range(21, 51):
                api(port, {"channel": topic, "data": {"i": i}})
            px.open = True
            wait(lambda: len(page.evaluate("state.cf")) >= 50, 20, "the recovery")
            time.sleep(0.3)
            cf = page.evaluate("state.cf")
            assert [o for o, _ in cf] == list(range(1, 51)), f"zero loss, no duplicate: {[o for o, _ in cf]}"
            assert all(d["i"] == o for o, d in cf)
            last = page.evaluate("state.subscribed[state.subscribed.length - 1]")
            assert last["wasRecovering"] and last["recovered"] and last["epoch"] == epoch, last
            browser.close()
        print(f"centrifuge-js in Chromium: 50 publications, mixed fanout identical, recovered after a cut: OK")
    finally:
        server.kill()
        pages.shutdown()


if __name__ == "__main__":
    main()
