"""The WebSocket bus plugin: every open socket of the process, broadcast, 1001 on stop.

Subscribed on ``rtserver.engine`` by default. As ws4py's CherryPy plugin,
``engine.publish('websocket-broadcast', message)`` sends ``message`` to every open
socket. On engine ``stop`` every socket gets a 1001 close and the engine waits up to
the close timeout for the closing handshakes, before the HTTP servers go down. Each
socket ends as soon as its peer answers (the server then closes TCP, RFC 6455 §7.1.1),
so the wait lasts until the slowest peer answers, not until the close timeout.

The end of a session reaches its sockets: at engine ``start`` the plugin registers
with the session layer (:func:`rtserver.web.sessions.add_end_listener`). When a page
deletes a session (logout) or regenerates its id, every socket of this process opened
with that id has its session marked ended (it reads as empty, ``save()`` raises
:class:`~rtserver.errors.SessionEnded`) and its ``session_ended(reason)`` hook runs in
a greenlet of its own (default: close with :data:`SESSION_ENDED_CODE`, 4401). When the
hub's broker is not the memory one (Redis), the end is also sent to the other
processes through ``hub.broadcast`` as a reserved envelope
(:data:`SESSION_ENDED_ENVELOPE`, carrying a SHA-256 digest of the id, never the id),
which :meth:`WebSocketPlugin.broadcast` consumes instead of sending it to sockets.
Expiry is watched here: each socket's session is checked at the time its store says
it expires (``SessionStore.expires_at``), and again at least every
:attr:`WebSocketPlugin.session_check_max` seconds.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import time
from collections import Counter
from typing import Any

from ..bus.plugins import SimplePlugin

__all__ = ["SESSION_ENDED_CODE", "SESSION_ENDED_ENVELOPE", "WebSocketPlugin"]

log = logging.getLogger("rtserver.websocket")

#: The close code of a socket whose session ended (RFC 6455 §7.4.2: 4000-4999 are the
#: application's). rtserver.js turns it into a "signed-out" event and does not reconnect.
SESSION_ENDED_CODE = 4401
#: The start of the reserved ``hub.broadcast`` message that carries a session's end to
#: the other processes; never sent to a socket.
SESSION_ENDED_ENVELOPE = "\x00rtserver:session-ended:"


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode("ascii")).hexdigest()


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
        #: Longest interval (s) between two checks that a socket's session still exists.
        self.session_check_max = 300.0
        # (time due, seq, handler): when to ask the store whether the session expired.
        self._session_checks: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()
        self._watcher: Any = None

    # -- the registry the runtime calls ----------------------------------------

    def add(self, handler: Any) -> None:
        """A socket opened."""
        self.handlers.add(handler)
        self.opened_total += 1
        if getattr(handler, "session", None) is not None:
            self._check_session_at(handler, time.time())

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
        """Accept upgrades; listen for the end of sessions."""
        self.stopping = False
        from ..web.sessions import add_end_listener  # the web layer knows nothing of sockets

        add_end_listener(self.session_ended)

    # -- the end of sessions ----------------------------------------------------

    def session_ended(self, sid: str, reason: str) -> None:
        """Session ``sid`` ended in this process: tell its sockets, here and elsewhere."""
        self._end_sessions(lambda sess: sess.id == sid, reason)
        from .hub import hub

        broker = hub.broker
        if broker is None or broker.name == "memory":
            return  # one process: nobody else to tell
        envelope = json.dumps({"digest": _digest(sid), "reason": reason}, separators=(",", ":"))
        try:
            hub.broadcast(SESSION_ENDED_ENVELOPE + envelope)
        except Exception:
            log.error("could not tell the other processes that a session ended", exc_info=True)

    def _remote_session_ended(self, message: str) -> None:
        try:
            doc = json.loads(message[len(SESSION_ENDED_ENVELOPE) :])
            digest, reason = str(doc["digest"]), str(doc["reason"])
        except (ValueError, KeyError, TypeError):
            log.warning("malformed session-ended broadcast ignored")
            return
        self._end_sessions(lambda sess: _digest(sess.id) == digest, reason)

    def _end_sessions(self, match: Any, reason: str) -> None:
        for handler in list(self.handlers):
            sess = getattr(handler, "session", None)
            if sess is not None and not getattr(handler, "_rt_session_ended", False) and match(sess):
                self._tell_ended(handler, reason)

    def _tell_ended(self, handler: Any, reason: str) -> None:
        """Mark the socket's session ended and run its hook in a greenlet of its own
        (the logout page, or the broker's delivery, does not wait for the app's code)."""
        import gevent

        handler._rt_session_ended = True
        handler.session.mark_ended(reason)
        gevent.spawn(self._run_ended_hook, handler, reason)

    @staticmethod
    def _run_ended_hook(handler: Any, reason: str) -> None:
        try:
            hook = getattr(handler, "session_ended", None)
            if hook is not None:
                hook(reason)
            else:  # a plain ws4py handler
                handler.close(SESSION_ENDED_CODE, "session ended")
        except Exception:
            log.exception("Error in session_ended of %r", handler)

    def _check_session_at(self, handler: Any, due: float) -> None:
        import gevent

        heapq.heappush(self._session_checks, (due, next(self._seq), handler))
        if self._watcher is None or self._watcher.dead:
            self._watcher = gevent.spawn(self._watch_sessions)

    def _watch_sessions(self) -> None:
        """Ask the store, at the time each socket's session would expire, whether it
        did (expiry has no event of its own); 4 wake-ups a second while sockets live."""
        import gevent

        checks = self._session_checks
        while checks:
            now = time.time()
            while checks and checks[0][0] <= now:
                _due, _seq, handler = heapq.heappop(checks)
                if handler in self.handlers and not getattr(handler, "_rt_session_ended", False):
                    self._check_session(handler, now)
            gevent.sleep(0.25)

    def _check_session(self, handler: Any, now: float) -> None:
        sess = handler.session
        if sess.ended is not None:  # found gone by a read of its own
            self._tell_ended(handler, sess.ended)
            return
        if not sess.stored:  # a visitor's session no store holds yet (nothing to expire)
            self._check_session_at(handler, now + 5.0)
            return
        try:
            expires = sess.store.expires_at(sess.id)
        except Exception:
            log.warning("could not check the session of %r", handler, exc_info=True)
            self._check_session_at(handler, now + 5.0)
            return
        if expires is None:
            from ..web.sessions import ENDED_EXPIRED

            self._tell_ended(handler, ENDED_EXPIRED)
        else:
            self._check_session_at(handler, min(expires, now + self.session_check_max))

    def broadcast(self, message: Any, binary: bool = False) -> int:
        """Send ``message`` to every open socket of this process; return how many.

        Never blocks on a slow socket: each send goes to that socket's bounded queue,
        and a socket whose queue is full is closed as a slow consumer by the runtime.
        A frame is encoded once for all sockets that negotiated no compression.
        """
        from .connection import prepare_frame

        if isinstance(message, str) and message.startswith(SESSION_ENDED_ENVELOPE):
            self._remote_session_ended(message)  # reserved: for this plugin, not for sockets
            return 0
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
        from ..web.sessions import remove_end_listener

        remove_end_listener(self.session_ended)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.kill(block=False)
        self._session_checks.clear()
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
