"""The chat example without a browser: login, CSRF, sessions, limits, history, presence.

The pages are driven over HTTP and the socket with the ``websockets`` client, the way
``static/chat.js`` uses them (the protocol of ``rtserver.websocket.channels``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from websockets.exceptions import ConnectionClosed

import rtserver
from examples.chat.app import MAX_MESSAGE, MAX_NICK, RATE_LIMIT, Root, app_config, hub_config
from rtserver.testing import TestServer, serve


@pytest.fixture
def srv() -> Iterator[TestServer]:
    # The hub's policy starts with the engine: a fresh rate budget per test.
    with serve(Root(), app_config(), global_config=hub_config()) as s:
        yield s


def _cookie(headers: http.client.HTTPMessage) -> str | None:
    for line in headers.get_all("Set-Cookie") or []:
        if line.startswith("session_id="):
            return line.split(";", 1)[0]
    return None


class Visitor:
    """A browser-ish client: one session cookie, this site's Origin, the form's token."""

    def __init__(self, srv: TestServer) -> None:
        self.srv = srv
        self.origin = f"http://127.0.0.1:{srv.port}"
        status, headers, body = srv.get("/login")
        assert status == 200
        self.cookie = _cookie(headers)
        self.token = self.token_in(body)

    @staticmethod
    def token_in(body: bytes) -> str:
        match = re.search(rb'name="csrf_token" value="([^"]+)"', body)
        assert match, body
        return match.group(1).decode()

    def post(self, path: str, data: dict[str, str], **headers: str) -> tuple[int, http.client.HTTPMessage, bytes]:
        hdrs = {"Cookie": self.cookie or "", "Origin": self.origin, **headers}
        return self.srv.post(path, data, headers=hdrs)

    def login(self, nick: str) -> tuple[int, http.client.HTTPMessage, bytes]:
        status, headers, body = self.post("/login", {"nickname": nick, "csrf_token": self.token})
        new = _cookie(headers)
        if status == 303 and new:
            self.cookie = new
        return status, headers, body

    @contextlib.contextmanager
    def socket(self) -> Iterator[Any]:
        with self.srv.websocket_connect("/ws", additional_headers={"Cookie": self.cookie or ""}) as ws:
            yield ws


def login(srv: TestServer, nick: str) -> Visitor:
    visitor = Visitor(srv)
    assert visitor.login(nick)[0] == 303
    return visitor


def ask(ws: Any, **request: Any) -> dict[str, Any]:
    """Send a request with a ref and return its answer (skipping channel traffic)."""
    request.setdefault("ref", 1)
    ws.send(json.dumps(request))
    while True:
        msg = json.loads(ws.recv(timeout=5))
        if msg.get("ref") == request["ref"]:
            return msg


def recv_until(ws: Any, predicate: Any) -> list[dict[str, Any]]:
    """Messages received up to and including the first one matching ``predicate``."""
    seen = []
    while True:
        msg = json.loads(ws.recv(timeout=5))
        seen.append(msg)
        if predicate(msg):
            return seen


# -- pages --------------------------------------------------------------------------------


def test_visitors_without_a_nickname_are_sent_to_the_login_page(srv):
    status, headers, _ = srv.get("/")
    assert status == 303 and headers["Location"].endswith("/login")


def test_login_regenerates_the_session_and_opens_the_chat(srv):
    visitor = Visitor(srv)
    before = visitor.cookie
    status, headers, _ = visitor.login("  Ada   Lovelace ")
    assert status == 303 and headers["Location"].endswith("/")
    assert visitor.cookie and visitor.cookie != before  # a new id at login
    status, _, body = srv.get("/", headers={"Cookie": visitor.cookie})
    assert status == 200
    assert b'data-nick="Ada Lovelace"' in body
    # The id seen before login is worthless now.
    status, headers, _ = srv.get("/", headers={"Cookie": before or ""})
    assert status == 303


def test_the_nickname_is_escaped_in_the_page(srv):
    visitor = login(srv, '<b>"x"</b>')
    body = srv.get("/", headers={"Cookie": visitor.cookie or ""})[2]
    assert b"<b>" not in body and b"&lt;b&gt;&quot;x&quot;&lt;/b&gt;" in body


def test_login_without_the_csrf_token_is_refused(srv):
    visitor = Visitor(srv)
    status, _, body = visitor.post("/login", {"nickname": "mallory"})
    assert status == 403 and b"CSRF token missing" in body
    status, _, _ = visitor.post("/login", {"nickname": "mallory", "csrf_token": "forged" * 8})
    assert status == 403


def test_login_from_another_site_is_refused(srv):
    visitor = Visitor(srv)
    status, _, body = visitor.post(
        "/login", {"nickname": "mallory", "csrf_token": visitor.token}, Origin="https://evil.example"
    )
    assert status == 403 and b"Cross-site request refused" in body


@pytest.mark.parametrize(
    ("nick", "error"),
    [
        ("", b"Choose a nickname."),
        ("   ", b"Choose a nickname."),
        ("x" * (MAX_NICK + 1), f"at most {MAX_NICK} characters (yours has {MAX_NICK + 1})".encode()),
        ("bell\x07", b"control characters"),
    ],
)
def test_bad_nicknames_get_a_clear_error(srv, nick, error):
    visitor = Visitor(srv)
    status, _, body = visitor.login(nick)
    assert status == 400
    assert error in body
    assert b'role="alert" >' in body  # the error paragraph is shown


def test_logout_needs_a_post_with_the_token(srv):
    visitor = login(srv, "ann")
    body = srv.get("/", headers={"Cookie": visitor.cookie or ""})[2]
    token = Visitor.token_in(body)
    assert srv.get("/logout", headers={"Cookie": visitor.cookie or ""})[0] == 405
    assert visitor.post("/logout", {})[0] == 403
    status, headers, _ = visitor.post("/logout", {"csrf_token": token})
    assert status == 303 and headers["Location"].endswith("/login")
    assert srv.get("/", headers={"Cookie": visitor.cookie or ""})[0] == 303


def test_pages_send_security_headers_and_the_client_is_served(srv):
    status, headers, _ = srv.get("/login")
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert headers["X-Frame-Options"] == "DENY"
    status, headers, body = srv.get("/rtserver.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b"export function connect" in body
    for path in ("/static/chat.js", "/static/chat.css"):
        assert srv.get(path)[0] == 200


# -- the socket ---------------------------------------------------------------------------


def test_a_socket_without_a_login_is_closed_with_4401(srv):
    with srv.websocket_connect("/ws") as ws, pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4401


def test_two_users_chat_and_see_each_other(srv):
    ann, bob = login(srv, "ann"), login(srv, "bob")
    with ann.socket() as a, bob.socket() as b:
        joined = ask(a, op="join", channel="room:t1", history=50)
        assert joined["op"] == "joined" and list(joined["presence"].values()) == [{"nick": "ann"}]
        joined = ask(b, op="join", channel="room:t1", history=50)
        assert sorted(m["nick"] for m in joined["presence"].values()) == ["ann", "bob"]
        # ann sees bob arrive (after her own arrival, announced to the channel too)
        event = recv_until(a, lambda m: m.get("presence", {}).get("info") == {"nick": "bob"})[-1]
        assert event["presence"]["action"] == "join"
        ok = ask(b, op="publish", channel="room:t1", data="hi <b>ann</b>", ref=7)
        assert ok["op"] == "ok" and isinstance(ok["id"], int)
        msg = recv_until(a, lambda m: "data" in m)[-1]
        assert msg["id"] == ok["id"]
        assert msg["data"]["nick"] == "bob" and msg["data"]["text"] == "hi <b>ann</b>"
        assert isinstance(msg["data"]["ts"], int)
    with ann.socket() as a:
        ask(a, op="join", channel="room:t1")
        assert rtserver.hub.presence("room:t1") != {}
    deadline = time.monotonic() + 5
    while rtserver.hub.presence("room:t1") and time.monotonic() < deadline:
        gevent.sleep(0.02)
    assert rtserver.hub.presence("room:t1") == {}  # closing the socket left the room


def test_joining_sends_the_last_50_messages_then_live_ones(srv):
    for i in range(60):
        rtserver.hub.publish("room:t2", {"nick": "bot", "text": f"m{i}", "ts": 0})
    ann = login(srv, "ann")
    with ann.socket() as ws:
        ws.send(json.dumps({"op": "join", "channel": "room:t2", "history": 50, "ref": 1}))
        got = recv_until(ws, lambda m: m.get("op") == "joined")
        texts = [m["data"]["text"] for m in got if "data" in m]
        assert texts == [f"m{i}" for i in range(10, 60)]
        rtserver.hub.publish("room:t2", {"nick": "bot", "text": "live", "ts": 0})
        assert recv_until(ws, lambda m: "data" in m)[-1]["data"]["text"] == "live"


def test_a_reconnecting_client_resumes_after_its_last_id(srv):
    ann = login(srv, "ann")
    with ann.socket() as ws:
        ask(ws, op="join", channel="room:t3")
        last = ask(ws, op="publish", channel="room:t3", data="before", ref=2)["id"]
    missed = [rtserver.hub.publish("room:t3", {"nick": "bob", "text": t, "ts": 0}) for t in ("x", "y")]
    with ann.socket() as ws:
        got = recv_until_joined(ws, since=last)
    assert [m["id"] for m in got if "data" in m] == missed


def recv_until_joined(ws: Any, since: int) -> list[dict[str, Any]]:
    ws.send(json.dumps({"op": "join", "channel": "room:t3", "since": since, "ref": 1}))
    return recv_until(ws, lambda m: m.get("op") == "joined")


def test_message_limits_give_clear_errors(srv):
    ann = login(srv, "ann")
    with ann.socket() as ws:
        ask(ws, op="join", channel="room:t4")
        too_long = ask(ws, op="publish", channel="room:t4", data="x" * (MAX_MESSAGE + 1))
        assert too_long["op"] == "error" and too_long["error"] == "too-long"
        assert f"at most {MAX_MESSAGE} characters" in too_long["message"]
        assert ask(ws, op="publish", channel="room:t4", data="   ")["error"] == "empty"
        assert ask(ws, op="publish", channel="room:t4", data={"html": 1})["error"] == "empty"
        assert ask(ws, op="publish", channel="room:other", data="hi")["error"] == "not-joined"
        assert ask(ws, op="join", channel="room:Bad Name")["error"] == "forbidden"
        assert ask(ws, op="join", channel="secret")["error"] == "forbidden"


def test_the_rate_limit_refuses_a_flood_with_a_visible_reason(srv):
    ann, bob = login(srv, "ann"), login(srv, "bob")
    with ann.socket() as ws, bob.socket() as other:
        ask(ws, op="join", channel="room:t5")
        answers = [ask(ws, op="publish", channel="room:t5", data=f"m{i}", ref=i) for i in range(RATE_LIMIT + 2)]
        assert [a["op"] for a in answers] == ["ok"] * RATE_LIMIT + ["error", "error"]
        assert answers[-1]["error"] == "rate-limited" and "Slow down" in answers[-1]["message"]
        # per user: bob is not limited by ann's flood
        ask(other, op="join", channel="room:t5")
        assert ask(other, op="publish", channel="room:t5", data="calm", ref=99)["op"] == "ok"


def test_rooms_are_created_once_and_listed_from_history(srv):
    ann = login(srv, "ann")
    with ann.socket() as ws:
        ask(ws, op="join", channel="rooms", history=100)
        assert ask(ws, op="publish", channel="rooms", data={"create": "t6-room"}, ref=2)["op"] == "ok"
        created = recv_until(ws, lambda m: "data" in m)[-1]
        assert created["data"] == {"room": "t6-room", "by": "ann"}
        assert ask(ws, op="publish", channel="rooms", data={"create": "t6-room"}, ref=3)["error"] == "exists"
        assert ask(ws, op="publish", channel="rooms", data={"create": "lobby"}, ref=4)["error"] == "exists"
        assert ask(ws, op="publish", channel="rooms", data={"create": "No!"}, ref=5)["error"] == "bad-room"
    bob = login(srv, "bob")
    with bob.socket() as ws:
        ws.send(json.dumps({"op": "join", "channel": "rooms", "history": 100, "ref": 1}))
        got = recv_until(ws, lambda m: m.get("op") == "joined")
        assert {"room": "t6-room", "by": "ann"} in [m["data"] for m in got if "data" in m]
