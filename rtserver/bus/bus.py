"""The engine bus: a process's life cycle as channels that plugins subscribe to.

The bus moves through states STOPPED → STARTING → STARTED → STOPPING → STOPPED, and
EXITING at the end. Publishing a channel calls its listeners in priority order (lower
first, default 50). Failures of ``start`` listeners are collected, logged, and stop the
engine; ``exit`` then ends the process with status 70 (EX_SOFTWARE), as CherryPy does.

The bus knows nothing of HTTP. It is greenlet-friendly: ``block()`` waits on an event
rather than spinning, so it works in a monkey-patched gevent process and in threads.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, StartupError

__all__ = ["Bus", "ChannelFailures", "States"]

log = logging.getLogger("rtserver.engine")

#: Start failures that explain themselves in one line (no traceback).
_USER_ERRORS = (StartupError, ConfigError)

#: Exit status when a start listener failed (sysexits.h EX_SOFTWARE).
EX_SOFTWARE = 70


class _State:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"states.{self.name}"


class States:
    """The bus states; compare with ``is``."""

    STOPPED = _State("STOPPED")
    STARTING = _State("STARTING")
    STARTED = _State("STARTED")
    STOPPING = _State("STOPPING")
    EXITING = _State("EXITING")


class ChannelFailures(Exception):
    """One or more listeners of a channel raised; ``exceptions`` holds them all."""

    def __init__(self, channel: str, exceptions: list[BaseException]) -> None:
        self.channel = channel
        self.exceptions = exceptions
        super().__init__(channel, exceptions)

    def __str__(self) -> str:
        return f"{len(self.exceptions)} listener(s) of {self.channel!r} failed: " + "; ".join(
            repr(e) for e in self.exceptions
        )

    def __bool__(self) -> bool:
        return bool(self.exceptions)


class Bus:
    """A process bus: ``subscribe(channel, callback, priority)``, ``publish(channel)``.

    Channels used by rtserver: ``start``, ``stop``, ``graceful``, ``exit``, ``main``
    (published every ``block()`` interval), ``log``, and ``websocket-broadcast``.
    """

    states = States

    def __init__(self) -> None:
        self.state: _State = States.STOPPED
        self.listeners: dict[str, set[Callable[..., Any]]] = {
            c: set() for c in ("start", "stop", "exit", "graceful", "log", "main")
        }
        self._priorities: dict[tuple[str, Callable[..., Any]], int] = {}
        self._state_changed = threading.Condition()
        self.execv = False
        self.max_cloexec_files = 1024
        self.exit_status: int | None = None

    # -- subscriptions ------------------------------------------------------

    def subscribe(self, channel: str, callback: Callable[..., Any], priority: int | None = None) -> None:
        """Call ``callback`` when ``channel`` is published (lower priority runs first)."""
        if priority is None:
            priority = getattr(callback, "priority", 50)
        self.listeners.setdefault(channel, set()).add(callback)
        self._priorities[(channel, callback)] = int(priority)

    def unsubscribe(self, channel: str, callback: Callable[..., Any]) -> None:
        """Stop calling ``callback`` for ``channel`` (no error if it was not subscribed)."""
        listeners = self.listeners.get(channel)
        if listeners and callback in listeners:
            listeners.discard(callback)
            del self._priorities[(channel, callback)]

    def publish(self, channel: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call every listener of ``channel``; return their results in call order.

        Listener failures are collected into :class:`ChannelFailures` and raised after
        every listener has run (``log`` listeners' failures are ignored, to avoid loops).
        """
        listeners = self.listeners.get(channel)
        if not listeners:
            return []
        failures: list[BaseException] = []
        results = []
        ordered = sorted(listeners, key=lambda cb: self._priorities[(channel, cb)])
        for listener in ordered:
            if failures and channel == "start":
                break  # the engine goes down: start nothing more (no server binds, then closes)
            try:
                results.append(listener(*args, **kwargs))
            except KeyboardInterrupt:
                raise
            except SystemExit as exc:
                if exc.code == 0 or channel == "exit":
                    raise
                failures.append(exc)
            except Exception as exc:
                if channel == "log":
                    continue  # a broken log listener must not recurse into logging
                if isinstance(exc, _USER_ERRORS):
                    failures.append(exc)  # said in one line by the caller (start)
                    continue
                self.log(f"Error in {channel!r} listener {listener!r}", level=logging.ERROR, traceback=True)
                failures.append(exc)
        if failures:
            raise ChannelFailures(channel, failures)
        return results

    # -- life cycle ---------------------------------------------------------

    def _set_state(self, state: _State) -> None:
        with self._state_changed:
            self.state = state
            self._state_changed.notify_all()

    def start(self) -> None:
        """Publish ``start``; on any listener failure, log, stop and exit with 70."""
        self._set_state(States.STARTING)
        self.log("Bus STARTING")
        try:
            self.publish("start")
        except (ChannelFailures, Exception) as exc:
            said = [e for e in getattr(exc, "exceptions", [exc]) if isinstance(e, _USER_ERRORS)]
            if said:
                # One line a user can act on (a port in use, a config key), no traceback.
                for e in said:
                    self.log(str(e), level=logging.ERROR)
            else:
                self.log(f"Shutting down due to error in start listener: {exc}", level=logging.ERROR)
            self.exit(EX_SOFTWARE)
            raise
        if self.state is not States.STARTING:
            # exit() or stop() ran while the start listeners were running (a
            # SIGTERM during a slow start): do not come back to life.
            self.log("Bus start interrupted: not STARTED")
            return
        self._set_state(States.STARTED)
        self.log("Bus STARTED")

    def stop(self) -> None:
        """Publish ``stop`` (servers close, sockets get 1001) and become STOPPED."""
        if self.state in (States.STOPPED, States.STOPPING, States.EXITING):
            return
        self._set_state(States.STOPPING)
        self.log("Bus STOPPING")
        try:
            self.publish("stop")
        except ChannelFailures as exc:
            self.log(f"Errors while stopping: {exc}", level=logging.ERROR)
        self._set_state(States.STOPPED)
        self.log("Bus STOPPED")

    def graceful(self) -> None:
        """Publish ``graceful`` (reload what can be reloaded without dropping sockets)."""
        self.log("Bus graceful")
        self.publish("graceful")

    def restart(self) -> None:
        """Stop and start again (in process: no re-exec)."""
        self.stop()
        self.start()

    def exit(self, status: int = 0) -> None:
        """Stop, publish ``exit`` and become EXITING.

        With a non-zero ``status`` (a start failure), the process ends with it, as
        CherryPy's engine ends with 70 when a start listener failed.
        """
        exiting = self.state is States.EXITING
        if not exiting:
            try:
                self.stop()
                self._set_state(States.EXITING)
                self.log("Bus EXITING")
                self.publish("exit")
                self.log("Bus EXITED")
            except Exception:
                status = status or EX_SOFTWARE
        self.exit_status = status
        if status:
            # Like os._exit but lets the log flush: mirrors CherryPy, which exits 70.
            logging.shutdown()
            os._exit(status)

    def wait(self, state: _State | tuple[_State, ...], interval: float = 0.1, channel: str | None = None) -> None:
        """Block until the bus is in ``state`` (or one of several)."""
        states = state if isinstance(state, (tuple, list)) else (state,)
        with self._state_changed:
            while self.state not in states:
                self._state_changed.wait(interval)
                if channel:
                    self.publish(channel)

    def block(self, interval: float = 0.1) -> None:
        """Wait until the bus exits, publishing ``main`` every ``interval`` seconds.

        Returns when the engine is EXITING or STOPPED after having been STARTED
        (a signal handler or ``engine.exit()`` ends it).
        """
        try:
            self.wait(States.EXITING, interval=interval, channel="main")
        except (KeyboardInterrupt, OSError):
            self.log("Keyboard Interrupt: shutting down bus")
            self.exit()
        except SystemExit:
            self.log("SystemExit raised: shutting down bus")
            self.exit()
            raise

    # -- logging ------------------------------------------------------------

    def log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        """Publish ``msg`` on the ``log`` channel and to the ``rtserver.engine`` logger."""
        if traceback:
            msg += "\n" + "".join(_format_exc())
        log.log(level, msg)
        self.publish("log", msg, level)


def _format_exc() -> list[str]:
    return traceback.format_exception(*sys.exc_info())


def _now() -> float:
    return time.time()
