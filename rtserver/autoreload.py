"""The reloader (``engine.autoreload.on``): restart the app when its files change.

With the key on, the process the user started (``python app.py``, ``rtserver run
--reload``) does not serve: when it reaches ``engine.start()`` it becomes a supervisor
that runs the same command line (``sys.orig_argv``) again as a child process, marked by
the ``RTSERVER_AUTORELOAD_CHILD`` environment variable, and watches the files. The
child is the app: it imports everything afresh, binds the ports and serves. On a change
the supervisor stops the child (SIGTERM, a bounded wait, then SIGKILL) and starts a new
one, which serves on the same port. A child that exits by itself (a syntax error after
an edit: Python prints the traceback on the shared stderr) is logged in one line and
the supervisor waits for the next change. SIGTERM or SIGINT to the supervisor stops the
child and the supervisor exits 0.

A separate process, rather than re-executing the one process, is what keeps the
reloader alive through an edit that does not even import, and gives every run a clean
interpreter (no stale modules, threads or sockets).

Watched: the files of the supervisor's own modules outside the standard library and
the installed packages (so the script, the app's modules, and rtserver itself only when
it runs from a source checkout), any ``*.py`` file in their directories (a module added
next to them), and the config files read (``rtserver.config.files_read``).
Watching uses ``watchfiles`` (inotify, FSEvents, ReadDirectoryChangesW; set
``WATCHFILES_FORCE_POLLING=1`` where those do not reach, e.g. some network mounts) in an
OS thread of its own, so that its blocking wait holds no gevent hub. The supervisor
serves nothing, so it needs no monkey patching (``rtserver run --reload`` skips it).

Never under ``rtserver run --workers``, nor in a host that runs no rtserver server of
its own (gunicorn has its own ``--reload``): the key is then ignored with one line.
"""

from __future__ import annotations

import enum
import importlib.util
import logging
import os
import signal
import site
import subprocess
import sys
import sysconfig
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from . import config as _config
from .bus.bus import Bus
from .bus.plugins import Monitor

__all__ = ["CHILD_ENV", "Reloader", "State", "Watched", "disable", "is_child", "on_engine_start", "setting_changed"]

log = logging.getLogger("rtserver.autoreload")

#: Environment variable marking the reloader's child; its value is the supervisor's pid.
CHILD_ENV = "RTSERVER_AUTORELOAD_CHILD"

# Read once at import and removed, so that processes the app starts are not taken for
# the reloader's child.
_SUPERVISOR_PID = os.environ.pop(CHILD_ENV, None)

# The directory the process started in (as near as we can tell: rtserver is imported
# early), where the child runs, so that a relative script path still resolves after
# the app changed directory.
try:
    _START_DIR: str | None = os.getcwd()
except OSError:  # the directory was removed
    _START_DIR = None

# A dev server restarts on every save: five seconds is ample for the app's own stop
# (requests drain, WebSockets get 1001) and short enough not to stall the edit loop.
# Past it the child is killed.
_STOP_SECONDS = 5.0
# How often the supervisor looks at the child, the watcher and its signals. The
# watcher itself waits in the OS (no polling); this only bounds the reaction time.
_TICK = 0.1
# How long the supervisor waits for the watcher thread to notice it should end.
_WATCHER_JOIN_SECONDS = 1.0

_disabled: str | None = None
_first_start = True
_orphan_check: Monitor | None = None


def is_child() -> bool:
    """Whether this process is the reloader's child (the app it runs)."""
    return _SUPERVISOR_PID is not None


def disable(reason: str) -> None:
    """Never supervise in this process (a worker of ``rtserver run --workers``): with
    ``engine.autoreload.on`` set, :func:`on_engine_start` logs that it is ignored and why."""
    global _disabled
    _disabled = reason


def on_engine_start(engine: Bus, serving: bool) -> None:
    """Called first thing by ``Engine.start``, ``serving`` telling whether one of
    rtserver's servers is subscribed.

    With ``engine.autoreload.on``: in the process the user started, become the
    supervisor and never return (the process exits with the supervisor's status); in
    the reloader's child, arrange to exit once the supervisor is gone. Otherwise, or
    where the key is ignored (said in one line), do nothing. Only the process's first
    start can become the supervisor: a process that served already goes on serving.
    """
    global _first_start
    first, _first_start = _first_start, False
    if not _config.global_config.get_key("engine.autoreload.on"):
        return
    if is_child():
        if str(_SUPERVISOR_PID).isdigit():
            _watch_supervisor(engine, int(str(_SUPERVISOR_PID)))
        return
    if not first:
        return  # engine.restart(), or a start after a stop: said when the key was set
    reason = _disabled or _refusal(serving)
    if reason:
        log.warning("engine.autoreload.on ignored: %s", reason)
        return
    handler = getattr(engine, "signal_handler", None)
    if handler is not None:
        handler.unsubscribe()  # the supervisor handles SIGTERM and SIGINT itself
    raise SystemExit(Reloader(_command(), _START_DIR, _watched()).run())


