"""Sans-IO tests of rtserver.servers.http: head parsing, chunked decoding, wsgi.input."""

from __future__ import annotations

import pytest

from rtserver.errors import ConfigError
from rtserver.servers.http import (
    ChunkedDecoder,
    HeadParser,
    RequestBody,
    RequestError,
    build_environ,
    date_header,
    error_response,
)
from rtserver.servers.options import HTTPOptions


def parse(head: bytes, **options: object) -> object:
    parser = HeadParser(HTTPOptions(**options))  # type: ignore[arg-type]
    end = parser.find_head_end(head)
    assert end == len(head)
    return parser.parse(head)


def status_of(head: bytes, **options: object) -> int:
    parser = HeadParser(HTTPOptions(**options))  # type: ignore[arg-type]
    with pytest.raises(RequestError) as info:
        end = parser.find_head_end(head)
        parser.parse(head[:end] if end > 0 else head)
    return info.value.code


def test_simple_get() -> None:
    head = parse(b"GET /a%20b?x=1&y HTTP/1.1\r\nHost: example.com\r\nAccept:  */*  \r\n\r\n")
    assert head.method == "GET"  # type: ignore[attr-defined]
    assert head.target == b"/a%20b?x=1&y"  # type: ignore[attr-defined]
    assert head.version == "HTTP/1.1"  # type: ignore[attr-defined]
    assert head.headers == [(b"Host", b"example.com"), (b"Accept", b"*/*")]  # type: ignore[attr-defined]
    assert head.keep_alive  # type: ignore[attr-defined]
    assert not head.has_body  # type: ignore[attr-defined]


def test_parser_is_reused_across_requests() -> None:
    parser = HeadParser(HTTPOptions())
    for i in range(3):
        head = parser.parse(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        assert head.target == b"/%d" % i
    body_head = parser.parse(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
    assert body_head.content_length == 3
    assert parser.parse(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n").target == b"/after"


def test_keep_alive_rules() -> None:
    assert not parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive  # type: ignore[attr-defined]
    assert not parse(b"GET / HTTP/1.0\r\n\r\n").keep_alive  # type: ignore[attr-defined]
    assert parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive  # type: ignore[attr-defined]


def test_framing() -> None:
    head = parse(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n")
    assert head.chunked and head.expect_continue and head.content_length is None  # type: ignore[attr-defined]
    head = parse(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n")
    assert not head.has_body and not head.expect_continue  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:  5 5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nFoo: a\r\n b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nFoo: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nFo\x00o: ab\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A\rB: 1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505),
        (b"GET / RTSP/1.0\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n", 417),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n", 413),
    ],
)
def test_rejected_heads(head: bytes, status: int) -> None:
    assert status_of(head, max_request_body_size=1000) == status


def test_bare_lf_is_refused_before_the_head_ends() -> None:
    parser = HeadParser(HTTPOptions())
    with pytest.raises(RequestError) as info:
        parser.find_head_end(b"GET / HTTP/1.1\nHost: x\n\n")
    assert info.value.code == 400


def test_limits() -> None:
    opts = HTTPOptions(max_request_line=100, max_header_size=1000, max_header_count=5)
    parser = HeadParser(opts)
    with pytest.raises(RequestError) as info:
        parser.find_head_end(b"GET /" + b"a" * 200)
    assert info.value.code == 414
    with pytest.raises(RequestError) as info:
        parser.find_head_end(b"GET / HTTP/1.1\r\nA: " + b"a" * 1000)
    assert info.value.code == 431
    many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(6)) + b"\r\n"
    with pytest.raises(RequestError) as info:
        parser.parse(many)
    assert info.value.code == 431
    assert parser.parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").method == "GET"


def test_empty_lines_before_request_line() -> None:
    assert HeadParser.empty_lines(b"\r\n\r\nGET") == 4
    assert HeadParser.empty_lines(b"GET") == 0


def test_environ() -> None:
    head = parse(
        b"POST /caf%C3%A9/x%2Fy?q=%20 HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 0\r\nAccept: a\r\nAccept: b\r\nCookie: a=1\r\nCookie: b=2\r\n"
        b"X_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"
    )
    env = build_environ(head, {"SCRIPT_NAME": ""})  # type: ignore[arg-type]
    assert env["REQUEST_METHOD"] == "POST"
    assert env["PATH_INFO"] == "/caf\xc3\xa9/x/y"
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/x/y"
    assert env["RAW_URI"] == env["REQUEST_URI"] == "/caf%C3%A9/x%2Fy?q=%20"
    assert env["QUERY_STRING"] == "q=%20"
    assert env["CONTENT_TYPE"] == "text/plain"
    assert env["CONTENT_LENGTH"] == "0"
    assert "HTTP_CONTENT_TYPE" not in env
    assert env["HTTP_ACCEPT"] == "a, b"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert env["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"


def test_chunked_decoder_byte_by_byte() -> None:
    data = b'4;ext=1;q="a b"\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\nNEXT'
    decoder = ChunkedDecoder()
    out = b"".join(decoder.feed(data[i : i + 1]) for i in range(len(data)))
    assert out == b"Wikipedia in\r\n\r\nchunks."
    assert decoder.done and decoder.unused == b"NEXT"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"0x10\r\n", 400),
        (b"-1\r\n", 400),
        (b" 5\r\n", 400),
        (b"5 \r\n", 400),
        (b"fffffffffffffffff\r\n", 400),
        (b"ffffff\r\n", 413),
        (b"3\r\nabcX\r\n", 400),
        (b"3\nabc\r\n", 400),
        (b"3\r\nabc\r\n0\r\nBad Trailer: x\r\n\r\n", 400),
        (b"3;\x00\r\nabc\r\n", 400),
    ],
)
def test_chunked_decoder_rejects(data: bytes, status: int) -> None:
    with pytest.raises(RequestError) as info:
        ChunkedDecoder(max_size=1000).feed(data)
    assert info.value.code == status


