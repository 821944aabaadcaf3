"""Engine plugins: the timeout monitor, the signal handler, the PID file.

A plugin subscribes its methods named after channels (``start``, ``stop``, ``graceful``,
``exit``, ``main``) with :meth:`SimplePlugin.subscribe`.
"""

from __future__ import annotations

import logging
import os
import signal as _signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .bus import Bus

__all__ = ["Monitor", "PIDFile", "SignalHandler", "SimplePlugin", "Timed", "TimeoutMonitor"]

log = logging.getLogger("rtserver.engine")


class SimplePlugin:
    """A plugin whose methods named after channels are subscribed to the bus."""

    channels = ("start", "stop", "graceful", "exit", "main", "log")

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def subscribe(self) -> None:
        """Subscribe every method named after a channel."""
        for channel in self.channels:
            method = getattr(self, channel, None)
            if method is not None:
                self.bus.subscribe(channel, method)

    def unsubscribe(self) -> None:
        """Unsubscribe every method named after a channel."""
        for channel in self.channels:
            method = getattr(self, channel, None)
            if method is not None:
                self.bus.unsubscribe(channel, method)


class Monitor(SimplePlugin):
    """Run ``callback`` every ``frequency`` seconds in a background thread (a greenlet
    under gevent's monkey patching), from engine start to engine stop."""

    def __init__(self, bus: Bus, callback: Callable[[], Any], frequency: float = 60, name: str | None = None) -> None:
        super().__init__(bus)
        self.callback = callback
        self.frequency = frequency
        self.name = name or type(self).__name__
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Start the background loop (once)."""
        if self._thread is not None or not self.frequency or self.frequency <= 0:
            return
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    start.priority = 70  # type: ignore[attr-defined]

    def _run(self) -> None:
        stopping = self._stopping
        while not stopping.wait(self.frequency):
            try:
                self.callback()
            except Exception:
                self.bus.log(f"Error in {self.name}", level=logging.ERROR, traceback=True)

    def stop(self) -> None:
        """Stop the background loop."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            if thread is not threading.current_thread():
                try:
                    thread.join(timeout=max(1.0, min(self.frequency, 5.0)))
                except RuntimeError:
                    pass  # a stop during start(), before the thread ran: it sees _stopping at once

    def graceful(self) -> None:
        """Restart the loop (picks up a new frequency)."""
        self.stop()
        self.start()


class Timed(Protocol):
    """What the timeout monitor watches: a response of a request in flight."""

    def check_timeout(self) -> None: ...

    timed_out: bool

    def interrupt(self, exc: BaseException) -> bool: ...


class TimeoutMonitor(Monitor):
    """Calls ``check_timeout()`` on every response in flight, every ``frequency`` s.

    Beyond CherryPy, whose monitor only set a flag the handler had to look at: with
    ``interrupt`` on (``engine.timeout_monitor.interrupt``, default True), a timed-out
    request is interrupted at its next blocking point (gevent servers), so a handler
    stuck in a sleep or a socket read ends and its greenlet is freed.
    """

    def __init__(self, bus: Bus, frequency: float = 60, interrupt: bool = True) -> None:
        super().__init__(bus, self.run, frequency, name="TimeoutMonitor")
        self.interrupt = interrupt
        self.servings: set[Timed] = set()
        self.interrupted = 0

    def track(self, response: Timed) -> None:
        """Watch ``response`` until :meth:`untrack`."""
        self.servings.add(response)

    def untrack(self, response: Timed) -> None:
        """Stop watching ``response``."""
        self.servings.discard(response)

    def run(self) -> None:
        """Check every response in flight once."""
        from ..errors import TimeoutError

        for response in list(self.servings):
            response.check_timeout()
            if response.timed_out and self.interrupt:
                if response.interrupt(TimeoutError("response timed out")):
                    self.interrupted += 1


