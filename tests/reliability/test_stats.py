"""``tools.stats``: off by default, JSON and Prometheus text, every figure counted."""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

import gevent
import pytest
from ws4py.websocket import EchoWebSocket

import rtserver
from rtserver import stats as stats_module
from rtserver.testing import serve

pytestmark = pytest.mark.timeout(30)


class ChannelSocket(rtserver.WebSocket):
    """Joins channel ``room`` on open."""

    def opened(self) -> None:
        self.join("room")


class Root:
    echo = EchoWebSocket
    room = ChannelSocket

    @rtserver.expose
    def index(self) -> str:
        return "hello"

    @rtserver.expose
    def slow(self) -> str:
        gevent.sleep(5)
        return "late"


# sample_interval 0: every read scans, so the figures below are those of the moment.
CONFIG = {"/stats": {"tools.stats.on": True, "tools.stats.sample_interval": 0}, "/slow": {"response.timeout": 0.1}}
# The room socket joins anonymously (the default lets signed-in users only).
OPEN_ROOM = {"hub.namespaces": {"room": {"join": "anyone"}}}
GLOBAL = {"engine.timeout_monitor.frequency": 0.05, **OPEN_ROOM}


def get_json(srv: Any, path: str = "/stats") -> dict[str, Any]:
    status, headers, body = srv.get(path)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    data: dict[str, Any] = json.loads(body)
    return data


def test_off_by_default() -> None:
    with serve(Root()) as srv:
        status, _, _ = srv.get("/stats")
        assert status == 404


def test_json_counts_sockets_messages_failures_and_timeouts() -> None:
    with serve(Root(), CONFIG, global_config=GLOBAL) as srv:
        before = get_json(srv)
        with srv.websocket_connect("/echo") as ws, srv.websocket_connect("/room") as member:
            for text in ("one", "two", "three"):
                ws.send(text)
                assert ws.recv(timeout=5) == text
            ws.send(b"\x00" * 10)
            assert ws.recv(timeout=5) == b"\x00" * 10
            rtserver.hub.publish("room", "hi")
            assert json.loads(member.recv(timeout=5))["data"] == "hi"
            # Refused upgrades: a bad version (426) and a cross-site origin (403).
            status, _, _ = srv.get(
                "/echo",
                headers={
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Version": "8",
                },
            )
            assert status == 426
            status, _, _ = srv.get(
                "/echo",
                headers={
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Version": "13",
                    "Origin": "https://evil.example",
                },
            )
            assert status == 403
            status, _, _ = srv.get("/slow")
            assert status == 503
            after = get_json(srv)
        # Message counters are process-wide: compare with the first reading.
        ws_before, ws_after = before["websocket"], after["websocket"]
        assert ws_after["open"] == 2
        assert ws_after["opened_total"] - ws_before["opened_total"] == 2
        assert ws_after["messages_in"] - ws_before["messages_in"] == 4
        assert ws_after["bytes_in"] - ws_before["bytes_in"] == len("onetwothree") + 10
        assert ws_after["messages_out"] - ws_before["messages_out"] >= 5  # 4 echoes + 1 hub message
        assert ws_after["bytes_out"] - ws_before["bytes_out"] >= len("onetwothree") + 10
        failures = {(f["status"], f["reason"]): f["count"] for f in ws_after["handshake_failures"]}
        old = {(f["status"], f["reason"]): f["count"] for f in ws_before["handshake_failures"]}
        assert failures[426, "unsupported WebSocket version"] - old.get((426, "unsupported WebSocket version"), 0) == 1
        assert failures[403, "origin not allowed"] - old.get((403, "origin not allowed"), 0) == 1
        assert after["hub"]["sockets_per_channel"] == {"room": 1}
        assert after["hub"]["published"] - before["hub"]["published"] == 1
        assert after["http"]["connections"] >= 3  # two sockets and this request
        assert after["http"]["servers"]["default"] == after["http"]["connections"]
        assert after["timeouts"]["answered_503"] - before["timeouts"]["answered_503"] == 1
        assert after["timeouts"]["interrupted"] - before["timeouts"]["interrupted"] == 1
        proc = after["process"]
        assert proc["rss_bytes"] > 10 * 2**20
        assert proc["open_fds"] > 3
        assert proc["greenlets"] >= 3  # the hub, the two sockets' readers
        # Closed sockets leave the gauges.
        deadline = time.monotonic() + 5
        while srv.server.httpserver is not None and time.monotonic() < deadline:
            if get_json(srv)["websocket"]["open"] == 0:
                break
            gevent.sleep(0.02)
        final = get_json(srv)
        assert final["websocket"]["open"] == 0
        assert final["hub"]["sockets_per_channel"] == {}


