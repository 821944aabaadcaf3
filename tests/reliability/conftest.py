"""Helpers for the reliability tests: a raw-socket WebSocket client, fd and greenlet counts."""

from __future__ import annotations

import base64
import gc
import os
import resource
import socket
import struct
import time
from collections.abc import Callable

from greenlet import greenlet

KEY = base64.b64encode(b"0123456789abcdef").decode()


def raise_nofile(wanted: int) -> None:
    """Raise RLIMIT_NOFILE to at least ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def live_greenlets() -> int:
    """Live greenlets of this process (a gc walk)."""
    gc.collect()
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), greenlet) and not obj.dead)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def client_frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 §5.2, §5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def close_frame(code: int = 1000) -> bytes:
    """A masked close frame with ``code``."""
    return client_frame(struct.pack("!H", code), opcode=8)


def ws_connect(host: str, port: int, path: str, timeout: float = 10.0) -> tuple[socket.socket, bytes]:
    """A raw socket upgraded to a WebSocket on ``path``; returns it and bytes read past the 101."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            sock.close()
            raise ConnectionError(f"closed during the handshake: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        sock.close()
        raise ConnectionError(f"upgrade refused: {head.splitlines()[0]!r}")
    return sock, rest


class FrameReader:
    """Reads unmasked server frames from a socket."""

    def __init__(self, sock: socket.socket, buf: bytes = b"") -> None:
        self.sock = sock
        self.buf = buf

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def frame(self) -> tuple[int, bytes]:
        """The next frame: ``(opcode, payload)``."""
        self._need(2)
        opcode = self.buf[0] & 0x0F
        n = self.buf[1] & 0x7F
        offset = 2
        if n == 126:
            self._need(4)
            n = struct.unpack("!H", self.buf[2:4])[0]
            offset = 4
        elif n == 127:
            self._need(10)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            offset = 10
        self._need(offset + n)
        payload = self.buf[offset : offset + n]
        self.buf = self.buf[offset + n :]
        return opcode, payload

    def message(self) -> tuple[int, bytes]:
        """The next data or close frame (pings are skipped)."""
        while True:
            opcode, payload = self.frame()
            if opcode not in (9, 10):
                return opcode, payload
