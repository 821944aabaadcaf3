"""The README's example runs as shown: pages, a session, an echo socket, the hub."""

import json
import pathlib
import re

import gevent

import rtserver
from rtserver.testing import serve

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _example():
    text = README.read_text()
    code = re.search(r"## Pages and a socket in one app\n\n```python\n(.*?)```", text, re.S).group(1)
    captured = {}

    def fake_quickstart(root, script_name="", config=None):
        captured.update(root=root, config=config)

    namespace = {"__name__": "readme_example"}
    real = rtserver.quickstart
    rtserver.quickstart = fake_quickstart
    try:
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        rtserver.quickstart = real
    return captured["root"], captured["config"]


def test_readme_example():
    root, config = _example()
    with serve(root, config) as srv:
        status, headers, body = srv.get("/")
        assert (status, body) == (200, b"Hello world!")
        assert headers["X-Frame-Options"] == "DENY"
        status, headers, _ = srv.post("/login", {"nick": "ann"})
        assert status == 303
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        with srv.websocket_connect("/echo") as ws:
            ws.send("ping")
            assert ws.recv(timeout=5) == "ping"
        with srv.websocket_connect("/room", additional_headers={"Cookie": cookie}) as room:
            for _ in range(100):
                if rtserver.hub.presence("lobby"):
                    break
                gevent.sleep(0.02)
            assert [m["nick"] for m in rtserver.hub.presence("lobby").values()] == ["ann"]
            room.send("hello")
            msg = json.loads(room.recv(timeout=5))
            assert msg["data"] == {"from": "ann", "text": "hello"}
            srv.post("/announce", {"text": "from a page"})
            msg = json.loads(room.recv(timeout=5))
            assert msg["data"] == {"from": "server", "text": "from a page"}
