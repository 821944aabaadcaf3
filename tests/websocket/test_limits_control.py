"""Control replies count against the send queue: a ping flood cannot exhaust the server.

websockets answers every ping with a pong while it parses. A client that floods
pings and never reads made those pongs pile up in the connection's queue without
bound (48 MiB of pings: +72 MiB of server memory, no close). Now the reader stops
reading while the queue is full (TCP backpressure: the peer cannot send more pings),
and a peer that still does not read after ``close_timeout`` is closed as a slow
consumer. Measured here on a real server: in this process with tracemalloc, and in
a ``rtserver.quickstart`` script with the RSS of its process.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from ws4py.websocket import EchoWebSocket

import rtserver
from rtserver.testing import serve

pytestmark = pytest.mark.timeout(90)

PING, PONG, CLOSE, TEXT = 9, 10, 8, 1
PAYLOAD = b"p" * 125  # the largest control payload (RFC 6455 §5.5)
FLOOD_BYTES = 48 * 2**20  # what raised the server's memory by 72 MiB before the fix
FLOOD_SECONDS = 20.0  # the flood stops after this, closed or not
RCVBUF = 4096  # the client's receive buffer: the server's writes back up at once
SLACK = 16 * 2**20  # allowed beyond send_queue_size: interpreter, kernel-side effects


def masked_frame(payload: bytes, opcode: int) -> bytes:
    """A masked client frame (RFC 6455 §5.2, §5.3) of up to 125 bytes."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked


def connect(port: int, path: str, rcvbuf: int | None = None) -> socket.socket:
    """A raw socket upgraded on ``path``; ``rcvbuf`` is set before connecting, so the
    TCP window the server sees is small from the first byte."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: nothing past the 101 is consumed
        assert chunk, f"closed during the handshake: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def flood(
    sock: socket.socket, limit_bytes: int = FLOOD_BYTES, seconds: float = FLOOD_SECONDS
) -> tuple[str, int, float]:
    """Send 125-byte pings, never reading, until the server drops the connection, or
    ``limit_bytes`` were sent, or ``seconds`` passed: ``(how, bytes sent, seconds)``.

    One ``send`` at a time with a short timeout: a send that times out sends nothing,
    so the frames stay whole however often the server stops reading.
    """
    chunk = masked_frame(PAYLOAD, PING) * 1000  # 131 kB
    view = memoryview(chunk)
    sock.settimeout(0.2)
    started = time.monotonic()
    sent = offset = 0
    while sent < limit_bytes and time.monotonic() - started < seconds:
        try:
            n = sock.send(view[offset:])
        except TimeoutError:
            continue  # the server stopped reading: go on pushing
        except (BrokenPipeError, ConnectionResetError):
            return "reset", sent, time.monotonic() - started
        sent += n
        offset = (offset + n) % len(chunk)
    return ("sent all" if sent >= limit_bytes else "time up"), sent, time.monotonic() - started


def read_to_end(sock: socket.socket, seconds: float = 10.0) -> tuple[bytes, str]:
    """Read until EOF, a reset or ``seconds``: ``(data, how)``; at most 64 MiB."""
    sock.settimeout(1.0)
    data = bytearray()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(data) < 64 * 2**20:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(data), "reset"
        if not chunk:
            return bytes(data), "eof"
        data += chunk
    return bytes(data), "open"


def frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The complete unmasked server frames in ``data``."""
    i = 0
    while i + 2 <= len(data):
        opcode, n, offset = data[i] & 0x0F, data[i + 1] & 0x7F, 2
        if n == 126:
            n, offset = struct.unpack("!H", data[i + 2 : i + 4])[0], 4
        elif n == 127:
            n, offset = struct.unpack("!Q", data[i + 2 : i + 10])[0], 10
        if i + offset + n > len(data):
            return
        yield opcode, data[i + offset : i + offset + n]
        i += offset + n


class Root:
    echo = EchoWebSocket

    @rtserver.expose
    def index(self) -> str:
        return "ok"


def test_ping_flood_without_reading_is_closed_and_memory_stays_bounded() -> None:
    queue = 256 * 1024
    conf = {"/": {"tools.websocket.send_queue_size": queue, "tools.websocket.close_timeout": 0.5}}
    with serve(Root(), config=conf) as srv:
        sock = connect(srv.port, "/echo", rcvbuf=RCVBUF)
        try:
            tracemalloc.start()
            try:
                baseline = tracemalloc.get_traced_memory()[0]
                how, sent, seconds = flood(sock)
                peak = tracemalloc.get_traced_memory()[1] - baseline
            finally:
                tracemalloc.stop()
            data, end = read_to_end(sock) if how != "reset" else (b"", "reset")
        finally:
            sock.close()
    closes = [payload for opcode, payload in frames(data) if opcode == CLOSE]
    # The server dropped the connection (close_timeout after the slow-consumer close).
    assert how == "reset" or end in ("eof", "reset"), (how, sent, end, peak)
    assert seconds < 10, seconds  # two close_timeouts, with room for a loaded machine
    assert sent < FLOOD_BYTES
    assert not closes or struct.unpack("!H", closes[0][:2])[0] == 1008
    # The pongs never piled up: memory within the queue bound plus a constant
    # (this process also holds the client's 131 kB chunk and the test's buffers).
    assert peak < queue + 4 * 2**20, peak