class SignalHandler:
    """Map signals to bus actions: SIGTERM/SIGINT exit, SIGHUP/SIGUSR1 graceful.

    Only :func:`rtserver.quickstart` subscribes it automatically; call
    ``engine.signals.subscribe()`` in a manual setup (``tree.mount``, ``engine.start``,
    ``engine.block``). On Windows the console events are handled when pywin32 is
    importable.
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.handlers: dict[str, Callable[[], Any]] = {
            "SIGTERM": self.bus.exit,
            "SIGINT": self.bus.exit,
            "SIGHUP": self.handle_SIGHUP,
            "SIGUSR1": self.bus.graceful,
        }
        self.signals = {
            getattr(_signal, name): name
            for name in dir(_signal)
            if name.startswith("SIG") and not name.startswith("SIG_")
        }
        self._previous: dict[int, Any] = {}
        self._console: Any = None

    def handle_SIGHUP(self) -> None:
        """SIGHUP, CherryPy's rule: a daemonised process (no terminal on stdin) reloads
        gracefully (servers keep their listening sockets); a foreground one, whose
        terminal went away, exits."""
        if _on_a_terminal():
            self.bus.log("SIGHUP caught but not daemonized: exiting")
            self.bus.exit()
        else:
            self.bus.log("SIGHUP caught while daemonized: graceful reload")
            self.bus.graceful()

    def subscribe(self) -> None:
        """Install the handlers (main thread only) and the Windows console handler."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("signal handlers can only be set from the main thread")
            return
        for name, _handler in self.handlers.items():
            signum = getattr(_signal, name, None)
            if signum is None:
                continue
            self._previous[signum] = _signal.signal(signum, self._handle)
        if sys.platform == "win32":  # pragma: no cover - not on this platform
            self._console = _ConsoleCtrlHandler(self.bus)
            self._console.subscribe()

    def unsubscribe(self) -> None:
        """Restore the handlers that were there before."""
        for signum, previous in self._previous.items():
            try:
                _signal.signal(signum, previous if previous is not None else _signal.SIG_DFL)
            except (ValueError, TypeError):
                pass
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        name = self.signals.get(signum, str(signum))
        self.bus.log(f"Caught signal {name}.")
        handler = self.handlers[name]
        # Run the action outside the signal frame. Under gevent the signal may be
        # delivered inside the event loop, where nothing may block: spawn a greenlet.
        gevent = sys.modules.get("gevent")
        if gevent is not None:
            gevent.spawn(handler)
        else:
            threading.Thread(target=handler, name=f"signal-{name}", daemon=True).start()


def _on_a_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):
        return False  # no stdin at all: as daemonised as it gets


class _ConsoleCtrlHandler:  # pragma: no cover - Windows only
    """Windows console events (Ctrl-C, close, logoff, shutdown) stop the bus."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def subscribe(self) -> None:
        try:
            import win32api  # type: ignore[import-not-found]
        except ImportError:
            return
        win32api.SetConsoleCtrlHandler(self._handle, 1)

    def _handle(self, event: int) -> int:
        self.bus.log(f"Console event {event}: shutting down bus")
        self.bus.exit()
        return 1


class PIDFile(SimplePlugin):
    """Write the process id to ``pidfile`` at start; remove it at exit."""

    def __init__(self, bus: Bus, pidfile: str) -> None:
        super().__init__(bus)
        self.pidfile = pidfile
        self.finalized = False

    def start(self) -> None:
        """Write the PID file."""
        if self.finalized:
            return
        with open(self.pidfile, "w", encoding="ascii") as fh:
            fh.write(f"{os.getpid()}\n")
        self.bus.log(f"PID {os.getpid()} written to {self.pidfile!r}.")
        self.finalized = True

    start.priority = 70  # type: ignore[attr-defined]

    def exit(self) -> None:
        """Remove the PID file."""
        try:
            os.remove(self.pidfile)
            self.bus.log(f"PID file removed: {self.pidfile!r}.")
        except OSError:
            pass


def _now() -> float:
    return time.time()
