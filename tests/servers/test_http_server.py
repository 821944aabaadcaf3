"""The gevent HTTP server on real sockets: WSGI semantics, keep-alive, streaming, TLS."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest

from .conftest import Reader, connect, exchange, hello, read_all, running, status_lines

StartResponse = Callable[..., Any]


def echo(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """Echo the body and a few environ keys."""
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Path", environ["PATH_INFO"])])
    return [b"%s %d:" % (environ["REQUEST_METHOD"].encode(), len(body)), body]


def test_environ_keys() -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        seen.update(environ)
        start_response("200 OK", [])
        return []

    with running(app, server_adapter="ADAPTER") as server:
        exchange(server, b"GET /p%41th?q=1 HTTP/1.1\r\nHost: h:1\r\nX_Evil: 1\r\nConnection: close\r\n\r\n")
        port = server.bound_address[1]
    assert seen["REQUEST_METHOD"] == "GET"
    assert seen["SCRIPT_NAME"] == ""
    assert seen["PATH_INFO"] == "/pAth"
    assert seen["RAW_URI"] == seen["REQUEST_URI"] == "/p%41th?q=1"
    assert seen["QUERY_STRING"] == "q=1"
    assert seen["SERVER_NAME"] == "127.0.0.1" and seen["SERVER_PORT"] == str(port)
    assert seen["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert seen["REMOTE_ADDR"] == "127.0.0.1" and seen["REMOTE_PORT"].isdigit()
    assert seen["HTTP_HOST"] == "h:1"
    assert not any("EVIL" in key for key in seen)
    assert seen["wsgi.version"] == (1, 0) and seen["wsgi.url_scheme"] == "http"
    assert seen["wsgi.multithread"] is False and seen["wsgi.multiprocess"] is False
    assert seen["wsgi.run_once"] is False
    assert seen["wsgi.input"].read() == b""
    assert hasattr(seen["wsgi.errors"], "write")
    assert seen["rtserver.server"] == "ADAPTER"
    assert isinstance(seen["rtserver.socket"], socket.socket)
    assert callable(seen["rtserver.interrupt"])


def test_keep_alive_many_requests() -> None:
    with running(echo) as server, connect(server) as sock:
        reader = Reader(sock)
        for i in range(200):
            sock.sendall(b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" % i)
            resp = reader.response()
            assert resp.status == 200 and resp.body == b"POST 3:abc"
            assert resp.header("X-Path") == "/%d" % i
            assert resp.header("Date") and resp.header("Server") == "rtserver"
        assert server.connection_count == 1


def test_pipelining_in_order() -> None:
    with running(echo) as server, connect(server) as sock:
        sock.sendall(
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
            b"POST /3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nA\r\n0\r\n\r\n"
            b"GET /4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        reader = Reader(sock)
        paths = []
        for _ in range(4):
            resp = reader.response()
            paths.append((resp.header("X-Path"), resp.body))
        assert paths == [("/1", b"GET 0:"), ("/2", b"POST 2:hi"), ("/3", b"POST 1:A"), ("/4", b"GET 0:")]
        assert read_all(sock) == b""


def test_http10_keep_alive_and_close() -> None:
    with running(hello) as server, connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = reader.response()
        assert resp.header("Connection") == "keep-alive" and resp.header("Content-Length") == "5"
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        resp = reader.response()
        assert resp.header("Connection") == "close" and resp.body == b"hello"
        assert read_all(sock) == b""


def test_chunked_request_body() -> None:
    body = b"".join(b"%x;ext=%d\r\n%s\r\n" % (len(p), i, p) for i, p in enumerate([b"x" * 1000, b"y" * 70000, b"z"]))
    with running(echo) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        sock.sendall(b"0\r\nX-Trailer: 1\r\n\r\n")
        resp = Reader(sock).response()
        assert resp.body == b"POST 71001:" + b"x" * 1000 + b"y" * 70000 + b"z"


def test_wsgi_input_readline_and_iteration() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        first = stream.readline()
        rest = list(stream)
        start_response("200 OK", [])
        return [b"|".join([first, *rest, stream.read(), stream.readline()])]

    with running(app) as server:
        data = exchange(
            server, b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nConnection: close\r\n\r\na\nbc\ndef"
        )
    assert data.endswith(b"\r\n\r\na\n|bc\n|def||")


def test_generator_streams_chunk_by_chunk() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first"
        gevent.sleep(0.5)
        yield b""
        yield b"second"

    with running(app) as server, connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        head = reader.head()
        assert head.header("Transfer-Encoding") == "chunked" and head.header("Content-Length") is None
        assert reader.chunk() == b"first"
        assert time.monotonic() - started < 0.4
        assert reader.chunk() == b"second"
        assert time.monotonic() - started >= 0.5
        assert reader.chunk() == b""
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.response().body == b"firstsecond"


def test_http10_streaming_is_close_delimited() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"a"
        yield b"b"

    with running(app) as server:
        data = exchange(server, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Connection: close" in head and b"Transfer-Encoding" not in head and body == b"ab"


def test_write_callable_and_content_length() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [("Content-Length", "6")])
        write(b"abc")
        return [b"def"]

    with running(app) as server, connect(server) as sock:
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reader.response().body == b"abcdef"


def test_head_has_no_body() -> None:
    with running(hello) as server, connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        resp = reader.response("HEAD")
        assert resp.status == 200 and resp.header("Content-Length") == "5"
        assert reader.response().body == b"hello"


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_no_body_statuses(status: str) -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response(status, [])
        return [b"ignored"]

    with running(app) as server, connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_all(sock)
    assert len(status_lines(data)) == 2 and b"ignored" not in data
    assert b"Transfer-Encoding" not in data and b"Content-Length" not in data


def test_iterable_close_is_always_called() -> None:
    closed = []

    class Body:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        def __iter__(self) -> Iterator[bytes]:
            yield b"a"
            if self.fail:
                raise RuntimeError("boom")

        def close(self) -> None:
            closed.append(self.fail)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Body:
        start_response("200 OK", [])
        return Body(environ["PATH_INFO"] == "/fail")

    with running(app) as server:
        exchange(server, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = exchange(server, b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
    assert closed == [False, True]
    # The error came after the head: the connection is closed, the chunked body unfinished.
    assert data.startswith(b"HTTP/1.1 200 OK") and not data.endswith(b"0\r\n\r\n")


def test_expect_100_continue() -> None:
    with running(echo) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        reader = Reader(sock)
        interim = reader.head()
        assert interim.status == 100
        sock.sendall(b"body")
        assert reader.response().body == b"POST 4:body"


def test_expect_100_continue_not_sent_when_body_unread() -> None:
    with running(hello) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 200 OK") and b"100 Continue" not in data
    assert b"Connection: close" in data


def test_unread_body_is_drained_for_keep_alive() -> None:
    with running(hello) as server, connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789")
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert [reader.response().status for _ in range(3)] == [200, 200, 200]


def test_app_exception_gives_generic_500(caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        raise ValueError("secret detail")

    with caplog.at_level(logging.ERROR, "rtserver.server"), running(app) as server:
        data = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert data.endswith(b"\r\n\r\n500 Internal Server Error")
    assert b"secret" not in data
    assert any(r.exc_info and "secret detail" in str(r.exc_info[1]) for r in caplog.records)


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Bad", "a\r\nSet-Cookie: evil=1")],
        [("X-Bad\n", "a")],
        [("X Bad", "a")],
        [("X-Bad", "a\x00")],
        [("Transfer-Encoding", "chunked")],
    ],
)
def test_invalid_response_headers_give_500(headers: list[tuple[str, str]], caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", headers)
        return [b"x"]

    with caplog.at_level(logging.ERROR, "rtserver.server"), running(app) as server:
        data = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_lines(data) == [b"HTTP/1.1 500 Internal Server Error"]
    assert b"evil" not in data
    assert caplog.records


def test_start_response_exc_info_replaces_headers() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("X-First", "1")])
        try:
            raise KeyError("x")
        except KeyError:
            import sys

            start_response("503 Service Unavailable", [("X-Second", "1")], sys.exc_info())
        return [b"sorry"]

    with running(app) as server:
        data = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 503 Service Unavailable") and b"X-Second" in data and b"X-First" not in data


def test_interrupt_raises_in_the_serving_greenlet() -> None:
    class Stop(Exception):
        pass

    interrupts: list[Callable[[BaseException], None]] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        interrupts.append(environ["rtserver.interrupt"])
        if environ["PATH_INFO"] == "/fast":
            start_response("200 OK", [])
            return [b"fast"]
        try:
            gevent.sleep(3600)
        except Stop:
            start_response("503 Service Unavailable", [])
            return [b"interrupted"]
        raise AssertionError("not interrupted")

    with running(app) as server, connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.response().body == b"fast"
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        while len(interrupts) < 2:
            gevent.sleep(0.01)
        # An interrupt for a finished request does nothing.
        interrupts[0](Stop())
        gevent.sleep(0.05)
        interrupts[1](Stop())
        assert reader.response().body == b"interrupted"
        interrupts[1](Stop())  # finished: ignored, the connection stays usable
        gevent.sleep(0.05)
        sock.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.response().body == b"fast"


def test_upgrade_takeover_gets_leftover_bytes() -> None:
    def takeover(sock: socket.socket, leftover: bytes) -> None:
        sock.sendall(b"LEFTOVER:" + leftover + b";")
        while data := sock.recv(1024):
            sock.sendall(data.upper())

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        environ["rtserver.upgrade"] = takeover
        start_response("101 Switching Protocols", [("Upgrade", "shout"), ("Connection", "Upgrade")])
        return []

    with running(app) as server, connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: shout\r\n\r\nearly bytes")
        reader = Reader(sock)
        head = reader.head()
        assert head.status == 101 and head.header("Upgrade") == "shout"
        assert head.header("Date") is None and head.header("Content-Length") is None
        assert reader._until(b";") == b"LEFTOVER:early bytes"
        sock.sendall(b"ping")
        assert reader._exactly(4) == b"PING"
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b""


def test_101_without_takeover_is_an_error() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("101 Switching Protocols", [("Upgrade", "x")])
        return []

    with running(app) as server:
        data = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_lines(data) == [b"HTTP/1.1 500 Internal Server Error"]


def test_unix_socket(tmp_path: Any) -> None:
    path = str(tmp_path / "s.sock")
    seen = {}

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        seen.update(environ)
        return hello(environ, start_response)

    with running(app, bind=path) as server:
        assert server.bound_address == path
        data = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert data.endswith(b"hello")
    assert not os.path.exists(path)
    assert seen["REMOTE_ADDR"] == ""


def test_listening_socket_given() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    with running(hello, bind=listener) as server:
        assert server.bound_address == ("127.0.0.1", port)
        assert exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").endswith(b"hello")


def test_tls(server_tls_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture) -> None:
    schemes = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        schemes.append(environ["wsgi.url_scheme"])
        return hello(environ, start_response)

    client_context = ssl.create_default_context()
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    with caplog.at_level(logging.DEBUG, "rtserver.server"), running(app, ssl_context=server_tls_context) as server:
        # Plain HTTP on the TLS port: a failed handshake, logged at debug, nothing more.
        assert exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
        with connect(server) as raw, client_context.wrap_socket(raw) as sock:
            reader = Reader(sock)  # type: ignore[arg-type]
            for _ in range(3):
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert reader.response().body == b"hello"
    assert schemes == ["https"] * 3
    assert any("handshake" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_stop_closes_idle_and_lets_requests_finish() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        if environ["PATH_INFO"] == "/slow":
            gevent.sleep(0.3)
        return hello(environ, start_response)

    with running(app) as server, connect(server) as idle, connect(server) as busy:
        reader = Reader(idle)
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.response().status == 200
        busy.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        gevent.sleep(0.05)
        started = time.monotonic()
        server.stop(2.0)
        assert time.monotonic() - started < 1.0
        assert read_all(idle) == b""
        data = read_all(busy)
        assert data.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in data
        assert server.connection_count == 0
