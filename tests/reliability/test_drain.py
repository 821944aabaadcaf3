"""Graceful drain and reload of a real ``python -m rtserver run`` process.

SIGTERM with 100 open sockets and a request in flight: the request completes, new
connections are refused at once (while the sockets still drain), every socket gets
close 1001, and the process exits 0 within the close timeout plus a second. SIGHUP
reloads without dropping the listening socket.
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

from .conftest import FrameReader, client_frame, close_frame, free_port, raise_nofile, wait_for, ws_connect

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLOSE_TIMEOUT = 10.0  # engine.websocket.close_timeout: the longest a drain may wait
SOCKETS = 100


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def server_process() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``python -m rtserver run tests.reliability.drain_app:root`` on a free port."""
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtserver", "run", "tests.reliability.drain_app:root", "--port", str(port)],
        cwd=ROOT,
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
