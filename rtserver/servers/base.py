"""The Server plugin: an HTTP server that follows the engine's life cycle.

``rtserver.server`` is the default one (127.0.0.1:8080). More can be added, as the guide
shows: ``s = rtserver.Server(); s.socket_port = 8090; s.subscribe()``, or with config
keys ``server.NAME.socket_port``. Every server serves the whole tree, pages and sockets.
Which HTTP implementation runs is ``httpserver`` (default: our gevent connection
server); set it to ``rtserver.servers.NativeServer(server)`` or a CherootServer.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from typing import Any

from ..config import declare, optional_string, port, positive, string
from .options import HTTPOptions

__all__ = ["Server", "ssl_context_from"]

log = logging.getLogger("rtserver.error")

declare(
    "server.socket_host",
    "127.0.0.1",
    "Address to listen on ('0.0.0.0' or '::' for every interface).",
    string,
    scope="server",
)
declare("server.socket_port", 8080, "TCP port to listen on (0 picks a free one).", port, scope="server")
declare(
    "server.socket_file",
    None,
    "Path of a Unix domain socket to listen on instead of TCP.",
    optional_string,
    scope="server",
)
declare(
    "server.ssl_certificate",
    None,
    "PEM certificate file: serve https and wss when set with ssl_private_key.",
    optional_string,
    scope="server",
)
declare("server.ssl_private_key", None, "PEM private key file of ssl_certificate.", optional_string, scope="server")
declare(
    "server.ssl_certificate_chain",
    None,
    "PEM file of intermediate certificates sent after ssl_certificate.",
    optional_string,
    scope="server",
)
declare(
    "server.shutdown_timeout", 5, "Seconds a stopping server waits for requests in flight.", positive, scope="server"
)
declare(
    "server.kind",
    "gevent",
    "Which HTTP server runs: 'gevent' (default), 'cheroot' (WSGI, threads) or 'native' (cheroot without WSGI).",
    string,
    scope="server",
)

_ADAPTER_ATTRS = {
    "socket_host",
    "socket_port",
    "socket_file",
    "ssl_certificate",
    "ssl_private_key",
    "ssl_certificate_chain",
    "shutdown_timeout",
    "kind",
}


def ssl_context_from(certificate: str, private_key: str, chain: str | None = None) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+, the system's default ciphers)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if chain:
        # load_cert_chain takes the leaf then intermediates in one file; join them.
        import tempfile

        with open(certificate, "rb") as a, open(chain, "rb") as b:
            data = a.read().rstrip(b"\n") + b"\n" + b.read()
        with tempfile.NamedTemporaryFile(delete=False, suffix=".pem") as tmp:
            tmp.write(data)
        try:
            ctx.load_cert_chain(tmp.name, private_key)
        finally:
            os.unlink(tmp.name)
    else:
        ctx.load_cert_chain(certificate, private_key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Server:
    """An HTTP server bus plugin (``subscribe()`` to follow the engine)."""

    def __init__(self, engine: Any = None, app: Any = None) -> None:
        from ..config import default

        self._engine = engine
        self.app = app
        self.socket_host: str = default("server.socket_host")
        self.socket_port: int = default("server.socket_port")
        self.socket_file: str | None = None
        self.ssl_certificate: str | None = None
        self.ssl_private_key: str | None = None
        self.ssl_certificate_chain: str | None = None
        self.shutdown_timeout: float = default("server.shutdown_timeout")
        self.kind: str = "gevent"
        self.options: dict[str, Any] = {}  # other server.* keys (HTTP limits)
        self.httpserver: Any = None
        self.listener: socket.socket | None = None  # a pre-bound socket (workers)
        self._made_httpserver = False
        self.running = False

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from ..runtime import engine

            self._engine = engine
        return self._engine

    @property
    def bind_addr(self) -> tuple[str, int] | str:
        """``(host, port)`` or the Unix socket path."""
        if self.socket_file:
            return self.socket_file
        return (self.socket_host, self.socket_port)

    @property
    def bound_address(self) -> tuple[str, int] | str | None:
        """Where the running server actually listens (port resolved when 0)."""
        if self.httpserver is None:
            return None
        return getattr(self.httpserver, "bound_address", self.bind_addr)

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        addr = self.bound_address
        scheme = "https" if self.ssl_certificate else "http"
        if isinstance(addr, tuple):
            host = addr[0]
            if ":" in host:
                host = f"[{host}]"
            return f"{scheme}://{host}:{addr[1]}"
        return f"{scheme}+unix://{addr}"

    def configure(self, values: dict[str, Any]) -> None:
        """Apply ``server.*`` keys (without the prefix)."""
        for key, value in values.items():
            if key in _ADAPTER_ATTRS:
                setattr(self, key, value)
            else:
                self.options[key] = value

    def subscribe(self) -> None:
        """Follow the engine: start with it, stop with it."""
        self.engine.subscribe("start", self.start)
        self.engine.subscribe("stop", self.stop_accepting)
        self.engine.subscribe("stop", self.stop)
        self.engine.subscribe("graceful", self.graceful)

    def unsubscribe(self) -> None:
        """Stop following the engine."""
        self.engine.unsubscribe("start", self.start)
        self.engine.unsubscribe("stop", self.stop_accepting)
        self.engine.unsubscribe("stop", self.stop)
        self.engine.unsubscribe("graceful", self.graceful)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context when a certificate and key are configured."""
        if self.ssl_certificate and self.ssl_private_key:
            return ssl_context_from(self.ssl_certificate, self.ssl_private_key, self.ssl_certificate_chain)
        if self.ssl_certificate or self.ssl_private_key:
            from ..errors import ConfigError

            raise ConfigError("server.ssl_certificate and server.ssl_private_key must be set together")
        return None

    def http_options(self) -> Any:
        """The HTTP limits (``server.*`` keys) for the connection server."""
        return HTTPOptions.from_config(self.options)

    def wsgi_app(self) -> Any:
        """The application served: the tree unless one was given."""
        if self.app is not None:
            return self.app
        from ..runtime import tree

        return tree

    def _make_httpserver(self) -> Any:
        if self.kind == "gevent":
            from .gevent import GeventHTTPServer

            bind: Any = self.listener if self.listener is not None else self.bind_addr
            return GeventHTTPServer(
                self.wsgi_app(),
                bind,
                options=self.http_options(),
                ssl_context=self.ssl_context(),
                server_adapter=self,
                log=log,
            )
        if self.kind in ("cheroot", "native"):
            from . import cheroot as _cheroot

            cls = _cheroot.CherootServer if self.kind == "cheroot" else _cheroot.NativeServer
            return cls(self)
        from ..errors import ConfigError

        raise ConfigError(f"server.kind = {self.kind!r}: expected 'gevent', 'cheroot' or 'native'")

    def start(self) -> None:
        """Bind and start serving (returns once listening)."""
        if self.running:
            return
        if self.httpserver is None:
            self.httpserver = self._make_httpserver()
            self._made_httpserver = True
        self.httpserver.start()
        self.running = True
        self.engine.log(f"Serving on {self.base_url}")

    start.priority = 75  # type: ignore[attr-defined]  # after plugins the app needs

    def stop_accepting(self) -> None:
        """Close the listening socket first when the engine stops: while open
        WebSockets get their 1001 (priority 20), new connections are refused and
        requests in flight go on; :meth:`stop` then waits for them.
        """
        if self.running and self.httpserver is not None:
            close = getattr(self.httpserver, "stop_accepting", None)
            if close is not None:  # the gevent server (cheroot stops in one step)
                close()

    stop_accepting.priority = 10  # type: ignore[attr-defined]  # before the sockets' drain (20)

    def stop(self) -> None:
        """Stop accepting, let requests in flight finish (``shutdown_timeout``)."""
        if not self.running:
            return
        self.running = False
        server = self.httpserver
        where = self.bound_address or self.bind_addr
        if self._made_httpserver:
            # Ours: make a fresh one at the next start. One set by the user is kept.
            self.httpserver = None
            self._made_httpserver = False
        if server is not None:
            server.stop(self.shutdown_timeout)
        self.engine.log(f"Stopped serving on {where}")

    stop.priority = 25  # type: ignore[attr-defined]  # before sockets and the hub go

    def graceful(self) -> None:
        """Nothing to reload: the listening socket stays open across a graceful."""

    def __repr__(self) -> str:
        return f"<Server {self.kind} {self.bind_addr}>"
