"""cheroot as rtserver's HTTP server: the WSGI server, and the native one without WSGI.

``server.kind = 'cheroot'`` runs :class:`CherootServer`: cheroot's threaded WSGI server
serving the tree. ``server.kind = 'native'`` runs :class:`NativeServer`: cheroot's HTTP
server with a gateway that calls the tree's applications directly, as CherryPy's
``_cpnative_server`` does; a grafted foreign WSGI app cannot run there (500, logged).
As in the guide::

    rtserver.server.httpserver = rtserver.servers.NativeServer(rtserver.server)
    rtserver.quickstart(Root(), '/')

Threads. cheroot serves each connection in a worker thread of its pool, and accepts in
one more thread. rtserver processes run under gevent's monkey-patching, which turns
those threads into greenlets: cheroot then runs cooperatively beside the engine's
greenlets, and blocking in a handler (a socket, ``time.sleep``) yields instead of
holding a pool slot's OS thread. Real threads (gevent's threadpool) would buy nothing
here, since the WebSocket runtime and the hub are greenlet-based and must share the hub.

Upgrades (docs/internals.md §1). When the application answers ``101 Switching
Protocols`` and sets ``environ['rtserver.upgrade']``, the gateway writes the head as
given, takes the bytes cheroot had already buffered past the request, takes the socket
out of cheroot's hands (its worker returns to the pool at once and never closes the
socket) and runs ``takeover(sock, leftover)`` in a thread (greenlet) of its own, which
closes the socket when it returns.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from cheroot import server as _cheroot_server
from cheroot import wsgi as _cheroot_wsgi
from cheroot.connections import ConnectionManager

from .http import date_header

__all__ = ["CherootServer", "NativeServer"]

log = logging.getLogger("rtserver.error")

_NATIVE_FOREIGN = "grafted WSGI apps cannot run on the native server"


# -- upgrades -------------------------------------------------------------------------


class _Takeovers:
    """The connections taken over from cheroot, each run in its own thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[threading.Thread, Any] = {}

    def spawn(self, takeover: Callable[[Any, bytes], None], sock: Any, leftover: bytes) -> None:
        thread = threading.Thread(
            target=self._run, args=(takeover, sock, leftover), name="rtserver-takeover", daemon=True
        )
        with self._lock:
            self._running[thread] = sock
        thread.start()

    def _run(self, takeover: Callable[[Any, bytes], None], sock: Any, leftover: bytes) -> None:
        try:
            takeover(sock, leftover)
        except Exception:
            log.error("Error in connection takeover", exc_info=True)
        finally:
            _close_quietly(sock)
            with self._lock:
                self._running.pop(threading.current_thread(), None)

    def stop(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the taken-over connections (the WebSocket
        runtime closes its sockets with 1001 on engine stop), then cut the rest."""
        with self._lock:
            threads = list(self._running)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = list(self._running.items())
        for thread, sock in left:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            thread.join(1.0)


def _close_quietly(sock: Any) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _take_over(req: Any, status: str, headers: list[tuple[str, str]], takeover: Callable[[Any, bytes], None]) -> None:
    """Write the 101 head, detach the connection from cheroot, run ``takeover``."""
    conn = req.conn
    remaining = getattr(req.rfile, "remaining", 0)
    if remaining:
        req.rfile.read(remaining)  # an upgrade request body is not the new protocol's
    head = "HTTP/1.1 " + status + "\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    conn.wfile.write(head.encode("latin-1"))
    conn.wfile.flush()
    # Bytes cheroot read past the request head belong to the new protocol.
    chunks = []
    rfile = conn.rfile
    while rfile.has_data():
        chunks.append(rfile.read1(64 * 1024))
    leftover = b"".join(chunks)
    # cheroot must neither answer again, nor keep the connection, nor close the
    # socket: with ``linger`` its close() only closes its file objects.
    req.sent_headers = True
    req.chunked_write = False
    req.close_connection = True
    conn.linger = True
    conn.wfile.close()
    sock = conn.socket
    sock.settimeout(None)  # the new protocol keeps its own timeouts
    req.server.rt_takeovers.spawn(takeover, sock, leftover)


def _keep_no_more(req: Any, status: str, headers: Iterable[tuple[str, str]]) -> None:
    """Close the connection after this response where cheroot would keep it.

    * a WebSocket upgrade request not answered 101 (refused: 403, 426, 400...): the
      connection serves no more requests, as on the gevent server (see its
      ``_asks_websocket`` for why);
    * a response with ``Connection: close`` from the application (RFC 9110 §7.6.1),
      which cheroot writes as given yet keeps the connection for the next request.

    cheroot then writes ``Connection: close`` itself when the application did not.
    """
    if status[:3] != "101" and b"websocket" in req.inheaders.get(b"Upgrade", b"").lower():
        req.close_connection = True
        return
    for name, value in headers:
        if name.lower() == "connection" and any(t.strip().lower() == "close" for t in value.split(",")):
            req.close_connection = True
            return


def _rt_environ(req: Any, env: dict[str, Any]) -> dict[str, Any]:
    """Add the ``rtserver.*`` keys of the server contract to ``env``."""
    env["rtserver.socket"] = req.conn.socket
    env["rtserver.server"] = req.server.rt_adapter
    return env


# -- the WSGI server (server.kind = 'cheroot') ------------------------------------------


class _WSGIGateway(_cheroot_wsgi.Gateway_10):
    """cheroot's WSGI 1.0 gateway plus the rtserver environ keys and upgrades."""

    def get_environ(self) -> dict[str, Any]:  # type: ignore[override]
        return _rt_environ(self.req, super().get_environ())

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        write = super().start_response(status, headers, exc_info)
        _keep_no_more(self.req, status, headers)
        return write

    def respond(self) -> None:
        req = self.req
        result = req.server.wsgi_app(self.env, self.start_response)
        try:
            takeover = self.env.get("rtserver.upgrade")
            if takeover is not None and req.status[:3] == b"101" and not req.sent_headers:
                for _chunk in result:
                    pass  # the contract says empty
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in req.outheaders]
                _take_over(req, req.status.decode("latin-1"), headers, takeover)
                return
            for chunk in result:
                if chunk:
                    if not isinstance(chunk, bytes):
                        raise ValueError("WSGI applications must yield bytes")
                    self.write(chunk)
        finally:
            if not req.sent_headers:
                req.ensure_headers_sent()
            close = getattr(result, "close", None)
            if close is not None:
                close()


