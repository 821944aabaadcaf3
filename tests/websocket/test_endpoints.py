"""WebSocket endpoints on the page tree's port: both ways of mounting, the handshake
request's data and session in the handler, origin checks with a session cookie,
broadcast through the bus, and 1001 for every socket when the engine stops."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import gevent
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from ws4py.websocket import EchoWebSocket

import rtserver
from rtserver.testing import serve

closed_codes: list[int] = []


class Info(rtserver.WebSocket):
    def opened(self):
        self.send_json(
            {
                "path": self.path,
                "query": self.query_params,
                "cookie": self.cookies["c"].value if "c" in self.cookies else None,
                "remote": self.remote[0],
                "subprotocol": self.subprotocol,
                "user": self.session.get("user") if self.session is not None else None,
            }
        )

    def received_message(self, message):
        if str(message) == "login-from-socket":
            with self.session.locked():
                self.session["socket_was_here"] = True
            self.send("saved")

    def closed(self, code, reason=None):
        closed_codes.append(code)


class ToolStyle(rtserver.WebSocket):
    pass


class Root:
    echo = EchoWebSocket  # a plain ws4py class attached to the tree

    info = Info

    @rtserver.expose
    def index(self):
        return "page"

    @rtserver.expose
    def login(self, user):
        rtserver.session["user"] = user
        return "logged in"

    @rtserver.expose
    def whoami(self):
        return json.dumps(dict(rtserver.session.items()))

    @rtserver.expose
    def ws(self):
        # ws4py/CherryPy style: the handler instance exists during the handshake.
        handler = rtserver.request.ws_handler
        handler.seen_in_page = True
        assert isinstance(handler, ToolStyle)
        return "ignored: the answer is the 101"

    @rtserver.expose
    @rtserver.websocket(EchoWebSocket, protocols=["chat.v2", "chat.v1"])
    def proto(self):
        pass


CONFIG = {
    "/": {"tools.sessions.on": True},
    "/ws": {"tools.websocket.on": True, "tools.websocket.handler_cls": ToolStyle},
}


@pytest.fixture
def srv():
    with serve(Root(), CONFIG) as s:
        yield s


def _login(srv, user="ann") -> str:
    status, headers, _ = srv.post("/login", {"user": user})
    assert status == 200
    return headers["Set-Cookie"].split(";", 1)[0]


def test_a_plain_ws4py_class_on_the_tree_echoes_beside_pages(srv):
    assert srv.get("/")[2] == b"page"
    with srv.websocket_connect("/echo") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=5) == b"\x00\x01"


def test_tool_style_handler_is_request_ws_handler(srv):
    with srv.websocket_connect("/ws") as ws:
        ws.send("x")
        handler = next(h for h in rtserver.engine.websocket.handlers if isinstance(h, ToolStyle))
        assert handler.seen_in_page is True


def test_decorator_negotiates_subprotocol(srv):
    with srv.websocket_connect("/proto", subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v1"  # the client's first supported choice
        ws.send("p")
        assert ws.recv(timeout=5) == "p"


def test_handler_sees_request_data_and_the_pages_session(srv):
    cookie = _login(srv, "ann")
    with srv.websocket_connect("/info/sub?room=lobby", additional_headers={"Cookie": f"{cookie}; c=choc"}) as ws:
        data = json.loads(ws.recv(timeout=5))
    assert data == {
        "path": "/info/sub",
        "query": {"room": "lobby"},
        "cookie": "choc",
        "remote": "127.0.0.1",
        "subprotocol": None,
        "user": "ann",
    }


def test_socket_writes_to_the_session_are_seen_by_the_next_page(srv):
    cookie = _login(srv, "bob")
    with srv.websocket_connect("/info", additional_headers={"Cookie": cookie}) as ws:
        ws.recv(timeout=5)
        ws.send("login-from-socket")
        assert ws.recv(timeout=5) == "saved"
    data = json.loads(srv.get("/whoami", headers={"Cookie": cookie})[2])
    assert data == {"user": "bob", "socket_was_here": True}


def test_cross_site_handshake_with_a_valid_session_cookie_is_refused(srv):
    cookie = _login(srv, "victim")
    with pytest.raises(InvalidStatus) as info:
        srv.websocket_connect("/info", additional_headers={"Cookie": cookie, "Origin": "https://evil.example"})
    assert info.value.response.status_code == 403
    # same origin is fine
    with srv.websocket_connect("/info", additional_headers={"Cookie": cookie, "Origin": srv.url}) as ws:
        assert json.loads(ws.recv(timeout=5))["user"] == "victim"


def test_allowed_origins_widens_the_check():
    conf = {"/": {"tools.websocket.allowed_origins": ["https://app.example"]}}
    with serve(Root(), conf) as s:
        with s.websocket_connect("/echo", additional_headers={"Origin": "https://app.example"}) as ws:
            ws.send("ok")
            assert ws.recv(timeout=5) == "ok"
        with pytest.raises(InvalidStatus):
            s.websocket_connect("/echo", additional_headers={"Origin": "https://other.example"})


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}, 400),  # no key
        (
            {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "8",
            },
            426,
        ),
        ({}, 400),  # a plain GET on a socket path
    ],
)
def test_bad_handshakes_get_4xx_never_500(srv, headers, status):
    got, hdrs, _ = srv.get("/echo", headers=headers)
    assert got == status
    if status == 426:
        assert hdrs["Sec-WebSocket-Version"] == "13"


def test_engine_broadcast_reaches_every_socket(srv):
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(srv.websocket_connect("/echo")) for _ in range(5)]
        deadline = time.monotonic() + 5
        while rtserver.engine.websocket.count < 5 and time.monotonic() < deadline:
            gevent.sleep(0.01)
        rtserver.engine.publish("websocket-broadcast", "to all")
        assert [ws.recv(timeout=5) for ws in sockets] == ["to all"] * 5


def test_engine_stop_closes_every_socket_with_1001():
    closed_codes.clear()
    with contextlib.ExitStack() as stack:
        with serve(Root(), CONFIG) as s:
            sockets = [stack.enter_context(s.websocket_connect("/info")) for _ in range(3)]
            for ws in sockets:
                ws.recv(timeout=5)
        for ws in sockets:
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            assert info.value.rcvd.code == 1001
    assert closed_codes == [1001, 1001, 1001]
    assert rtserver.engine.websocket.count == 0


def test_hub_join_and_publish_from_a_page():
    class Room(rtserver.WebSocket):
        def opened(self):
            self.join("lobby")
            self.send("joined")

    class App:
        room = Room

        @rtserver.expose
        def say(self, text):
            return str(rtserver.hub.publish("lobby", {"text": text}))

    # Anonymous sockets may join the lobby (the default lets signed-in users only).
    with serve(App(), global_config={"hub.namespaces": {"lobby": {"join": "anyone"}}}) as s:
        with s.websocket_connect("/room") as a, s.websocket_connect("/room") as b:
            assert a.recv(timeout=5) == b.recv(timeout=5) == "joined"
            assert s.post("/say", {"text": "hi"})[0] == 200
            for ws in (a, b):
                msg = json.loads(ws.recv(timeout=5))
                assert msg["channel"] == "lobby" and msg["data"] == {"text": "hi"}
        gevent.sleep(0.1)
        assert rtserver.hub.subscribers("lobby") == []


def test_response_timeout_and_monitor_cover_the_handshake_not_the_socket():
    """A socket lives far past response.timeout while the monitor runs every 0.1 s."""
    conf = {"/": {"response.timeout": 0.2}}
    interrupted_before = rtserver.engine.timeout_monitor.interrupted  # a process-wide count
    with serve(Root(), conf, global_config={"engine.timeout_monitor.frequency": 0.1}) as s:
        with s.websocket_connect("/echo") as ws:
            for i in range(8):
                gevent.sleep(0.15)
                ws.send(f"still here {i}")
                assert ws.recv(timeout=5) == f"still here {i}"
        assert rtserver.engine.timeout_monitor.interrupted == interrupted_before


def test_engine_stop_waits_at_most_its_close_timeout_for_silent_peers():
    """A peer that never answers the 1001 holds the shutdown for close_timeout, no longer."""
    closed_codes.clear()
    handshake = (
        "GET /info HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with contextlib.ExitStack() as stack:
        with serve(Root(), CONFIG, global_config={"engine.websocket.close_timeout": 0.5}) as s:
            silent = stack.enter_context(socket.create_connection((s.host, s.port), timeout=5))
            silent.sendall(handshake.encode())
            assert silent.recv(4096).startswith(b"HTTP/1.1 101")
            started = time.monotonic()
        stopped_in = time.monotonic() - started
    assert 0.4 < stopped_in < 2.0
    assert closed_codes == [1006]  # dropped after the wait, without a closing handshake
    assert rtserver.engine.websocket.count == 0


def test_a_policy_refusal_in_a_callback_closes_1008_not_1011(caplog):
    """self.join() refused by the hub's policy (no signed-in user here) is the app's
    rule, not a bug: close 1008 with the reason, nothing logged as an error."""

    class Joiner(rtserver.WebSocket):
        def opened(self):
            self.join("members-only")

    class App:
        ws = Joiner

    with serve(App()) as s, s.websocket_connect("/ws") as ws:
        with pytest.raises(Exception) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd.code == 1008
        assert "may not join" in closed.value.rcvd.reason
    assert not [r for r in caplog.records if r.levelname == "ERROR" and "opened" in r.getMessage()]
