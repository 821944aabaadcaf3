"""The end of a session reaches its sockets: logout, expiry and ``regenerate()`` close
them (4401) in one process and across processes sharing Redis; a socket never writes a
dead session back (:class:`SessionEnded`), and it reads what pages saved since it opened.

Run as a script (``python tests/web/test_session_end.py REDIS_URL``), this file is one
rtserver process of the two-process test: it prints its port and serves until stdin
closes.
"""

from __future__ import annotations

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

import rtserver
from rtserver.errors import SessionEnded
from rtserver.testing import TestServer, serve
from rtserver.websocket.hub import hub

ROOM = "room:lobby"


class Chat(rtserver.WebSocket):
    """Joins the room as its user; answers a few commands about its session."""

    def opened(self) -> None:
        nick = self.session.get("nick")
        if nick is None:
            self.close(4401, "log in first")
            return
        self.join(ROOM, member={"nick": nick}, announce=True)
        self.send_json({"hello": nick})

    def received_message(self, message: Any) -> None:
        command = str(message)
        if command == "nick":
            self.send_json({"nick": self.session.get("nick")})
        elif command == "save":
            self.session["nick"] = "mallory"
            try:
                self.session.save()
                self.send_json({"saved": True})
            except SessionEnded as exc:
                self.send_json({"refused": type(exc).__name__})
        elif command == "locked":
            try:
                with self.session.locked():
                    self.session["nick"] = "mallory"
                self.send_json({"saved": True})
            except SessionEnded as exc:
                self.send_json({"refused": type(exc).__name__})


class StayingChat(Chat):
    """An app that keeps the socket open and says why its session ended."""

    def session_ended(self, reason: str) -> None:
        self.send_json({"ended": reason})


class Root:
    ws = Chat
    staying = StayingChat

    @rtserver.expose
    def login(self, nick: str) -> str:
        rtserver.session.regenerate()
        rtserver.session["nick"] = nick
        return "ok"

    @rtserver.expose
    def rename(self, nick: str) -> str:
        rtserver.session["nick"] = nick
        return "ok"

    @rtserver.expose
    def relogin(self) -> str:
        rtserver.session.regenerate()  # a privilege change: the old id dies
        return "ok"

    @rtserver.expose
    def logout(self) -> str:
        rtserver.tools.sessions.expire()
        return "bye"

    @rtserver.expose
    def whoami(self) -> str:
        return json.dumps({"nick": rtserver.session.get("nick")})

    @rtserver.expose
    def here(self) -> str:
        return json.dumps(sorted(info["nick"] for info in hub.presence(ROOM).values()))


#: The channel policy names the signed-in user by the session key "nick".
POLICY = {"hub.policy.user_key": "nick"}


def config(**sessions: Any) -> dict[str, Any]:
    return {"/": {"tools.sessions.on": True, **{f"tools.sessions.{k}": v for k, v in sessions.items()}}}


def login(srv: TestServer, nick: str) -> str:
    status, headers, _ = srv.post("/login", {"nick": nick})
    assert status == 200
    return str(headers["Set-Cookie"]).split(";", 1)[0]


def whoami(srv: TestServer, cookie: str) -> Any:
    return json.loads(srv.get("/whoami", headers={"Cookie": cookie})[2])["nick"]


def here(srv: TestServer) -> list[str]:
    return list(json.loads(srv.get("/here")[2]))


@contextlib.contextmanager
def socket(srv: TestServer, cookie: str, path: str = "/ws") -> Iterator[Any]:
    with srv.websocket_connect(path, additional_headers={"Cookie": cookie}) as ws:
        assert "hello" in reply(ws)
        yield ws


def reply(ws: Any, within: float = 5.0) -> Any:
    """The next message of the handler itself (channel traffic is skipped)."""
    deadline = time.monotonic() + within
    while True:
        msg = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if "channel" not in msg:
            return msg


def ask(ws: Any, command: str) -> Any:
    ws.send(command)
    return reply(ws)


def wait_leaves(ws: Any, nick: str, count: int, within: float) -> None:
    """``ws`` sees ``count`` presence leaves of ``nick`` within ``within`` seconds."""
    deadline = time.monotonic() + within
    seen = 0
    while seen < count:
        msg = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        presence = msg.get("presence") or {}
        if presence.get("action") == "leave" and (presence.get("info") or {}).get("nick") == nick:
            seen += 1


def close_code(ws: Any, within: float) -> tuple[int, float]:
    """The code the server closed ``ws`` with, and how long it took (at most ``within``)."""
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=max(0.01, within - (time.monotonic() - started)))
    assert info.value.rcvd is not None, "the server did not close the socket in time"
    return info.value.rcvd.code, time.monotonic() - started


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


# ---------------------------------------------------------------------------
# One process


def test_logout_closes_every_socket_of_the_session_and_the_user_leaves_presence() -> None:
    with serve(Root(), config(), global_config=POLICY) as srv:
        dan, eve = login(srv, "dan"), login(srv, "eve")
        with socket(srv, dan) as tab1, socket(srv, dan) as stolen, socket(srv, eve) as other:
            assert wait_for(lambda: here(srv) == ["dan", "dan", "eve"])
            started = time.monotonic()
            assert srv.post("/logout", {}, headers={"Cookie": dan})[0] == 200
            for ws in (tab1, stolen):  # a second tab, and a socket opened with a stolen cookie
                code, _took = close_code(ws, within=1.0)
                assert code == 4401
                assert ws.close_reason == "session ended"
            assert time.monotonic() - started < 1.0
            wait_leaves(other, "dan", 2, within=1.0)  # what "Here now" shows to the others
            assert here(srv) == ["eve"]
            assert ask(other, "nick") == {"nick": "eve"}  # eve's socket goes on
        assert whoami(srv, dan) is None


