"""sub -> pub -> msg against a running shardcast (pip install websockets)."""
import json
import sys
import uuid

from websockets.sync.client import connect

url = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8080/ws"
# A fresh msg_id per run: the same one again inside the dedupe window would
# be acked `dup: true` and (rightly) not delivered a second time.
with connect(url) as sub, connect(url) as pub:
    for ws, cmd in [
        (sub, {"op": "sub", "id": 1, "topic": "acme/room-1"}),
        (pub, {"op": "pub", "id": 2, "topic": "acme/room-1", "data": {"token": "Hel"}, "msg_id": f"gen-{uuid.uuid4().hex[:8]}:3"}),
    ]:
        print(">", json.dumps(cmd))
        ws.send(json.dumps(cmd))
        print("<", ws.recv())
    print("<", sub.recv())