def setting_changed(engine: Bus, on: bool) -> None:
    """``engine.autoreload.on`` was set: say so when it is too late to take effect."""
    if on and not _first_start and not is_child():
        engine.log(
            "engine.autoreload.on set after engine.start: no effect until the process starts again", logging.WARNING
        )


def _refusal(serving: bool) -> str | None:
    """Why this process cannot be the supervisor, or None."""
    if not serving:
        return "no rtserver server runs in this process (its host's own reloader applies, e.g. gunicorn --reload)"
    if sys.flags.interactive or len(sys.orig_argv) < 2:
        return "an interactive interpreter cannot be run again as the app's process"
    return None


def _command() -> list[str]:
    """The command line that started this process, with this interpreter's full path
    (``sys.orig_argv[0]`` is as typed, maybe found through PATH)."""
    return [sys.executable, *sys.orig_argv[1:]]


# -- the child ---------------------------------------------------------------------------


def _watch_supervisor(engine: Bus, supervisor: int) -> None:
    """Exit (SIGTERM to ourselves: the signal handler stops the engine) when the
    supervisor is gone without stopping us (kill -9), rather than serve on unwatched."""
    global _orphan_check
    if _orphan_check is not None:
        return

    def orphaned() -> None:
        if os.getppid() != supervisor:
            engine.log("Reloader gone: exiting")
            os.kill(os.getpid(), signal.SIGTERM)

    _orphan_check = Monitor(engine, orphaned, frequency=1, name="reloader check")
    _orphan_check.subscribe()


# -- what to watch -----------------------------------------------------------------------


def _absolute(path: str) -> str:
    return os.path.realpath(os.path.join(_START_DIR or "", path))


def _installed_roots() -> tuple[str, ...]:
    """Directories of code nobody edits: the standard library, the installed packages
    and the interpreter's scripts (the ``rtserver`` console script)."""
    paths = sysconfig.get_paths()
    roots = {paths[name] for name in ("stdlib", "platstdlib", "purelib", "platlib", "scripts") if name in paths}
    roots.update(site.getsitepackages())
    roots.add(site.getusersitepackages())
    return tuple(os.path.join(os.path.realpath(root), "") for root in roots)


def _is_app_file(path: str, installed: tuple[str, ...]) -> bool:
    if path.startswith(installed) or not os.path.isfile(path):
        return False
    parts = path.split(os.sep)
    return "site-packages" not in parts and "dist-packages" not in parts


def _module_files() -> Iterable[str]:
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path:
            yield _absolute(path)


class Watched:
    """The files the reloader restarts on: ``files`` (the app's modules and the config
    files) and any ``*.py`` file in ``code_dirs`` (the app modules' directories)."""

    def __init__(self, modules: Iterable[str], configs: Iterable[str]) -> None:
        installed = _installed_roots()
        module_files = {path for path in modules if _is_app_file(path, installed)}
        self.files = module_files | set(configs)
        self.code_dirs = {os.path.dirname(path) for path in module_files}

    def directories(self) -> list[str]:
        """The directories to watch (not recursively): files are replaced, not written
        in place, by many editors, so a watch on the file itself would be lost."""
        dirs = self.code_dirs | {os.path.dirname(path) for path in self.files}
        return sorted(d for d in dirs if os.path.isdir(d))

    def __call__(self, change: Any, path: str) -> bool:
        """The watch filter: whether a change to ``path`` restarts the app."""
        return path in self.files or (path.endswith(".py") and os.path.dirname(path) in self.code_dirs)


def _watched() -> Watched:
    return Watched(_module_files(), _config.files_read)


# -- the watcher -------------------------------------------------------------------------