class _ServerMixin:
    """What both cheroot kinds add to cheroot's HTTPServer: a pre-bound socket, and
    the error of a failed bind kept (cheroot's own ``prepare`` drops its errno)."""

    rt_listener: socket.socket | None = None
    rt_bind_error: OSError | None = None

    def bind(self, family: int, type: int, proto: int = 0) -> Any:
        try:
            return super().bind(family, type, proto)  # type: ignore[misc]
        except OSError as exc:
            self.rt_bind_error = exc
            raise

    def prepare(self) -> None:
        listener = self.rt_listener
        if listener is None:
            super().prepare()  # type: ignore[misc]
            return
        # A socket bound by a parent process (``rtserver run --workers N``). Several
        # processes accept on it: non-blocking, so one that loses the race moves on.
        s: Any = self
        s._interrupt = None
        if s.software is None:
            s.software = f"{s.version} Server"
        s.socket = listener
        s.bind_addr = listener.getsockname()
        listener.settimeout(0)
        if s.nodelay and listener.family in (socket.AF_INET, socket.AF_INET6):
            # cheroot sets TCP_NODELAY on a socket it binds itself (accepted sockets
            # inherit it); without it keep-alive responses stall 40 ms (Nagle +
            # delayed ACK): about 1,100 requests/s instead of 9,000.
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s._connections = ConnectionManager(self)
        s.requests.start()
        s.ready = True
        s._start_time = time.time()


class _WSGIServer(_ServerMixin, _cheroot_wsgi.Server):
    pass


# -- the native server (server.kind = 'native') -----------------------------------------


def _native_environ(req: Any) -> dict[str, Any]:
    """The request as a minimal environ dict (``Request`` reads it; no WSGI call)."""
    conn = req.conn
    server = req.server
    env: dict[str, Any] = {
        "REQUEST_METHOD": req.method.decode("latin-1"),
        "SCRIPT_NAME": "",
        "PATH_INFO": req.path.decode("latin-1"),
        "QUERY_STRING": req.qs.decode("latin-1"),
        "REQUEST_URI": req.uri.decode("latin-1"),
        "SERVER_PROTOCOL": req.request_protocol.decode("latin-1"),
        "SERVER_NAME": server.server_name,
        "SERVER_PORT": "" if isinstance(server.bind_addr, str) else str(server.bind_addr[1]),
        "REMOTE_ADDR": conn.remote_addr or "",
        "REMOTE_PORT": str(conn.remote_port or ""),
        "wsgi.url_scheme": req.scheme.decode("latin-1"),
        "wsgi.input": req.rfile,
        "wsgi.errors": sys.stderr,
    }
    for name, value in req.inheaders.items():
        key = name.decode("latin-1").upper().replace("-", "_")
        if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
            env[key] = value.decode("latin-1")
        else:
            env["HTTP_" + key] = value.decode("latin-1")
    if conn.ssl_env:
        env.update(conn.ssl_env)
    return _rt_environ(req, env)


