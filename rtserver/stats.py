"""``tools.stats``: the process's health counters as JSON or Prometheus text.

Off by default. Turn it on for one path; it answers only the peers listed in
``tools.stats.allow`` (loopback by default) and answers anyone else 404, the page of a
path that does not exist, so a scanner cannot even tell it is there. ::

    [/stats]
    tools.stats.on = True
    tools.stats.allow = ['127.0.0.1', '::1', '10.0.0.0/8']   # a Prometheus on the LAN

Behind a reverse proxy on the same host every client comes from loopback: turn
``tools.proxy`` on (the check then sees the forwarded client address) or refuse the
path at the proxy.

``GET /stats`` answers JSON; ``GET /stats?format=prometheus`` (or any path under the
section ending in ``/metrics``, like ``/stats/metrics``) answers the Prometheus text
exposition format (version 0.0.4), every metric named ``rtserver_*``.

What is counted, and where (each cheap enough for the hot path, or read on demand):

* open HTTP connections: ``connection_count`` of every running server;
* open WebSockets, opened since start: ``engine.websocket``;
* messages and payload bytes in and out, slow consumers closed: the runtime's
  :data:`rtserver.websocket.connection.counters`;
* sockets per hub channel, hub messages published/delivered, slow consumers the
  hub dropped, channel operations its policy refused: :meth:`Hub.stats` and
  :meth:`Hub.channel_sizes`;
* refused upgrades by status and reason: ``engine.websocket.handshake_failures``;
* request timeouts: the timeout monitor's interruptions and the 503s answered;
* the process: resident memory, open file descriptors, live greenlets.

A request costs O(1): counters are kept as the code runs and read as they are. The
figures that can only be had by a scan — live greenlets (a walk of every object the
garbage collector tracks), open file descriptors (a directory listing) and the
per-channel socket counts (a pass over every channel) — are *sampled*: scanned at most
once per ``tools.stats.sample_interval`` seconds (10) and served from the sample in
between, however often the page is read; ``sampled_age`` says how old the sample is.

:func:`snapshot` returns the same figures as a dict, for scripts and tests.
"""

from __future__ import annotations

import gc
import heapq
import json
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from .errors import ConfigError, NotFound
from .web.builtin_tools import tools
from .web.context import current_request, current_response
from .web.httputil import address_set
from .web.tools import HandlerTool

__all__ = ["prometheus_text", "snapshot", "stats"]

_STARTED = time.time()
_PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _open_fds() -> int | None:
    for path in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(path))
        except OSError:
            continue
    return None


def _greenlets() -> int | None:
    try:
        from greenlet import greenlet
    except ImportError:  # pragma: no cover - gevent depends on greenlet
        return None
    # A walk of every tracked object: a few ms per 100,000 objects, hence sampled.
    # type(), not isinstance(): isinstance() of a dead weak proxy raises. Dead
    # greenlets still awaiting the cyclic collector do not count.
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), greenlet) and not obj.dead)


