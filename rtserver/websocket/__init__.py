"""WebSocket runtime: ws4py handlers on websockets' sans-IO engine.

``handshake.negotiate`` (pure), ``connection.serve`` (one connection), ``wsgi.websocket_app``
(the upgrade side of the server contract), ``handler.WebSocket`` (``rtserver.WebSocket``),
``tool`` (``tools.websocket``), ``plugin`` (``engine.websocket``), ``hub``.

The package is also the decorator ``@rtserver.websocket(ChatSocket, protocols=[...])``:
calling it calls :func:`rtserver.websocket.tool.websocket`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .options import WebSocketOptions

__all__ = ["WebSocketOptions", "registry_plugin"]


def registry_plugin() -> Any:
    """The process's WebSocket plugin (``rtserver.engine.websocket``)."""
    from ..runtime import engine

    return engine.websocket


class _CallablePackage(types.ModuleType):
    """Lets ``rtserver.websocket`` be both this package and the endpoint decorator."""

    def __call__(self, handler_cls: type, protocols: Any = None, **options: Any) -> Any:
        from .tool import websocket

        return websocket(handler_cls, protocols, **options)


sys.modules[__name__].__class__ = _CallablePackage