class _NativeGateway(_cheroot_server.Gateway):
    """Calls the tree's :class:`~rtserver.Application` objects directly, without WSGI."""

    def respond(self) -> None:
        from ..web.app import Application, Tree

        req = self.req
        env = _native_environ(req)
        target = req.server.rt_app
        app: Any = target
        if isinstance(target, Tree):
            path = env["PATH_INFO"]
            name = target.script_name(path)
            if name is None:
                self._send(
                    "404 Not Found",
                    [("Content-Type", "text/plain;charset=utf-8")],
                    [b"Nothing is mounted at this path."],
                )
                return
            app = target.apps[name]
            env["SCRIPT_NAME"] = name
            env["PATH_INFO"] = path[len(name) :]
        if not isinstance(app, Application):
            log.error(
                "%s: %r at %r answers 500 (use server.kind 'gevent' or 'cheroot')",
                _NATIVE_FOREIGN,
                getattr(app, "wsgi_app", app),
                env["SCRIPT_NAME"] or "/",
            )
            page = b"500 Internal Server Error"
            self._send(
                "500 Internal Server Error",
                [("Content-Type", "text/plain"), ("Content-Length", str(len(page)))],
                [page],
            )
            return
        status, headers, body = app.handle(env)
        takeover = env.get("rtserver.upgrade")
        if takeover is not None and status[:3] == "101":
            _close_body(body)
            _take_over(req, status, headers, takeover)
            return
        if env["REQUEST_METHOD"] == "HEAD":
            _close_body(body)
            body = ()
        self._send(status, headers, body)

    def _send(self, status: str, headers: list[tuple[str, str]], body: Iterable[bytes]) -> None:
        req = self.req
        req.status = status.encode("latin-1")
        outheaders = req.outheaders = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        _keep_no_more(req, status, headers)
        try:
            if type(body) is list or type(body) is tuple:
                # A buffered body: the head and the body go out in one write
                # (cheroot's two writes cost a second send per request).
                data = b"".join(body)
                if not any(name.lower() == b"date" for name, _ in outheaders):
                    outheaders.append((b"Date", date_header()[6:-2]))  # cached per second
                conn = req.conn
                wfile = conn.wfile
                head = _HeadCapture()
                conn.wfile = head
                try:
                    req.sent_headers = True
                    req.send_headers()  # cheroot's framing and persistence rules
                finally:
                    conn.wfile = wfile
                if data and req.chunked_write:
                    data = b"%x\r\n%b\r\n" % (len(data), data)
                wfile.write(head.data + data)
                return
            for chunk in body:
                if chunk:
                    req.ensure_headers_sent()
                    req.write(chunk)
        except OSError as exc:  # the client went away (wrk closing its connections)
            log.debug("Client gone while sending the response: %s", exc)
            req.close_connection = True
        except Exception:
            log.error("Error while sending the response body", exc_info=True)
            if not req.sent_headers:
                req.status = b"500 Internal Server Error"
                req.outheaders = [(b"Content-Type", b"text/plain"), (b"Content-Length", b"25")]
                req.ensure_headers_sent()
                req.write(b"500 Internal Server Error")
            else:
                req.close_connection = True
        finally:
            _close_body(body)
        if not req.sent_headers:
            try:
                req.ensure_headers_sent()
            except OSError as exc:
                log.debug("Client gone while sending the response: %s", exc)
                req.close_connection = True


