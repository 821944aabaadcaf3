"""A refused WebSocket upgrade closes its connection, on every server kind.

The client asked to leave HTTP: whatever it sends next on that connection was meant
for a WebSocket (frames), not for a request parser. So a refused handshake (403 for
a cross-site origin, 426 for a wrong version, 400 when malformed) is answered with
``Connection: close`` and the connection is closed after the response; before, it
stayed open for more requests.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Iterator

import pytest
from ws4py.websocket import EchoWebSocket

import rtserver
from rtserver import testing

pytestmark = pytest.mark.timeout(60)

KINDS = ["gevent", "cheroot", "native"]


class Root:
    @rtserver.expose
    def index(self) -> str:
        return "page"

    ws = EchoWebSocket


@pytest.fixture(params=KINDS)
def srv(request: pytest.FixtureRequest) -> Iterator[testing.TestServer]:
    with testing.serve(Root(), kind=str(request.param)) as server:
        yield server


def upgrade_request(port: int, **headers: str) -> bytes:
    fields = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }
    head = "GET /ws HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body: ``(status, headers, leftover)``."""
    data = b""
    deadline = time.monotonic() + 10
    while b"\r\n\r\n" not in data:
        assert time.monotonic() < deadline, "no response"
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed within the body"
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[length:]


def closed_by_server(sock: socket.socket, leftover: bytes, timeout: float = 5.0) -> bool:
    """Whether the server closes the connection (EOF) with nothing more sent."""
    if leftover:
        return False
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False  # still open, waiting for the next request


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://evil.example"}, 403),
        ({"Sec-WebSocket-Version": "8"}, 426),
        ({"Sec-WebSocket-Key": "short"}, 400),
    ],
    ids=["cross-origin", "bad-version", "bad-key"],
)
def test_a_refused_upgrade_closes_the_connection(srv: testing.TestServer, headers: dict[str, str], status: int) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(upgrade_request(srv.port, **headers))
        got, response_headers, leftover = read_response(sock)
        assert got == status
        assert response_headers.get("connection", "").lower() == "close"
        if status == 426:
            assert response_headers.get("sec-websocket-version") == "13"
        # A second request on the same connection: the server has closed it.
        assert closed_by_server(sock, leftover)
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536) == b""
        except (BrokenPipeError, ConnectionResetError):
            pass


def test_a_refusal_pipelined_with_a_request_answers_the_refusal_only(srv: testing.TestServer) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(upgrade_request(srv.port, Origin="https://evil.example") + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got, _, leftover = read_response(sock)
        assert got == 403
        assert closed_by_server(sock, leftover)


def test_plain_keep_alive_is_unchanged(srv: testing.TestServer) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
            got, headers, leftover = read_response(sock)
            assert (got, leftover) == (200, b"")
            assert headers.get("connection", "").lower() != "close"
