"""The channel policy at the hub's socket-bound entry points (memory and Redis), and
the validation of ``hub.namespaces``."""

from __future__ import annotations

from typing import Any

import pytest

from rtserver.config import Config
from rtserver.errors import ConfigError, HubError
from rtserver.websocket.policy import ChannelForbidden, Policy, RateLimited

from .fakes import FakeSocket, running_hub

NAMESPACES = {
    "user:{user}": {"join": "bound"},
    "room:*": {"join": "signed-in", "publish": True, "presence_read": "members", "join_rate": "3/10s"},
}


class User(FakeSocket):
    """A socket whose page signed ``user`` in (None: anonymous)."""

    def __init__(self, user: str | None) -> None:
        super().__init__(user or "anon")
        self.session = {"user": user} if user else {}


@pytest.fixture(params=["memory", "redis"])
def broker(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("redis_server").url if request.param == "redis" else "memory"


def test_every_socket_entry_point_is_refused_and_server_code_is_not(broker: str) -> None:
    with running_hub(broker=broker, namespaces=NAMESPACES) as hub:
        alice, bob, anon = User("alice"), User("bob"), User(None)
        hub.subscribe(alice, "user:alice", {"nick": "alice"})
        assert hub.publish("user:alice", "from the server") > 0
        for call in (
            lambda: hub.subscribe(bob, "user:alice"),
            lambda: hub.subscribe(bob, "user:alice", since=0),
            lambda: hub.presence("user:alice", ws=bob),
            lambda: hub.history("user:alice", ws=bob),
            lambda: hub.publish("user:alice", "x", ws=alice),  # clients may not publish here
            lambda: hub.subscribe(anon, "room:a"),
            lambda: hub.subscribe(anon, "anything"),  # the default: signed-in users only
        ):
            with pytest.raises(ChannelForbidden) as refused:
                call()
            assert isinstance(refused.value, HubError) and refused.value.reason == "forbidden"
        assert hub.channels_of(bob) == [] and hub.channels_of(anon) == []
        assert list(hub.presence("user:alice", ws=alice).values()) == [{"nick": "alice"}]
        # presence_read = members: bob may join room:a but reads its presence only once in
        hub.subscribe(alice, "room:a", {"nick": "alice"})
        with pytest.raises(ChannelForbidden):
            hub.presence("room:a", ws=bob)
        hub.subscribe(bob, "room:a")
        assert list(hub.presence("room:a", ws=bob).values()) == [{"nick": "alice"}]
        assert hub.publish("room:a", "hi", ws=bob) > 0
        hub.unsubscribe(bob, "room:a")  # a leave is always allowed
        assert hub.stats()["refused"] == 8


def test_join_storms_are_limited_per_connection_and_per_user(broker: str) -> None:
    with running_hub(broker=broker, namespaces=NAMESPACES) as hub:
        one, two, other = User("ann"), User("ann"), User("bob")
        for i in range(2):
            hub.subscribe(one, f"room:{i}")
            hub.unsubscribe(one, f"room:{i}")
        hub.subscribe(two, "room:x")  # ann's third join, from her second socket
        with pytest.raises(RateLimited) as limited:
            hub.subscribe(two, "room:y")
        assert limited.value.reason == "rate-limited" and 0 < limited.value.retry_after <= 10_000
        assert hub.channels_of(two) == ["room:x"]
        hub.subscribe(other, "room:y")  # bob's budget is his own


def test_an_app_policy_adds_its_own_rule() -> None:
    class NoBobs(Policy):
        def allow(self, identity: Any, channel: str, operation: str, namespace: Any) -> bool:
            return identity.user != "bob"

    with running_hub() as hub:
        hub.policy = NoBobs(namespaces={"*": {"join": "anyone"}})
        hub.subscribe(User("ann"), "c")
        with pytest.raises(ChannelForbidden):
            hub.subscribe(User("bob"), "c")


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"room:*": {"join": "everyone"}},
        {"room:*": {"publish": "yes"}},
        {"room:*": {"publish_rate": "fast"}},
        {"room:*": {"join": "bound"}},
        {"room:*": {"colour": "red"}},
        {"a:{other}": {}},
    ],
)
def test_bad_namespaces_are_a_config_error_naming_the_key(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"hub\.namespaces"):
        Config().update({"hub.namespaces": bad})
