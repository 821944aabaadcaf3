"""Abuse on raw sockets: request smuggling, malformed heads, limits, slow clients.

Every bad request must get its 4xx/5xx answer and a closed connection, and a
request smuggled after it must never be answered.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest

from .conftest import Reader, connect, exchange, read_all, running, status_lines

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


class Recorder:
    """A WSGI app that reads the body and records the paths it served."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        self.paths.append(environ["PATH_INFO"])
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


CASES = {
    "cl-and-te": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-and-cl": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    ),
    "duplicate-cl-equal": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    "duplicate-cl-differ": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 3\r\n\r\nabc", 400),
    "cl-plus": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 400),
    "cl-minus": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    "cl-spaces": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:  3 3\r\n\r\nabc", 400),
    "cl-non-digit": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3a\r\n\r\nabc", 400),
    "cl-hex": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\nabc", 400),
    "cl-list": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    "cl-absurd": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999999\r\n\r\n", 400),
    "te-chunked-identity": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-gzip": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n", 400),
    "te-gzip-chunked": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
    "te-xchunked": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    "te-twice": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-http10": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te-space-before-colon": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    "chunk-size-0x": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x10\r\n" + b"a" * 16, 400),
    "chunk-size-negative": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n", 400),
    "chunk-size-huge": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
        400,
    ),
    "chunk-size-space": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "chunk-no-crlf": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n", 400),
    "chunk-bare-lf": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n", 400),
    "bare-lf-head": (b"GET / HTTP/1.1\nHost: x\n\n", 400),
    "bare-lf-one-line": (b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 400),
    "bare-cr": (b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    "obs-fold-tab": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n", 400),
    "space-first-header": (b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400),
    "nul-in-value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    "ctl-in-value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x1bb\r\n\r\n", 400),
    "nul-in-name": (b"GET / HTTP/1.1\r\nHost: x\r\nX-\x00A: a\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    "bad-token-name": (b"GET / HTTP/1.1\r\nHost: x\r\nX(A): a\r\n\r\n", 400),
    "no-colon": (b"GET / HTTP/1.1\r\nHost: x\r\nJunk\r\n\r\n", 400),
    "no-host": (b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "bad-host": (b"GET / HTTP/1.1\r\nHost: a/b@c\r\n\r\n", 400),
    "absolute-form": (b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "authority-form": (b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "asterisk-get": (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "relative-target": (b"GET index.html HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "fragment": (b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "space-in-target": (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "unknown-method": (b"FROB / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    "lowercase-version": (b"GET / http/1.1\r\nHost: x\r\n\r\n", 400),
    "rtsp": (b"GET / RTSP/1.0\r\nHost: x\r\n\r\n", 400),
    "http2": (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "http12": (b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505),
    "http09": (b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", 505),
    "expect-other": (b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n", 417),
}


@pytest.mark.parametrize(("request_bytes", "status"), list(CASES.values()), ids=list(CASES))
def test_rejected_and_nothing_smuggled(request_bytes: bytes, status: int) -> None:
    app = Recorder()
    with running(app) as server:
        data = exchange(server, request_bytes + SMUGGLED)
    lines = status_lines(data)
    assert len(lines) == 1 and lines[0].startswith(b"HTTP/1.1 %d " % status), data
    assert b"Connection: close" in data
    assert "/smuggled" not in app.paths


def test_valid_requests_are_not_rejected() -> None:
    app = Recorder()
    with running(app) as server:
        data = exchange(
            server,
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"
            b"\r\nGET /a%00b?x HTTP/1.1\r\nHOST: [::1]:80\r\nX-Tab: a\tb\r\nX-Empty:\r\n\r\n"
            b"GET / HTTP/1.0\r\n\r\n",
        )
    assert [line.split(b" ")[1] for line in status_lines(data)] == [b"200"] * 3
    assert app.paths == ["*", "/a\x00b", "/"]


def test_request_line_too_long() -> None:
    with running(Recorder()) as server:
        data = exchange(server, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED)
    assert status_lines(data) == [b"HTTP/1.1 414 URI Too Long"]


def test_request_line_too_long_before_it_ends() -> None:
    with running(Recorder()) as server, connect(server) as sock:
        sock.sendall(b"GET /" + b"a" * 9000)
        data = read_all(sock)
    assert status_lines(data) == [b"HTTP/1.1 414 URI Too Long"]


def test_thousand_headers() -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(1000))
    with running(Recorder()) as server:
        data = exchange(server, head + b"\r\n" + SMUGGLED)
    assert status_lines(data) == [b"HTTP/1.1 431 Request Header Fields Too Large"]


def test_64k_header() -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"
    with running(Recorder()) as server:
        data = exchange(server, head + SMUGGLED)
    assert status_lines(data) == [b"HTTP/1.1 431 Request Header Fields Too Large"]


def test_body_over_limit_by_content_length_is_refused_before_reading() -> None:
    app = Recorder()
    with running(app, max_request_body_size=1000) as server, connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
        data = read_all(sock)
        assert time.monotonic() - started < 1.0
    assert status_lines(data) == [b"HTTP/1.1 413 Content Too Large"]
    assert app.paths == []


def test_chunked_body_over_limit() -> None:
    app = Recorder()
    chunk = b"100\r\n" + b"a" * 256 + b"\r\n"
    with running(app, max_request_body_size=1000) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk)
        gevent.sleep(0.05)  # the app is reading when the rest arrives
        sock.sendall(chunk * 4 + b"0\r\n\r\n" + SMUGGLED)
        data = read_all(sock)
    assert status_lines(data) == [b"HTTP/1.1 413 Content Too Large"]
    assert app.paths == ["/"]


def test_absurd_content_length_within_limit_does_not_hang_others() -> None:
    with running(Recorder(), body_timeout=0.3) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\nabc")
        other = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=2.0)
        assert other.endswith(b"ok")
        data = read_all(sock)
    assert status_lines(data) == [b"HTTP/1.1 408 Request Timeout"]


def test_header_timeout_answers_408() -> None:
    with running(Recorder(), header_timeout=0.3) as server, connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        data = read_all(sock)
        assert 0.2 < time.monotonic() - started < 1.5
    assert status_lines(data) == [b"HTTP/1.1 408 Request Timeout"]


def test_silent_connection_is_closed_without_answer() -> None:
    with running(Recorder(), header_timeout=0.3) as server, connect(server) as sock:
        assert read_all(sock) == b""


def test_keepalive_timeout_closes_idle_connection() -> None:
    with running(Recorder(), keepalive_timeout=0.3) as server, connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.response().status == 200
        started = time.monotonic()
        assert read_all(sock) == b""
        assert 0.2 < time.monotonic() - started < 1.5


def test_slowloris_does_not_block_others() -> None:
    """Many clients trickling a head: others are served at once, the slow ones cut off."""
    header_timeout = 1.0
    results: dict[int, bytes] = {}

    def slow_client(i: int, sock: socket.socket) -> None:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        sock.settimeout(0.25)
        received = b""
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                try:
                    sock.sendall(b"X")  # one byte of a header line at a time
                except OSError:
                    break
                continue
            except OSError:
                break
            if not data:
                break
            received += data
        results[i] = received

    with running(Recorder(), header_timeout=header_timeout) as server:
        socks = [connect(server) for _ in range(220)]
        try:
            started = time.monotonic()
            greenlets = [gevent.spawn(slow_client, i, s) for i, s in enumerate(socks)]
            gevent.sleep(0.5)
            t0 = time.monotonic()
            data = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert data.endswith(b"ok") and time.monotonic() - t0 < 1.0
            assert server.connection_count >= 220
            gevent.joinall(greenlets, timeout=3.0, raise_error=True)
            assert time.monotonic() - started < header_timeout + 2.5
        finally:
            for s in socks:
                s.close()
    assert len(results) == 220
    assert all(status_lines(r) == [b"HTTP/1.1 408 Request Timeout"] for r in results.values())


def test_max_connections_answers_503_and_keeps_existing() -> None:
    with running(Recorder(), max_connections=2) as server, connect(server) as a, connect(server) as b:
        readers = [Reader(a), Reader(b)]
        for sock, reader in zip((a, b), readers, strict=True):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reader.response().status == 200
        assert server.connection_count == 2
        data = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_lines(data) == [b"HTTP/1.1 503 Service Unavailable"]
        a.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert readers[0].response().body == b"ok"
        b.close()
        deadline = time.monotonic() + 2
        while server.connection_count > 1 and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").endswith(b"ok")


def test_bad_body_after_good_head_in_slow_arrival() -> None:
    """A bad chunk arriving while the app reads still gives 400 and a closed connection."""
    app = Recorder()
    with running(app) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        gevent.sleep(0.05)
        sock.sendall(b"3\r\nabc\r\nzz\r\n" + SMUGGLED)
        data = read_all(sock)
    assert status_lines(data) == [b"HTTP/1.1 400 Bad Request"]
    assert app.paths == ["/"]


def test_head_in_one_byte_segments_is_served() -> None:
    request = b"GET /bytes HTTP/1.1\r\nHost: x\r\nX-Long: " + b"v" * 2000 + b"\r\nConnection: close\r\n\r\n"
    app = Recorder()
    with running(app) as server, connect(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(request)):
            sock.send(request[i : i + 1])
            if i % 200 == 0:
                gevent.sleep(0)
        data = read_all(sock)
    assert status_lines(data) == [b"HTTP/1.1 200 OK"] and app.paths == ["/bytes"]
