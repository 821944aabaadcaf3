"""The hub's channel policy through the browser protocol and the handler methods, on
real sockets with real sessions, with the memory broker and with Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import rtserver
from rtserver.testing import TestServer, serve
from rtserver.websocket.channels import ChannelSocket
from rtserver.websocket.policy import ChannelForbidden, RateLimited

NAMESPACES = {
    "room:*": {"join": "signed-in", "publish": True, "publish_rate": "3/10s"},
    "user:{user}": {"join": "bound", "publish": False},
    "feed:*": {"join": "anyone", "presence": False, "join_rate": "5/10s"},
    "jobs:*": {"join": "nobody"},
}


class Private(ChannelSocket):
    """The attacker's report: ``can_join`` refuses others' ``user:`` channels."""

    def can_join(self, channel: str) -> bool:
        return not channel.startswith("user:") or channel == f"user:{self.session.get('user')}"

    def member_info(self, channel: str) -> Any:
        return {"nick": self.session.get("user")}


class Direct(rtserver.WebSocket):
    """Python API: ``WebSocket.join``/``publish`` on the channel the query names."""

    def received_message(self, message: Any) -> None:
        op, channel = str(message).split(" ", 1)
        try:
            if op == "join":
                self.join(channel)
                result: Any = "joined"
            else:
                result = self.publish(channel, "hi")
        except RateLimited as exc:
            result = f"{exc.reason} {exc.retry_after}"
        except ChannelForbidden as exc:
            result = exc.reason
        self.send(str(result))


class Root:
    ws = Private
    direct = Direct

    @rtserver.expose
    def login(self, user: str) -> str:
        rtserver.session["user"] = user
        return "ok"


@pytest.fixture(params=["memory", "redis"])
def srv(request: pytest.FixtureRequest) -> Iterator[TestServer]:
    config: dict[str, Any] = {"hub.namespaces": NAMESPACES}
    if request.param == "redis":
        config["hub.broker"] = request.getfixturevalue("redis_server").url
    with serve(Root(), {"/": {"tools.sessions.on": True}}, global_config=config) as s:
        yield s


def login(srv: TestServer, user: str) -> dict[str, str]:
    status, headers, _ = srv.post("/login", {"user": user})
    assert status == 200
    return {"Cookie": headers["Set-Cookie"].split(";", 1)[0]}


def ask(ws: Any, **request: Any) -> dict[str, Any]:
    ws.send(json.dumps(request))
    while True:
        msg = json.loads(ws.recv(timeout=5))
        if "op" in msg:
            return msg


def test_a_private_channel_refuses_join_presence_history_and_publish_to_others(srv):
    with srv.websocket_connect("/ws", additional_headers=login(srv, "alice")) as alice:
        assert ask(alice, op="join", channel="user:alice")["op"] == "joined"
        rtserver.hub.publish("user:alice", "secret")  # server code: always allowed
        with srv.websocket_connect("/ws", additional_headers=login(srv, "bob")) as bob:
            for request in (
                {"op": "join", "channel": "user:alice"},
                {"op": "join", "channel": "user:alice", "since": 0},
                {"op": "join", "channel": "user:alice", "history": 10},
                {"op": "presence", "channel": "user:alice"},
                {"op": "publish", "channel": "user:alice", "data": "x"},
            ):
                bob.send(json.dumps(request))
                reply = json.loads(bob.recv(timeout=5))  # the first thing back: no history
                assert reply["op"] == "error" and reply["error"] in ("forbidden", "not-joined"), (request, reply)
                assert "members" not in reply and "secret" not in json.dumps(reply)
            # bob's own channel: he may join it, but clients may not publish there
            assert ask(bob, op="join", channel="user:bob")["op"] == "joined"
            assert ask(bob, op="publish", channel="user:bob", data="x")["error"] == "forbidden"
        assert rtserver.hub.history("user:alice")[-1]["data"] == "secret"
    assert rtserver.hub.stats()["refused"] >= 1


def test_anonymous_sockets_get_only_the_open_namespaces(srv):
    with srv.websocket_connect("/ws") as anon:
        assert ask(anon, op="join", channel="room:a")["error"] == "forbidden"
        assert ask(anon, op="presence", channel="room:a")["error"] == "forbidden"
        assert ask(anon, op="join", channel="unlisted")["error"] == "forbidden"  # the safe default
        assert ask(anon, op="join", channel="jobs:1")["error"] == "forbidden"
        joined = ask(anon, op="join", channel="feed:news")
        assert joined["op"] == "joined" and joined["presence"] == {}  # no presence in feeds
        assert ask(anon, op="presence", channel="feed:news")["error"] == "forbidden"
        assert ask(anon, op="publish", channel="feed:news", data="x")["error"] == "forbidden"
    with srv.websocket_connect("/ws", additional_headers=login(srv, "ann")) as ann:
        assert ask(ann, op="join", channel="room:a")["op"] == "joined"
        assert ask(ann, op="publish", channel="room:a", data="hi")["op"] == "ok"
        assert ask(ann, op="join", channel="unlisted")["op"] == "joined"  # signed-in may join
        assert ask(ann, op="publish", channel="unlisted", data="x")["error"] == "forbidden"
        assert ask(ann, op="leave", channel="unlisted")["op"] == "left"


def test_a_publish_flood_is_rate_limited_per_user_across_sockets(srv):
    cookie = login(srv, "ann")
    with (
        srv.websocket_connect("/ws", additional_headers=cookie) as one,
        srv.websocket_connect("/ws", additional_headers=cookie) as two,
        srv.websocket_connect("/ws", additional_headers=login(srv, "bob")) as bob,
    ):
        for ws in (one, two, bob):
            assert ask(ws, op="join", channel="room:r")["op"] == "joined"
        answers = [ask(ws, op="publish", channel="room:r", data=i) for i, ws in enumerate([one, two, one, two])]
        assert [a["op"] for a in answers] == ["ok", "ok", "ok", "error"]
        assert answers[-1]["error"] == "rate-limited" and 0 < answers[-1]["retry_after"] <= 10_000
        assert ask(bob, op="publish", channel="room:r", data="calm")["op"] == "ok"  # bob has his own budget


def test_a_join_storm_is_refused_with_retry_after(srv):
    with srv.websocket_connect("/ws") as ws:
        replies = []
        for i in range(8):  # bounded: 5 pass, the rest are refused
            replies.append(ask(ws, op="join", channel=f"feed:{i}"))
            ask(ws, op="leave", channel=f"feed:{i}")
        assert [r["op"] for r in replies] == ["joined"] * 5 + ["error"] * 3
        assert {r["error"] for r in replies[5:]} == {"rate-limited"}
        assert all(0 < r["retry_after"] <= 2_000 for r in replies[5:])
        assert rtserver.hub.channels_of(next(iter(rtserver.engine.websocket.handlers))) == []


def said(ws: Any, text: str) -> str:
    """Send one command to ``Direct``; its answer (skipping the channel's messages)."""
    ws.send(text)
    while True:
        got = ws.recv(timeout=5)
        if not got.startswith('{"channel"'):
            return str(got)


def test_the_handler_methods_pass_the_policy(srv):
    with srv.websocket_connect("/direct") as anon:
        assert said(anon, "join room:x") == "forbidden"
        assert said(anon, "publish feed:x") == "forbidden"
        assert said(anon, "join feed:x") == "joined"
    with srv.websocket_connect("/direct", additional_headers=login(srv, "ann")) as ann:
        assert said(ann, "join user:bob") == "forbidden"
        assert said(ann, "join user:ann") == "joined"
        assert said(ann, "join room:x") == "joined"
        assert [said(ann, "publish room:x").isdigit() for _ in range(3)] == [True] * 3
        reason, retry = said(ann, "publish room:x").split()
        assert reason == "rate-limited" and 0 < int(retry) <= 10_000
