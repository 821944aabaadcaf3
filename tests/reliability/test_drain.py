"""Graceful drain and reload of a real ``python -m rtserver run`` process, and of a
plain ``python app.py`` script that does no monkey patching of its own.

SIGTERM with 100 open sockets and a request in flight: the request completes, new
connections are refused at once (while the sockets still drain), every socket gets
close 1001, and the process exits 0 within the close timeout plus a second. Peers
that answer the 1001 but keep TCP open do not hold the exit: the server closes each
TCP connection as soon as its closing handshake completes (RFC 6455 §7.1.1), on
engine stop and on any close. SIGHUP reloads without dropping the listening socket.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import gevent
import pytest
from gevent.event import Event
from ws4py.websocket import WebSocket as Ws4pyWebSocket

from rtserver.websocket.options import WebSocketOptions
from rtserver.websocket.wsgi import websocket_app
from tests.conftest import free_port
from tests.websocket.harness import Harness, RawClient

from .conftest import FrameReader, client_frame, close_frame, raise_nofile, wait_for, ws_connect

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLOSE_TIMEOUT = 10.0  # engine.websocket.close_timeout: the longest a drain may wait
SOCKETS = 100
# SIGTERM to exit with every peer answering its 1001 at once: the request in flight
# (~0.7 s of its one-second sleep left) and the closing handshakes, with room for a
# loaded machine, yet far from the 10 s a wait for close_timeout would take.
PROMPT_EXIT = 3.0

# A user's script as the README writes it: no monkey patching of its own (quickstart
# makes the process cooperative). /slow tells every socket when it is in its sleep.
PLAIN_SCRIPT = """\
import time

from ws4py.websocket import EchoWebSocket

import rtserver


class Root:
    echo = EchoWebSocket

    @rtserver.expose
    def index(self):
        return "ok"

    @rtserver.expose
    def slow(self):
        rtserver.engine.publish("websocket-broadcast", "slow request started")
        time.sleep(1.0)
        return "done"


rtserver.quickstart(Root(), config={{"global": {{"server.socket_host": "127.0.0.1", "server.socket_port": {port}}}}})
"""


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def server_process(script: str | None = None) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The server on a free port, once it accepts connections: by default
    ``python -m rtserver run tests.reliability.drain_app:root``; with ``script``
    (a template taking ``{port}``), ``python <that script>``."""
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    workdir = tempfile.TemporaryDirectory()
    if script is None:
        argv = [sys.executable, "-m", "rtserver", "run", "tests.reliability.drain_app:root", "--port", str(port)]
    else:
        script_path = os.path.join(workdir.name, "app.py")
        with open(script_path, "w") as f:
            f.write(script.format(port=port))
        argv = [sys.executable, script_path]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        argv,
        cwd=ROOT if script is None else workdir.name,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        if not wait_for(lambda: _connectable(port) or proc.poll() is not None, 20):
            raise AssertionError("server did not start")
        assert proc.poll() is None, "server exited at start"
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if sys.exc_info()[0] is not None:
            log.seek(0)
            sys.stderr.write(log.read().decode("utf-8", "replace")[-4000:])
        log.close()
        workdir.cleanup()


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``path`` on a new connection (Connection: close): ``(status, body)``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_sigterm_drains_sockets_and_requests_and_refuses_new_connections() -> None:
    raise_nofile(4 * SOCKETS)
    with server_process() as (proc, port):
        sockets = [ws_connect("127.0.0.1", port, "/echo") for _ in range(SOCKETS)]
        readers = [FrameReader(sock, rest) for sock, rest in sockets]
        try:
            for (sock, _), reader in zip(sockets, readers, strict=True):
                sock.sendall(client_frame(b"hi"))
                assert reader.message() == (1, b"hi")
            in_flight = gevent.spawn(http_get, port, "/slow", 10.0)
            gevent.sleep(0.3)  # the request is in its handler's one-second sleep
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)

            # New connections are refused while the sockets are still draining
            # (none of them has answered its close yet).
            assert wait_for(lambda: not _connectable(port), 2.0, interval=0.02)
            refused_after = time.monotonic() - signalled
            assert not in_flight.ready(), "the request in flight should still be running"

            codes = []
            for (sock, _), reader in zip(sockets, readers, strict=True):
                sock.settimeout(5)
                opcode, payload = reader.message()
                assert opcode == 8
                codes.append(struct.unpack("!H", payload[:2])[0])
                sock.sendall(close_frame(1001))
            assert codes == [1001] * SOCKETS
            for (sock, _), reader in zip(sockets, readers, strict=True):
                with pytest.raises(EOFError):  # the server closes the TCP connection first
                    reader.frame()
                sock.close()  # then the client (RFC 6455 §7.1.1)

            status, body = in_flight.get(timeout=10)
            assert (status, body) == (200, b"done")
            assert proc.wait(CLOSE_TIMEOUT + 1) == 0
            took = time.monotonic() - signalled
        finally:
            for sock, _ in sockets:
                sock.close()
        assert refused_after < 1.0
        assert took < 5.0  # every peer answered its close at once: no waiting for a timeout


