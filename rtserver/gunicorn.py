"""A gunicorn worker running rtserver applications, WebSockets included.

::

    gunicorn -k rtserver.gunicorn.Worker -w 4 -b 0.0.0.0:8080 myapp:app

``myapp:app`` names an :class:`rtserver.Application`, the tree ``rtserver.tree``, a
root object or a root class (as ``rtserver run`` takes them); whatever it is, each
worker serves the whole tree, so apps grafted or mounted by the module are served too.

Each worker is gunicorn's gevent worker with rtserver's own HTTP server on gunicorn's
listening sockets (so the upgrade contract of docs/internals.md §1, the HTTP limits of
``server.*`` and ``rtserver.interrupt`` behave as under ``rtserver run``). The engine
runs per worker: it starts once the application is loaded and stops (every WebSocket
gets its 1001) and exits when gunicorn ends the worker. ``rtserver.server`` and the
extra servers are unsubscribed: gunicorn owns the sockets. With more than one worker,
give the hub a shared broker (``hub.broker``), as for ``rtserver run --workers``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker

__all__ = ["Worker"]

log = logging.getLogger("rtserver.error")


class Worker(GeventWorker):
    """``gunicorn -k rtserver.gunicorn.Worker module:app``."""

    def load_wsgi(self) -> None:
        """Load the target, put it on ``rtserver.tree`` and serve the tree."""
        from . import runtime
        from .cli import load_target, mount_target

        uri = getattr(self.app, "app_uri", None)
        target: Any
        if isinstance(uri, str) and ":" in uri and "(" not in uri:
            # Ours, not gunicorn's import: a root object need not be callable.
            target = load_target(uri)
        else:
            super().load_wsgi()
            target = getattr(self, "wsgi", None)
        mount_target(target)
        broker = runtime.config.get("hub.broker", "memory")
        if self.cfg.workers > 1 and (not broker or broker == "memory"):
            log.warning(
                "%d gunicorn workers with the in-memory hub: a message published in one worker "
                "never reaches the sockets of the others; set hub.broker = 'redis://host:6379/0'",
                self.cfg.workers,
            )
        runtime.server.unsubscribe()
        for extra in runtime.servers.values():
            extra.unsubscribe()
        self.wsgi = runtime.tree

    def run(self) -> None:
        """Start the engine, serve gunicorn's sockets until told to stop, stop the engine."""
        from . import runtime

        engine = runtime.engine
        runtime._configure_logging()  # log.* keys, as quickstart does
        engine.start()
        servers: list[Any] = []
        try:
            servers = [self._make_server(sock) for sock in self.sockets]
            for server in servers:
                server.start()
            while self.alive:
                self.notify()
                gevent.sleep(1.0)
        finally:
            # Stop accepting; requests in flight get graceful_timeout to finish.
            deadline = time.monotonic() + self.cfg.graceful_timeout
            for server in servers:
                server.stop(max(0.0, deadline - time.monotonic()))
            engine.exit()

    def _make_server(self, sock: Any) -> Any:
        from . import runtime
        from .servers.base import Server
        from .servers.gevent import GeventHTTPServer

        adapter = Server(runtime.engine, app=self.wsgi)
        adapter.listener = sock
        adapter.configure(
            {
                key[len("server.") :]: value
                for key, value in runtime.config.items()
                if key.startswith("server.") and key.count(".") == 1
            }
        )
        options = dataclasses.replace(adapter.http_options(), max_connections=self.worker_connections)
        ssl_context = None
        if self.cfg.is_ssl:
            from gunicorn.sock import ssl_context as gunicorn_ssl_context

            ssl_context = gunicorn_ssl_context(self.cfg)
        sock.setblocking(True)
        return GeventHTTPServer(
            self.wsgi, sock, options=options, ssl_context=ssl_context, server_adapter=adapter, log=log
        )
