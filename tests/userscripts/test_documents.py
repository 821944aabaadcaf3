"""Every Python example of the README and ``docs/*.md``, cut out of the document as it
reads today and run as ``python app.py`` (nothing patched, nothing added).

A new example must get a check here or be listed in ``FRAGMENTS`` with the reason it
cannot run alone: ``test_every_example_is_checked`` fails otherwise.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from .harness import Script

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# (document, heading) -> why the block cannot run on its own.
FRAGMENTS = {
    ("docs/chat.md", "How it uses each part of rtserver"): "an excerpt of app_config() with `...`; "
    "the chat app itself is run by tests/e2e",
}


def examples() -> dict[tuple[str, str], str]:
    """``{(document, heading above the block): code}`` for every ```python block."""
    found = {}
    for doc in DOCUMENTS:
        heading = ""
        text = doc.read_text()
        for m in re.finditer(r"^(#+ [^\n]*)$|^```(\w*)\n(.*?)^```", text, re.M | re.S):
            if m.group(1):
                heading = m.group(1).lstrip("#").strip()
            elif m.group(2) == "python":
                key = (str(doc.relative_to(ROOT)), heading)
                assert key not in found, f"two examples under one heading: {key}"
                found[key] = m.group(3)
    return found


def start(code: str, workdir: Path) -> Script:
    return Script.from_text(code, workdir).start()


def test_every_example_is_checked() -> None:
    checked = {("README.md", "Pages and a socket in one app"), *DEPLOYMENT, *CHAT}
    assert set(examples()) - set(FRAGMENTS) == checked
    assert set(FRAGMENTS) <= set(examples())


def test_readme_pages_and_a_socket(tmp_path: Path, namespaces: None) -> None:
    code = examples()[("README.md", "Pages and a socket in one app")]
    assert "monkey" not in code  # the example does not patch: rtserver does
    with start(code, tmp_path) as s:
        s.wait_port(8080)
        status, headers, body = s.get("/")
        assert (status, body) == (200, b"Hello world!")
        assert headers["X-Frame-Options"] == "DENY"
        status, headers, _ = s.post("/login", {"nick": "ann"})
        assert status == 303
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        with s.websocket("/echo") as ws:
            ws.send("ping")
            assert ws.recv(timeout=5) == "ping"
        with s.websocket("/room", headers={"Cookie": cookie}) as room:
            # The socket knows the page's user: its message is from ann.
            room.send("hello")
            assert json.loads(room.recv(timeout=5))["data"] == {"from": "ann", "text": "hello"}
            assert s.post("/announce", {"text": "from a page"})[0] == 200
            assert json.loads(room.recv(timeout=5))["data"] == {"from": "server", "text": "from a page"}
            s.signal(signal.SIGTERM)
            with pytest.raises(Exception) as closed:
                room.recv(timeout=5)
            assert getattr(closed.value, "rcvd", None) is not None and closed.value.rcvd.code == 1001
        assert s.wait(10) == 0, s.err


# -- docs/deployment.md --------------------------------------------------------------------

DEPLOYMENT = {("docs/deployment.md", "Several servers, Unix sockets")}


def test_deployment_a_second_server(tmp_path: Path, namespaces: None) -> None:
    code = examples()[("docs/deployment.md", "Several servers, Unix sockets")]
    with start(code, tmp_path) as s:
        s.wait_port(8080)
        s.wait_port(8090)
        assert s.get("/", port=8080)[2] == s.get("/", port=8090)[2] == b"Hello world!"
        with s.websocket("/echo", port=8090) as ws:
            ws.send("on both ports")
            assert ws.recv(timeout=5) == "on both ports"
        s.signal(signal.SIGINT)
        assert s.wait(10) == 0, s.err


# -- docs/chat.md --------------------------------------------------------------------------

CHAT = {("docs/chat.md", "Serving rtserver.js and mounting the handler in your app")}


def test_chat_mounting_the_channel_socket(tmp_path: Path, namespaces: None) -> None:
    code = examples()[("docs/chat.md", "Serving rtserver.js and mounting the handler in your app")]
    with start(code, tmp_path) as s:
        s.wait_port(8080)
        status, headers, body = s.get("/rtserver.js")
        assert status == 200 and b"export function connect" in body
        assert headers["Content-Type"].startswith(("application/javascript", "text/javascript"))
        # No session user: can_join refuses, with a protocol error reply.
        with s.websocket("/ws") as ws:
            ws.send(json.dumps({"op": "join", "channel": "room:lobby", "ref": 1}))
            reply = json.loads(ws.recv(timeout=5))
            assert reply["op"] == "error" and reply["error"] == "forbidden"
        s.signal(signal.SIGTERM)
        assert s.wait(10) == 0, s.err


def test_examples_are_plain_scripts() -> None:
    """No example asks the reader to patch gevent: rtserver does it."""
    for key, code in examples().items():
        assert "monkey" not in code, key
