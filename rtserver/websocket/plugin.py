"""The WebSocket bus plugin: every open socket of the process, broadcast, 1001 on stop.

Subscribed on ``rtserver.engine`` by default. As ws4py's CherryPy plugin,
``engine.publish('websocket-broadcast', message)`` sends ``message`` to every open
socket. On engine ``stop`` every socket gets a 1001 close and the engine waits up to
the close timeout for the closing handshakes, before the HTTP servers go down. Each
socket ends as soon as its peer answers (the server then closes TCP, RFC 6455 §7.1.1),
so the wait lasts until the slowest peer answers, not until the close timeout.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from ..bus.plugins import SimplePlugin

__all__ = ["WebSocketPlugin"]

log = logging.getLogger("rtserver.websocket")


class WebSocketPlugin(SimplePlugin):
    """Tracks open sockets (the runtime's registry) for broadcast and shutdown."""

    def __init__(self, bus: Any) -> None:
        super().__init__(bus)
        self.handlers: set[Any] = set()
        self.stopping = False
        #: Seconds ``stop`` waits for closing handshakes (``engine.websocket.close_timeout``).
        self.close_timeout = 10.0
        self.opened_total = 0
        #: Refused upgrades by ``(status, reason)`` (``tools.websocket``; rtserver.stats).
        self.handshake_failures: Counter[tuple[int, str]] = Counter()
        #: Called with each handler that ends (the hub's ``socket_closed``).
        self.on_closed: list[Any] = []

    # -- the registry the runtime calls ----------------------------------------

    def add(self, handler: Any) -> None:
        """A socket opened."""
        self.handlers.add(handler)
        self.opened_total += 1

    def discard(self, handler: Any) -> None:
        """A socket ended."""
        self.handlers.discard(handler)
        for callback in self.on_closed:
            try:
                callback(handler)
            except Exception:
                log.exception("Error in a socket-closed listener")

    @property
    def count(self) -> int:
        """How many sockets are open."""
        return len(self.handlers)

    # -- bus channels -----------------------------------------------------------

    def subscribe(self) -> None:
        """Subscribe to start/stop and the ``websocket-broadcast`` channel."""
        super().subscribe()
        self.bus.subscribe("websocket-broadcast", self.broadcast)

    def unsubscribe(self) -> None:
        """Undo :meth:`subscribe`."""
        super().unsubscribe()
        self.bus.unsubscribe("websocket-broadcast", self.broadcast)

    def start(self) -> None:
        """Accept upgrades."""
        self.stopping = False

    def broadcast(self, message: Any, binary: bool = False) -> int:
        """Send ``message`` to every open socket of this process; return how many.

        Never blocks on a slow socket: each send goes to that socket's bounded queue,
        and a socket whose queue is full is closed as a slow consumer by the runtime.
        A frame is encoded once for all sockets that negotiated no compression.
        """
        from .connection import prepare_frame

        if isinstance(message, (bytes, bytearray, memoryview)):
            binary = True
        data = bytes(message) if binary else (message if isinstance(message, str) else str(message))
        frame: bytes | None = None
        sent = 0
        for handler in list(self.handlers):
            try:
                conn = getattr(handler, "_rt_conn", None)
                if conn is not None and conn.fast:  # no extension: one frame for all
                    if frame is None:
                        frame = prepare_frame(data, binary)
                    conn.send_prepared(frame)  # what handler.send_prepared does
                else:
                    handler.send(data, binary)
                sent += 1
            except Exception:
                log.debug("broadcast to %r failed", handler, exc_info=True)
        return sent

    def stop(self) -> None:
        """Close every socket with 1001 and wait for the closing handshakes.

        A socket leaves ``handlers`` once its handshake is complete (its TCP connection
        closed by the server) or its peer was dropped; those still open after the
        close timeout are dropped here.
        """
        self.stopping = True
        handlers = list(self.handlers)
        if not handlers:
            return
        log.info("Closing %d WebSocket(s) with 1001", len(handlers))
        for handler in handlers:
            try:
                handler.shutdown(1001, "server shutting down")
            except Exception:
                log.debug("shutdown of %r failed", handler, exc_info=True)
        # The connections' own close timers (tools.websocket.close_timeout, also 10 s by
        # default) started just now: half a second more lets them drop their silent
        # peers themselves; this loop drops the rest (a longer per-path timeout).
        deadline = time.monotonic() + self.close_timeout + 0.5
        import gevent

        while self.handlers and time.monotonic() < deadline:
            gevent.sleep(0.02)
        if self.handlers:
            # Peers that never answer the close must not hold the shutdown any longer.
            log.warning("%d WebSocket(s) did not finish their closing handshake in time: dropped", len(self.handlers))
            for handler in list(self.handlers):
                try:
                    handler.terminate()
                except Exception:
                    log.debug("terminate of %r failed", handler, exc_info=True)

    stop.priority = 20  # type: ignore[attr-defined]  # before the servers stop (25)