def test_plain_script_exits_promptly_when_peers_answer_1001_but_keep_tcp_open() -> None:
    """``python app.py`` with no patching of its own; 100 clients answer the 1001 and
    leave TCP open: the server closes each connection itself, the process exits."""
    raise_nofile(4 * SOCKETS)
    with server_process(PLAIN_SCRIPT) as (proc, port):
        sockets = [ws_connect("127.0.0.1", port, "/echo") for _ in range(SOCKETS)]
        readers = [FrameReader(sock, rest) for sock, rest in sockets]
        try:
            for (sock, _), reader in zip(sockets, readers, strict=True):
                sock.sendall(client_frame(b"hi"))
                assert reader.message() == (1, b"hi")
            in_flight = gevent.spawn(http_get, port, "/slow", 10.0)
            for reader in readers:  # the request is in its handler's one-second sleep
                assert reader.message() == (1, b"slow request started")
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)

            codes = []
            for (sock, _), reader in zip(sockets, readers, strict=True):
                opcode, payload = reader.message()
                assert opcode == 8
                codes.append(struct.unpack("!H", payload[:2])[0])
                sock.sendall(close_frame(1001))  # answered; this client never closes TCP
            assert codes == [1001] * SOCKETS
            assert not in_flight.ready(), "the request in flight should still be running"
            for reader in readers:
                with pytest.raises(EOFError):  # the server ends each connection
                    reader.frame()
            status = proc.wait(CLOSE_TIMEOUT + 1)
            took = time.monotonic() - signalled
            assert in_flight.get(timeout=5) == (200, b"done")
        finally:
            for sock, _ in sockets:
                sock.close()
    assert status == 0
    assert took < PROMPT_EXIT, f"SIGTERM to exit took {took:.2f} s"


# -- the closing handshake on any close, not only on engine stop ---------------------------

# Far above the promptness asserted below: a server waiting for the peer to close TCP
# would only give up at this deadline.
HANDSHAKE_CLOSE_TIMEOUT = 30.0
PROMPT = 2.0  # seconds within which the server ends a connection whose handshake is done
FLOOD = 16 * 2**20  # more than loopback buffers hold while the client does not read


class _Closed:
    """What the server's handler saw at its end."""

    def __init__(self) -> None:
        self.status: list[tuple[int, object]] = []
        self.done = Event()


@contextmanager
def closing_server() -> Iterator[tuple[Harness, _Closed]]:
    """A WebSocket server (the runtime on a real socket) whose handler closes 1000 on
    "bye", answers "flood" with one FLOOD-byte message, and records ``closed()``."""
    seen = _Closed()

    class Handler(Ws4pyWebSocket):
        def received_message(self, message: object) -> None:
            if str(message) == "bye":
                self.close(1000, "bye")
            elif str(message) == "flood":
                self.send(b"x" * FLOOD, binary=True)

        def closed(self, code: int, reason: object = None) -> None:
            seen.status.append((code, reason))
            seen.done.set()

    options = WebSocketOptions(allowed_origins=("*",), close_timeout=HANDSHAKE_CLOSE_TIMEOUT, ping_interval=None)
    with Harness(websocket_app(Handler, options)) as harness:
        yield harness, seen