class _StopFlag:
    """watchfiles' ``stop_event``: a plain flag it reads between steps, from its thread
    (no lock to share between an OS thread and gevent's hub)."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class _Watcher:
    """``watchfiles.watch`` in an OS thread of its own; the changed paths wait in
    ``changes`` (a deque: appends and pops are atomic across threads)."""

    def __init__(self, watched: Watched) -> None:
        self.watched = watched
        self.changes: deque[set[str]] = deque()
        self.failure: BaseException | None = None
        self._stop = _StopFlag()
        self._done = False

    def start(self) -> None:
        # An OS thread even when gevent patched the process: watchfiles blocks in Rust.
        from gevent import monkey

        start_new_thread = monkey.get_original("_thread", "start_new_thread")
        start_new_thread(self._run, ())

    def _run(self) -> None:
        import watchfiles

        try:
            for batch in watchfiles.watch(
                *self.watched.directories(),
                watch_filter=self.watched,
                stop_event=self._stop,
                recursive=False,
                raise_interrupt=False,
            ):
                self.changes.append({path for _change, path in batch})
        except Exception as exc:  # e.g. the OS limit of watches: said by the supervisor
            self.failure = exc
        finally:
            self._done = True

    def take(self) -> set[str]:
        """The paths changed since the last call (empty: none)."""
        changed: set[str] = set()
        while self.changes:
            changed |= self.changes.popleft()
        return changed

    def stop(self) -> None:
        """Tell the thread to end and give it a moment to (it checks every 50 ms)."""
        self._stop.set()
        deadline = time.monotonic() + _WATCHER_JOIN_SECONDS
        while not self._done and time.monotonic() < deadline:
            time.sleep(0.02)


# -- the supervisor ----------------------------------------------------------------------


class State(enum.Enum):
    """Where the supervisor is."""

    SERVING = "serving"  # the child runs the app
    WAITING = "waiting"  # the child exited by itself: wait for a change to start another
    STOPPING = "stopping"  # SIGTERM/SIGINT: stop the child, then exit 0


class Reloader:
    """The supervisor: runs ``command`` as the child in ``cwd``, restarts it when a
    ``watched`` file changes, stops it on SIGTERM/SIGINT."""

    def __init__(self, command: list[str], cwd: str | None, watched: Watched) -> None:
        self.command = command
        self.cwd = cwd
        self.watched = watched
        self.watcher = _Watcher(watched)
        self.child: subprocess.Popen[bytes] | None = None
        self.state = State.WAITING
        # Set by the signal handler only (the state is the main loop's to change, so
        # that a signal between two of its steps is never overwritten).
        self._stop_requested = False
        self._failure_said = False

    def run(self) -> int:
        """Supervise until SIGTERM or SIGINT; the exit status (0)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            dirs = self.watched.directories()
            log.info(
                "Reloader (pid %d) watching %d files in %d directories; the app runs in a child process",
                os.getpid(),
                len(self.watched.files),
                len(dirs),
            )
            if dirs:
                self.watcher.start()
            self._spawn()
            while not self._stop_requested:
                time.sleep(_TICK)
                self._step()
            self.state = State.STOPPING
            self._stop_child()
            log.info("Reloader stopped")
            return 0
        finally:
            self.watcher.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_requested = True

    def _step(self) -> None:
        """One look at the child and the watcher."""
        if self.state is State.SERVING:
            assert self.child is not None
            code = self.child.poll()
            if code is not None:
                self.state = State.WAITING
                log.warning("app %s; waiting for a change", _how_it_ended(code))
        if self.watcher.failure is not None and not self._failure_said:
            self._failure_said = True
            log.error("Watching files failed (%s): the app is no longer reloaded", self.watcher.failure)
        changed = self.watcher.take()
        if changed and not self._stop_requested:
            log.info("%s changed: restarting the app", _names(changed))
            _drop_bytecode(changed)
            self._stop_child()
            if not self._stop_requested:  # no signal came while the child stopped
                self._spawn()

    def _spawn(self) -> None:
        env = dict(os.environ, **{CHILD_ENV: str(os.getpid())})
        self.child = subprocess.Popen(self.command, cwd=self.cwd, env=env)
        self.state = State.SERVING
        log.info("Started the app (pid %d)", self.child.pid)

    def _stop_child(self) -> None:
        """SIGTERM the child and wait for it, at most ``_STOP_SECONDS``, then kill it."""
        child, self.child = self.child, None
        if child is None:
            return
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning("app (pid %d) did not stop in %.0f s: killing it", child.pid, _STOP_SECONDS)
                child.kill()
                child.wait()
        if self.state is State.SERVING:
            self.state = State.WAITING


def _drop_bytecode(paths: Iterable[str]) -> None:
    """Remove the cached bytecode of changed modules. CPython checks a source file's
    mtime (whole seconds) and size against its ``.pyc``: an edit in the same second as
    the last compile that keeps the size would otherwise run the old code."""
    for path in paths:
        if path.endswith(".py"):
            try:
                os.unlink(importlib.util.cache_from_source(path))
            except (OSError, ValueError):  # no cached file, or no cache in use
                pass


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _names(paths: set[str]) -> str:
    """``a.py, b.py`` (relative to the start directory when under it), at most three."""
    shown = []
    for path in sorted(paths)[:3]:
        rel = os.path.relpath(path, _START_DIR) if _START_DIR else path
        shown.append(path if rel.startswith("..") else rel)
    more = len(paths) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
