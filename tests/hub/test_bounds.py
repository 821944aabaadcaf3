"""No client can exhaust the hub: channels die with their last subscriber and message,
caps refuse clearly, presence never evicts a message, history_limit always holds, and
ids stay monotonic across a channel's death and rebirth (memory and a real Redis)."""

from __future__ import annotations

import gc
import json
import os
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import gevent
import pytest

import rtserver
from rtserver.config import Config, declared
from rtserver.errors import ConfigError, HubError
from rtserver.testing import TestServer, serve
from rtserver.websocket import hub as hub_module
from rtserver.websocket.channels import ChannelSocket
from rtserver.websocket.hub import Hub, TooManyChannels

from .fakes import FakeSocket, running_hub, settle

MiB = 1024 * 1024
#: Where the hub and its brokers live: allocations made there are the hub's memory.
HUB_FILES = os.path.join(os.path.dirname(os.path.abspath(hub_module.__file__)), "*")


class QuietSocket:
    """A subscriber that keeps nothing (so only the hub's memory is measured) but
    remembers the last text it was sent."""

    def __init__(self) -> None:
        self.last_text = ""

    def send(self, payload: Any, binary: bool = False) -> None:
        if not binary:
            self.last_text = payload

    def close(self, code: int = 1000, reason: str = "") -> None:
        pass


def join_and_leave(hub: Hub, ws: Any, channel: str) -> None:
    """What a ChannelSocket join does (history, then resume after its newest id, as an
    announced member), then a leave."""
    kept = hub.history(channel)
    since = int(kept[-1]["id"]) if kept else 0
    hub.subscribe(ws, channel, {"nick": "ann"}, since=since, announce=True)
    hub.unsubscribe(ws, channel)


def drain(hub: Hub, ws: QuietSocket) -> None:
    """Wait until the broker delivered everything published so far (it delivers in order)."""
    marker = hub.publish("home", "marker")
    assert settle(lambda: f'"id":{marker},' in ws.last_text)


def hub_bytes() -> int:
    """Bytes allocated by the hub's and brokers' code and still alive."""
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, HUB_FILES)])
    return sum(stat.size for stat in snapshot.statistics("filename"))


# -- memory ------------------------------------------------------------------------------------


def test_10000_join_leave_cycles_leave_the_hub_as_it_was() -> None:
    with running_hub() as hub:
        ws = QuietSocket()
        hub.subscribe(ws, "home")  # one socket, connected throughout
        for i in range(200):  # warm up: caches, dict sizes, the first allocations
            join_and_leave(hub, ws, f"warm-{i}")
        drain(hub, ws)
        gc.collect()
        tracemalloc.start()
        try:
            before_hub, before_all = hub_bytes(), tracemalloc.get_traced_memory()[0]
            for i in range(10_000):
                join_and_leave(hub, ws, f"room-{i}")
            drain(hub, ws)
            gc.collect()
            after_hub, after_all = hub_bytes(), tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert after_hub - before_hub < MiB, f"+{(after_hub - before_hub) / MiB:.2f} MiB kept by the hub"
        assert after_all - before_all < MiB, f"+{(after_all - before_all) / MiB:.2f} MiB kept in all"
        assert hub.stats()["channels"] == 1
        assert hub.history("room-0") == [] and hub.presence("room-9999") == {}