def test_a_socket_never_writes_back_a_session_that_ended() -> None:
    with serve(Root(), config(), global_config=POLICY) as srv:
        dan = login(srv, "dan")
        with socket(srv, dan, "/staying") as ws:
            srv.post("/logout", {}, headers={"Cookie": dan})
            assert reply(ws, within=1.0) == {"ended": "logout"}
            assert ask(ws, "nick") == {"nick": None}  # it reads as logged out
            assert ask(ws, "save") == {"refused": "SessionEnded"}
            assert ask(ws, "locked") == {"refused": "SessionEnded"}
        assert whoami(srv, dan) is None  # the old cookie is not logged in again


def test_a_socket_finds_its_session_gone_from_the_store_and_refuses_to_save() -> None:
    """Deleted behind the session layer's back (no announcement): save() still refuses."""
    with serve(Root(), config(), global_config=POLICY) as srv:
        dan = login(srv, "dan")
        with socket(srv, dan, "/staying") as ws:
            handler = next(h for h in rtserver.engine.websocket.handlers if isinstance(h, StayingChat))
            handler.session.store.delete(handler.session.id)
            assert ask(ws, "locked") == {"refused": "SessionEnded"}
        assert whoami(srv, dan) is None


def test_a_socket_reads_what_pages_saved_after_it_opened() -> None:
    with serve(Root(), config(), global_config=POLICY) as srv:
        dan = login(srv, "dan")
        with socket(srv, dan) as ws:
            assert ask(ws, "nick") == {"nick": "dan"}
            srv.post("/rename", {"nick": "daniel"}, headers={"Cookie": dan})
            assert ask(ws, "nick") == {"nick": "daniel"}
            assert ask(ws, "locked") == {"saved": True}  # a live session still saves
        assert whoami(srv, dan) == "mallory"


def test_expiry_closes_the_socket_within_a_second() -> None:
    with serve(Root(), config(timeout=1 / 60), global_config=POLICY) as srv:  # sessions live one second
        dan = login(srv, "dan")
        saved = time.monotonic()
        with socket(srv, dan) as ws:
            code, _took = close_code(ws, within=3.0)
            assert code == 4401
            assert time.monotonic() - saved < 1.0 + 1.0  # the expiry, then at most a second
        assert whoami(srv, dan) is None


def test_regenerate_ends_the_sockets_of_the_old_id_and_the_page_keeps_its_user() -> None:
    with serve(Root(), config(), global_config=POLICY) as srv:
        dan = login(srv, "dan")
        with socket(srv, dan, "/staying") as ws:
            status, headers, _ = srv.post("/relogin", {}, headers={"Cookie": dan})
            assert status == 200
            new = str(headers["Set-Cookie"]).split(";", 1)[0]
            assert new != dan
            assert reply(ws, within=1.0) == {"ended": "regenerated"}
            assert ask(ws, "save") == {"refused": "SessionEnded"}
        assert whoami(srv, new) == "dan"
        assert whoami(srv, dan) is None
        with socket(srv, new) as ws:  # a socket opened with the new cookie works
            assert ask(ws, "nick") == {"nick": "dan"}


# ---------------------------------------------------------------------------
# Two processes sharing Redis


@contextlib.contextmanager
def rtserver_process(redis_url: str) -> Iterator[TestServer]:
    """This file run as an rtserver process (hub and sessions in ``redis_url``)."""
    here_dir = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here_dir))
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), redis_url],
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded by the child's own start-up
        assert line.startswith("port "), f"the rtserver process did not start: {line!r}"
        yield _RemoteServer(int(line.split()[1]))
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the child stops its engine and exits
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class _RemoteServer(TestServer):
    """A TestServer for a server in another process (only its port is known)."""

    def __init__(self, port: int) -> None:
        self._port = port

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"


def test_logout_in_one_process_closes_the_sockets_of_another_within_two_seconds(redis_server: Any) -> None:
    with rtserver_process(redis_server.url) as a, rtserver_process(redis_server.url) as b:
        dan, eve = login(a, "dan"), login(a, "eve")
        assert whoami(b, dan) == "dan"  # one session store
        with socket(b, dan) as on_b, socket(a, dan) as on_a, socket(b, eve) as eve_b:
            assert wait_for(lambda: here(a) == ["dan", "dan", "eve"])
            started = time.monotonic()
            assert a.post("/logout", {}, headers={"Cookie": dan})[0] == 200
            assert close_code(on_b, within=2.0)[0] == 4401
            assert close_code(on_a, within=1.0)[0] == 4401
            assert time.monotonic() - started < 2.0
            wait_leaves(eve_b, "dan", 2, within=2.0)
            assert here(b) == ["eve"]
            assert ask(eve_b, "nick") == {"nick": "eve"}
        assert whoami(b, dan) is None


def _main(redis_url: str) -> None:
    conf = config(storage_class="redis", url=redis_url)
    with serve(Root(), conf, global_config={**POLICY, "hub.broker": redis_url}) as srv:
        sys.stdout.write(f"port {srv.port}\n")
        sys.stdout.flush()
        import gevent.os

        while gevent.os.tp_read(sys.stdin.fileno(), 1):  # until the test closes stdin
            pass


if __name__ == "__main__":
    _main(sys.argv[1])
