"""The chat demo page (examples/chat/index.html) in headless Chromium
(issue 13): an agent page streams a 120-token answer as token appends at
20 tokens/s; a viewer reads from the start and drops its connection
mid-answer (it resumes: rollup, then live); a second viewer joins late. A
screenshot of the late viewer is taken mid-stream (target/chat-demo.png);
every viewer's final text must equal the agent's exactly.

    python3 tests/browser/chat_demo.py [path to the shardcast binary]

Loopback only; every wait is bounded.
"""
import http.server, os, socket, subprocess, sys, tempfile, threading, time

from playwright.sync_api import sync_playwright

from helpers import ROOT, binary, free_port, Quiet, wait

BIN = binary()
SHOT = os.path.join(ROOT, "target", "chat-demo.png")


def main():
    ws_port, web, admin = free_port(), free_port(), free_port()
    tmp = tempfile.mkdtemp()
    cfg = os.path.join(tmp, "server.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{ws_port}"\n[shards]\ncpus = [0, 1]\n[admin]\nlisten = "127.0.0.1:{admin}"\n')
    server = subprocess.Popen([BIN, "serve", "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    handler = lambda *a, **k: Quiet(*a, directory=os.path.join(ROOT, "examples", "chat"), **k)
    pages = http.server.ThreadingHTTPServer(("127.0.0.1", web), handler)
    threading.Thread(target=pages.serve_forever, daemon=True).start()
    try:
        wait(lambda: socket.create_connection(("127.0.0.1", ws_port), timeout=0.2).close() is None, 10, "the server")
        base = f"http://127.0.0.1:{web}/index.html?ws=ws://127.0.0.1:{ws_port}/ws&topic=demo/room-{ws_port}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            viewer = browser.new_page(viewport={"width": 900, "height": 560})
            viewer.goto(base + "&role=viewer")
            wait(lambda: viewer.title() == "open", 10, "the viewer to connect")
            agent = browser.new_page()
            agent.goto(base + "&role=agent&tokens=120&rate=20")
            # Mid-answer: the viewer drops its connection and resumes.
            wait(lambda: agent.evaluate("demo.live()") >= 30, 20, "30 tokens sent")
            viewer.evaluate("reconnect()")
            # A viewer joining late.
            wait(lambda: agent.evaluate("demo.live()") >= 50, 20, "50 tokens sent")
            late = browser.new_page(viewport={"width": 900, "height": 560})
            late.goto(base + "&role=viewer")
            wait(lambda: late.evaluate("demo.live()") >= 15 and not late.evaluate("demo.done()"), 20, "the late viewer live")
            late.screenshot(path=SHOT)
            mid = late.evaluate("demo.text().length")
            for name, page in [("viewer", viewer), ("late", late), ("agent", agent)]:
                wait(lambda: page.evaluate("demo.done()"), 30, f"{name} done")
            want = agent.evaluate("demo.text()")
            got = {n: pg.evaluate("demo.text()") for n, pg in [("viewer", viewer), ("late", late)]}
            stats = {n: (pg.evaluate("demo.rollups()"), pg.evaluate("demo.live()")) for n, pg in [("viewer", viewer), ("late", late)]}
            browser.close()
        for n, t in got.items():
            assert t == want, f"{n}: {len(t)} chars, want {len(want)}"
        assert stats["late"][0] >= 1, f"the late viewer got its start as a rollup: {stats}"
        assert stats["viewer"][0] >= 1, f"the resumed viewer got a rollup: {stats}"
        size = os.path.getsize(SHOT)
        assert size > 10000, f"screenshot is {size} bytes"
        print(f"chat demo: {len(want)} chars streamed; viewer (dropped and resumed) and late joiner ended exact "
              f"(rollups/live tokens {stats}); mid-stream screenshot at {mid} chars: {SHOT} ({size} bytes)")
    finally:
        server.terminate()
        server.wait(timeout=10)
        pages.shutdown()


if __name__ == "__main__":
    main()
