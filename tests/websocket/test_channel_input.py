"""Malformed channel requests get a protocol error reply, never a 1011 close or a
traceback: deep nesting, lone surrogates, out-of-range ids; on both brokers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from rtserver.testing import TestServer, serve
from rtserver.websocket.channels import ChannelSocket


class Root:
    ws = ChannelSocket


@pytest.fixture(params=["memory", "redis"])
def srv(request: pytest.FixtureRequest) -> Iterator[TestServer]:
    config: dict[str, Any] = {}
    if request.param == "redis":
        redis = request.getfixturevalue("redis_server")
        config = {"global": {"hub.broker": redis.url}}
    # Anonymous sockets may join (the default lets signed-in users only).
    open_channels = {"hub.namespaces": {"*": {"join": "anyone", "publish": True}}}
    with serve(Root(), config, global_config=open_channels) as s:
        yield s


def ask(ws: Any, text: str) -> dict[str, Any]:
    ws.send(text)
    while True:
        msg = json.loads(ws.recv(timeout=5))
        if "op" in msg:
            return msg


BAD = {
    "deep nesting": '{"op": "publish", "channel": "a", "data": ' + "[" * 5_000 + "]" * 5_000 + "}",
    "deep nesting, unclosed": "[" * 8_000,
    "lone surrogate in the channel": '{"op": "join", "channel": "a\\ud800"}',
    "lone surrogate in the ref": '{"op": "ping", "ref": "\\udfff"}',
    "lone surrogate in data": '{"op": "publish", "channel": "a", "data": "\\ud83d"}',
    "since above 2**64": json.dumps({"op": "join", "channel": "a", "since": 2**64 + 1}),
    "since at 2**63": json.dumps({"op": "join", "channel": "a", "since": 2**63}),
    "NaN": '{"op": "publish", "channel": "a", "data": NaN}',
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_requests_get_a_bad_request_reply(srv: TestServer, name: str) -> None:
    with srv.websocket_connect("/ws") as ws:
        reply = ask(ws, BAD[name])
        assert reply["op"] == "error" and reply["error"] == "bad-request", reply
        assert "ref" not in reply or isinstance(reply["ref"], (int, str))
        # The socket is still usable, and the next reply is a plain pong.
        assert ask(ws, '{"op": "ping", "ref": 7}') == {"op": "pong", "ref": 7}


def test_the_largest_id_is_accepted(srv: TestServer) -> None:
    with srv.websocket_connect("/ws") as ws:
        reply = ask(ws, json.dumps({"op": "join", "channel": "a", "since": 2**63 - 1, "ref": 1}))
        assert reply["op"] == "joined" and reply["channel"] == "a"


class CookieEcho(ChannelSocket):
    def opened(self) -> None:
        self.send(json.dumps({k: m.value for k, m in self.cookies.items()}))


def test_handler_cookies_survive_a_malformed_neighbour() -> None:
    class App:
        ws = CookieEcho

    with (
        serve(App()) as s,
        s.websocket_connect("/ws", additional_headers={"Cookie": 'consent={"a":1}; a b; id=7'}) as ws,
    ):
        assert json.loads(ws.recv(timeout=5)) == {"consent": '{"a":1}', "id": "7"}
