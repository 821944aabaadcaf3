"""The command line: ``rtserver run module:root [-c app.conf] [--port P] [--workers N]``.

::

    rtserver run myapp:root -c app.conf --host 0.0.0.0 --port 8080
    rtserver run myapp:root --reload   # development: restart when a file changes
    python -m rtserver run myapp:Root --workers 4 --broker redis://127.0.0.1:6379/0
    rtserver --version

``module:root`` names an object in an importable module: an instance of a root class
(a tree of exposed handlers), a root class (instantiated with no arguments), an
:class:`rtserver.Application`, or the tree ``rtserver.tree``. The config file's
``[global]`` section goes to ``rtserver.config``, its ``[/path]`` sections to the
application, as :func:`rtserver.quickstart` does. Command-line options win over both.

With ``--workers N`` (N > 1) a parent process binds the listening socket once and runs N
worker processes, each with its own engine serving on that socket (the kernel spreads
connections between them). SIGTERM or SIGINT to the parent stops every worker (each
drains its requests, sockets get 1001) and the parent exits 0; a worker that dies is
logged and replaced. Workers do not share memory: the WebSocket hub must use a shared
broker (``hub.broker``), or a message published in one process would never reach the
sockets of the others, so the command refuses to start without one.

Errors are one line on stderr, without a traceback. Exit status 2: the command line
or the config is wrong (an unknown key, a bad value, a broker URL of another scheme);
70: the process cannot start serving (a port in use, an address not of this machine,
redis-py missing for a Redis broker), as for a script calling ``quickstart()``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

__all__ = ["UsageError", "load_target", "main", "mount_target"]

#: Environment variable giving a worker the file descriptor of the listening socket.
LISTEN_FD_ENV = "RTSERVER_LISTEN_FD"
#: ``host port`` a worker listens on with SO_REUSEPORT (TCP; the kernel balances).
REUSE_PORT_ENV = "RTSERVER_REUSE_PORT"

_KINDS = ("gevent", "cheroot", "native")
_FAST_FAILURES = 5  # workers dying this many times in a row, each within...
_FAST_FAILURE_SECONDS = 2.0  # ...this many seconds of starting: give up


class UsageError(Exception):
    """A command-line mistake: the message is shown and the command exits 2."""


def build_parser() -> argparse.ArgumentParser:
    """The ``rtserver`` argument parser."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="rtserver", description="Run rtserver applications: pages and WebSockets in one process."
    )
    parser.add_argument("--version", action="version", version=f"rtserver {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    run = commands.add_parser(
        "run", help="serve an application", description="Serve module:root until SIGTERM or Ctrl-C."
    )
    run.add_argument("target", metavar="module:root", help="the root object, root class or Application to serve")
    run.add_argument(
        "-c",
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="config file ([global] and [/path] sections); may be repeated",
    )
    run.add_argument("--host", help="address to listen on (server.socket_host)")
    run.add_argument("--port", type=int, help="TCP port to listen on (server.socket_port)")
    run.add_argument(
        "--socket-file", metavar="PATH", help="listen on this Unix domain socket instead (server.socket_file)"
    )
    run.add_argument("--script-name", default="", metavar="PATH", help="mount point of the application (default: /)")
    run.add_argument(
        "--kind",
        choices=_KINDS,
        help="HTTP server: gevent (default), cheroot (WSGI, threads) or native (cheroot, no WSGI)",
    )
    run.add_argument(
        "--workers", type=int, default=1, metavar="N", help="worker processes sharing the listening socket (default 1)"
    )
    run.add_argument(
        "--reload",
        action="store_true",
        help="restart the app when its Python or config files change (engine.autoreload.on; development)",
    )
    run.add_argument(
        "--broker", metavar="URL", help="hub.broker: 'memory' or redis://host:6379/0 (required with --workers > 1)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rtserver`` and ``python -m rtserver``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.workers < 1:
            raise UsageError("--workers must be at least 1")
        if args.reload and args.workers > 1:
            raise UsageError("--reload runs one app process: it cannot be combined with --workers")
        fd = os.environ.pop(LISTEN_FD_ENV, None)
        if fd is not None:
            return _serve(args, listen_fd=int(fd))
        shared = os.environ.pop(REUSE_PORT_ENV, None)
        if shared is not None:
            host, _, port = shared.rpartition(" ")
            return _serve(args, reuse_port=(host, int(port)))
        if args.workers > 1:
            file_global = _file_global(args.config)
            _check_broker(args, file_global)
            return _Supervisor(args, file_global).run()
        return _serve(args)
    except UsageError as exc:
        parser.exit(2, f"rtserver: {exc}\n")
    except Exception as exc:
        from .bus.bus import EX_SOFTWARE
        from .errors import ConfigError, StartupError

        if isinstance(exc, ConfigError):
            parser.exit(2, f"rtserver: config error: {exc}\n")
        if isinstance(exc, StartupError):
            parser.exit(EX_SOFTWARE, f"rtserver: {exc}\n")
        raise
    return 0  # pragma: no cover - parser.exit raised


# -- the application ---------------------------------------------------------------------


def load_target(spec: str) -> Any:
    """Import ``module:name`` (``name`` may be dotted) and return the object."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected module:object, e.g. myapp:root, not {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as python -m does: modules of the current directory
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UsageError(f"cannot import module {module_name!r}: {exc}") from None
        raise
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no object {attr!r}") from None
    return obj


def mount_target(obj: Any, script_name: str = "", config: Any = None) -> None:
    """Put ``obj`` (root, root class, Application, or a Tree) on ``rtserver.tree``."""
    from .runtime import tree
    from .web.app import Application, Tree

    if isinstance(obj, Tree):
        if obj is not tree:
            for name, app in obj.apps.items():
                if isinstance(app, Application):
                    tree.mount(app, name)
                else:
                    tree.graft(app.wsgi_app, name)
        if config:
            for app in tree.apps.values():
                if isinstance(app, Application):
                    app.merge(config)
        return
    if isinstance(obj, Application):
        name = script_name or obj.script_name
        if tree.apps.get(name) is not obj or config:
            tree.mount(obj, name, config)
        return
    if isinstance(obj, type):
        obj = obj()
    tree.mount(obj, script_name, config)


def _file_global(files: list[str]) -> dict[str, Any]:
    """The ``[global]`` keys of the config files (for the parent process; every key is
    checked as the files are read, so a wrong one stops the command with exit 2)."""
    from .config import read_file

    values: dict[str, Any] = {}
    for name in files:
        values.update(read_file(name).get("global", {}))
    return values


def _check_broker(args: argparse.Namespace, file_global: dict[str, Any]) -> None:
    from .config import global_config

    broker = args.broker or file_global.get("hub.broker") or global_config.get("hub.broker", "memory")
    if args.workers > 1 and (not broker or broker == "memory"):
        raise UsageError(
            f"--workers {args.workers} needs a shared hub: set hub.broker = 'redis://host:6379/0' "
            "in the [global] config section (or pass --broker redis://host:6379/0); the in-memory "
            "hub cannot reach the sockets of other worker processes"
        )
    _check_hub_broker(str(broker))


def _check_hub_broker(spec: str) -> None:
    """Refuse a broker that cannot work (another scheme, redis-py missing) before any
    process starts: ConfigError (exit 2) or StartupError (exit 70), one line each."""
    try:
        from .websocket.brokers import check_broker
    except ImportError:
        return  # a build without the hub
    check_broker(spec)


def _declare_hub_keys() -> None:
    """Import the hub module, which declares the ``hub.*`` keys, when it exists."""
    try:
        importlib.import_module("rtserver.websocket.hub")
    except ImportError:
        pass


# -- one serving process ------------------------------------------------------------------


def _serve(args: argparse.Namespace, listen_fd: int | None = None, reuse_port: tuple[str, int] | None = None) -> int:
    """Import, configure and run the application in this process until told to stop.

    A worker gets its socket from the supervisor: an inherited listening ``listen_fd``
    (Unix sockets), or the address to listen on itself with SO_REUSEPORT (TCP).
    """
    from . import autoreload

    if not args.reload or autoreload.is_child():
        # Before the app is imported, so that everything it makes is cooperative (the
        # reloader's supervisor serves nothing: it stays unpatched).
        from .cooperative import ensure_cooperative

        ensure_cooperative()
    from . import runtime
    from .bus.plugins import Monitor
    from .config import declared, global_config, normalize

    _declare_hub_keys()
    target = load_target(args.target)
    app_config: dict[str, dict[str, Any]] = {}
    for name in args.config:
        sections = normalize(name)
        if "global" in sections:
            global_config.update(sections.pop("global"))
        for section, values in sections.items():
            app_config.setdefault(section, {}).update(values)
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["server.socket_host"] = args.host
    if args.port is not None:
        overrides["server.socket_port"] = args.port
    if args.socket_file is not None:
        overrides["server.socket_file"] = args.socket_file
    if args.kind is not None:
        overrides["server.kind"] = args.kind
    if args.reload:
        overrides["engine.autoreload.on"] = True
    if args.broker is not None:
        if "hub.broker" in declared():
            overrides["hub.broker"] = args.broker
        else:
            runtime.engine.log("--broker ignored: this build has no hub (rtserver.websocket.hub)", level=30)
    if reuse_port is not None:
        overrides.update(
            {"server.socket_host": reuse_port[0], "server.socket_port": reuse_port[1], "server.reuse_port": True}
        )
    if overrides:
        global_config.update(overrides)
    mount_target(target, args.script_name.rstrip("/"), app_config or None)
    if "hub.broker" in declared():
        _check_hub_broker(str(global_config.get_key("hub.broker")))
    if listen_fd is not None:
        runtime.server.listener = socket.socket(fileno=listen_fd)
    if listen_fd is not None or reuse_port is not None:
        autoreload.disable("rtserver run --workers runs no reloader")
        parent = os.getppid()

        def orphaned() -> None:
            # The supervisor died without stopping us (kill -9): do not linger.
            if os.getppid() != parent:
                runtime.engine.log("Supervisor gone: exiting")
                os.kill(os.getpid(), signal.SIGTERM)  # the signal handler stops the engine

        Monitor(runtime.engine, orphaned, frequency=1, name="orphan check").subscribe()
    runtime.quickstart()
    return int(getattr(runtime.engine, "exit_status", 0) or 0)


# -- several worker processes -------------------------------------------------------------


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"[{stamp}] rtserver.supervisor {message}", file=sys.stderr, flush=True)


class _Supervisor:
    """Binds the socket, runs the workers, replaces the dead, stops them on SIGTERM."""

    def __init__(self, args: argparse.Namespace, file_global: dict[str, Any]) -> None:
        self.args = args
        self.file_global = file_global
        self.workers: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self.stopping = False
        self.fast_failures = 0
        self.listener: socket.socket | None = None

    def run(self) -> int:
        self.listener = self._bind()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            addr = self.listener.getsockname()
            _log(f"Listening on {addr!r} with {self.args.workers} workers (pid {os.getpid()})")
            for _ in range(self.args.workers):
                self._spawn()
            while not self.stopping:
                if self._reap():
                    return 1
                time.sleep(0.1)
            self._stop_all()
            _log("All workers stopped")
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.listener.family == socket.AF_UNIX:
                try:
                    os.unlink(self.listener.getsockname())
                except OSError:
                    pass
            self.listener.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _setting(self, option: Any, key: str) -> Any:
        """A command-line option, else the config files' key, else its default."""
        from .config import default

        if option is not None:
            return option
        return self.file_global.get(key, default(key))

    def _bind(self) -> socket.socket:
        """The listening socket of every worker; StartupError (exit 70) when the
        address cannot be bound."""
        from .servers.base import listen_error

        backlog = int(self.file_global.get("server.backlog", 1024))
        path = self._setting(self.args.socket_file, "server.socket_file")
        if path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                if os.path.exists(path):
                    os.unlink(path)
                sock.bind(path)
            except OSError as exc:
                sock.close()
                raise listen_error(exc, path) from None
        else:
            host = self._setting(self.args.host, "server.socket_host")
            port = self._setting(self.args.port, "server.socket_port")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Each worker listens on its own SO_REUSEPORT socket and the kernel spreads
            # new connections over them; one shared socket lets whichever worker wakes
            # first accept a whole burst of keep-alive connections. This socket only
            # reserves the port: bound, never listening, so it is given no connection.
            # (cheroot binds its own way: its kinds keep one shared socket.)
            reuse_port = self._setting(self.args.kind, "server.kind") == "gevent"
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                raise listen_error(exc, (host, port)) from None
            if reuse_port:
                return sock
        sock.listen(backlog)
        sock.set_inheritable(True)
        return sock

    def _command(self) -> list[str]:
        a = self.args
        cmd = [sys.executable, "-m", "rtserver", "run", a.target]
        for name in a.config:
            cmd += ["-c", name]
        if a.script_name:
            cmd += ["--script-name", a.script_name]
        if a.kind:
            cmd += ["--kind", a.kind]
        if a.broker:
            cmd += ["--broker", a.broker]
        return cmd

    def _spawn(self) -> None:
        assert self.listener is not None
        if self.listener.family == socket.AF_UNIX or self._setting(self.args.kind, "server.kind") != "gevent":
            fd = self.listener.fileno()
            env = dict(os.environ, **{LISTEN_FD_ENV: str(fd)})
            proc = subprocess.Popen(self._command(), env=env, pass_fds=(fd,))
        else:
            host, port = self.listener.getsockname()[:2]
            env = dict(os.environ, **{REUSE_PORT_ENV: f"{host} {port}"})
            proc = subprocess.Popen(self._command(), env=env)
        self.workers[proc.pid] = (proc, time.monotonic())
        _log(f"Started worker {proc.pid}")

    def _reap(self) -> bool:
        """Replace workers that died; True when they keep dying at start (give up)."""
        for pid, (proc, started) in list(self.workers.items()):
            code = proc.poll()
            if code is None or self.stopping:
                continue
            del self.workers[pid]
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            _log(f"Worker {pid} died ({how}); starting a replacement")
            if time.monotonic() - started < _FAST_FAILURE_SECONDS:
                self.fast_failures += 1
                if self.fast_failures >= _FAST_FAILURES:
                    _log("Workers keep dying at start: giving up")
                    self._stop_all()
                    return True
            else:
                self.fast_failures = 0
            self._spawn()
        return False

    def _stop_all(self) -> None:
        grace = float(self._setting(None, "server.shutdown_timeout")) + 5
        for proc, _started in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for pid, (proc, _started) in list(self.workers.items()):
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log(f"Worker {pid} did not stop in {grace:.0f} s: killing it")
                proc.kill()
                proc.wait()
        self.workers.clear()
