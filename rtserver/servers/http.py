"""HTTP/1.1 request parsing and WSGI environ building, with no I/O.

The request head is parsed by ``httptools`` (the C llhttp parser, in its strict
mode), then checked by :meth:`HeadParser.parse` for what llhttp lets through: the
Host rule, message framing that a proxy could read differently (request smuggling),
request-target forms and limits. The whole head is checked before any byte of the
body is looked at. :class:`RequestBody` is ``wsgi.input``: it reads exactly the body
its framing allows, from a ``recv`` callable given by the server.

Typical use by a server, per connection::

    parser = HeadParser(options)
    end = parser.find_head_end(buf)    # -1: read more (it raises on limits)
    head = parser.parse(buf[:end])     # raises RequestError with the status to send
    environ = build_environ(head, base_environ)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http import HTTPStatus
from time import time
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools

from rtserver import errors

from .options import HTTPOptions

__all__ = [
    "EMPTY_BODY",
    "ChunkedDecoder",
    "HeadParser",
    "RequestBody",
    "RequestError",
    "RequestHead",
    "build_environ",
    "date_header",
    "error_response",
    "reason_phrase",
]


class RequestError(errors.HTTPError):
    """The request cannot be served: answer ``code`` and close the connection.

    Raised by the parser for a bad head and by ``wsgi.input`` for a bad, too large
    or too slow body. ``str(exc)`` is safe to log; peers only get the status line.
    """


_PHRASES = {413: "Content Too Large", 414: "URI Too Long", 422: "Unprocessable Content"}


def reason_phrase(code: int) -> str:
    """The RFC 9110 reason phrase of ``code`` (``'Unknown'`` if there is none)."""
    if code in _PHRASES:
        return _PHRASES[code]
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


_date_cache: list[Any] = [0, b""]


def date_header() -> bytes:
    """``b'Date: ...\\r\\n'`` for now (RFC 9110 §6.6.1), formatted once per second."""
    now = int(time())
    if now != _date_cache[0]:
        _date_cache[0] = now
        _date_cache[1] = b"Date: %s\r\n" % formatdate(now, usegmt=True).encode("ascii")
    result: bytes = _date_cache[1]
    return result


def error_response(code: int, *, close: bool = True, extra: bytes = b"") -> bytes:
    """A complete plain-text response for ``code``; the body is the status line only."""
    status = f"{code} {reason_phrase(code)}".encode("ascii")
    return b"".join(
        (
            b"HTTP/1.1 %s\r\n" % status,
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(status),
            b"Connection: close\r\n" if close else b"",
            extra,
            date_header(),
            b"Server: rtserver\r\n\r\n",
            status,
        )
    )


# RFC 9110 §5.6.2: token = 1*tchar
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# RFC 9110 §7.2 and RFC 3986 §3.2.2: uri-host [ ":" port ], or empty.
_HOST = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]*|\[[0-9A-Fa-f:.vV]+\])(?::[0-9]*)?\Z")
# RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF, with chunk-ext per §7.1.1.
_TOKEN_CHARS = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t !-~\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*\Z" % (_TOKEN_CHARS, _TOKEN_CHARS, _QUOTED)
)
# RFC 9110 §5.5: field-value characters (VCHAR, obs-text, SP, HTAB).
_FIELD_LINE = re.compile(rb"(%s):[ \t]*([\t !-~\x80-\xff]*)\Z" % _TOKEN_CHARS)

_EMPTY_LINES = re.compile(rb"(?:\r\n)+")
_METHODS: dict[bytes, str] = {}
_ENV_KEYS: dict[bytes, str] = {}
_CACHE_LIMIT = 1024


def _env_key(name: bytes) -> str:
    """The environ key for header ``name``; '' for a name holding '_'.

    Names with '_' are dropped rather than mapped: ``X_Forwarded_For`` would
    otherwise become ``HTTP_X_FORWARDED_FOR`` and spoof ``X-Forwarded-For``.
    """
    key = _ENV_KEYS.get(name)
    if key is None:
        text = name.decode("latin-1").upper()
        if "_" in text:
            key = ""
        elif text == "CONTENT-TYPE" or text == "CONTENT-LENGTH":
            key = text.replace("-", "_")
        else:
            key = "HTTP_" + text.replace("-", "_")
        if len(_ENV_KEYS) < _CACHE_LIMIT:
            _ENV_KEYS[name] = key
    return key


class RequestHead:
    """One parsed, validated request head."""

    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "target",
        "upgrade",
        "version",
    )

    def __init__(self) -> None:
        self.method = ""
        #: The raw request-target, bytes, origin-form or ``b'*'``.
        self.target = b""
        #: ``'HTTP/1.1'`` or ``'HTTP/1.0'``.
        self.version = "HTTP/1.1"
        #: ``[(name, value)]`` as received (bytes), values stripped of whitespace.
        self.headers: list[tuple[bytes, bytes]] = []
        #: The body length, or None for chunked or no body.
        self.content_length: int | None = None
        self.chunked = False
        #: The client asked to keep the connection (RFC 9112 §9.3).
        self.keep_alive = True
        self.expect_continue = False
        #: The client sent ``Upgrade`` (the application decides).
        self.upgrade = False

    @property
    def has_body(self) -> bool:
        """True when body bytes follow the head."""
        return self.chunked or bool(self.content_length)


class HeadParser:
    """Parses and validates request heads for one connection.

    Call :meth:`find_head_end` on the received bytes until it returns the length of
    the head, then :meth:`parse` with exactly those bytes. Both raise
    :class:`RequestError`; answer its ``code`` and close the connection.
    """

    def __init__(self, options: HTTPOptions) -> None:
        self.options = options
        self._parser: Any = None
        self._head: RequestHead | None = None
        self._complete = False
        self._too_many = False
        self._scanned = 0
        self._line_done = False

    # -- finding the head -------------------------------------------------------

    @staticmethod
    def empty_lines(buf: bytes) -> int:
        """How many bytes of empty lines (CRLF) start ``buf``; skip them.

        RFC 9112 §2.2: a server SHOULD ignore at least one empty line received
        before the request line (some clients send CRLF after a POST body).
        """
        match = _EMPTY_LINES.match(buf)
        return match.end() if match else 0

    def find_head_end(self, buf: bytes | bytearray, start: int = 0) -> int:
        """The index just past the head's final CRLF CRLF in ``buf``, or -1.

        Call again with the same, grown ``buf`` after receiving more: only new bytes
        are scanned, so a head trickling in byte by byte costs linear time.
        ``start`` skips empty lines received before the request line (RFC 9112
        §2.2). Raises ``RequestError`` when the request line or head is already too
        long, or for a bare LF line ending, which would never end the head.
        """
        scanned = max(start, self._scanned)
        end = buf.find(b"\r\n\r\n", max(start, scanned - 3))
        opts = self.options
        if end >= 0:
            self._scanned = 0
            self._line_done = False
            end += 4
            if end - start > opts.max_header_size:
                raise RequestError(431, "request head too large")
            return end
        self._scanned = len(buf)
        if not self._line_done:
            if buf.find(b"\r\n", start) >= 0:
                self._line_done = True
            elif len(buf) - start > opts.max_request_line:
                raise RequestError(414, "request line too long")
        if len(buf) - start > opts.max_header_size:
            raise RequestError(431, "request head too large")
        # RFC 9112 §2.2 allows a recipient to take a bare LF as a line end; we do
        # not (another server behind or in front might not agree with us).
        i = buf.find(b"\n", scanned)
        while i >= 0:
            if i == start or buf[i - 1] != 13:
                raise RequestError(400, "bare LF in request head")
            i = buf.find(b"\n", i + 1)
        return -1

    # -- parsing ---------------------------------------------------------------

    def parse(self, head: bytes) -> RequestHead:
        """Parse one complete head (request line to the empty line included)."""
        line_end = head.find(b"\r\n")
        if line_end > self.options.max_request_line:
            raise RequestError(414, "request line too long")
        if line_end < 0:
            raise RequestError(400, "no request line")
        # RFC 9112 §2.2: we take no bare LF (nor CR, which llhttp refuses) as a line
        # end; otherwise a bare LF could hide a header line from us.
        if head.count(b"\n") != head.count(b"\r\n"):
            raise RequestError(400, "bare LF in request head")
        # The only protocols we speak: llhttp also takes RTSP/ and ICE/, and
        # HTTP/0.9 and HTTP/2.0 request lines (RFC 9110 §2.5, §15.6.6: 505).
        version = head[line_end - 9 : line_end]
        if version != b" HTTP/1.1" and version != b" HTTP/1.0":
            if re.search(rb" HTTP/[0-9]\.[0-9]\Z", head[:line_end]):
                raise RequestError(505, "unsupported HTTP version")
            raise RequestError(400, "bad request line")
        result = self._head = RequestHead()
        result.version = "HTTP/1.1" if version[-1] == 49 else "HTTP/1.0"
        parser = self._parser
        if parser is None:
            parser = self._parser = httptools.HttpRequestParser(self)
        self._complete = False
        upgrade = False
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            upgrade = True
        except httptools.HttpParserError as exc:
            self._parser = None
            if self._too_many:
                self._too_many = False
                raise RequestError(431, "too many header fields") from None
            if "invalid http version" in str(exc).lower():
                raise RequestError(505, "unsupported HTTP version") from None
            raise RequestError(400, f"malformed request head ({exc})") from None
        finally:
            self._head = None
        # llhttp is reusable after a complete message with no body; otherwise it
        # still expects body bytes that we read ourselves.
        if upgrade or not self._complete:
            self._parser = None
        self._validate(result)
        return result

    # httptools callbacks (called by feed_data)

    def on_url(self, url: bytes) -> None:
        """llhttp callback: the request-target."""
        head = self._head
        assert head is not None
        head.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """llhttp callback: one header field (obs-fold and bad bytes already refused)."""
        head = self._head
        assert head is not None
        headers = head.headers
        if len(headers) >= self.options.max_header_count:
            self._too_many = True
            raise RequestError(431, "too many header fields")
        headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        """llhttp callback: read the method and connection persistence."""
        head = self._head
        assert head is not None
        parser = self._parser
        method = parser.get_method()
        text = _METHODS.get(method)
        if text is None:
            text = method.decode("ascii")
            _METHODS[method] = text
        head.method = text
        head.keep_alive = parser.should_keep_alive()

    def on_message_complete(self) -> None:
        """llhttp callback: the head had no body."""
        self._complete = True

    # -- our own checks --------------------------------------------------------

    def _validate(self, head: RequestHead) -> None:
        target = head.target
        # RFC 9112 §3.2: origin-form, or asterisk-form for OPTIONS only. We refuse
        # absolute-form (§3.2.2 asks servers to accept it, but we are no proxy and
        # it lets a request carry an authority that disagrees with Host) and
        # authority-form (CONNECT).
        if target[:1] != b"/":
            if not (target == b"*" and head.method == "OPTIONS"):
                raise RequestError(400, "request-target must be origin-form")
        elif b"#" in target:
            raise RequestError(400, "fragment in request-target")
        hosts = 0
        lengths = 0
        encodings = 0
        for name, value in head.headers:
            if len(name) > 17:
                continue
            lname = name.lower()
            if lname == b"host":
                hosts += 1
                if not _HOST.match(value):
                    raise RequestError(400, "invalid Host")
            elif lname == b"content-length":
                lengths += 1
                # RFC 9110 §8.6: Content-Length = 1*DIGIT; no sign, space or list.
                if not (value.isdigit() and len(value) <= 18):
                    raise RequestError(400, "invalid Content-Length")
                head.content_length = int(value)
            elif lname == b"transfer-encoding":
                encodings += 1
                # RFC 9112 §6.3 item 4: chunked must be the final coding. We take
                # no other coding at all, so "chunked" must be the only one.
                if value.lower() != b"chunked":
                    raise RequestError(400, "unsupported Transfer-Encoding")
                head.chunked = True
            elif lname == b"expect":
                # RFC 9110 §10.1.1: only 100-continue is defined; an HTTP/1.0
                # client cannot use it.
                if value.lower() != b"100-continue":
                    raise RequestError(417, "unsupported expectation")
                head.expect_continue = head.version == "HTTP/1.1"
            elif lname == b"upgrade":
                head.upgrade = True
        # RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one otherwise.
        if hosts > 1 or (hosts == 0 and head.version == "HTTP/1.1"):
            raise RequestError(400, "missing or repeated Host")
        if lengths > 1:
            raise RequestError(400, "repeated Content-Length")
        if encodings:
            # RFC 9112 §6.1: Transfer-Encoding with Content-Length is a smuggling
            # attempt; a Transfer-Encoding in HTTP/1.0 is faulty framing.
            if lengths or encodings > 1 or head.version == "HTTP/1.0":
                raise RequestError(400, "ambiguous message framing")
        limit = self.options.max_request_body_size
        if limit and head.content_length is not None and head.content_length > limit:
            raise RequestError(413, "request body too large")
        if not head.has_body:
            head.expect_continue = False


def build_environ(head: RequestHead, base: dict[str, Any]) -> dict[str, Any]:
    """The PEP 3333 environ for ``head``: a copy of ``base`` plus the request keys.

    ``base`` holds the per-connection keys (SERVER_*, REMOTE_*, wsgi.*). PATH_INFO
    is the percent-decoded path as latin-1; RAW_URI and REQUEST_URI keep the
    target as received. Repeated header fields are joined with ', ' (RFC 9110
    §5.3), Cookie with '; ' (RFC 6265 §5.4).
    """
    env = base.copy()
    target = head.target.decode("latin-1")
    path, _, query = target.partition("?")
    if "%" in path:
        path = unquote_to_bytes(path).decode("latin-1")
    env["REQUEST_METHOD"] = head.method
    env["PATH_INFO"] = path
    env["QUERY_STRING"] = query
    env["RAW_URI"] = env["REQUEST_URI"] = target
    env["SERVER_PROTOCOL"] = head.version
    for name, value in head.headers:
        key = _ENV_KEYS.get(name) or _env_key(name)
        if not key:
            continue
        text = value.decode("latin-1")
        if key in env:
            sep = "; " if key == "HTTP_COOKIE" else ", "
            env[key] = env[key] + sep + text
        else:
            env[key] = text
    return env


class ChunkedDecoder:
    """Decodes a chunked body (RFC 9112 §7.1), strictly, without I/O.

    :meth:`feed` returns the data bytes decoded so far; once ``done``, ``unused``
    holds the bytes received past the body (a pipelined request). Trailer fields
    are checked and discarded.
    """

    _SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)

    def __init__(self, max_size: int = 0, max_trailer: int = 64 * 1024, max_fields: int = 100):
        self.max_size = max_size
        self.max_trailer = max_trailer
        self.max_fields = max_fields
        self.total = 0
        self._raw = bytearray()
        self._state = self._SIZE
        self._left = 0
        self._trailer_size = 0
        self._trailer_fields = 0
        self._scanned = 0

    @property
    def done(self) -> bool:
        """True once the last chunk and the trailer section have been read."""
        return self._state == self._DONE

    @property
    def unused(self) -> bytes:
        """Bytes fed past the end of the body (only meaningful once ``done``)."""
        return bytes(self._raw) if self._state == self._DONE else b""

    def feed(self, data: bytes) -> bytes:
        """Take received bytes; return the body data they complete."""
        raw = self._raw
        if self._state == self._DONE:
            raw += data
            return b""
        raw += data
        out = []
        while True:
            state = self._state
            if state == self._DATA:
                if not raw:
                    break
                n = min(self._left, len(raw))
                out.append(bytes(raw[:n]))
                del raw[:n]
                self._left -= n
                if not self._left:
                    self._state = self._DATA_END
            elif state == self._DATA_END:
                if len(raw) < 2:
                    break
                if raw[:2] != b"\r\n":
                    raise RequestError(400, "chunk data not followed by CRLF")
                del raw[:2]
                self._state = self._SIZE
            elif state == self._SIZE:
                line = self._line(4096, "chunk size line too long")
                if line is None:
                    break
                match = _CHUNK_LINE.match(line)
                if match is None:
                    raise RequestError(400, "invalid chunk size")
                size = int(match.group(1), 16)
                if size == 0:
                    self._state = self._TRAILER
                    continue
                self.total += size
                if self.max_size and self.total > self.max_size:
                    raise RequestError(413, "request body too large")
                self._left = size
                self._state = self._DATA
            elif state == self._TRAILER:
                line = self._line(self.max_trailer, "trailer section too large")
                if line is None:
                    break
                if not line:
                    self._state = self._DONE
                    break
                self._trailer_size += len(line) + 2
                self._trailer_fields += 1
                if self._trailer_size > self.max_trailer or self._trailer_fields > self.max_fields:
                    raise RequestError(431, "trailer section too large")
                if not _FIELD_LINE.match(line):
                    raise RequestError(400, "invalid trailer field")
            else:
                break
        return b"".join(out)

    def _line(self, limit: int, too_long: str) -> bytes | None:
        raw = self._raw
        # Scan only what the last call did not (a line may trickle in byte by byte).
        i = raw.find(b"\r\n", max(0, self._scanned - 1))
        if i < 0:
            if raw.find(b"\n", self._scanned) >= 0:
                raise RequestError(400, "bare LF in chunked body")
            if len(raw) > limit:
                raise RequestError(400, too_long)
            self._scanned = len(raw)
            return None
        self._scanned = 0
        if i > limit:
            raise RequestError(400, too_long)
        line = bytes(raw[:i])
        if b"\n" in line:
            raise RequestError(400, "bare LF in chunked body")
        del raw[: i + 2]
        return line


class RequestBody:
    """``wsgi.input``: the request body, bounded by its framing.

    ``recv()`` returns the next received bytes (b'' at end of stream) and raises
    ``RequestError`` on a timeout; ``buffer`` holds bytes already received after
    the head. ``before_read`` (if given) is called once, before the first ``recv``:
    the server sends ``100 Continue`` there. Reading past the body returns b''.
    """

    def __init__(
        self,
        recv: Callable[[], bytes],
        buffer: bytes,
        *,
        length: int | None = None,
        chunked: bool = False,
        max_size: int = 0,
        before_read: Callable[[], None] | None = None,
    ) -> None:
        self._recv = recv
        self._before_read = before_read
        self._decoder: ChunkedDecoder | None = None
        if chunked:
            self._decoder = ChunkedDecoder(max_size)
            self._raw = b""
            self._data = bytearray(self._decoder.feed(buffer))
            self._left = -1
        else:
            self._left = length or 0
            self._data = bytearray(buffer[: self._left])
            self._raw = buffer[self._left :]
            self._left -= len(self._data)
        self.failed = False

    @property
    def finished(self) -> bool:
        """True when the whole body has been received (if not necessarily read)."""
        if self._decoder is not None:
            return self._decoder.done
        return self._left == 0

    @property
    def continue_pending(self) -> bool:
        """True while ``before_read`` (100 Continue) has not been called."""
        return self._before_read is not None

    def leftover(self) -> bytes:
        """Bytes received past the body; call once ``finished``."""
        if self._decoder is not None:
            return self._decoder.unused
        return self._raw

    def _fill(self) -> bool:
        """Receive more body data into ``_data``; False at the end of the body."""
        decoder = self._decoder
        if self._left == 0 or (decoder is not None and decoder.done):
            return False
        if self._before_read is not None:
            before, self._before_read = self._before_read, None
            before()
        try:
            data = self._recv()
        except RequestError:
            self.failed = True
            raise
        if not data:
            self.failed = True
            raise RequestError(400, "incomplete request body")
        if decoder is not None:
            try:
                self._data += decoder.feed(data)
            except RequestError:
                self.failed = True
                raise
        else:
            if len(data) > self._left:
                self._raw = data[self._left :]
                data = data[: self._left]
            self._data += data
            self._left -= len(data)
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes of body (all of it when negative or None)."""
        if size is None or size < 0:
            while self._fill():
                pass
            data = bytes(self._data)
            self._data.clear()
            return data
        while len(self._data) < size and self._fill():
            pass
        data = bytes(self._data[:size])
        del self._data[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        """One line (ending with b'\\n' unless at the end), at most ``size`` bytes."""
        limit = -1 if size is None else size
        while True:
            i = self._data.find(b"\n")
            if i >= 0:
                end = i + 1
                break
            if 0 <= limit <= len(self._data) or not self._fill():
                end = len(self._data)
                break
        if 0 <= limit < end:
            end = limit
        line = bytes(self._data[:end])
        del self._data[:end]
        return line

    def readlines(self, hint: int = -1) -> list[bytes]:
        """Lines until the end of the body (or about ``hint`` bytes)."""
        lines = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def drain(self, limit: int) -> bool:
        """Read and discard the rest of the body, at most ``limit`` more bytes.

        Returns True when the body was read to its end (the connection can carry
        another request).
        """
        if self.failed:
            return False
        self._data.clear()
        if self._decoder is None and self._left > limit:
            return False
        seen = 0
        try:
            while self._fill():
                seen += len(self._data)
                self._data.clear()
                if seen > limit:
                    return False
        except RequestError:
            return False
        return True


class _EmptyBody:
    """``wsgi.input`` of a request without a body."""

    finished = True
    failed = False
    continue_pending = False

    def read(self, size: int | None = -1) -> bytes:
        """Always b''."""
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        """Always b''."""
        return b""

    def readlines(self, hint: int = -1) -> list[bytes]:
        """Always []."""
        return []

    def __iter__(self) -> Iterator[bytes]:
        return iter(())


#: The shared ``wsgi.input`` of requests without a body (it has no state).
EMPTY_BODY = _EmptyBody()
