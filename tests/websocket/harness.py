"""A tiny test-only server implementing the upgrade contract (docs/internals.md §1).

Reads one request head, builds a minimal WSGI environ, calls the app, writes the
response head, and runs ``environ['rtserver.upgrade']`` on 101. Tests move to the
production server once it lands; this keeps the WebSocket runtime testable alone.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

from gevent.server import StreamServer

_MAX_HEAD = 64 * 1024


class Harness:
    """``with Harness(app) as h: h.url`` -- serves ``app`` on 127.0.0.1:0."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.connections = 0

    def __enter__(self) -> Harness:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(timeout=2)

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def _handle(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self.connections += 1
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(8192)
                if not chunk or len(data) > _MAX_HEAD:
                    return
                data += chunk
            head, _, leftover = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            path, _, query = target.partition("?")
            environ: dict[str, Any] = {
                "REQUEST_METHOD": method,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "SCRIPT_NAME": "",
                "SERVER_PROTOCOL": version,
                "SERVER_NAME": "127.0.0.1",
                "SERVER_PORT": str(self.port),
                "REMOTE_ADDR": address[0],
                "REMOTE_PORT": str(address[1]),
                "wsgi.url_scheme": "http",
                "rtserver.socket": sock,
            }
            for line in lines[1:]:
                name, _, value = line.partition(":")
                key = "HTTP_" + name.strip().upper().replace("-", "_")
                value = value.strip()
                environ[key] = f"{environ[key]},{value}" if key in environ else value
            status_headers: list[Any] = []

            def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
                status_headers[:] = [status, headers]

            body = b"".join(self.app(environ, start_response))
            status, headers = status_headers
            out = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers]
            sock.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
            takeover = environ.get("rtserver.upgrade")
            if status.startswith("101") and takeover is not None:
                takeover(sock, leftover)
        finally:
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def serving(app: Callable[..., Any]) -> Iterator[Harness]:
    """Context manager form of :class:`Harness`."""
    with Harness(app) as harness:
        yield harness


class RawClient:
    """A bare-socket WebSocket client for tests that misbehave on purpose."""

    def __init__(self, port: int, path: str = "/", headers: dict[str, str] | None = None) -> None:
        import base64
        import os

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during handshake")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.status_line = head.split(b"\r\n")[0].decode()
        self.response_head = head.decode("latin-1")

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True, rsv: int = 0) -> None:
        import os
        import struct

        first = (0x80 if fin else 0) | rsv | opcode
        n = len(payload)
        bit = 0x80 if mask else 0
        if n < 126:
            head = bytes((first, bit | n))
        elif n < 65536:
            head = struct.pack("!BBH", first, bit | 126, n)
        else:
            head = struct.pack("!BBQ", first, bit | 127, n)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask(payload, key)
            head += key
        self.sock.sendall(head + payload)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def recv_frame(self) -> tuple[bool, int, bytes]:
        """``(fin, opcode, payload)`` of the next frame from the server."""
        import struct

        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read(8))
        return bool(b0 & 0x80), b0 & 0x0F, self._read(n)

    def recv_close(self) -> int:
        """Skip frames until a close frame; return its code (1005 when empty)."""
        while True:
            _fin, opcode, payload = self.recv_frame()
            if opcode == 8:
                return int.from_bytes(payload[:2], "big") if payload else 1005

    def at_eof(self) -> bool:
        """Whether the server closed the TCP connection (after any buffered data)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except OSError:
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mask(payload: bytes, key: bytes) -> bytes:
    from websockets.utils import apply_mask

    return apply_mask(payload, key)
