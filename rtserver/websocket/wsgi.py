"""The upgrade side of the server contract (docs/internals.md §1) as a WSGI app."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import HandshakeError, status_line
from .connection import Registry, runtime_class, serve
from .handshake import negotiate_environ
from .options import WebSocketOptions

__all__ = ["websocket_app"]

log = logging.getLogger("rtserver.websocket")


def _plain(
    start_response: Callable[..., Any], status: int, text: str, headers: Iterable[tuple[str, str]] = ()
) -> list[bytes]:
    body = (text + "\n").encode("utf-8")
    start_response(
        status_line(status)[1],
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *headers,
        ],
    )
    return [body]


def websocket_app(
    handler_cls: type,
    options: WebSocketOptions | None = None,
    *,
    registry: Registry | None = None,
) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """A WSGI app upgrading every request to a ``handler_cls`` WebSocket.

    A refused handshake is answered with its status (400/403/405/426) and a short
    text body, never a 500. On success it answers 101 and sets
    ``environ['rtserver.upgrade']``; the server then calls the takeover.
    """
    opts = options or WebSocketOptions()
    runtime_class(handler_cls)  # fail at set-up, not at the first connection

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            handshake = negotiate_environ(environ, opts)
        except HandshakeError as exc:
            return _plain(start_response, exc.status, exc.reason, exc.headers)
        if environ.get("rtserver.socket") is None:
            log.error(
                "WebSocket upgrade of %s refused: this server cannot take connections "
                "over (no 'rtserver.socket' in the WSGI environ); run rtserver's server",
                environ.get("PATH_INFO", "?"),
            )
            return _plain(start_response, 501, "WebSocket not supported by this server")

        def takeover(sock: Any, leftover: bytes) -> None:
            serve(sock, leftover, handler_cls, handshake, environ, opts, registry=registry)

        environ["rtserver.upgrade"] = takeover
        start_response("101 Switching Protocols", handshake.response_headers)
        return []

    return app