def test_history_keeps_a_channel_alive_until_it_expires_then_its_memory_goes() -> None:
    with running_hub(history_ttl=0.5) as hub:
        ws = QuietSocket()
        hub.subscribe(ws, "home")
        drain(hub, ws)
        gc.collect()
        tracemalloc.start()
        try:
            before = hub_bytes()
            for i in range(2000):
                channel = f"room-{i}"
                hub.subscribe(ws, channel)
                hub.publish(channel, {"text": "hello", "n": i})
                hub.unsubscribe(ws, channel)
            drain(hub, ws)
            # While its message is kept, a channel lives: a late reader still gets it.
            assert [m["data"]["n"] for m in hub.history("room-1999")] == [1999]
            held = hub_bytes() - before
            gevent.sleep(0.5)  # the history expires: nothing is read or written after this
            deadline = time.monotonic() + 5
            while hub_bytes() - before >= held // 8 and time.monotonic() < deadline:
                gevent.sleep(0.1)
            gc.collect()
            left = hub_bytes() - before
        finally:
            tracemalloc.stop()
        assert held > 2000 * 500, f"only {held} bytes held for 2000 kept messages"
        # What stays is the capacity of the broker's dicts (they had 2000 channels at
        # once; it goes with later inserts), not anything per channel.
        assert left < min(MiB, held // 8), f"+{left / MiB:.2f} MiB left of {held / MiB:.2f} after the history expired"


def test_a_recreated_channel_continues_its_ids_and_old_resumes_get_a_gap() -> None:
    with running_hub(history_ttl=0.3) as hub:
        ws = FakeSocket("first")
        hub.subscribe(ws, "c")
        old = [hub.publish("c", f"old{i}") for i in range(3)]
        hub.unsubscribe(ws, "c")
        gevent.sleep(0.4)
        assert hub.history("c") == []  # expired: the channel is gone

        early = FakeSocket("early")  # resumes before the channel is used again
        hub.subscribe(early, "c", since=old[1])
        assert settle(lambda: len(early.sent) == 1)
        assert early.texts == [{"channel": "c", "gap": {"from": old[1], "to": old[2]}}]

        new = hub.publish("c", "new")
        assert new > old[-1]  # never an id a client may still hold
        assert settle(lambda: early.data("c") == ["new"])

        late = FakeSocket("late")
        hub.subscribe(late, "c", since=old[0])
        assert settle(lambda: len(late.sent) == 2)
        assert late.texts == [
            {"channel": "c", "gap": {"from": old[0], "to": new - 1}},
            {"channel": "c", "id": new, "data": "new"},
        ]
        exact = FakeSocket("exact")  # saw everything of the old epoch: nothing lost
        hub.subscribe(exact, "c", since=old[2])
        assert settle(lambda: len(exact.sent) == 1)
        assert exact.texts == [{"channel": "c", "id": new, "data": "new"}]


def test_ids_keep_increasing_when_nothing_is_kept() -> None:
    """history_size 0: a channel without subscribers keeps nothing, not even its counter."""
    with running_hub(history_size=0) as hub:
        first = [hub.publish("c", i) for i in range(3)]
        again = [hub.publish("c", i) for i in range(3)]
        assert first + again == sorted(set(first + again))
        ws = FakeSocket()
        hub.subscribe(ws, "c", since=first[0])
        assert settle(lambda: len(ws.sent) == 1)
        assert ws.texts == [{"channel": "c", "gap": {"from": first[0], "to": again[-1]}}]


def test_the_memory_broker_forgets_the_longest_idle_history_beyond_max_channels() -> None:
    with running_hub(max_channels=5) as hub:
        seen, missed = hub.publish("c0", "seen"), hub.publish("c0", "missed")
        for i in range(1, 8):  # nobody subscribed: 8 idle channels with history
            hub.publish(f"c{i}", i)
        kept = [f"c{i}" for i in range(8) if hub.history(f"c{i}")]
        assert kept == ["c3", "c4", "c5", "c6", "c7"]
        ws = FakeSocket()
        hub.subscribe(ws, "c0", since=seen)  # its client wanted the forgotten message
        assert settle(lambda: len(ws.sent) == 1)
        assert ws.texts == [{"channel": "c0", "gap": {"from": seen, "to": missed}}]
        assert hub.publish("c0", "again") > missed


# -- caps --------------------------------------------------------------------------------------


def test_max_channels_refuses_one_more_channel_clearly() -> None:
    with running_hub(max_channels=3) as hub:
        a, b = FakeSocket("a"), FakeSocket("b")
        for channel in ("x", "y", "z"):
            hub.subscribe(a, channel)
        with pytest.raises(TooManyChannels, match=r"hub\.max_channels") as refused:
            hub.subscribe(b, "w", {"nick": "bob"})
        assert isinstance(refused.value, HubError)
        assert hub.channels_of(b) == [] and hub.presence("w") == {}
        hub.subscribe(b, "x")  # an existing channel is no extra channel
        hub.unsubscribe(a, "z")
        hub.subscribe(b, "w")  # room again
        assert sorted(hub.channel_sizes()) == ["w", "x", "y"]


class Member(ChannelSocket):
    def member_info(self, channel: str) -> Any:
        return {"nick": self.query_params.get("nick", "anon")}


class Root:
    ws = Member


#: Anonymous sockets in every channel: these tests are about bounds, not the policy.
OPEN = {"hub.namespaces": {"*": {"join": "anyone", "publish": True}}}


@pytest.fixture
def srv() -> Iterator[TestServer]:
    with serve(Root(), global_config=OPEN) as s:
        yield s


def ask(ws: Any, **request: Any) -> list[dict[str, Any]]:
    """Send one request; return what came back up to and including its reply."""
    ws.send(json.dumps(request))
    got = []
    while True:
        msg = json.loads(ws.recv(timeout=5))
        got.append(msg)
        if "op" in msg:
            return got


def test_the_protocol_answers_too_many_channels_before_sending_any_history() -> None:
    with serve(Root(), global_config={"hub.max_channels": 2, **OPEN}) as srv:
        for i in range(3):
            rtserver.hub.publish("full-c", i)
        with srv.websocket_connect("/ws?nick=ann") as ann, srv.websocket_connect("/ws?nick=bob") as bob:
            assert ask(ann, op="join", channel="full-a")[-1]["op"] == "joined"
            assert ask(ann, op="join", channel="full-b")[-1]["op"] == "joined"
            got = ask(bob, op="join", channel="full-c", history=10, ref=7)
            assert got == [
                {
                    "op": "error",
                    "error": "too-many-channels",
                    "message": "The server has too many channels open; try again later.",
                    "channel": "full-c",
                    "ref": 7,
                }
            ]
            assert ask(bob, op="join", channel="full-a")[-1]["op"] == "joined"  # existing: fine
            assert ask(ann, op="leave", channel="full-b")[-1]["op"] == "left"
            joined = ask(bob, op="join", channel="full-c", history=10)
            assert [m["data"] for m in joined if "data" in m] == [0, 1, 2]


# -- history holds messages ----------------------------------------------------------------------


def test_a_join_leave_storm_evicts_no_message() -> None:
    with running_hub(history_size=100, presence_history_size=20) as hub:
        watcher = FakeSocket("watcher")
        hub.subscribe(watcher, "room")
        ids = [hub.publish("room", f"m{i}") for i in range(50)]
        for i in range(1000):
            ws = FakeSocket(str(i))
            hub.subscribe(ws, "room", {"nick": i}, announce=True)
            hub.unsubscribe(ws, "room")
        kept = hub.history("room")
        assert [m["data"] for m in kept if "data" in m] == [f"m{i}" for i in range(50)]
        events = [m for m in kept if "presence" in m]
        assert len(events) == 20
        assert events[-1]["presence"]["action"] == "leave" and events[-1]["presence"]["info"] == {"nick": 999}
        assert settle(lambda: len(watcher.sent) == 50 + 2000)  # all delivered live
        # A resume after the last message gets the events still kept, after a gap
        # notice for the older ones: presence lost, never a message.
        r = FakeSocket("r")
        hub.subscribe(r, "room", since=ids[-1])
        assert settle(lambda: len(r.sent) == 21)
        assert r.texts[0] == {"channel": "room", "gap": {"from": ids[-1], "to": events[0]["id"] - 1}}
        assert [m["id"] for m in r.texts[1:]] == [m["id"] for m in events]


def test_presence_events_can_be_kept_out_of_history_entirely() -> None:
    with running_hub(presence_history_size=0) as hub:
        watcher = FakeSocket()
        hub.subscribe(watcher, "room")
        first = hub.publish("room", "one")
        hub.subscribe(FakeSocket(), "room", {"nick": "z"}, announce=True)
        second = hub.publish("room", "two")
        assert [m["id"] for m in hub.history("room")] == [first, second]
        r = FakeSocket()
        hub.subscribe(r, "room", since=first)
        assert settle(lambda: len(r.sent) == 2)
        assert r.texts == [
            {"channel": "room", "gap": {"from": first, "to": second - 1}},  # the join event
            {"channel": "room", "id": second, "data": "two"},
        ]


def test_a_newcomer_gets_its_50_messages_after_a_join_leave_storm(srv: TestServer) -> None:
    for i in range(50):
        rtserver.hub.publish("storm", f"m{i}")
    with srv.websocket_connect("/ws?nick=churn") as ws:
        for _ in range(60):
            assert ask(ws, op="join", channel="storm")[-1]["op"] == "joined"
            assert ask(ws, op="leave", channel="storm")[-1]["op"] == "left"
    with srv.websocket_connect("/ws?nick=new") as ws:
        got = ask(ws, op="join", channel="storm", history=50)
    assert [m["data"] for m in got if "data" in m] == [f"m{i}" for i in range(50)]


def test_history_limit_holds_for_every_since_and_for_history(srv: TestServer) -> None:
    limit = Member.history_limit
    published = {}
    for case, pick in enumerate((lambda ids: 0, lambda ids: ids[0], lambda ids: ids[9])):
        channel = f"big-{case}"
        ids = published[channel] = [rtserver.hub.publish(channel, i) for i in range(80)]
        since = pick(ids)
        with srv.websocket_connect("/ws") as ws:
            got = ask(ws, op="join", channel=channel, since=since)
        assert got[0] == {"channel": channel, "gap": {"from": since, "to": ids[-limit - 1]}}
        assert [m["data"] for m in got if "data" in m] == list(range(80 - limit, 80)), since
        assert len(got) == 1 + limit + 1 and got[-1]["op"] == "joined"
    with srv.websocket_connect("/ws") as ws:  # within the limit: exactly what was missed
        got = ask(ws, op="join", channel="big-0", since=published["big-0"][-11])
    assert [m["data"] for m in got if "data" in m] == list(range(70, 80)) and "gap" not in got[0]
    with srv.websocket_connect("/ws") as ws:
        got = ask(ws, op="join", channel="big-1", history=80)
    assert [m["data"] for m in got if "data" in m] == list(range(80 - limit, 80))


def test_subscribe_limit_replays_the_newest_and_says_what_it_skipped() -> None:
    with running_hub() as hub:
        ids = [hub.publish("c", i) for i in range(10)]
        three, none = FakeSocket("three"), FakeSocket("none")
        hub.subscribe(three, "c", since=ids[0], limit=3)
        hub.subscribe(none, "c", since=ids[0], limit=0)
        assert settle(lambda: len(three.sent) == 4 and len(none.sent) == 1)
        assert three.texts[0] == {"channel": "c", "gap": {"from": ids[0], "to": ids[6]}}
        assert three.data("c") == [7, 8, 9]
        assert none.texts == [{"channel": "c", "gap": {"from": ids[0], "to": ids[9]}}]
        with pytest.raises(HubError, match="limit"):
            hub.subscribe(FakeSocket(), "c", since=ids[0], limit=-1)


# -- Redis -----------------------------------------------------------------------------------------


def redis_ttls(url: str) -> dict[str, int]:
    """Every key of the Redis at ``url`` (SCAN) with its PTTL (-1: none)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return {key.decode(): client.pttl(key) for key in client.scan_iter(count=1000)}
    finally:
        client.close()
        client.connection_pool.disconnect()


def test_every_redis_key_has_a_ttl_after_300_join_leave_cycles(redis_server: Any) -> None:
    # history_ttl 0 ("no age limit") used to leave streams without any expiry too.
    with running_hub(broker=redis_server.url, history_ttl=0, redis_ttl=3600) as hub:
        stayer = FakeSocket("stayer")
        hub.subscribe(stayer, "lobby", {"nick": "stays"}, announce=True)  # presence keys now
        ws = FakeSocket("cycler")
        for i in range(300):
            join_and_leave(hub, ws, f"room-{i}")
            if i % 10 == 0:
                hub.publish(f"room-{i}", {"n": i})
        ttls = redis_ttls(redis_server.url)
    kinds = {key.split(":")[2] for key in ttls}
    assert kinds == {"n", "h", "e", "p", "x"}, kinds
    without = [key for key, ttl in ttls.items() if ttl < 0]
    assert without == [], f"{len(without)} of {len(ttls)} keys without a TTL, e.g. {without[:3]}"
    assert max(ttls.values()) <= 3600 * 1000
    # 300 rooms, 30 with a message: counters and the small events lists, few streams.
    assert sum(key.split(":")[2] == "h" for key in ttls) == 30
    assert len(ttls) <= 300 * 2 + 30 + 5


def test_rooms_that_keep_no_message_cost_redis_keys_for_a_minute_only(redis_server: Any) -> None:
    """A churn of distinct rooms (joins and leaves, nothing published) must not pile
    up keys for hub.redis_ttl (a day): their counter and events expire a minute after
    the last join or leave, while a room with a message keeps the long TTL."""
    with running_hub(broker=redis_server.url, redis_ttl=86400, presence_ttl=20) as hub:
        ws = FakeSocket("cycler")
        for i in range(50):
            join_and_leave(hub, ws, f"quiet-{i}")
        hub.publish("talked", {"n": 1})
        join_and_leave(hub, ws, "talked")
        ttls = redis_ttls(redis_server.url)
    quiet = {key: ttl for key, ttl in ttls.items() if ":quiet-" in key}
    assert quiet and all(0 < ttl <= 60_000 for ttl in quiet.values()), sorted(quiet.values())[-3:]
    talked = {key: ttl for key, ttl in ttls.items() if ":n:" in key and "talked" in key}
    assert talked and all(ttl > 3600 * 1000 for ttl in talked.values()), talked


def test_a_join_leave_storm_evicts_no_message_with_redis(redis_server: Any) -> None:
    with running_hub(broker=redis_server.url, history_size=100) as hub:
        for i in range(50):
            hub.publish("room", f"m{i}")
        for i in range(300):
            ws = FakeSocket(str(i))
            hub.subscribe(ws, "room", {"nick": i}, announce=True)
            hub.unsubscribe(ws, "room")
        kept = hub.history("room")
        assert [m["data"] for m in kept if "data" in m] == [f"m{i}" for i in range(50)]
        assert sum("presence" in m for m in kept) == 20


def test_an_expired_redis_channel_starts_a_new_epoch_of_ids(redis_server: Any) -> None:
    with running_hub(broker=redis_server.url, redis_ttl=0.5) as hub:
        old = [hub.publish("c", f"old{i}") for i in range(3)]
        assert set(redis_ttls(redis_server.url)) == {"rtserver:hub:n:c", "rtserver:hub:h:c"}
        assert settle(lambda: redis_ttls(redis_server.url) == {}, timeout=5)  # Redis forgot all

        early = FakeSocket("early")
        hub.subscribe(early, "c", since=old[1])
        assert settle(lambda: len(early.sent) == 1)
        assert early.texts == [{"channel": "c", "gap": {"from": old[1], "to": None}}]
        new = hub.publish("c", "new")
        assert new > old[-1]
        assert settle(lambda: early.data("c") == ["new"])
        late = FakeSocket("late")
        hub.subscribe(late, "c", since=old[2])
        assert settle(lambda: len(late.sent) == 2)
        assert late.texts == [
            {"channel": "c", "gap": {"from": old[2], "to": new - 1}},
            {"channel": "c", "id": new, "data": "new"},
        ]


# -- config ----------------------------------------------------------------------------------------


def test_the_bounds_are_declared_config_keys_and_checked() -> None:
    keys = declared()
    assert keys["hub.max_channels"].default == 10_000
    assert keys["hub.presence_history_size"].default == 20
    assert keys["hub.redis_ttl"].default == 24 * 3600
    config = Config()
    for bad in ({"hub.max_channels": 0}, {"hub.presence_history_size": -1}, {"hub.redis_ttl": 0}):
        with pytest.raises(ConfigError):
            config.update(bad)