def _read_to_eof(client: RawClient, limit: int) -> list[tuple[int, int]]:
    """``(opcode, payload length)`` of every frame until the server closes TCP."""
    data = bytearray(client.buffer)
    while len(data) <= limit:  # bounded: at most ``limit`` bytes, each read under a timeout
        chunk = client.sock.recv(2**20)
        if not chunk:
            break
        data += chunk
    else:
        raise AssertionError(f"more than {limit} bytes and still no EOF")
    reader = FrameReader(client.sock, bytes(data))
    frames: list[tuple[int, int]] = []
    while reader.buf:
        try:
            opcode, payload = reader.frame()
        except EOFError:
            raise AssertionError(f"TCP closed in the middle of a frame; frames before it: {frames}") from None
        frames.append((opcode, len(payload)))
    return frames


def test_server_closes_tcp_once_its_own_closing_handshake_completes() -> None:
    with closing_server() as (harness, seen), RawClient(harness.port) as client:
        client.sock.settimeout(PROMPT)  # a server waiting for the client's FIN times out here
        client.send_frame(1, b"bye")
        assert client.recv_close() == 1000
        client.send_frame(8, struct.pack("!H", 1000))  # answered; TCP stays open
        assert _read_to_eof(client, 0) == []
        assert seen.done.wait(PROMPT), "closed() should follow the handshake, not close_timeout"
    assert seen.status == [(1000, "")]


def test_server_closes_tcp_once_it_answered_the_clients_close() -> None:
    with closing_server() as (harness, seen), RawClient(harness.port) as client:
        client.sock.settimeout(PROMPT)
        client.send_frame(8, struct.pack("!H", 4000) + b"done")  # TCP stays open
        assert _read_to_eof(client, 64) == [(8, 6)]  # the echoed close, then EOF
        assert seen.done.wait(PROMPT), "closed() should follow the handshake, not close_timeout"
    assert seen.status == [(4000, "done")]


def test_close_frame_behind_a_backed_up_queue_is_sent_before_tcp_is_closed() -> None:
    """The handshake completes while the kernel refuses data: the server closes TCP
    only after the queued message and its close frame are out."""
    with closing_server() as (harness, seen), RawClient(harness.port) as client:
        client.sock.settimeout(PROMPT)
        # One write: the server queues FLOOD bytes, more than the kernel takes at once,
        # and reads the close in the same turn, before the client reads anything.
        client.sock.sendall(client_frame(b"flood") + close_frame(4000))
        assert _read_to_eof(client, FLOOD + 64) == [(2, FLOOD), (8, 2)]
        assert seen.done.wait(PROMPT)
    assert seen.status == [(4000, "")]


def test_sighup_reloads_without_dropping_the_listener() -> None:
    with server_process() as (proc, port):
        sock, rest = ws_connect("127.0.0.1", port, "/echo")
        reader = FrameReader(sock, rest)
        try:
            assert http_get(port, "/") == (200, b"ok")
            proc.send_signal(signal.SIGHUP)
            # Right after the signal, and for a while after it, the same port answers.
            for _ in range(20):
                assert http_get(port, "/") == (200, b"ok")
                gevent.sleep(0.02)
            sock.sendall(client_frame(b"still here"))
            assert reader.message() == (1, b"still here")
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            opcode, payload = reader.message()
            assert opcode == 8 and struct.unpack("!H", payload[:2])[0] == 1001
            sock.sendall(close_frame(1001))
            with pytest.raises(EOFError):
                reader.frame()
            sock.close()
            assert proc.wait(CLOSE_TIMEOUT + 1) == 0
        finally:
            sock.close()