class _Sample:
    """The figures that need a scan, taken at most once per ``interval`` seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.taken = 0.0  # monotonic time of the sample; 0: none yet
        self.greenlets: int | None = None
        self.open_fds: int | None = None
        self.channels: list[tuple[str, int]] = []  # the largest, by size
        self.limit = 0  # how many channels the sample holds

    def get(self, interval: float, channels: int) -> _Sample:
        now = time.monotonic()
        if self.taken and now - self.taken < interval and channels <= self.limit:
            return self
        # One scan at a time: requests arriving meanwhile serve the previous sample
        # (or wait for the first one).
        if not self._lock.acquire(blocking=not self.taken):
            return self
        try:
            from .websocket.hub import hub

            sizes = hub.channel_sizes()
            self.channels = heapq.nsmallest(max(0, channels), sizes.items(), key=lambda item: (-item[1], item[0]))
            self.limit = channels
            self.greenlets = _greenlets()
            self.open_fds = _open_fds()
            self.taken = time.monotonic()
        finally:
            self._lock.release()
        return self

    def age(self) -> float:
        return round(time.monotonic() - self.taken, 3) if self.taken else 0.0


_sample = _Sample()


def _servers() -> dict[str, Any]:
    from . import runtime

    servers = {"default": runtime.server, **runtime.servers}
    counts: dict[str, Any] = {}
    for name, server in servers.items():
        httpserver = getattr(server, "httpserver", None)
        count = getattr(httpserver, "connection_count", None) if getattr(server, "running", False) else None
        counts[name] = count if isinstance(count, int) else None
    return counts


def snapshot(channels: int = 100, sample_interval: float = 0) -> dict[str, Any]:
    """Every figure of the stats page as a JSON-able dict.

    ``channels`` caps how many hub channels are listed (the largest first).
    ``sample_interval``: reuse the scanned figures (greenlets, file descriptors,
    channel sizes) if they are younger than this many seconds; 0 scans now.
    """
    from . import runtime
    from .web import app as _app
    from .websocket.connection import counters
    from .websocket.hub import hub

    plugin = runtime.engine.websocket
    servers = _servers()
    sample = _sample.get(sample_interval, channels)
    largest = sample.channels[: max(0, channels)]
    failures = [
        {"status": status, "reason": reason, "count": count}
        for (status, reason), count in sorted(plugin.handshake_failures.items())
    ]
    hub_stats = hub.stats()
    return {
        "uptime": round(time.time() - _STARTED, 3),
        "http": {
            "connections": sum(c for c in servers.values() if c is not None),
            "servers": servers,
        },
        "websocket": {
            "open": plugin.count,
            "opened_total": plugin.opened_total,
            "messages_in": counters.messages_in,
            "bytes_in": counters.bytes_in,
            "messages_out": counters.messages_out,
            "bytes_out": counters.bytes_out,
            "slow_consumers_closed": counters.slow_consumers,
            "handshake_failures": failures,
        },
        "hub": {
            "published": hub_stats["published"],
            "delivered": hub_stats["delivered"],
            "dropped_slow_consumers": hub_stats["dropped_slow_consumers"],
            "refused": hub_stats["refused"],
            "subscribers": hub_stats["subscribers"],
            "channels": hub_stats["channels"],
            "sockets_per_channel": dict(largest),
            "broker": hub_stats["broker"],
            "connected": hub_stats["connected"],
        },
        "timeouts": {
            "interrupted": runtime.engine.timeout_monitor.interrupted,
            "answered_503": _app.counters["timeouts"],
        },
        "process": {
            "pid": os.getpid(),
            "rss_bytes": _rss_bytes(),
            "open_fds": sample.open_fds,
            "greenlets": sample.greenlets,
        },
        "sampled_age": sample.age(),
    }


def _label(value: Any) -> str:
    # Exposition format: backslash, double quote and newline are escaped in labels.
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(data: dict[str, Any]) -> str:
    """The figures of :func:`snapshot` in the Prometheus text exposition format."""
    lines: list[str] = []

    def metric(name: str, kind: str, doc: str, samples: list[tuple[dict[str, Any], Any]]) -> None:
        samples = [(labels, value) for labels, value in samples if value is not None]
        if not samples:
            return
        full = f"rtserver_{name}"
        lines.append(f"# HELP {full} {doc}")
        lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            number = int(value) if isinstance(value, bool) else value
            lines.append(f"{full}{{{text}}} {number}" if text else f"{full} {number}")

    http, ws, hub, timeouts, proc = data["http"], data["websocket"], data["hub"], data["timeouts"], data["process"]
    metric("uptime_seconds", "gauge", "Seconds since rtserver was imported.", [({}, data["uptime"])])
    metric(
        "http_connections",
        "gauge",
        "Open HTTP connections (WebSockets included), by server.",
        [({"server": name}, count) for name, count in http["servers"].items()],
    )
    metric("websockets_open", "gauge", "Open WebSockets.", [({}, ws["open"])])
    metric("websockets_opened_total", "counter", "WebSockets opened since start.", [({}, ws["opened_total"])])
    metric("websocket_messages_received_total", "counter", "Data messages received.", [({}, ws["messages_in"])])
    metric(
        "websocket_received_bytes_total", "counter", "Payload bytes of the messages received.", [({}, ws["bytes_in"])]
    )
    metric("websocket_messages_sent_total", "counter", "Data messages sent.", [({}, ws["messages_out"])])
    metric("websocket_sent_bytes_total", "counter", "Payload bytes of the messages sent.", [({}, ws["bytes_out"])])
    metric(
        "websocket_slow_consumers_total",
        "counter",
        "Sockets closed by the runtime because their send queue was full.",
        [({}, ws["slow_consumers_closed"])],
    )
    metric(
        "websocket_handshake_failures_total",
        "counter",
        "Refused WebSocket upgrades, by status and reason.",
        [({"status": f["status"], "reason": f["reason"]}, f["count"]) for f in ws["handshake_failures"]],
    )
    metric("hub_published_total", "counter", "Messages published to the hub.", [({}, hub["published"])])
    metric("hub_delivered_total", "counter", "Hub messages handed to local sockets.", [({}, hub["delivered"])])
    metric(
        "hub_dropped_slow_consumers_total",
        "counter",
        "Subscribers the hub dropped as slow consumers.",
        [({}, hub["dropped_slow_consumers"])],
    )
    metric(
        "hub_refused_total",
        "counter",
        "Channel operations of sockets the hub's policy refused (forbidden or rate-limited).",
        [({}, hub.get("refused"))],
    )
    metric("hub_channels", "gauge", "Hub channels with local subscribers.", [({}, hub["channels"])])
    metric(
        "hub_channel_sockets",
        "gauge",
        "Local sockets subscribed, by channel (the largest channels only).",
        [({"channel": name}, count) for name, count in hub["sockets_per_channel"].items()],
    )
    metric(
        "request_timeouts_interrupted_total",
        "counter",
        "Requests interrupted by the timeout monitor.",
        [({}, timeouts["interrupted"])],
    )
    metric(
        "request_timeouts_total",
        "counter",
        "Requests answered 503 for running past response.timeout.",
        [({}, timeouts["answered_503"])],
    )
    metric("process_resident_memory_bytes", "gauge", "Resident memory of the process.", [({}, proc["rss_bytes"])])
    metric("process_open_fds", "gauge", "Open file descriptors of the process (sampled).", [({}, proc["open_fds"])])
    metric("process_greenlets", "gauge", "Live greenlets of the process (sampled).", [({}, proc["greenlets"])])
    metric(
        "stats_sample_age_seconds",
        "gauge",
        "Age of the sampled figures: greenlets, open file descriptors, sockets per channel.",
        [({}, data.get("sampled_age"))],
    )
    return "\n".join(lines) + "\n"


#: Loopback only: the figures tell how loaded the server is, and who may ask is a
#: decision for the operator to make.
_LOOPBACK = ("127.0.0.0/8", "::1")


def stats(
    format: str = "json",
    channels: int = 100,
    allow: Sequence[str] = _LOOPBACK,
    sample_interval: float = 10,
) -> bool:
    """Answer with the process's health counters (JSON, or Prometheus text format).

    ``?format=prometheus`` (or ``?format=json``) chooses per request; a path ending
    in ``/metrics`` answers Prometheus text. Peers not in ``allow`` get a 404.

    Args:
        format: the default format of the path: 'json' or 'prometheus'.
        channels: most hub channels listed with their socket counts (the largest first).
        allow: peer addresses or networks answered ('10.0.0.0/8'; 'unix' for a Unix socket;
            '0.0.0.0/0' and '::/0' for anyone); others get 404, as if the path did not exist.
        sample_interval: seconds a sample of the scanned figures (greenlets, file descriptors,
            channel sizes) is served before the next scan (0: scan on every request).
    """
    request = current_request()
    if request.wsgi_environ.get("REMOTE_ADDR") not in address_set(allow):
        raise NotFound(request.path_info)
    response = current_response()
    asked = request.params.get("format")
    if isinstance(asked, str) and asked in ("json", "prometheus"):
        format = asked
    elif request.path_info.rstrip("/").endswith("/metrics"):
        format = "prometheus"
    data = snapshot(channels, sample_interval)
    response.headers["Cache-Control"] = "no-store"
    if format == "prometheus":
        response.headers["Content-Type"] = _PROMETHEUS_TYPE
        response.body = prometheus_text(data).encode("utf-8")
    else:
        response.headers["Content-Type"] = "application/json"
        response.body = json.dumps(data, separators=(",", ":")).encode("utf-8")
    return True


class _StatsTool(HandlerTool):
    """``tools.stats``, whose ``allow`` list and interval are checked at start-up."""

    def check_args(self, args: dict[str, Any], where: str = "") -> None:
        super().check_args(args, where)
        if "allow" in args:
            try:
                address_set(args["allow"])
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}tools.stats.allow = {args['allow']!r}: {exc}") from None
        interval = args.get("sample_interval", 0)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
            raise ConfigError(f"{where}tools.stats.sample_interval = {interval!r}: expected a number of seconds >= 0")


tools.stats = _StatsTool(stats)
