"""The response object: status, headers, cookies, body, and the time it may take."""

from __future__ import annotations

import http.cookies
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import status_line
from .httputil import HeaderMap

if TYPE_CHECKING:
    from .request import Request

__all__ = ["Response", "encode_body"]


def encode_body(value: Any, encoding: str = "utf-8") -> tuple[list[bytes] | Iterable[bytes], bool]:
    """Turn a handler result into ``(chunks, is_list)``.

    str → UTF-8; bytes → as is; None → empty; any other iterable (a generator) →
    an iterator encoding each item, streamed to the client.
    """
    if value is None:
        return [], True
    if isinstance(value, bytes):
        return [value], True
    if isinstance(value, str):
        return [value.encode(encoding)], True
    if isinstance(value, (bytearray, memoryview)):
        return [bytes(value)], True
    if isinstance(value, (list, tuple)):
        return [_encode_chunk(v, encoding) for v in value], True
    if hasattr(value, "read") and not hasattr(value, "__next__"):
        return _file_chunks(value), False
    if isinstance(value, Iterable):
        return _encode_iter(iter(value), encoding), False
    raise TypeError(f"a page handler must return str, bytes, None or an iterable, not {type(value).__name__}")


def _encode_chunk(chunk: Any, encoding: str) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, str):
        return chunk.encode(encoding)
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(f"response chunks must be str or bytes, not {type(chunk).__name__}")


class _EncodingIterator:
    """Encodes a generator's items lazily and forwards ``close()`` to it."""

    def __init__(self, it: Iterator[Any], encoding: str) -> None:
        self._it = it
        self._encoding = encoding

    def __iter__(self) -> _EncodingIterator:
        return self

    def __next__(self) -> bytes:
        return _encode_chunk(next(self._it), self._encoding)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def _encode_iter(it: Iterator[Any], encoding: str) -> Iterable[bytes]:
    return _EncodingIterator(it, encoding)


def _file_chunks(fh: Any, size: int = 64 * 1024) -> Iterator[bytes]:
    try:
        while True:
            chunk = fh.read(size)
            if not chunk:
                return
            yield chunk
    finally:
        fh.close()


class Response:
    """The current HTTP response (``rtserver.response`` inside a handler).

    ``status`` (int or ``"404 Not Found"``), ``headers``, ``cookie`` (a
    ``SimpleCookie`` sent as Set-Cookie), ``body`` (set any handler result), ``stream``
    (send a generator as it yields, without buffering), and the timing attributes of
    CherryPy: ``time``, ``timeout`` (seconds, default 300), ``timed_out``,
    :meth:`check_timeout`.
    """

    timeout: float = 300.0
    stream: bool = False

    def __init__(self, request: Request | None = None) -> None:
        self.request = request
        self.status: int | str = 200
        self.headers = HeaderMap()
        self.headers["Content-Type"] = "text/html;charset=utf-8"
        self._cookie: http.cookies.SimpleCookie | None = None
        self._body: list[bytes] | Iterable[bytes] = []
        self._body_is_list = True
        self.time = time.time()
        self.timed_out = False
        self.encoding = "utf-8"

    @property
    def cookie(self) -> http.cookies.SimpleCookie:
        """Cookies to set (each becomes a Set-Cookie header)."""
        if self._cookie is None:
            self._cookie = http.cookies.SimpleCookie()
        return self._cookie

    @property
    def body(self) -> list[bytes] | Iterable[bytes]:
        """The body as a list of byte chunks, or an iterator when streaming."""
        return self._body

    @body.setter
    def body(self, value: Any) -> None:
        self._body, self._body_is_list = encode_body(value, self.encoding)

    @property
    def body_is_buffered(self) -> bool:
        """True when the whole body is in memory (its length is known)."""
        return self._body_is_list

    def collapse_body(self) -> bytes:
        """Read a streamed body into memory and return it whole."""
        data = b"".join(self._body)
        self._body, self._body_is_list = [data], True
        return data

    def check_timeout(self) -> None:
        """Set ``timed_out`` when more than ``timeout`` seconds have passed since ``time``."""
        if time.time() > self.time + self.timeout:
            self.timed_out = True

    def interrupt(self, exc: BaseException) -> bool:
        """Interrupt the handler serving this response (used by the timeout monitor)."""
        if self.request is None:
            return False
        return self.request.interrupt(exc)

    def finalize(self) -> tuple[str, list[tuple[str, str]]]:
        """The status line and header lines to send (Content-Length when known)."""
        code, line = status_line(self.status)
        headers = self.headers
        if self._body_is_list and not self.stream:
            body = self._body
            assert isinstance(body, list)
            if code in (204, 304) or code < 200:
                self._body = []
                headers.pop("Content-Length", None)
                if code in (204, 304):
                    headers.pop("Content-Type", None)
            else:
                headers["Content-Length"] = str(sum(map(len, body)))
        output = headers.output()
        if self._cookie:
            for morsel in self._cookie.values():
                output.append(("Set-Cookie", morsel.OutputString()))
        return line, output
