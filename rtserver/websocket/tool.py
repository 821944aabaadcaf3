"""``tools.websocket``: the upgrade of a page-tree path into a ws4py handler.

Two ways to mount a WebSocket endpoint, both on the page tree's port:

* ws4py/CherryPy style — config on a path with an exposed handler::

      [/ws]
      tools.websocket.on = True
      tools.websocket.handler_cls = ChatSocket

  the exposed handler runs during the handshake with the new handler instance as
  ``rtserver.request.ws_handler``;

* direct — attach the class to the tree (``root.chat = ChatSocket``) or decorate an
  exposed method with ``@rtserver.websocket(ChatSocket, protocols=['chat.v1'])``.

A refused handshake is answered 400 (malformed), 403 (cross-site origin), 426 (version)
or 503 (server stopping) — never 500 — and every server kind then closes the
connection (``Connection: close``, see :mod:`rtserver.servers.gevent`). The response
timeout and the timeout monitor cover the handshake request only, never the life of
the socket.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import HandshakeError, HTTPError
from ..web.builtin_tools import tools
from ..web.context import current_request, current_response
from ..web.tools import Tool
from .connection import create_handler, run_handler
from .handshake import negotiate_environ
from .options import WebSocketOptions, from_config

__all__ = ["upgrade", "websocket"]

log = logging.getLogger("rtserver.websocket")

_OPTIONS_CACHE: OrderedDict[int, tuple[dict[str, Any], WebSocketOptions]] = OrderedDict()


def _options(config: dict[str, Any]) -> WebSocketOptions:
    # The merged config of a path is cached by the application, so the same dict
    # object comes back for every handshake on that path: build the options once.
    cached = _OPTIONS_CACHE.get(id(config))
    if cached is not None and cached[0] is config:
        return cached[1]
    options = from_config(config)
    _OPTIONS_CACHE[id(config)] = (config, options)
    if len(_OPTIONS_CACHE) > 512:
        _OPTIONS_CACHE.popitem(last=False)
    return options


def upgrade(**_args: Any) -> None:
    """Upgrade the request to a WebSocket served by ``tools.websocket.handler_cls``.

    Runs at ``before_handler`` (priority 60, after the session tool); the exposed
    handler, if any, then runs with ``rtserver.request.ws_handler`` set.
    """
    from . import registry_plugin

    request = current_request()
    response = current_response()
    options = _options(request.config)
    if options.handler_cls is None:
        log.error("tools.websocket.on at %s without tools.websocket.handler_cls", request.path_info)
        raise HTTPError(500)
    environ = request.wsgi_environ
    plugin = registry_plugin()
    try:
        handshake = negotiate_environ(environ, options)
    except HandshakeError as exc:
        plugin.handshake_failures[exc.status, exc.reason] += 1
        for name, value in exc.headers:
            response.headers[name] = value
        raise HTTPError(exc.status, exc.reason) from None
    if plugin.stopping:
        plugin.handshake_failures[503, "server stopping"] += 1
        response.headers["Retry-After"] = "5"
        raise HTTPError(503, "The server is shutting down.")
    sock = environ.get("rtserver.socket")
    if sock is None:
        log.error(
            "WebSocket upgrade of %s refused: this server cannot take connections over "
            "(no 'rtserver.socket' in the WSGI environ); run one of rtserver's servers",
            request.path_info,
        )
        raise HTTPError(501, "WebSocket is not supported by this server.")
    handler = create_handler(sock, options.handler_cls, handshake, environ, options)
    session = getattr(request, "session", None)
    if session is not None:
        from ..web.sessions import Session, load_session_for_handshake

        if isinstance(session, Session):
            handler.session = load_session_for_handshake(request)
    request.ws_handler = handler

    def takeover(raw_sock: Any, leftover: bytes) -> None:
        run_handler(handler, leftover, registry=plugin)

    environ["rtserver.upgrade"] = takeover
    response.status = 101
    response.headers.clear()
    for name, value in handshake.response_headers:
        response.headers[name] = value


upgrade.priority = 60  # type: ignore[attr-defined]


def _complete() -> None:
    """After the exposed handler: keep the 101 whatever the handler returned."""
    request = current_request()
    if request.ws_handler is None:
        return
    response = current_response()
    response.body = None
    for name in ("Content-Type", "Content-Length", "Transfer-Encoding"):
        response.headers.pop(name, None)


class _WebSocketTool(Tool):
    """The upgrade at before_handler plus a clean 101 at before_finalize."""

    def setup(self, hooks: Any, conf: dict[str, Any]) -> None:
        priority = conf.get("priority", self._priority)
        hooks.attach("before_handler", upgrade, priority=priority)
        hooks.attach("before_finalize", _complete, priority=10)

    def check_args(self, args: dict[str, Any], where: str = "") -> None:
        from ..config import check_key

        for arg, value in args.items():
            if arg not in ("on", "priority"):
                check_key(f"tools.websocket.{arg}", value, where)


tools.websocket = _WebSocketTool("before_handler", upgrade, priority=60)


def websocket(handler_cls: type, protocols: Sequence[str] | None = None, **options: Any) -> Callable[[Any], Any]:
    """Make an exposed method a WebSocket endpoint served by ``handler_cls``.

    ``@rtserver.websocket(ChatSocket, protocols=['chat.v1'])`` is the same as the
    config ``tools.websocket.on``, ``tools.websocket.handler_cls`` and
    ``tools.websocket.protocols`` on that path. Other keyword arguments are
    ``tools.websocket.*`` options (``max_message_size=...``).
    """
    if protocols is not None:
        options["protocols"] = list(protocols)
    # Check now, at import time, rather than at the first handshake.
    from_config({f"tools.websocket.{k}": v for k, v in {**options, "handler_cls": handler_cls}.items()})
    return tools.websocket(handler_cls=handler_cls, **options)
