"""The Server plugin: an HTTP server that follows the engine's life cycle.

``rtserver.server`` is the default one (127.0.0.1:8080). More can be added, as the guide
shows: ``s = rtserver.Server(); s.socket_port = 8090; s.subscribe()``, or with config
keys ``server.NAME.socket_port``. Every server serves the whole tree, pages and sockets.
Which HTTP implementation runs is ``httpserver`` (default: our gevent connection
server); set it to ``rtserver.servers.NativeServer(server)`` or a CherootServer.

A server that cannot listen (a port in use, an address not of this machine, a Unix
socket in a missing directory) or load its TLS files raises :class:`StartupError` from
:meth:`Server.start`: one line naming the address, the config key and what to do, which
the engine logs without a traceback before the process exits with status 70.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
import stat
from typing import Any

from ..config import declare, optional_string, port, positive, string
from ..errors import ConfigError, StartupError
from .options import HTTPOptions

__all__ = ["Server", "listen_error", "ssl_context_from"]

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


def _shown(addr: tuple[str, int] | str) -> str:
    if isinstance(addr, str):
        return addr
    host, port_ = addr[0], addr[1]
    return f"[{host}]:{port_}" if ":" in host else f"{host}:{port_}"


def listen_error(exc: OSError, addr: tuple[str, int] | str, prefix: str = "server.") -> StartupError:
    """The one line saying why binding ``addr`` failed with ``exc`` and what to do.

    ``addr`` is ``(host, port)`` or a Unix socket path; ``prefix`` is the config
    prefix of the server's keys (``server.`` or ``server.NAME.``), named in the line.
    """
    where = f"cannot listen on {_shown(addr)}"
    code = exc.errno
    if isinstance(exc, socket.gaierror):
        return StartupError(
            f"{where}: cannot resolve the host name ({prefix}socket_host); "
            "use an IP address, or a name this machine resolves"
        )
    if isinstance(addr, str):
        key = f"{prefix}socket_file"
        directory = os.path.dirname(os.path.abspath(addr))
        if code in (errno.ENOENT, errno.ENOTDIR):
            return StartupError(
                f"{where}: directory {directory} does not exist ({key}); create it or choose another path"
            )
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            return StartupError(f"{where}: permission denied ({key}); choose a directory this user can write to")
        if code == errno.EADDRINUSE:
            try:
                is_socket = stat.S_ISSOCK(os.stat(addr).st_mode)
            except OSError:
                is_socket = True
            if is_socket:
                return StartupError(
                    f"{where}: another server is listening on this socket ({key}); stop it or choose another path"
                )
            return StartupError(
                f"{where}: a file that is not a socket is in the way ({key}); remove it or choose another path"
            )
        return StartupError(f"{where}: {exc.strerror or exc} ({key})")
    if code == errno.EADDRINUSE:
        return StartupError(
            f"{where}: address already in use ({prefix}socket_port); stop the other process or choose another port"
        )
    if code == errno.EADDRNOTAVAIL:
        return StartupError(
            f"{where}: the address is not one of this machine's ({prefix}socket_host); "
            "use 127.0.0.1, 0.0.0.0 (every interface) or an address of this machine"
        )
    if code in (errno.EACCES, errno.EPERM):
        return StartupError(
            f"{where}: permission denied ({prefix}socket_port); ports below 1024 need privileges: choose a port above 1023"
        )
    if code == errno.EAFNOSUPPORT:
        return StartupError(
            f"{where}: this machine does not support that address family ({prefix}socket_host); use an IPv4 address"
        )
    return StartupError(f"{where}: {exc.strerror or exc} ({prefix}socket_host, {prefix}socket_port)")


def _tls_reason(exc: OSError, files: list[str]) -> str:
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        return f"{missing[0]} does not exist"
    if isinstance(exc, ssl.SSLError):  # KEY_VALUES_MISMATCH, NO_START_LINE (not PEM)...
        return str(exc.reason or exc).lower().replace("_", " ")
    return str(exc.strerror or exc)


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

    @property
    def config_prefix(self) -> str:
        """The prefix of this server's config keys: ``server.`` for ``rtserver.server``,
        ``server.NAME.`` for an extra server made by ``server.NAME.*`` keys, and
        ``Server.`` (its attributes) for one made in code."""
        from .. import runtime

        if self is runtime.server:
            return "server."
        for name, extra in runtime.servers.items():
            if extra is self:
                return f"server.{name}."
        return "Server."

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
        """The TLS context when a certificate and key are configured.

        Raises :class:`ConfigError` when only one of them is set, and
        :class:`StartupError` naming the files when they cannot be loaded.
        """
        p = self.config_prefix
        if self.ssl_certificate and self.ssl_private_key:
            try:
                return ssl_context_from(self.ssl_certificate, self.ssl_private_key, self.ssl_certificate_chain)
            except OSError as exc:  # a missing file; ssl.SSLError: not PEM, key mismatch
                files = [self.ssl_certificate, self.ssl_private_key]
                keys = f"{p}ssl_certificate, {p}ssl_private_key"
                if self.ssl_certificate_chain:
                    files.append(self.ssl_certificate_chain)
                    keys += f", {p}ssl_certificate_chain"
                raise StartupError(
                    f"cannot load the TLS certificate {self.ssl_certificate} with the key {self.ssl_private_key} "
                    f"({keys}): {_tls_reason(exc, files)}; check the paths and that the key belongs to the certificate"
                ) from None
        if self.ssl_certificate or self.ssl_private_key:
            raise ConfigError(f"{p}ssl_certificate and {p}ssl_private_key must be set together")
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
        raise ConfigError(f"{self.config_prefix}kind = {self.kind!r}: expected 'gevent', 'cheroot' or 'native'")

    def start(self) -> None:
        """Bind and start serving (returns once listening).

        Raises :class:`StartupError` (see :func:`listen_error`) when the address
        cannot be listened on; nothing is left open then.
        """
        if self.running:
            return
        if self.httpserver is None:
            self.httpserver = self._make_httpserver()
            self._made_httpserver = True
        try:
            self.httpserver.start()
        except OSError as exc:
            if self._made_httpserver:
                self.httpserver = None
                self._made_httpserver = False
            raise listen_error(exc, self.bind_addr, self.config_prefix) from None
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