_SAMPLE = re.compile(
    r"(rtserver_[a-zA-Z0-9_]+)"
    r'(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})?'
    r" (-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)\Z"
)


def check_exposition(text: str) -> dict[str, str]:
    """Validate the text exposition format 0.0.4; return ``{metric: type}``."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helped: set[str] = set()
    seen_samples: set[str] = set()
    for line in text.splitlines():
        assert line, "no blank lines inside"
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(r"rtserver_[a-zA-Z0-9_]+", name)
            assert name not in helped
            helped.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge")
            assert name in helped and name not in types and name not in seen_samples
            types[name] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"bad sample line {line!r}"
            name = m.group(1)
            assert name in types, f"sample {name} before its TYPE"
            if types[name] == "counter":
                assert name.endswith("_total")
            seen_samples.add(name)
    return types


def test_prometheus_format() -> None:
    with serve(Root(), CONFIG, global_config=OPEN_ROOM) as srv, srv.websocket_connect("/room") as ws:
        ws.send("x")
        status, headers, body = srv.get("/stats?format=prometheus")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        types = check_exposition(body.decode("utf-8"))
        for name in (
            "rtserver_http_connections",
            "rtserver_websockets_open",
            "rtserver_websocket_messages_received_total",
            "rtserver_websocket_sent_bytes_total",
            "rtserver_hub_channel_sockets",
            "rtserver_hub_dropped_slow_consumers_total",
            "rtserver_websocket_slow_consumers_total",
            "rtserver_request_timeouts_total",
            "rtserver_process_resident_memory_bytes",
            "rtserver_process_open_fds",
            "rtserver_process_greenlets",
        ):
            assert name in types
        text = body.decode()
        assert 'rtserver_hub_channel_sockets{channel="room"} 1' in text
        assert "rtserver_websockets_open 1" in text
        # The /metrics spelling answers the same format.
        status, headers, _ = srv.get("/stats/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_prometheus_labels_are_escaped() -> None:
    data = stats_module.snapshot()
    data["hub"]["sockets_per_channel"] = {'a"b\\c\nd': 2}
    data["websocket"]["handshake_failures"] = [{"status": 400, "reason": 'say "no"', "count": 1}]
    types = check_exposition(stats_module.prometheus_text(data))
    assert "rtserver_websocket_handshake_failures_total" in types


def test_stats_config_is_checked() -> None:
    with (
        pytest.raises(rtserver.ConfigError, match=r"tools\.stats\.colour"),
        serve(Root(), {"/stats": {"tools.stats.on": True, "tools.stats.colour": 1}}),
    ):
        pass


def test_handshake_counter_of_a_raw_upgrade() -> None:
    """A malformed key counts under its reason, whatever the client."""
    with serve(Root(), CONFIG, global_config=OPEN_ROOM) as srv:
        before = rtserver.engine.websocket.handshake_failures[400, "Sec-WebSocket-Key must be 16 bytes in base64"]
        with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
            sock.sendall(
                b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n"
            )
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
        after = rtserver.engine.websocket.handshake_failures[400, "Sec-WebSocket-Key must be 16 bytes in base64"]
        assert after == before + 1
