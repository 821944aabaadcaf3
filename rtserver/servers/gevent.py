"""The gevent HTTP/1.1 server: one greenlet per connection, calling a WSGI app.

:class:`GeventHTTPServer` accepts connections on gevent's ``StreamServer`` and
serves each in its own greenlet: read a head (big reads, parsed and validated by
:mod:`rtserver.servers.http` before any body byte is looked at), call the
application, write the response, repeat while the connection may persist. It
implements the server side of ``docs/internals.md`` §1: the ``rtserver.*`` environ
keys, ``rtserver.interrupt`` and connection takeover for upgrades.

Example::

    server = GeventHTTPServer(app, ("127.0.0.1", 8080), options=HTTPOptions())
    server.start()              # returns at once; serving happens in greenlets
    ...
    server.stop(timeout=5)
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import ssl
import stat
import sys
from collections.abc import Callable, Iterable
from functools import partial
from time import monotonic
from typing import Any

import gevent
import gevent.socket
import gevent.ssl
from gevent.server import StreamServer

from .http import (
    EMPTY_BODY,
    HeadParser,
    RequestBody,
    RequestError,
    RequestHead,
    build_environ,
    date_header,
    error_response,
)
from .options import HTTPOptions

__all__ = ["GeventHTTPServer", "WSGIApp"]

#: A PEP 3333 application.
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_RECV_SIZE = 64 * 1024
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 256 * 1024
_SERVER_HEADER = b"Server: rtserver\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_INTERNAL_ERROR = 500

# PEP 3333: status is "NNN Reason"; header names are tokens (RFC 9110 §5.1) and
# values latin-1 text without CR, LF or other controls (RFC 9110 §5.5).
_STATUS = re.compile(r"([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?\Z")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
_PLAIN, _LENGTH, _CONNECTION, _DATE, _SERVER, _FORBIDDEN = range(6)
_NAME_KINDS: dict[str, int] = {}


def _asks_websocket(req: RequestHead) -> bool:
    """Whether ``req`` asks to upgrade to WebSocket (an ``Upgrade: websocket`` token).

    Such a connection never serves another HTTP request: a 101 hands it over, and
    any other answer (403 cross-origin, 426 version, 400, a page) closes it after the
    response. The client meant to leave HTTP, so what follows on the connection may
    be frames, not requests; and a proxy that took the upgrade request for a tunnel
    without waiting for the 101 would let requests through it unchecked (WebSocket
    request smuggling) were we to read them as HTTP.
    """
    return req.upgrade and any(
        name.lower() == b"upgrade" and b"websocket" in value.lower() for name, value in req.headers
    )


def _name_kind(name: Any) -> int:
    """Validate a response header name; say whether the server looks at it."""
    if type(name) is not str or not _TOKEN.match(name):
        raise ValueError(f"invalid response header name {name!r}")
    kind = {
        "content-length": _LENGTH,
        "connection": _CONNECTION,
        "date": _DATE,
        "server": _SERVER,
        # PEP 3333: the application must not set hop-by-hop framing; we frame.
        "transfer-encoding": _FORBIDDEN,
    }.get(name.lower(), _PLAIN)
    if len(_NAME_KINDS) < 1024:
        _NAME_KINDS[name] = kind
    return kind


def _close_iterable(result: Any, log: logging.Logger) -> None:
    """PEP 3333: call the response iterable's ``close()``, whatever happened."""
    close = getattr(result, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.exception("error closing the response iterable")


class _ClientGone(Exception):
    """Writing to the client failed; the connection is dead (internal)."""


class _StreamServer(StreamServer):  # type: ignore[misc]
    """gevent's StreamServer, leaving open the sockets handed over to a takeover."""

    def __init__(self, listener: Any, handle: Any, handed_over: set[Any]) -> None:
        super().__init__(listener, handle)
        self._handed_over = handed_over

    def do_close(self, sock: Any, *args: Any) -> None:
        handed_over = self._handed_over
        if handed_over and sock in handed_over:
            handed_over.discard(sock)  # the takeover greenlet closes it
            return
        sock.close()


class _Connection:
    """One client connection, served by :meth:`run` in its own greenlet."""

    def __init__(self, server: GeventHTTPServer, sock: Any, base_env: dict[str, Any], tls: bool) -> None:
        self.server = server
        self.sock = sock
        self.base_env = base_env
        self.tls = tls
        self.options = server.options
        self.log = server.log
        self.greenlet = gevent.getcurrent()
        #: True while waiting for the first byte of a request: stop() may close it.
        self.idle = True
        #: Set by stop() once it has told this connection to end.
        self.closing = False
        self._timeout: float | None = -1.0
        self._serving = 0
        self._seq = 0
        self._dead = False
        # Per-request response state, reset by _handle().
        self._req: RequestHead = RequestHead()
        self._body: Any = EMPTY_BODY
        self._status: str | None = None
        self._code = 0
        self._parts: list[str] = []
        self._length: int | None = None
        self._app_close = False
        self._has_date = False
        self._has_server = False
        self._head_sent = False
        self._chunked = False
        self._no_body = False
        self._keep = True
        self._sent = 0
        #: ``(takeover, leftover)`` once a 101 was sent: run by the server after
        #: this object and the HTTP call stack are gone (see ``_take_over``).
        self.takeover: tuple[Callable[[Any, bytes], None], bytes] | None = None

    # -- socket helpers ----------------------------------------------------------

    def _settimeout(self, timeout: float | None) -> None:
        if timeout != self._timeout:
            self._timeout = timeout
            self.sock.settimeout(timeout)

    def _sendall(self, data: bytes) -> None:
        if self._dead:
            raise _ClientGone("connection already failed")
        self._settimeout(self.options.write_timeout)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self._dead = True
            raise _ClientGone(str(exc)) from None

    def _recv_body(self) -> bytes:
        """``recv`` for :class:`RequestBody`: timeouts become 408."""
        self._settimeout(self.options.body_timeout)
        try:
            data: bytes = self.sock.recv(_RECV_SIZE)
        except TimeoutError:
            raise RequestError(408, "request body timed out") from None
        except OSError:
            return b""
        return data

    def close(self, linger: bool) -> None:
        """Close the socket, lingering (see :func:`_close`) unless TLS or dead."""
        self.idle = True  # nothing in flight any more: stop() may cut the linger short
        _close(self.sock, linger and not self.tls and not self._dead)

    def _fail(self, code: int) -> None:
        """Answer a protocol error (the connection will be closed)."""
        try:
            self._sendall(error_response(code))
        except _ClientGone:
            pass

    # -- the connection loop -----------------------------------------------------

    def run(self) -> None:
        """Serve requests until the connection ends; always closes the socket."""
        linger = False
        try:
            linger = self._serve()
        except _ClientGone:
            pass
        except Exception:
            self.log.exception("error serving a connection")
        finally:
            if self.takeover is None:
                self.close(linger)

    def _serve(self) -> bool:
        """The request loop; returns whether to close with a linger."""
        opts = self.options
        sock = self.sock
        recv = sock.recv
        parser = HeadParser(opts)
        server = self.server
        buf = b""
        deadline: float | None = monotonic() + opts.header_timeout
        first = True
        while True:
            if not buf:
                # Wait for a request: the first one within header_timeout of the
                # accept, later ones within keepalive_timeout of the last response.
                self.idle = True
                if server._stopping:
                    return False
                self._settimeout(opts.header_timeout if first else opts.keepalive_timeout)
                try:
                    buf = recv(_RECV_SIZE)
                except OSError:
                    return False
                if not buf:
                    return False
                self.idle = False
                if first:
                    first = False
                else:
                    deadline = None
            start = 0
            if buf[:2] == b"\r\n":
                start = parser.empty_lines(buf)
                if start == len(buf):
                    buf = b""
                    continue
            try:
                end = parser.find_head_end(buf, start)
                if end < 0:
                    buf = self._read_rest_of_head(parser, buf, start, deadline)
                    if not buf:
                        return False
                    end = parser.find_head_end(buf, start)
                head = parser.parse(buf[start:end] if start else buf[:end])
            except RequestError as exc:
                self.log.debug("bad request from %s: %s", self.base_env["REMOTE_ADDR"], exc)
                self._fail(exc.code)
                return True
            deadline = None
            rest = self._handle(head, buf[end:])
            if rest is None:
                return True
            buf = rest

    def _read_rest_of_head(self, parser: HeadParser, buf: bytes, start: int, deadline: float | None) -> bytes:
        """Receive until ``buf`` holds a whole head; b'' if the client went away.

        The head must be whole by the deadline, however slowly it trickles in
        (slowloris): then it is 408.
        """
        if deadline is None:
            deadline = monotonic() + self.options.header_timeout
        grown = bytearray(buf)  # grows in place: no quadratic copying
        recv = self.sock.recv
        while True:
            left = deadline - monotonic()
            if left <= 0:
                raise RequestError(408, "request head timed out")
            self._settimeout(left)
            try:
                data = recv(_RECV_SIZE)
            except TimeoutError:
                raise RequestError(408, "request head timed out") from None
            except OSError:
                return b""
            if not data:
                return b""
            grown += data
            if parser.find_head_end(grown, start) >= 0:
                return bytes(grown)

    # -- one request -------------------------------------------------------------

    def _handle(self, req: RequestHead, buf: bytes) -> bytes | None:
        """Serve one request; return the bytes after it (keep-alive) or None to close.

        A connection that failed or was taken over is marked ``_dead``: it is then
        closed at once, without lingering.
        """
        opts = self.options
        env = build_environ(req, self.base_env)
        body: Any = EMPTY_BODY
        if req.has_body:
            try:
                body = RequestBody(
                    self._recv_body,
                    buf,
                    length=req.content_length,
                    chunked=req.chunked,
                    max_size=opts.max_request_body_size,
                    before_read=self._send_continue if req.expect_continue else None,
                )
            except RequestError as exc:
                self._fail(exc.code)
                return None
        env["wsgi.input"] = body
        self._seq += 1
        seq = self._serving = self._seq
        env["rtserver.interrupt"] = partial(self._interrupt, seq)
        self._req = req
        self._body = body
        self._status = None
        self._code = 0
        self._head_sent = False
        self._chunked = False
        self._sent = 0
        self._keep = req.keep_alive and not self.server._stopping and not _asks_websocket(req)
        result: Any = None
        try:
            result = self.server.app(env, self._start_response)
            takeover = env.get("rtserver.upgrade")
            if takeover is not None and self._code == 101 and not self._head_sent:
                for _data in result:
                    pass  # the contract says empty; run it for its side effects
                iterable, result = result, None
                _close_iterable(iterable, self.log)
                # The connection outlives this request: drop what points back here.
                env.pop("rtserver.upgrade", None)
                env.pop("rtserver.interrupt", None)
                if body is not EMPTY_BODY:
                    env["wsgi.input"] = EMPTY_BODY
                self._upgrade(takeover, body, buf)
                return None
            if type(result) is list or type(result) is tuple:
                self._send_sequence(result)
            else:
                write = self._write
                for data in result:
                    if data:
                        write(data)
                if self._status is None:
                    raise RuntimeError("the application did not call start_response")
                self._finish()
        except _ClientGone:
            return None
        except RequestError as exc:
            # The body was bad, too big or too slow (raised by wsgi.input).
            self._serving = 0
            self.log.debug("bad request body: %s", exc)
            if not self._head_sent:
                self._fail(exc.code)
            return None
        except Exception:
            self._serving = 0
            self.log.exception("error in WSGI application (%s %s)", req.method, env.get("RAW_URI"))
            if not self._head_sent:
                self._fail(_INTERNAL_ERROR)
            return None
        finally:
            self._serving = 0
            if result is not None:
                _close_iterable(result, self.log)
        if not self._keep:
            return None
        if body is EMPTY_BODY:
            return buf
        if not body.finished:
            # Read what the application left unread, or give up the connection.
            # Without 100 Continue sent, the client may be waiting: just close.
            if body.continue_pending or not body.drain(opts.max_drain_size):
                return None
        leftover: bytes = body.leftover()
        return leftover

    def _interrupt(self, seq: int, exc: BaseException) -> None:
        """``rtserver.interrupt``: raise ``exc`` in this request's greenlet."""
        if self._serving == seq:
            hub = gevent.get_hub()
            hub.loop.run_callback(self._throw, seq, exc, hub)

    def _throw(self, seq: int, exc: BaseException, hub: Any) -> None:
        glet = self.greenlet
        if self._serving == seq and not glet.dead:
            try:
                glet.throw(exc)
            except BaseException:
                hub.handle_error(glet, *sys.exc_info())

    def _send_continue(self) -> None:
        # RFC 9110 §10.1.1: send 100 only once the application wants the body.
        if not self._head_sent:
            self._sendall(_CONTINUE)

    def _upgrade(self, takeover: Callable[[Any, bytes], None], body: Any, buf: bytes) -> None:
        """Write the 101 head as given; the server then hands the socket to ``takeover``."""
        if body is not EMPTY_BODY:
            if not body.finished and not body.drain(self.options.max_drain_size):
                self._dead = True
                return
            buf = body.leftover()
        assert self._status is not None
        self._sendall(("HTTP/1.1 " + self._status + "\r\n" + "".join(self._parts) + "\r\n").encode("latin-1"))
        self._serving = 0
        self.idle = False
        self._timeout = -1.0
        self.sock.settimeout(None)
        self._dead = True  # never used for HTTP again; closed without linger
        self.takeover = (takeover, buf)

    # -- the response ----------------------------------------------------------------

    def _start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        """PEP 3333 ``start_response``."""
        if exc_info is not None:
            try:
                if self._head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self._status is not None:
            raise RuntimeError("start_response called a second time without exc_info")
        if type(status) is not str:
            raise TypeError(f"status must be a str, not {type(status).__name__}")
        match = _STATUS.match(status)
        if match is None:
            raise ValueError(f"invalid status {status!r}")
        code = int(match.group(1))
        parts = []
        length = None
        app_close = has_date = has_server = False
        kinds = _NAME_KINDS
        bad_value = _BAD_VALUE.search
        for name, value in headers:
            kind = kinds.get(name)
            if kind is None:
                kind = _name_kind(name)
            if type(value) is not str or bad_value(value):
                raise ValueError(f"invalid value for response header {name!r}")
            if kind:
                if kind == _LENGTH:
                    if not (value.isascii() and value.isdigit()):
                        raise ValueError(f"invalid Content-Length {value!r}")
                    length = int(value)
                elif kind == _CONNECTION:
                    app_close = "close" in value.lower()
                elif kind == _DATE:
                    has_date = True
                elif kind == _SERVER:
                    has_server = True
                else:
                    raise ValueError(f"the application must not set {name!r}")
            parts.append(f"{name}: {value}\r\n")
        if code < 200 and code != 101:
            raise ValueError(f"interim status {status!r} is not supported")
        self._status = status
        self._code = code
        self._parts = parts
        self._length = length
        self._app_close = app_close
        self._has_date = has_date
        self._has_server = has_server
        # RFC 9110 §6.4.1: no content for HEAD, 1xx, 204, 304.
        self._no_body = code < 200 or code == 204 or code == 304 or self._req.method == "HEAD"
        return self._write

    def _send_head(self, data: bytes, total: int | None) -> None:
        """Send the head, batched with the first body bytes ``data``.

        ``total`` is the whole body's length when ``data`` is the whole body.
        """
        status = self._status
        if status is None:
            raise RuntimeError("the application did not call start_response")
        if self._code == 101:
            raise RuntimeError("101 status without rtserver.upgrade")
        parts = self._parts
        req = self._req
        keep = self._keep and not self._app_close and not self.server._stopping
        length = self._length
        no_body = self._no_body
        if length is None:
            if total is not None and self._code not in (204, 304):
                length = self._length = total
                parts.append(f"Content-Length: {total}\r\n")
            elif not no_body:
                if req.version == "HTTP/1.1":
                    self._chunked = True
                    parts.append("Transfer-Encoding: chunked\r\n")
                else:
                    keep = False  # RFC 9112 §6.3 item 8: the body ends at close
        body = self._body
        if keep and body is not EMPTY_BODY and not body.finished:
            if body.continue_pending or (
                req.content_length is not None and req.content_length > self.options.max_drain_size
            ):
                keep = False
        if not keep:
            if not self._app_close:
                parts.append("Connection: close\r\n")
        elif req.version == "HTTP/1.0":
            parts.append("Connection: keep-alive\r\n")
        self._keep = keep
        head = ("HTTP/1.1 " + status + "\r\n" + "".join(parts)).encode("latin-1")
        head += (date_header() if not self._has_date else b"") + (_SERVER_HEADER if not self._has_server else b"")
        self._head_sent = True
        if no_body or not data:
            self._sendall(head + b"\r\n")
        elif self._chunked:
            self._sendall(b"%b\r\n%x\r\n%b\r\n" % (head, len(data), data))
        else:
            if length is not None and len(data) > length:
                self.log.error("response body longer than its Content-Length; truncated")
                data = data[:length]
                self._keep = False
            self._sent = len(data)
            self._sendall(head + b"\r\n" + data)

    def _write(self, data: bytes) -> None:
        """PEP 3333 ``write``; also sends each item of the response iterable."""
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"response data must be bytes, not {type(data).__name__}")
            data = bytes(data)
        if not self._head_sent:
            if self._status is None:
                raise RuntimeError("write() before start_response()")
            self._send_head(data, None)
            return
        if not data or self._no_body:
            return
        if self._chunked:
            self._sendall(b"%x\r\n%b\r\n" % (len(data), data))
            return
        length = self._length
        if length is not None:
            room = length - self._sent
            if len(data) > room:
                self.log.error("response body longer than its Content-Length; truncated")
                data = data[:room]
                self._keep = False
            self._sent += len(data)
        if data:
            self._sendall(data)

    def _send_sequence(self, result: list[bytes] | tuple[bytes, ...]) -> None:
        """Send a list body: its length is known, so head and body go in one send."""
        if self._head_sent:
            for data in result:
                self._write(data)
            self._finish()
            return
        data = result[0] if len(result) == 1 else b"".join(result)
        if type(data) is not bytes:
            data = b"".join([data])
        if self._status is None:
            raise RuntimeError("the application did not call start_response")
        self._send_head(data, len(data))

    def _finish(self) -> None:
        if not self._head_sent:
            self._send_head(b"", 0)
        elif self._chunked:
            self._sendall(b"0\r\n\r\n")
        elif self._length is not None and not self._no_body and self._sent < self._length:
            self.log.error("response body shorter than its Content-Length")
            self._keep = False
        elif self._length is None and not self._no_body:
            self._keep = False


