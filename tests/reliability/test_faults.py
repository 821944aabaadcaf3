"""Faults: peers that vanish mid-message, handlers that raise or block.

The server must stay up, give back every descriptor and greenlet of a dead peer, and
confine a misbehaving handler to its own request or socket.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import gevent
import pytest
from gevent.event import Event
from ws4py.websocket import EchoWebSocket, WebSocket

import rtserver
from rtserver.testing import serve

from .conftest import (
    FrameReader,
    client_frame,
    close_frame,
    live_greenlets,
    open_fds,
    raise_nofile,
    wait_for,
    ws_connect,
)

pytestmark = pytest.mark.timeout(60)

RESETS = 1000

release = Event()  # set by each test's clean-up: unblocks the blocking handlers


class BlockingSocket(WebSocket):
    """Blocks in received_message until ``release`` is set."""

    def received_message(self, message: Any) -> None:
        release.wait(30)
        self.send(message.data, message.is_binary)


class RaisingSocket(WebSocket):
    """Raises on every message."""

    def received_message(self, message: Any) -> None:
        raise RuntimeError("handler bug")


class Root:
    echo = EchoWebSocket
    blocking = BlockingSocket
    raising = RaisingSocket

    @rtserver.expose
    def index(self) -> str:
        return "ok"

    @rtserver.expose
    def block(self) -> str:
        release.wait(30)
        return "released"

    @rtserver.expose
    def fail(self) -> str:
        raise RuntimeError("page bug")


@pytest.fixture
def srv() -> Any:
    release.clear()
    with serve(Root(), global_config={"server.shutdown_timeout": 1}) as server:
        try:
            yield server
        finally:
            release.set()


def echo_once(srv: Any, text: str = "ping") -> float:
    """Open a socket, echo one message, close; return the echo's round trip."""
    sock, rest = ws_connect(srv.host, srv.port, "/echo")
    with sock:
        reader = FrameReader(sock, rest)
        started = time.monotonic()
        sock.sendall(client_frame(text.encode()))
        assert reader.message() == (1, text.encode())
        took = time.monotonic() - started
        sock.sendall(close_frame())
        assert reader.message()[0] == 8
    return took


def test_thousand_sockets_reset_mid_message_leak_nothing(srv: Any) -> None:
    raise_nofile(4 * RESETS)
    echo_once(srv)  # warm up: first-use caches, the shared receive buffer
    assert wait_for(lambda: rtserver.engine.websocket.count == 0, 5)
    base_fds, base_greenlets = open_fds(), live_greenlets()

    sockets = []
    try:
        for _ in range(RESETS):
            sock, _rest = ws_connect(srv.host, srv.port, "/echo")
            sockets.append(sock)
        assert wait_for(lambda: rtserver.engine.websocket.count == RESETS, 10)
        # Half a frame each: a 200-byte masked text frame cut after 100 bytes.
        whole = client_frame(b"x" * 200)
        for sock in sockets:
            sock.sendall(whole[: len(whole) // 2])
        gevent.sleep(0.1)  # the readers now wait for the rest of their frame
        for sock in sockets:
            # SO_LINGER 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    finally:
        for sock in sockets:
            sock.close()

    assert wait_for(lambda: rtserver.engine.websocket.count == 0, 5)
    assert wait_for(lambda: srv.server.httpserver.connection_count == 0, 5)
    assert wait_for(lambda: open_fds() <= base_fds, 5), (open_fds(), base_fds)
    assert wait_for(lambda: live_greenlets() <= base_greenlets, 5, interval=0.2), (live_greenlets(), base_greenlets)
    # Still up, and serving as before.
    assert srv.get("/")[0] == 200
    assert echo_once(srv) < 1.0


def test_blocking_page_handler_affects_only_its_request(srv: Any) -> None:
    blocked = gevent.spawn(srv.get, "/block", None, 30)
    gevent.sleep(0.1)
    assert not blocked.ready()
    for _ in range(20):
        started = time.monotonic()
        assert srv.get("/")[:1] == (200,)
        assert time.monotonic() - started < 1.0
    assert srv.get("/fail")[0] == 500  # a raising handler: its own 500 only
    assert srv.get("/")[2] == b"ok"
    assert echo_once(srv) < 1.0
    assert not blocked.ready()
    release.set()
    status, _, body = blocked.get(timeout=5)
    assert (status, body) == (200, b"released")


def test_blocking_socket_handler_affects_only_its_socket(srv: Any) -> None:
    stuck, rest = ws_connect(srv.host, srv.port, "/blocking")
    bad, bad_rest = ws_connect(srv.host, srv.port, "/raising")
    others = [ws_connect(srv.host, srv.port, "/echo") for _ in range(10)]
    try:
        stuck.sendall(client_frame(b"wait"))
        bad.sendall(client_frame(b"boom"))
        # The raising handler's socket alone is closed, with 1011 (RFC 6455 §7.4.1).
        opcode, payload = FrameReader(bad, bad_rest).message()
        assert opcode == 8 and struct.unpack("!H", payload[:2])[0] == 1011
        readers = [FrameReader(sock, r) for sock, r in others]
        for round_ in range(5):
            started = time.monotonic()
            for sock, _ in others:
                sock.sendall(client_frame(b"m%d" % round_))
            for reader in readers:
                assert reader.message() == (1, b"m%d" % round_)
            assert time.monotonic() - started < 1.0
        assert echo_once(srv) < 1.0
        release.set()
        stuck.settimeout(5)
        assert FrameReader(stuck, rest).message() == (1, b"wait")
    finally:
        for sock, _ in [(stuck, b""), (bad, b""), *others]:
            sock.close()
