"""HTTP limits under load, through the whole stack (config, tree, sockets).

tests/servers/test_http_abuse.py covers the parser and the connection server alone;
here the issue's scenario runs on ``rtserver.testing.serve``: 500 slowloris clients
do not delay a page or a WebSocket echo, and ``server.max_connections`` answers 503
while the connections it counts (an open WebSocket among them) keep working.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import gevent
import pytest
from ws4py.websocket import EchoWebSocket

import rtserver
from rtserver.testing import serve

from .conftest import FrameReader, client_frame, raise_nofile, wait_for, ws_connect

pytestmark = pytest.mark.timeout(60)

SLOW_CLIENTS = 500
HEADER_TIMEOUT = 2.0


class Root:
    echo = EchoWebSocket

    @rtserver.expose
    def index(self) -> str:
        return "ok"


def slowloris(host: str, port: int, results: list[tuple[float, bytes]]) -> None:
    """Trickle a request head, one byte a second, until the server hangs up."""
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.settimeout(1.0)
        received = b""
        for _ in range(int(HEADER_TIMEOUT) + 10):  # bounded: the server must cut us off well before
            try:
                data = sock.recv(4096)
            except TimeoutError:
                try:
                    sock.sendall(b"a")
                except OSError:
                    break
                continue
            except OSError:
                break
            if not data:
                break
            received += data
        results.append((time.monotonic() - started, received))


def test_slowloris_does_not_delay_pages_or_sockets() -> None:
    raise_nofile(4 * SLOW_CLIENTS)
    results: list[tuple[float, bytes]] = []
    with serve(Root(), global_config={"server.header_timeout": HEADER_TIMEOUT}) as srv:
        ws, rest = ws_connect(srv.host, srv.port, "/echo")  # opened before the attack
        try:
            reader = FrameReader(ws, rest)
            clients = [gevent.spawn(slowloris, srv.host, srv.port, results) for _ in range(SLOW_CLIENTS)]
            assert wait_for(lambda: srv.server.httpserver.connection_count >= SLOW_CLIENTS + 1, 5)
            gevent.sleep(0.5)  # the attack is under way: every head half-sent
            for i in range(3):
                started = time.monotonic()
                status, _, body = srv.get("/", timeout=5)
                assert (status, body) == (200, b"ok")
                assert time.monotonic() - started < 1.0
                started = time.monotonic()
                ws.sendall(client_frame(b"echo %d" % i))
                assert reader.message() == (1, b"echo %d" % i)
                assert time.monotonic() - started < 1.0
                # A socket opened during the attack works as well.
                started = time.monotonic()
                late, late_rest = ws_connect(srv.host, srv.port, "/echo")
                with late:
                    late.sendall(client_frame(b"late"))
                    assert FrameReader(late, late_rest).message() == (1, b"late")
                assert time.monotonic() - started < 1.0
            gevent.joinall(clients, timeout=HEADER_TIMEOUT + 5, raise_error=True)
            assert all(c.ready() for c in clients)
            # The slow clients are gone; the socket opened before them is not.
            assert wait_for(lambda: srv.server.httpserver.connection_count == 1, 3)
            ws.sendall(client_frame(b"after"))
            assert reader.message() == (1, b"after")
        finally:
            ws.close()
    assert len(results) == SLOW_CLIENTS
    for took, data in results:
        assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        # Cut off when their header_timeout passed, not before, not much after.
        assert HEADER_TIMEOUT - 0.1 < took < HEADER_TIMEOUT + 2.0, took


def _request(sock: socket.socket) -> bytes:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"ok"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_max_connections_answers_503_and_keeps_open_sockets() -> None:
    with serve(Root(), global_config={"server.max_connections": 4}) as srv:
        httpserver: Any = srv.server.httpserver
        ws, rest = ws_connect(srv.host, srv.port, "/echo")
        keep = [socket.create_connection((srv.host, srv.port), timeout=5) for _ in range(3)]
        try:
            for sock in keep:
                assert _request(sock).startswith(b"HTTP/1.1 200 OK")
            assert wait_for(lambda: httpserver.connection_count == 4, 3)
            for _ in range(3):
                status, headers, _ = srv.get("/")
                assert status == 503
                assert headers["Retry-After"] == "1"
            # Upgrades over the limit are refused the same way.
            with pytest.raises(ConnectionError, match="503"):
                ws_connect(srv.host, srv.port, "/echo")
            # Everything already open keeps working.
            reader = FrameReader(ws, rest)
            ws.sendall(client_frame(b"still open"))
            assert reader.message() == (1, b"still open")
            for sock in keep:
                assert _request(sock).startswith(b"HTTP/1.1 200 OK")
            # A connection closes: room for a new one.
            keep.pop().close()
            assert wait_for(lambda: httpserver.connection_count == 3, 3)
            assert srv.get("/")[0] == 200
        finally:
            ws.close()
            for sock in keep:
                sock.close()
