"""What the browser tests share: the repository root, the binary, a free
loopback port, a bounded wait, a quiet static file handler."""
import http.server, os, socket, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def binary():
    """The shardcast binary: argv[1], else the release build."""
    return sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "shardcast")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait(cond, secs, what):
    """Polls `cond` (OSError counts as not yet) for at most `secs`."""
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Quiet(http.server.SimpleHTTPRequestHandler):
    """A static file handler that does not log every request."""

    def log_message(self, *args):
        pass
