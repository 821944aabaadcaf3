"""The process-wide objects: ``engine``, ``tree``, ``server``, ``config``, ``tools``.

The global config drives them: ``engine.*`` keys set plugin attributes
(``engine.timeout_monitor.frequency``) or subscribe/unsubscribe them (``.on``),
``server.*`` keys configure ``rtserver.server`` and ``server.NAME.*`` create more
servers, ``log.*`` keys set up logging.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from . import autoreload
from .bus.bus import EX_SOFTWARE, Bus
from .bus.plugins import PIDFile, SignalHandler, TimeoutMonitor
from .config import (
    as_bool,
    declare,
    declare_pattern,
    declared,
    global_config,
    optional_string,
    positive,
    string,
)
from .cooperative import NotCooperative, ensure_cooperative
from .errors import ConfigError, StartupError
from .servers.base import Server
from .web.app import Application, Tree
from .web.builtin_tools import tools
from .websocket.plugin import WebSocketPlugin

__all__ = ["Engine", "config", "engine", "quickstart", "server", "tools", "tree"]

declare(
    "engine.timeout_monitor.on",
    True,
    "Run the timeout monitor, which checks every request in flight against response.timeout.",
    as_bool,
    scope="global",
)
declare(
    "engine.timeout_monitor.frequency",
    60,
    "Seconds between two checks of the timeout monitor.",
    positive,
    scope="global",
)
declare(
    "engine.timeout_monitor.interrupt",
    True,
    "Interrupt a timed-out request at its next blocking point and answer 503 (gevent server; CherryPy could only flag it).",
    as_bool,
    scope="global",
)
declare(
    "engine.autoreload.on",
    False,
    "Restart the app when one of its Python files or the config files it read changes (development; "
    "rtserver run --reload sets it): engine.start() makes the process a supervisor that runs the app "
    "as a child process. Ignored under rtserver run --workers.",
    as_bool,
    scope="global",
)
declare(
    "engine.pidfile", None, "Write the process id to this file while the engine runs.", optional_string, scope="global"
)
declare(
    "engine.websocket.close_timeout",
    10,
    "Seconds the engine waits on stop for every WebSocket's closing handshake (after its 1001) before the servers go down.",
    positive,
    scope="global",
)
declare("log.screen", True, "Write the access and error logs to stderr.", as_bool, scope="global")
declare("log.access_file", "", "File the access log (Combined Log Format) is appended to.", string, scope="global")
declare("log.error_file", "", "File the error log is appended to.", string, scope="global")
declare("log.level", "INFO", "Level of the rtserver loggers (DEBUG, INFO, WARNING, ERROR).", string, scope="global")
declare_pattern(
    r"server\.[A-Za-z_][A-Za-z0-9_]*\.[a-z_]+",
    "Any server.* key under a NAME creates (or configures) the extra server NAME, e.g. server.admin.socket_port.",
)

config = global_config


class Engine(Bus):
    """The engine: the bus with rtserver's plugins.

    ``engine.timeout_monitor`` (subscribed by default), ``engine.signal_handler``
    (alias ``engine.signals``; subscribed only by :func:`quickstart`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.timeout_monitor = TimeoutMonitor(self)
        self.timeout_monitor.subscribe()
        self.signal_handler = SignalHandler(self)
        self.pidfile: PIDFile | None = None
        #: Every open WebSocket of the process (broadcast, 1001 on stop).
        self.websocket = WebSocketPlugin(self)
        self.websocket.subscribe()

    @property
    def signals(self) -> SignalHandler:
        """Alias of ``signal_handler`` (``engine.signals.subscribe()``)."""
        return self.signal_handler

    def start(self) -> None:
        """Check the mounted applications' config, make the process cooperative when
        one of rtserver's servers is to serve, then start (see :meth:`Bus.start`)."""
        serving = any(isinstance(owner, Server) for owner in _subscribed(self, "start"))
        # First, unpatched: the reloader's supervisor serves nothing, and its child
        # reports the app's config errors (validate) while the supervisor keeps watching.
        autoreload.on_engine_start(self, serving)
        tree.validate()
        if serving:
            try:
                ensure_cooperative()
            except NotCooperative as exc:
                self.log(str(exc), level=logging.ERROR)
                self.exit(EX_SOFTWARE)
                raise
        monitor_on = self.timeout_monitor in _subscribed(self, "start")
        tree.set_monitor(self.timeout_monitor if monitor_on else None)
        super().start()


def _subscribed(bus: Bus, channel: str) -> list[Any]:
    owners = []
    for listener in bus.listeners.get(channel, ()):
        owners.append(getattr(listener, "__self__", None))
    return owners


engine = Engine()
tree = Tree()
server = Server(engine)
server.subscribe()


class ServerMap(dict[str, Server]):
    """The extra servers by name (``server.NAME.*`` keys create them).

    It also hands out the cheroot server classes, so that the guide's spelling
    ``rtserver.server.httpserver = rtserver.servers.NativeServer(rtserver.server)``
    works (cheroot is imported on first use).
    """

    @property
    def NativeServer(self) -> Any:
        """:class:`rtserver.servers.cheroot.NativeServer` (cheroot, no WSGI)."""
        from .servers.cheroot import NativeServer

        return NativeServer

    @property
    def CherootServer(self) -> Any:
        """:class:`rtserver.servers.cheroot.CherootServer` (cheroot's WSGI server)."""
        from .servers.cheroot import CherootServer

        return CherootServer


servers = ServerMap()

_SERVER_KEYS_RE = re.compile(r"server\.([A-Za-z_][A-Za-z0-9_]*)\.([a-z_]+)\Z")


def _apply_config(changed: dict[str, Any]) -> None:
    server_values: dict[str, Any] = {}
    named: dict[str, dict[str, Any]] = {}
    for key, value in changed.items():
        ns, _, rest = key.partition(".")
        if ns == "engine":
            _apply_engine(rest, value)
        elif ns == "server":
            m = _SERVER_KEYS_RE.match(key)
            if m and f"server.{m.group(1)}" not in declared():
                sub = m.group(2)
                if f"server.{sub}" not in declared():
                    raise ConfigError(f"unknown config key {key!r} (server.{sub} is not a server key)")
                named.setdefault(m.group(1), {})[sub] = declared()[f"server.{sub}"].coerce(value, "global config: ")
            else:
                server_values[rest] = value
        elif ns == "log":
            _configure_logging()
    if server_values:
        server.configure(server_values)
    for name, values in named.items():
        extra = servers.get(name)
        if extra is None:
            extra = servers[name] = Server(engine)
            extra.subscribe()
        extra.configure(values)


def _apply_engine(rest: str, value: Any) -> None:
    if rest == "timeout_monitor.on":
        if value:
            engine.timeout_monitor.subscribe()
        else:
            engine.timeout_monitor.unsubscribe()
    elif rest == "timeout_monitor.frequency":
        engine.timeout_monitor.frequency = value
    elif rest == "timeout_monitor.interrupt":
        engine.timeout_monitor.interrupt = value
    elif rest == "websocket.close_timeout":
        engine.websocket.close_timeout = value
    elif rest == "pidfile":
        if engine.pidfile is not None:
            engine.pidfile.unsubscribe()
            engine.pidfile = None
        if value:
            engine.pidfile = PIDFile(engine, value)
            engine.pidfile.subscribe()
    elif rest == "autoreload.on":
        autoreload.setting_changed(engine, value)  # read by engine.start; too late after it


_LOG_FORMAT = "[%(asctime)s] %(name)s %(levelname)s %(message)s"
_handlers: list[logging.Handler] = []


def _configure_logging() -> None:
    """(Re)attach handlers per log.screen, log.access_file, log.error_file."""
    access = logging.getLogger("rtserver.access")
    errors_ = logging.getLogger("rtserver")
    for handler in _handlers:
        access.removeHandler(handler)
        errors_.removeHandler(handler)
        handler.close()
    _handlers.clear()
    level = str(config.get_key("log.level")).upper()
    errors_.setLevel(getattr(logging, level, logging.INFO))
    access.propagate = False

    def attach(logger: logging.Logger, handler: logging.Handler, fmt: str) -> None:
        handler.setFormatter(logging.Formatter(fmt))
        logger.addHandler(handler)
        _handlers.append(handler)

    access_enabled = False
    if config.get_key("log.screen"):
        attach(errors_, logging.StreamHandler(sys.stderr), _LOG_FORMAT)
        attach(access, logging.StreamHandler(sys.stdout), "%(message)s")
        access_enabled = True
    if config.get_key("log.access_file"):
        attach(access, logging.FileHandler(config.get_key("log.access_file"), encoding="utf-8"), "%(message)s")
        access_enabled = True
    if config.get_key("log.error_file"):
        attach(errors_, logging.FileHandler(config.get_key("log.error_file"), encoding="utf-8"), _LOG_FORMAT)
    access.setLevel(logging.INFO if access_enabled else logging.WARNING)


config.on_update(_apply_config)


def quickstart(root: Any = None, script_name: str = "", config: Any = None) -> None:
    """Mount ``root`` with ``config``, subscribe the signal handler, start and block.

    ``config`` is an app config (dict or INI filename); its ``[global]`` section goes to
    the global config, as CherryPy does. A wrong config (:class:`ConfigError`) or a
    failed start (:class:`StartupError`) is logged as its one line, without a
    traceback, and the process exits with 70.
    """
    try:
        if config is not None:
            from .config import normalize

            sections = normalize(config)
            if "global" in sections:
                global_config.update(sections.pop("global"))
            config = sections
        _configure_logging()
        if root is not None:
            tree.mount(root, script_name, config)
        engine.signals.subscribe()
        engine.start()
    except (ConfigError, StartupError) as exc:
        _configure_logging()
        engine.log(str(exc), level=logging.ERROR)
        engine.exit(EX_SOFTWARE)
        raise
    engine.block()


__all__ += ["Application", "servers"]
