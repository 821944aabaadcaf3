"""Property-based fuzzing of every parser that reads untrusted input.

* WebSocket frames: what websockets' ``Frame`` builds parses back to itself through
  our connection (``_Connection.feed``, the reader's own path), however the bytes
  are split; ``prepare_frame`` output parses as the frame it claims to be; arbitrary
  bytes fed to a server connection only ever end in a close, never an exception.
* The handshake validator: ``negotiate`` returns a Handshake or raises HandshakeError.
* The HTTP head parser and the chunked decoder: a RequestHead or RequestError.
* The config reader: ``literal`` returns or raises ValueError; ``read_file`` returns
  or raises ConfigError.

Longer runs: ``fuzz/fuzz_http.py`` and ``fuzz/fuzz_frames.py`` with atheris.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from typing import Any, cast

import gevent
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, Protocol, Side
from ws4py.websocket import WebSocket

from rtserver.config import ConfigError, literal, read_file
from rtserver.errors import HandshakeError
from rtserver.servers.http import ChunkedDecoder, HeadParser, RequestError, RequestHead
from rtserver.servers.options import HTTPOptions
from rtserver.websocket.connection import create_handler, prepare_frame
from rtserver.websocket.handshake import Handshake, negotiate
from rtserver.websocket.options import WebSocketOptions

pytestmark = pytest.mark.timeout(60)

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- WebSocket frames ------------------------------------------------------------------


class FakeSocket:
    """Just enough socket for a connection that is fed bytes directly."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.shut = False

    def send(self, data: Any, *_args: Any) -> int:
        self.sent += bytes(data)
        return len(data)

    def shutdown(self, how: int) -> None:
        self.shut = True

    def settimeout(self, timeout: Any) -> None:
        pass

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 9)


class Recorder(WebSocket):
    """Records what it receives and echoes it (so sends are exercised too)."""

    def opened(self) -> None:
        self.got: list[tuple[bool, bytes]] = []

    def received_message(self, message: Any) -> None:
        self.got.append((bool(message.is_binary), bytes(message.data)))
        self.send(message.data, message.is_binary)


