"""``rtserver.WebSocket``: ws4py's handler with the handshake's request at hand."""

from __future__ import annotations

import http.cookies
import json
import urllib.parse
from typing import Any

from websockets.datastructures import Headers
from ws4py.websocket import WebSocket as _Ws4pyWebSocket

from ..web.httputil import cookie_jar
from .hub import HubClientMixin
from .plugin import SESSION_ENDED_CODE

__all__ = ["WebSocket"]


class WebSocket(HubClientMixin, _Ws4pyWebSocket):
    """A ws4py WebSocket handler with conveniences; one instance per connection.

    Override ``opened()``, ``received_message(message)``, ``closed(code, reason)``
    (and ``ponged(pong)``, ``unhandled_error(error)``); call ``send()``, ``send_json()``,
    ``close()``. Callbacks of one connection run one at a time in its greenlet;
    ``send()`` is safe from any greenlet and never blocks a broadcaster.

    Example::

        import rtserver
        from rtserver.websocket.wsgi import websocket_app
        from rtserver.websocket.options import WebSocketOptions

        class Chat(rtserver.WebSocket):
            def opened(self):
                self.send_json({"hello": self.query_params.get("name", "stranger")})

            def received_message(self, message):
                self.send_json({"echo": str(message)})

        app = websocket_app(Chat, WebSocketOptions(protocols=("chat.v1",)))

    Security: browsers let any page open a WebSocket to any site and send that
    site's cookies along. The upgrade therefore refuses a cross-site ``Origin`` by
    default (``tools.websocket.allowed_origins`` lists exceptions, ``'*'`` turns
    the check off); never trust ``cookies`` or ``session`` on a socket where you
    turned it off. Messages are limited to ``tools.websocket.max_message_size``
    (1 MiB); validate what you receive, it is client-controlled.
    """

    #: The session of the page that opened the socket (set by the session tool). Each
    #: read reloads what pages saved since; once the session ended (logout, expiry,
    #: ``regenerate()``) it reads as empty and ``save()`` / ``locked()`` raise
    #: :class:`~rtserver.errors.SessionEnded`, and :meth:`session_ended` is called.
    session: Any = None

    def session_ended(self, reason: str) -> None:
        """The session this socket was opened with ended; called once, in a greenlet of
        its own, within a second (two across processes sharing Redis).

        ``reason`` is ``'logout'`` (``session.delete()``, ``tools.sessions.expire()``),
        ``'expired'`` or ``'regenerated'`` (a page gave the session a new id: the page
        keeps the user, but this socket's cookie is dead, so it is told like a logout).
        The default closes the socket with 4401 "session ended", which rtserver.js
        turns into a "signed-out" event without reconnecting. Override it to do
        something else (e.g. keep the socket as an anonymous one). A member leaves
        presence when its socket closes.
        """
        self.close(SESSION_ENDED_CODE, "session ended")

    @property
    def _handshake(self) -> Any:
        conn = getattr(self, "_rt_conn", None)
        return conn.handshake if conn is not None else None

    @property
    def request_headers(self) -> Headers:
        """Headers of the upgrade request (case-insensitive, ``get_all`` for repeats)."""
        hs = self._handshake
        if hs is not None:
            return hs.request_headers
        environ = self.environ or {}
        return Headers((k[5:].replace("_", "-"), v) for k, v in environ.items() if k.startswith("HTTP_"))

    @property
    def cookies(self) -> http.cookies.SimpleCookie:
        """Cookies sent with the upgrade request."""
        # Every well-formed pair, even beside malformed ones (the pages' parser).
        return cookie_jar("; ".join(self.request_headers.get_all("Cookie")))

    @property
    def path(self) -> str:
        """The request path (SCRIPT_NAME + PATH_INFO)."""
        environ = self.environ or {}
        return str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))

    @property
    def query_params(self) -> dict[str, Any]:
        """Query string parameters; a repeated name maps to a list (CherryPy's habit)."""
        environ = self.environ or {}
        params: dict[str, Any] = {}
        for name, value in urllib.parse.parse_qsl(str(environ.get("QUERY_STRING", "")), keep_blank_values=True):
            if name in params:
                old = params[name]
                params[name] = [*old, value] if isinstance(old, list) else [old, value]
            else:
                params[name] = value
        return params

    @property
    def remote(self) -> tuple[str, int]:
        """``(host, port)`` of the peer."""
        environ = self.environ or {}
        if environ.get("REMOTE_ADDR"):
            try:
                port = int(environ.get("REMOTE_PORT") or 0)
            except ValueError:
                port = 0
            return str(environ["REMOTE_ADDR"]), port
        host, port = self.peer_address[:2]
        return str(host), int(port)

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol, or None."""
        return self.protocols[0] if self.protocols else None

    def send_json(self, obj: Any) -> Any:
        """Send ``obj`` as a compact JSON text message."""
        return self.send(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))