def _source(chunks: list[bytes]):  # type: ignore[no-untyped-def]
    def recv() -> bytes:
        return chunks.pop(0) if chunks else b""

    return recv


def test_body_content_length() -> None:
    body = RequestBody(_source([b"ne\nthree\n", b"fourNEXT"]), b"line o", length=19)
    assert body.readline() == b"line one\n"
    assert body.read(3) == b"thr"
    assert list(body) == [b"ee\n", b"four"]
    assert body.read() == b"" and body.readline() == b""
    assert body.finished and body.leftover() == b"NEXT"


def test_body_chunked_and_continue() -> None:
    sent = []
    body = RequestBody(
        _source([b"3\r\nabc\r\n", b"2\r\nde\r\n0\r\n\r\nGET"]),
        b"",
        chunked=True,
        before_read=lambda: sent.append(1),
    )
    assert body.continue_pending
    assert body.read(4) == b"abcd"
    assert sent == [1] and not body.continue_pending
    assert body.read() == b"e"
    assert body.leftover() == b"GET"


def test_body_incomplete_and_drain() -> None:
    body = RequestBody(_source([b"abc"]), b"", length=10)
    with pytest.raises(RequestError) as info:
        body.read()
    assert info.value.code == 400
    body = RequestBody(_source([b"x" * 50, b"y" * 50]), b"", length=100)
    assert body.drain(1000) and body.finished
    body = RequestBody(_source([]), b"", length=100)
    assert not body.drain(10)


def test_body_chunked_limit() -> None:
    body = RequestBody(_source([b"a\r\n0123456789\r\n"] * 5), b"", chunked=True, max_size=25)
    with pytest.raises(RequestError) as info:
        body.read()
    assert info.value.code == 413


def test_helpers() -> None:
    assert date_header().startswith(b"Date: ") and date_header().endswith(b" GMT\r\n")
    response = error_response(400)
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert response.endswith(b"\r\n\r\n400 Bad Request")
    assert b"Connection: close\r\n" in response


def test_options_from_config() -> None:
    opts = HTTPOptions.from_config({"server.max_connections": 7, "header_timeout": 2, "server.socket_port": 1})
    assert opts.max_connections == 7 and opts.header_timeout == 2.0
    assert opts.keepalive_timeout == HTTPOptions().keepalive_timeout
    with pytest.raises(ConfigError, match=r"server\.max_connections"):
        HTTPOptions.from_config({"server.max_connections": 0})
    with pytest.raises(ConfigError, match=r"server\.nodelay"):
        HTTPOptions.from_config({"server.nodelay": "maybe"})


def test_head_found_when_fed_byte_by_byte() -> None:
    head = b"\r\nGET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\nNEXT"
    parser = HeadParser(HTTPOptions())
    buf = bytearray()
    start = 0
    for i, byte in enumerate(head):
        buf.append(byte)
        start = HeadParser.empty_lines(bytes(buf)) if buf[:2] == b"\r\n" else 0
        if start == len(buf):
            continue
        end = parser.find_head_end(buf, start)
        if end >= 0:
            assert i == len(head) - 5
            assert parser.parse(bytes(buf[start:end])).headers == [(b"Host", b"x"), (b"X-A", b"1")]
            return
    raise AssertionError("head not found")


def test_bare_lf_found_when_fed_byte_by_byte() -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\nX: y"
    parser = HeadParser(HTTPOptions())
    buf = bytearray()
    with pytest.raises(RequestError) as info:
        for byte in head:
            buf.append(byte)
            parser.find_head_end(buf)
    assert info.value.code == 400 and len(buf) == len(b"GET / HTTP/1.1\r\nHost: x\n")