def _handshake(compression: bool) -> Handshake:
    headers = [
        ("Host", "example.com"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
    if compression:
        headers.append(("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"))
    return negotiate("GET", headers, WebSocketOptions())


def _connection(compression: bool = False, max_message_size: int = 1 << 20) -> tuple[Any, Any]:
    sock = FakeSocket()
    options = WebSocketOptions(max_message_size=max_message_size)
    handler = create_handler(sock, Recorder, _handshake(compression), {}, options)
    handler.opened()
    return handler, sock


def _feed(handler: Any, chunks: list[bytes]) -> None:
    """Feed chunks as the reader loop would: stop once the connection is over."""
    conn = handler._rt_conn
    for chunk in chunks:
        if conn.aborted or conn.proto.state is not OPEN:
            break
        conn.feed(chunk)


def _frames(protocol: Protocol) -> list[Frame]:
    events = protocol.events_received()
    assert all(isinstance(e, Frame) for e in events)
    return cast(list[Frame], events)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a] or [b""]


messages = st.lists(
    st.one_of(
        st.tuples(st.just(False), st.text(max_size=300)),
        st.tuples(st.just(True), st.binary(max_size=300)),
    ),
    min_size=1,
    max_size=6,
)


@FUZZ
@given(messages=messages, pieces=st.lists(st.integers(1, 4), min_size=6, max_size=6), cuts=st.lists(st.integers()))
@example(messages=[(True, b"x" * 70000)], pieces=[1] * 6, cuts=[3, 70000])  # 64-bit length
def test_frames_parse_back_through_the_connection(
    messages: list[tuple[bool, Any]], pieces: list[int], cuts: list[int]
) -> None:
    stream = b""
    expected = []
    for (binary, payload), n in zip(messages, pieces, strict=False):
        data = payload if binary else payload.encode("utf-8")
        expected.append((binary, data))
        parts = [data[i * len(data) // n : (i + 1) * len(data) // n] for i in range(n)]
        for i, part in enumerate(parts):
            opcode = (Opcode.BINARY if binary else Opcode.TEXT) if i == 0 else Opcode.CONT
            stream += Frame(opcode, part, fin=i == n - 1).serialize(mask=True)
    handler, sock = _connection()
    _feed(handler, _split(stream, cuts))
    assert handler.got == expected
    assert handler._rt_conn.proto.state is OPEN
    gevent.sleep(0)  # the echoes are flushed by a hub callback
    client = Protocol(Side.CLIENT, state=OPEN, max_size=None)
    client.receive_data(bytes(sock.sent))
    echoed = [(f.opcode is Opcode.BINARY, bytes(f.data)) for f in _frames(client)]
    assert echoed == expected


@FUZZ
@given(payload=st.one_of(st.text(max_size=500), st.binary(max_size=70000)), binary=st.booleans())
def test_prepared_frames_parse_as_themselves(payload: Any, binary: bool) -> None:
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    binary = binary or isinstance(payload, bytes)
    client = Protocol(Side.CLIENT, state=OPEN, max_size=None)
    client.receive_data(prepare_frame(payload, binary))
    [frame] = _frames(client)
    assert frame.opcode is (Opcode.BINARY if binary else Opcode.TEXT)
    assert frame.fin and not frame.rsv1
    assert bytes(frame.data) == data


@FUZZ
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(), max_size=5), compression=st.booleans())
@example(data=b"\x81\x85abcd", cuts=[], compression=False)  # a truncated frame
@example(data=b"\x88\x82\x00\x00\x00\x00\x03\xe8", cuts=[], compression=False)  # close 1000
@example(data=b"\x81\xff" + b"\xff" * 8 + b"mask", cuts=[], compression=False)  # 2**64-1 bytes
@example(data=b"\xc1\x80mask", cuts=[], compression=True)  # compressed, empty
@example(data=b"\x01\x81mask\xa3" + b"\x80\x81mask\xa8", cuts=[], compression=False)  # bad UTF-8 across frames
def test_arbitrary_bytes_only_close_the_connection(data: bytes, cuts: list[int], compression: bool) -> None:
    handler, sock = _connection(compression, max_message_size=1000)
    conn = handler._rt_conn
    _feed(handler, _split(data, cuts))  # must not raise
    proto = conn.proto
    if proto.parser_exc is not None:
        # A protocol error fails the connection with a close frame (RFC 6455 §7.1.7).
        assert proto.state is not OPEN
        assert proto.close_sent is not None
        assert proto.close_sent.code in (1002, 1007, 1009, 1011)
    code, _reason = conn.close_status()
    assert 1000 <= code <= 4999
    conn.finish()


# -- the handshake ---------------------------------------------------------------------

HEADER_NAMES = st.sampled_from(
    [
        "Host",
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Origin",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Extensions",
        "X-Other",
    ]
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            "websocket",
            "Upgrade",
            "keep-alive, Upgrade",
            "13",
            "8",
            "dGhlIHNhbXBsZSBub25jZQ==",
            "example.com",
            "http://example.com",
            "null",
            "chat, superchat",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=16",
            "x-webkit-deflate-frame",
            "",
        ]
    ),
    st.text(max_size=60),
)
VALID = [
    ("Host", "example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "get", ""]),
    base=st.sampled_from([[], VALID]),
    extra=st.lists(st.tuples(st.one_of(HEADER_NAMES, st.text(max_size=20)), HEADER_VALUES), max_size=8),
    drop=st.lists(st.integers(0, 4), max_size=2),
    secure=st.booleans(),
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "junk"]),
    options=st.sampled_from(
        [
            WebSocketOptions(),
            WebSocketOptions(protocols=("chat",), allowed_origins=("*",)),
            WebSocketOptions(compression=False, allowed_origins=("https://app.example", "other:8443")),
        ]
    ),
)
def test_handshake_returns_or_refuses(
    method: str,
    base: list[tuple[str, str]],
    extra: list[tuple[str, str]],
    drop: list[int],
    secure: bool,
    version: str,
    options: WebSocketOptions,
) -> None:
    headers = [h for i, h in enumerate(base) if i not in drop] + extra
    try:
        result = negotiate(method, headers, options, secure=secure, http_version=version)
    except HandshakeError as exc:
        assert exc.status in (400, 403, 405, 426)
        return
    assert isinstance(result, Handshake)
    names = [name for name, _ in result.response_headers]
    assert "Sec-WebSocket-Accept" in names


# -- HTTP ------------------------------------------------------------------------------

