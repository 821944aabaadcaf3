"""rtserver: pages and WebSockets in one gevent process, the CherryPy way.

A CherryPy application ports by writing ``rtserver`` for ``cherrypy``::

    import rtserver

    class Root:
        @rtserver.expose
        def index(self):
            return "Hello world!"

    rtserver.quickstart(Root())
"""

from __future__ import annotations

from typing import Any

from . import errors, websocket
from . import stats as _stats  # noqa: F401 - registers tools.stats
from .bus.bus import Bus
from .bus.plugins import Monitor, PIDFile, SignalHandler, SimplePlugin, TimeoutMonitor
from .errors import (
    ConfigError,
    HTTPError,
    HTTPRedirect,
    InternalRedirect,
    NotFound,
    TimeoutError,
)
from .runtime import config, engine, quickstart, server, servers, tools, tree
from .servers.base import Server
from .web import csrf, sessions  # noqa: F401 - registers tools.sessions and tools.csrf
from .web.app import Application, Tree
from .web.context import Proxy, current_request, current_response
from .web.dispatch import expose
from .web.sessions import session
from .web.tools import HandlerTool, Tool, Toolbox
from .websocket import tool as _websocket_tool  # noqa: F401 - registers tools.websocket
from .websocket.handler import WebSocket
from .websocket.hub import Hub, HubClientMixin, hub

# The hub reaches this process's sockets through the WebSocket plugin.
hub.on_broadcast = engine.websocket.broadcast
engine.websocket.on_closed.append(hub.socket_closed)

__version__ = "0.1.0"

#: The request served by the current greenlet (a proxy).
request: Any = Proxy(current_request)
#: The response of the request served by the current greenlet (a proxy).
response: Any = Proxy(current_response)


def url(path: str = "", qs: str = "") -> str:
    """An absolute URL for ``path`` relative to the current request."""
    return current_request().url(path, qs)


__all__ = [
    "Application",
    "Bus",
    "ConfigError",
    "HTTPError",
    "HTTPRedirect",
    "HandlerTool",
    "Hub",
    "HubClientMixin",
    "InternalRedirect",
    "Monitor",
    "NotFound",
    "PIDFile",
    "Proxy",
    "Server",
    "SignalHandler",
    "SimplePlugin",
    "TimeoutError",
    "TimeoutMonitor",
    "Tool",
    "Toolbox",
    "Tree",
    "WebSocket",
    "__version__",
    "config",
    "engine",
    "errors",
    "expose",
    "hub",
    "quickstart",
    "request",
    "response",
    "server",
    "servers",
    "session",
    "tools",
    "tree",
    "url",
    "websocket",
]