def test_ping_flood_from_a_reader_gets_every_pong() -> None:
    """Reading stops while the queue is full, the connection is not closed: a client
    that reads (a little late) gets a pong for each ping, then its echo."""
    queue = 64 * 1024
    conf = {"/": {"tools.websocket.send_queue_size": queue, "tools.websocket.close_timeout": 5.0}}
    count = 20_000  # 2.6 MB of pings: forty times the queue
    with serve(Root(), config=conf) as srv:
        sock = connect(srv.port, "/echo", rcvbuf=RCVBUF)
        try:
            import gevent

            pings = masked_frame(PAYLOAD, PING) * count + masked_frame(b"done", TEXT)
            sender = gevent.spawn(sock.sendall, pings)
            reader = _FrameCounter(sock)
            pongs = reader.count_until_text(seconds=20)
            sender.join(5)
            assert sender.successful()
        finally:
            sock.close()
    assert pongs == count


class _FrameCounter:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def count_until_text(self, seconds: float) -> int:
        """Pongs of ``PAYLOAD`` counted until the text echo ``done`` arrives."""
        deadline = time.monotonic() + seconds
        pongs = 0
        while time.monotonic() < deadline:
            data = self.sock.recv(65536)
            assert data, "closed before the echo"
            self.buf += data
            used = 0
            for opcode, payload in frames(self.buf):
                used += (2 if len(payload) < 126 else 4) + len(payload)
                if opcode == PONG:
                    assert payload == PAYLOAD
                    pongs += 1
                elif opcode == TEXT:
                    assert payload == b"done"
                    return pongs
                else:
                    raise AssertionError(f"unexpected frame {opcode}: {payload!r}")
            self.buf = self.buf[used:]
        raise AssertionError(f"no echo after {pongs} pongs")


SCRIPT = """\
from ws4py.websocket import EchoWebSocket

import rtserver


class Root:
    echo = EchoWebSocket

    @rtserver.expose
    def index(self):
        return "ok"


rtserver.quickstart(
    Root(),
    config={{
        "global": {{"server.socket_host": "127.0.0.1", "server.socket_port": {port}}},
        "/": {{"tools.websocket.close_timeout": 1.0}},
    }},
)
"""

SEND_QUEUE_SIZE = 4 * 2**20  # tools.websocket.send_queue_size's default


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values


@contextmanager
def script_server() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The quickstart script above in its own interpreter, once it accepts connections."""
    port = _free_port()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as workdir, tempfile.TemporaryFile() as log:
        path = os.path.join(workdir, "app.py")
        with open(path, "w") as f:
            f.write(SCRIPT.format(port=port))
        proc = subprocess.Popen([sys.executable, path], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, "the server exited at start"
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the server did not start"
                    time.sleep(0.05)
            yield proc, port
        finally:
            proc.kill()
            proc.wait(10)
            if sys.exc_info()[0] is not None:
                log.seek(0)
                sys.stderr.write(log.read().decode("utf-8", "replace")[-4000:])


def test_ping_flood_rss_of_a_quickstart_server_stays_within_the_send_queue() -> None:
    with script_server() as (proc, port):
        sock = connect(port, "/echo", rcvbuf=RCVBUF)
        try:
            # Warm up: a first ping flood of 64 kB reaches every code path once.
            how, _, _ = flood(sock, limit_bytes=64 * 1024, seconds=5)
            assert how == "sent all"
            before = _status(proc.pid)
            how, sent, seconds = flood(sock)
            after = _status(proc.pid)
            data, end = read_to_end(sock) if how != "reset" else (b"", "reset")
        finally:
            sock.close()
        alive = proc.poll() is None
    growth = max(after["VmHWM"], after["VmRSS"]) - before["VmRSS"]
    print(f"flood: {how}, {sent / 2**20:.1f} MiB sent in {seconds:.1f} s, RSS growth {growth / 2**20:.1f} MiB")
    assert alive
    assert how == "reset" or end in ("eof", "reset"), (how, sent, end)
    assert seconds < 15, seconds  # two close_timeouts (1 s), with room for a loaded machine
    assert growth < SEND_QUEUE_SIZE + SLACK, growth