OPTIONS = HTTPOptions(max_request_line=512, max_header_size=2048, max_header_count=20)
TOKENS = st.sampled_from(
    [b"GET", b"POST", b"/", b"/a?b=c", b"*", b"http://x/", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b" ", b"\t"]
)
FIELD_NAMES = st.sampled_from(
    [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Expect", b"Upgrade", b"X_Y", b"X"]
)
FIELD_VALUES = st.one_of(
    st.sampled_from([b"x", b"5", b"+5", b"-1", b"chunked", b"gzip, chunked", b"100-continue", b"close", b""]),
    st.binary(max_size=20),
)


@st.composite
def request_heads(draw: Any) -> bytes:
    line = b" ".join(draw(st.lists(TOKENS, min_size=1, max_size=4)))
    fields = draw(st.lists(st.tuples(FIELD_NAMES, st.sampled_from([b": ", b":", b" : "]), FIELD_VALUES), max_size=6))
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    head = line + eol + b"".join(n + sep + v + eol for n, sep, v in fields) + eol
    return bytes(draw(st.sampled_from([b"", b"\r\n"]))) + head + draw(st.binary(max_size=30))


def _parse_head(buf: bytes) -> RequestHead | None:
    """As the server does: skip empty lines, find the head's end, parse it."""
    parser = HeadParser(OPTIONS)
    start = parser.empty_lines(buf) if buf[:2] == b"\r\n" else 0
    end = parser.find_head_end(buf, start)
    if end < 0:
        return None
    return parser.parse(buf[start:end])


@FUZZ
@given(buf=st.one_of(st.binary(max_size=3000), request_heads()))
@example(buf=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
@example(buf=b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 30 + b"\r\n")
@example(buf=b"\r\n" * 5000)
def test_head_parser_returns_a_head_or_request_error(buf: bytes) -> None:
    try:
        head = _parse_head(buf)
    except RequestError as exc:
        assert 400 <= exc.code <= 505
        return
    if head is not None:
        assert head.method and head.version in ("HTTP/1.1", "HTTP/1.0")
        assert not (head.chunked and head.content_length is not None)


@FUZZ
@given(chunks=st.lists(st.binary(max_size=200), max_size=8))
@example(chunks=[b"5\r\nhello\r\n0\r\n\r\n"])
@example(chunks=[b"ffffffffffffffffff\r\n"])
def test_chunked_decoder_returns_data_or_request_error(chunks: list[bytes]) -> None:
    decoder = ChunkedDecoder(max_size=10_000, max_trailer=1000, max_fields=10)
    try:
        for chunk in chunks:
            out = decoder.feed(chunk)
            assert isinstance(out, bytes)
            if decoder.done:
                assert isinstance(decoder.unused, bytes)
                break
    except RequestError as exc:
        assert exc.code in (400, 413, 431)


# -- config ----------------------------------------------------------------------------

ATOMS = st.sampled_from(["1", "2.5", "-3", "'a'", "b'x'", "True", "None", "[]", "{}", "(1,)", "x", "f()", "1j"])
OPS = st.sampled_from([" + ", " - ", " * ", " / ", " // ", " % ", " ** ", ", ", " and ", " < ", "."])


@st.composite
def expressions(draw: Any) -> str:
    parts = [draw(ATOMS)]
    for _ in range(draw(st.integers(0, 6))):
        parts += [draw(OPS), draw(ATOMS)]
    text = "".join(parts)
    return draw(st.sampled_from(["{}", "({})", "[{}]", "-{}", "{{'k': {}}}"])).format(text)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), expressions()))
@example(text="-" * 30000 + "1")  # the parser gives up: not a ValueError by itself
@example(text="1+" * 20000 + "1")  # nested too deeply for the evaluator
@example(text="(9 ** 65536) ** 65536")  # would take minutes
@example(text="10 ** 60000 * 10 ** 60000")
@example(text="'a' * 10 ** 9")
@example(text="1" * 5000)
def test_literal_returns_or_raises_value_error(text: str) -> None:
    try:
        literal(text)
    except ValueError:
        pass


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.lists(
            st.one_of(
                st.sampled_from(["[global]", "[/path]", "[/]", "key = 1", "k: 'v'", "x =", "= 1", "  cont", "[bad"]),
                st.text(max_size=30).map(lambda t: "key = " + t),
            ),
            max_size=8,
        ).map("\n".join),
    ),
    raw_bytes=st.one_of(st.none(), st.binary(max_size=50)),
)
@example(text="[global]\nkey = 1\n", raw_bytes=b"\xff\xfe")
def test_read_file_returns_or_raises_config_error(text: str, raw_bytes: bytes | None) -> None:
    fd, path = tempfile.mkstemp(suffix=".conf")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8", "surrogatepass") if raw_bytes is None else text.encode() + raw_bytes)
        try:
            result = read_file(path)
        except ConfigError:
            return
        assert isinstance(result, dict)
    finally:
        os.unlink(path)