class _HeadCapture:
    """Stands in for ``conn.wfile`` while cheroot's ``send_headers`` builds the head."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


def _close_body(body: Any) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.error("Error closing a response body", exc_info=True)


class _NativeHTTPServer(_ServerMixin, _cheroot_server.HTTPServer):
    rt_app: Any = None  # what the gateway serves: the tree, or one Application


# -- the adapters the Server plugin runs -----------------------------------------------


class _CherootBase:
    """Start/stop around a cheroot HTTPServer configured from the Server adapter."""

    #: Worker threads (greenlets under gevent) serving connections.
    numthreads = 10

    def __init__(self, server_adapter: Any) -> None:
        self.server_adapter = server_adapter
        self.httpserver: Any = None
        self._thread: threading.Thread | None = None
        self._takeovers = _Takeovers()
        self._unix_path: str | None = None

    def _make(self, bind: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def start(self) -> None:
        """Bind and serve in a thread of its own; returns once listening."""
        if self.httpserver is not None:
            raise RuntimeError("server already started")
        adapter = self.server_adapter
        options = adapter.http_options()
        listener = getattr(adapter, "listener", None)
        bind = adapter.bind_addr if listener is None else ("0.0.0.0", 0)
        server = self._make(bind)
        server.rt_adapter = adapter
        server.rt_takeovers = self._takeovers
        server.rt_listener = listener
        server.timeout = options.header_timeout
        server.request_queue_size = options.backlog
        server.max_request_header_size = options.max_header_size
        server.max_request_body_size = options.max_request_body_size
        server.nodelay = options.nodelay
        server.reuse_port = options.reuse_port
        server.shutdown_timeout = adapter.shutdown_timeout
        server.keep_alive_conn_limit = None
        # The selector loop notices stop() (and expired connections) this often;
        # cheroot's 0.5 s makes every stop take half a second.
        server.expiration_interval = 0.1
        tls = adapter.ssl_context()
        if tls is not None:
            from cheroot.ssl.builtin import BuiltinSSLAdapter

            ssl_adapter = BuiltinSSLAdapter(adapter.ssl_certificate, adapter.ssl_private_key)
            # Ours: TLS 1.2+, and the chain file sent after the certificate (cheroot
            # would read it as the CA file of client certificates).
            ssl_adapter.context = tls
            server.ssl_adapter = ssl_adapter
        try:
            server.prepare()
        except OSError as exc:
            # cheroot says "No socket could be created -- (...)": raise the bind's own
            # error instead, whose errno says why (Server.start words it for the user).
            cause = server.rt_bind_error or exc.__cause__
            raise (cause if isinstance(cause, OSError) else exc) from None
        self.httpserver = server
        if isinstance(bind, str):
            self._unix_path = bind
        self._thread = threading.Thread(target=self._serve, name=f"rtserver-{type(self).__name__}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self.httpserver.serve()
        except Exception:
            log.error("%s stopped on an error", type(self).__name__, exc_info=True)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish (``timeout``), close the rest."""
        server = self.httpserver
        if server is None:
            return
        self.httpserver = None
        server.shutdown_timeout = timeout
        server.stop()
        if self._thread is not None:
            self._thread.join(timeout + 1)
            self._thread = None
        self._takeovers.stop(timeout)
        if self._unix_path is not None:
            try:
                if stat.S_ISSOCK(os.stat(self._unix_path).st_mode):
                    os.unlink(self._unix_path)
            except OSError:
                pass
            self._unix_path = None

    @property
    def bound_address(self) -> tuple[str, int] | str:
        """The address actually listened on: ``(host, port)`` or a Unix socket path."""
        server = self.httpserver
        if server is None:
            raise RuntimeError("server not started")
        addr = server.bind_addr
        if isinstance(addr, (str, bytes)):
            return addr.decode() if isinstance(addr, bytes) else addr
        return addr[0], addr[1]


class CherootServer(_CherootBase):
    """cheroot's WSGI server running ``server_adapter.wsgi_app()`` (the tree).

    ``server_adapter`` is a :class:`rtserver.Server`: its address (or ``socket_file``),
    TLS files, pre-bound ``listener`` and ``server.*`` limits are used.
    """

    def _make(self, bind: Any) -> Any:
        server = _WSGIServer(bind, self.server_adapter.wsgi_app(), numthreads=self.numthreads)
        server.gateway = _WSGIGateway
        return server


class NativeServer(_CherootBase):
    """cheroot's HTTP server calling the tree's applications directly (no WSGI).

    ``rtserver.server.httpserver = rtserver.servers.NativeServer(rtserver.server)``
    """

    def _make(self, bind: Any) -> Any:
        server = _NativeHTTPServer(bind, _NativeGateway, minthreads=self.numthreads)
        server.rt_app = self.server_adapter.wsgi_app()
        return server