class GeventHTTPServer:
    """An HTTP/1.1 server calling a WSGI ``app``, one greenlet per connection.

    ``bind_addr`` is ``(host, port)`` (port 0 picks a free one), a filesystem path
    for a Unix socket, or a bound and listening socket (the server takes it over).
    With ``ssl_context`` every accepted connection is wrapped in TLS; a failed
    handshake is logged at debug level. ``server_adapter`` is passed to the
    application as ``environ['rtserver.server']``.
    """

    def __init__(
        self,
        app: WSGIApp,
        bind_addr: tuple[str, int] | str | socket.socket = ("127.0.0.1", 0),
        *,
        options: HTTPOptions | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_adapter: Any = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.app = app
        self.bind_addr = bind_addr
        self.options = options if options is not None else HTTPOptions()
        self.ssl_context = ssl_context
        self.server_adapter = server_adapter
        self.log = log if log is not None else logging.getLogger("rtserver.server")
        self._server: StreamServer | None = None
        self._listener: Any = None
        self._bound: tuple[str, int] | str | None = None  # set by stop_accepting()
        self._unix_path: str | None = None
        self._connections: dict[Any, _Connection] = {}
        self._handed_over: set[Any] = set()  # accepted sockets a takeover now owns
        self._taken_over: set[Any] = set()  # the (raw) greenlets running takeovers
        self._stopping = False
        self._server_name = ""
        self._server_port = ""

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Bind, listen and start accepting connections; returns at once."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._stopping = False
        listener = self._listen()
        self._listener = listener
        if listener.family == socket.AF_UNIX:
            self._server_name, self._server_port = "localhost", ""
        else:
            host, port = listener.getsockname()[:2]
            if host in ("0.0.0.0", "::"):
                host = socket.gethostname()
            self._server_name, self._server_port = host, str(port)
        self._server = _StreamServer(listener, self._handle, self._handed_over)
        try:
            self._server.start()
        except BaseException:
            self._server.close()
            self._server = None
            raise

    def stop_accepting(self) -> None:
        """Close the listening socket: new connections are refused, open ones are
        served on (each closes after its response in flight). :meth:`stop` follows.
        """
        if self._listener is not None and self._bound is None:
            try:
                self._bound = self.bound_address  # still answerable once closed
            except OSError:  # a listener given to us and already closed by its owner
                pass
        self._stopping = True
        if self._server is not None:
            self._server.close()
            self._server = None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting; let requests in flight finish for up to ``timeout``
        seconds, closing idle keep-alive connections at once; then close the rest.
        """
        self.stop_accepting()
        deadline = monotonic() + timeout
        while True:
            for glet, conn in list(self._connections.items()):
                if conn.idle and not conn.closing:
                    conn.closing = True
                    glet.kill(block=False)
            if (not self._connections and not self._taken_over) or monotonic() >= deadline:
                break
            gevent.sleep(0.01)
        if self._connections:
            gevent.killall(list(self._connections), block=True, timeout=1.0)
        if self._taken_over:
            for glet in list(self._taken_over):
                if glet:  # started and not dead: GreenletExit at its blocking point
                    gevent.kill(glet)
            end = monotonic() + 1.0
            while self._taken_over and monotonic() < end:
                gevent.sleep(0.01)
        if self._unix_path is not None:
            try:
                os.unlink(self._unix_path)
            except OSError:
                pass
            self._unix_path = None
        self._listener = None
        self._bound = None

    @property
    def bound_address(self) -> tuple[str, int] | str:
        """The address actually listened on: ``(host, port)``, or a Unix path."""
        if self._bound is not None:
            return self._bound
        if self._listener is None:
            raise RuntimeError("server not started")
        if self._listener.family == socket.AF_UNIX:
            path: str = self._listener.getsockname()
            return path
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def connection_count(self) -> int:
        """How many connections are open now."""
        return len(self._connections) + len(self._taken_over)

    def _listen(self) -> Any:
        addr = self.bind_addr
        opts = self.options
        if isinstance(addr, str):
            _remove_stale_unix_socket(addr)
            sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(addr)
                sock.listen(opts.backlog)
            except BaseException:
                sock.close()
                raise
            self._unix_path = addr
            return sock
        if isinstance(addr, tuple):
            host, port = addr[0], addr[1]
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = gevent.socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if opts.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((host, port))
                sock.listen(opts.backlog)
            except BaseException:
                sock.close()
                raise
            return sock
        return addr  # an already bound, listening socket

    # -- connections -----------------------------------------------------------------

    def _handle(self, sock: Any, address: Any) -> None:
        """StreamServer's handler: one accepted connection, in its own greenlet."""
        opts = self.options
        if self._stopping:
            sock.close()
            return
        if len(self._connections) + len(self._taken_over) >= opts.max_connections:
            self._reject(sock)
            return
        family = sock.family
        if family != socket.AF_UNIX and opts.nodelay:
            # Without it, a response written in two sends waits for the peer's
            # delayed ACK (Nagle): 40 ms per keep-alive request.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        accepted = sock
        tls = self.ssl_context is not None
        if tls:
            sock = self._wrap_tls(sock)
            if sock is None:
                return
        if family == socket.AF_UNIX or not address:
            remote_addr, remote_port = "", ""
        else:
            remote_addr, remote_port = address[0], str(address[1])
        base_env = {
            "SCRIPT_NAME": "",
            "SERVER_NAME": self._server_name,
            "SERVER_PORT": self._server_port,
            "REMOTE_ADDR": remote_addr,
            "REMOTE_PORT": remote_port,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if tls else "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "rtserver.socket": sock,
            "rtserver.server": self.server_adapter,
        }
        conn = _Connection(self, sock, base_env, tls)
        glet = conn.greenlet
        self._connections[glet] = conn
        try:
            conn.run()
            pending = conn.takeover
        finally:
            self._connections.pop(glet, None)
        if pending is not None:
            # Run the takeover in a new greenlet and let this one end: the HTTP
            # state, the request's context variables and the Python stack pages
            # touched deep in the application are freed, not kept for the life of
            # a WebSocket (about 8 KiB per idle socket). A raw greenlet: ~0.8 KiB
            # less than a gevent Greenlet (object and saved C stack).
            self._handed_over.add(accepted)
            self._taken_over.add(gevent.spawn_raw(self._take_over, sock, pending[0], pending[1]))

    def _take_over(self, sock: Any, takeover: Callable[[Any, bytes], None], leftover: bytes) -> None:
        """Run ``takeover(sock, leftover)`` (docs/internals.md §1), then close ``sock``."""
        try:
            takeover(sock, leftover)
        except Exception:
            self.log.exception("error in connection takeover")
        finally:
            self._taken_over.discard(gevent.getcurrent())
            sock.close()

    def _wrap_tls(self, sock: Any) -> Any:
        """The TLS socket for ``sock`` after its handshake, or None (closed)."""
        context = self.ssl_context
        sock.settimeout(self.options.header_timeout)
        try:
            # gevent's SSLSocket takes any SSLContext, so a stdlib context made
            # before monkey-patching still gives a cooperative socket.
            tls_sock = gevent.ssl.SSLSocket(
                sock=sock, server_side=True, do_handshake_on_connect=False, _context=context
            )
        except (OSError, ValueError) as exc:
            self.log.debug("TLS setup failed: %s", exc)
            sock.close()
            return None
        try:
            tls_sock.do_handshake()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.log.debug("TLS handshake failed: %s", exc)
            tls_sock.close()
            return None
        return tls_sock

    def _reject(self, sock: Any) -> None:
        """Answer 503 to a connection over ``max_connections`` and close it."""
        try:
            sock.settimeout(self.options.write_timeout)
            sock.sendall(error_response(503, extra=b"Retry-After: 1\r\n"))
        except OSError:
            sock.close()
            return
        _close(sock, linger=True)


def _close(sock: Any, linger: bool) -> None:
    """Close ``sock``; with ``linger``, first let the client read our answer.

    Closing with unread input makes the kernel send RST, which may destroy a
    response the client has not read yet; so shut down our side, then read and
    discard (briefly, boundedly) until the client closes too.
    """
    try:
        if linger:
            sock.shutdown(socket.SHUT_WR)
            deadline = monotonic() + _LINGER_SECONDS
            seen = 0
            while seen < _LINGER_BYTES:
                left = deadline - monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                data = sock.recv(_RECV_SIZE)
                if not data:
                    break
                seen += len(data)
    except OSError:
        pass
    finally:
        sock.close()


def _remove_stale_unix_socket(path: str) -> None:
    """Remove a Unix socket file left by a dead server (nobody accepts on it)."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except OSError:
        return
    probe = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)
    finally:
        probe.close()
