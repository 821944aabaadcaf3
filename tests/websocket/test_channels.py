"""ChannelSocket: rtserver.js's protocol on the server, and the shipped client file."""

from __future__ import annotations

import filecmp
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rtserver
from rtserver.testing import TestServer, serve
from rtserver.websocket.channels import ChannelError, ChannelSocket, client_config, client_path

REPO = Path(__file__).resolve().parents[2]


class Guarded(ChannelSocket):
    max_channels = 2

    def can_join(self, channel: str) -> bool:
        if channel == "vip":
            raise ChannelError("VIPs only.", code="vip")
        return channel != "closed"

    def can_publish(self, channel: str, data: Any) -> bool:
        return data != "forbidden"

    def prepare_publish(self, channel: str, data: Any) -> Any:
        return {"said": data}

    def member_info(self, channel: str) -> Any:
        return {"who": self.query_params.get("who", "anon")}


class Root:
    ws = Guarded
    plain = ChannelSocket


#: These tests are about the protocol and its hooks: every channel open to anonymous
#: sockets (the policy's own refusals: tests/websocket/test_channel_policy.py).
OPEN = {"hub.namespaces": {"*": {"join": "anyone", "publish": True}}}


@pytest.fixture
def srv() -> Iterator[TestServer]:
    with serve(Root(), client_config(), global_config=OPEN) as s:
        yield s


def ask(ws: Any, request: Any) -> dict[str, Any]:
    ws.send(request if isinstance(request, (str, bytes)) else json.dumps(request))
    while True:
        msg = json.loads(ws.recv(timeout=5))
        if "op" in msg:
            return msg


def test_the_client_is_shipped_and_served(srv):
    assert filecmp.cmp(client_path(), REPO / "static" / "rtserver.js", shallow=False)
    status, headers, body = srv.get("/rtserver.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert body == Path(client_path()).read_bytes()


@pytest.mark.parametrize(
    "request_",
    ["not json", "[1]", json.dumps({"op": "join"}), json.dumps({"op": "join", "channel": "__broadcast__"}), b"\x00"],
)
def test_malformed_requests_get_bad_request(srv, request_):
    with srv.websocket_connect("/plain") as ws:
        reply = ask(ws, request_)
        assert reply["op"] == "error" and reply["error"] == "bad-request"
        assert ask(ws, {"op": "ping", "ref": "r"}) == {"op": "pong", "ref": "r"}  # still usable


def test_hooks_decide_and_shape(srv):
    with srv.websocket_connect("/ws?who=ann") as ws:
        assert ask(ws, {"op": "join", "channel": "closed", "ref": 1})["error"] == "forbidden"
        assert ask(ws, {"op": "join", "channel": "vip", "ref": 2}) == {
            "op": "error",
            "error": "vip",
            "message": "VIPs only.",
            "channel": "vip",
            "ref": 2,
        }
        assert ask(ws, {"op": "publish", "channel": "a", "data": 1})["error"] == "not-joined"
        joined = ask(ws, {"op": "join", "channel": "a", "history": 5})
        assert joined["op"] == "joined" and list(joined["presence"].values()) == [{"who": "ann"}]
        assert ask(ws, {"op": "join", "channel": "b"})["op"] == "joined"
        assert ask(ws, {"op": "join", "channel": "c"})["error"] == "too-many-channels"
        assert ask(ws, {"op": "publish", "channel": "a", "data": "forbidden"})["error"] == "forbidden"
        ok = ask(ws, {"op": "publish", "channel": "a", "data": "hi"})
        assert ok["op"] == "ok"
        assert rtserver.hub.history("a")[-1] == {"channel": "a", "id": ok["id"], "data": {"said": "hi"}}
        members = ask(ws, {"op": "presence", "channel": "a"})["members"]
        assert list(members.values()) == [{"who": "ann"}]
        assert ask(ws, {"op": "leave", "channel": "a"})["op"] == "left"
        assert ask(ws, {"op": "presence", "channel": "a"})["members"] == {}


def test_a_join_with_since_resumes_and_a_bad_since_is_refused(srv):
    first = rtserver.hub.publish("r", "one")
    second = rtserver.hub.publish("r", "two")
    with srv.websocket_connect("/plain") as ws:
        assert ask(ws, {"op": "join", "channel": "r", "since": -1})["error"] == "bad-request"
        ws.send(json.dumps({"op": "join", "channel": "r", "since": first}))
        got = json.loads(ws.recv(timeout=5))
        assert got == {"channel": "r", "id": second, "data": "two"}
        assert json.loads(ws.recv(timeout=5))["op"] == "joined"
