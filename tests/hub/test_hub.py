"""The hub with the in-process broker: API, wire format, presence, history, resume,
backpressure. Fake subscribers stand in for sockets (see ``fakes.py``)."""

from __future__ import annotations

import json
import time

import gevent
import pytest

import rtserver
from rtserver.bus.bus import Bus
from rtserver.config import Config, declared
from rtserver.errors import ConfigError, HubError
from rtserver.websocket.brokers import Entry
from rtserver.websocket.hub import Hub, HubClientMixin, HubPlugin
from rtserver.websocket.hub import hub as default_hub

from .fakes import FakeSocket, PreparedSocket, SlowSocket, running_hub, settle, unframe


def test_publish_envelopes_and_ids() -> None:
    with running_hub() as hub:
        ws = FakeSocket()
        hub.subscribe(ws, "room")
        assert hub.publish("room", "hello") == 1
        assert hub.publish("room", {"n": 1, "text": "é"}) == 2
        assert hub.publish("other", [1]) == 1  # ids are per channel
        assert hub.publish("room", b"\x00\xffraw") == 3
        assert settle(lambda: len(ws.sent) == 3)
        assert ws.sent[0] == ('{"channel":"room","id":1,"data":"hello"}', False)
        assert json.loads(ws.sent[1][0]) == {"channel": "room", "id": 2, "data": {"n": 1, "text": "é"}}
        payload, binary = ws.sent[2]
        assert binary is True
        header, _, data = payload.partition(b"\n")
        assert json.loads(header) == {"channel": "room", "id": 3} and data == b"\x00\xffraw"


def test_publish_rejects_what_cannot_be_encoded_and_reserved_names() -> None:
    with running_hub() as hub:
        with pytest.raises(HubError):
            hub.publish("room", object())
        with pytest.raises(HubError):
            hub.publish("", "x")
        with pytest.raises(HubError):
            hub.subscribe(FakeSocket(), "__broadcast__")
        assert hub.stats()["published"] == 0


def test_unsubscribe_socket_closed_and_failed_send_leave_every_channel() -> None:
    with running_hub() as hub:
        a, b, c = FakeSocket("a"), FakeSocket("b"), FakeSocket("c")
        for ws in (a, b, c):
            hub.subscribe(ws, "x")
            hub.subscribe(ws, "y")
        hub.unsubscribe(a, "x")
        hub.unsubscribe(a, "nope")  # no error
        hub.socket_closed(b)
        c.closed = (1006, "")  # the peer went away: the next send raises
        hub.publish("x", 1)
        hub.publish("y", 2)
        assert settle(lambda: len(a.sent) == 1)
        gevent.sleep(0.01)
        assert a.data("y") == [2] and a.data("x") == []
        assert b.sent == [] and c.sent == []
        assert hub.channels_of(a) == ["y"] and hub.channels_of(b) == [] and hub.channels_of(c) == []
        assert hub.subscribers("y") == [a]
        assert hub.stats()["subscribers"] == 1 and hub.stats()["dropped_slow_consumers"] == 0


def test_order_per_channel_with_many_publishers() -> None:
    with running_hub() as hub:
        subs = [FakeSocket(str(i)) for i in range(20)]
        for ws in subs:
            hub.subscribe(ws, "c")

        def publisher(k: int) -> None:
            for i in range(50):
                hub.publish("c", {"k": k, "i": i})
                if i % 7 == 0:
                    gevent.sleep(0)

        gevent.joinall([gevent.spawn(publisher, k) for k in range(5)])
        assert settle(lambda: all(len(ws.sent) == 250 for ws in subs))
        for ws in subs:
            assert ws.ids("c") == list(range(1, 251))
        stats = hub.stats()
        assert stats["published"] == 250 and stats["delivered"] == 250 * 20
        assert stats["subscribers"] == 20 and stats["channels"] == 1


def test_prepared_frames_are_encoded_once_for_every_runtime_socket() -> None:
    with running_hub() as hub:
        a, b = PreparedSocket("a"), PreparedSocket("b")
        hub.subscribe(a, "c")
        hub.subscribe(b, "c")
        hub.publish("c", {"x": 1})
        hub.publish("c", b"bin")
        assert settle(lambda: len(a.frames) == 2 and len(b.frames) == 2)
        assert a.frames[0] is b.frames[0]  # one encoding, shared
        assert unframe(a.frames[0]) == (1, b'{"channel":"c","id":1,"data":{"x":1}}')
        assert unframe(a.frames[1]) == (2, b'{"channel":"c","id":2}\nbin')
        # A runtime socket that refuses (closing, or closed as a slow consumer) is dropped.
        a.accept = False
        hub.publish("c", 3)
        assert settle(lambda: len(b.frames) == 3)
        assert hub.subscribers("c") == [b]


def test_presence_and_announcements() -> None:
    with running_hub() as hub:
        ann, bob, watcher = FakeSocket("ann"), FakeSocket("bob"), FakeSocket("watcher")
        hub.subscribe(watcher, "room")
        hub.subscribe(ann, "room", {"nick": "ann"}, announce=True)
        hub.subscribe(bob, "room", {"nick": "bob"})  # present, not announced
        members = hub.presence("room")
        assert sorted(info["nick"] for info in members.values()) == ["ann", "bob"]
        ann_id = next(k for k, v in members.items() if v == {"nick": "ann"})
        hub.socket_closed(ann)
        hub.unsubscribe(bob, "room")
        assert hub.presence("room") == {}
        assert settle(lambda: len(watcher.sent) == 2)
        events = [m["presence"] for m in watcher.texts]
        assert events == [
            {"action": "join", "member": ann_id, "info": {"nick": "ann"}},
            {"action": "leave", "member": ann_id, "info": {"nick": "ann"}},
        ]
        # Presence events are messages: they take ids and stay in history.
        assert [m["id"] for m in hub.history("room")] == [1, 2]


def test_announce_by_config() -> None:
    with running_hub(announce_presence=True) as hub:
        watcher = FakeSocket()
        hub.subscribe(watcher, "room")
        hub.subscribe(FakeSocket(), "room", {"nick": "z"})
        hub.subscribe(FakeSocket(), "room")  # no member: not present, nothing announced
        assert settle(lambda: len(watcher.sent) == 1)
        assert watcher.texts[0]["presence"]["action"] == "join"


def test_history_size_and_since() -> None:
    with running_hub(history_size=5) as hub:
        for i in range(8):
            hub.publish("c", i)
        assert [m["data"] for m in hub.history("c")] == [3, 4, 5, 6, 7]
        assert [m["id"] for m in hub.history("c", since=6)] == [7, 8]
        assert hub.history("c", since=8) == []
        assert hub.history("never") == []


def test_history_ttl_forgets_old_messages() -> None:
    with running_hub(history_ttl=0.2) as hub:
        hub.publish("c", "old")
        gevent.sleep(0.3)
        hub.publish("c", "new")
        assert [m["data"] for m in hub.history("c")] == ["new"]


def test_resume_delivers_exactly_the_missed_messages() -> None:
    with running_hub() as hub:
        for i in range(10):
            hub.publish("c", i)
        ws = FakeSocket()
        hub.subscribe(ws, "c", since=4)
        hub.publish("c", 10)
        assert settle(lambda: len(ws.sent) == 7)
        assert ws.ids("c") == list(range(5, 12))
        assert ws.data("c") == list(range(4, 11))


def test_resume_is_atomic_with_concurrent_publishes() -> None:
    """Messages published while the resume reads history are neither lost nor doubled."""
    with running_hub() as hub:
        for i in range(20):
            hub.publish("c", i)
        broker = hub.broker
        assert broker is not None
        real_history = broker.history

        def slow_history(channel: str, since: int | None) -> tuple[list[Entry], int]:
            gevent.sleep(0.02)  # publishes land here, before and after the read
            result = real_history(channel, since)
            gevent.sleep(0.02)
            return result

        broker.history = slow_history  # type: ignore[method-assign]
        stop = False

        def publisher() -> None:
            i = 20
            while not stop:
                hub.publish("c", i)
                i += 1
                gevent.sleep(0.001)

        g = gevent.spawn(publisher)
        socks = []
        for since in (0, 5, 19):
            ws = FakeSocket(str(since))
            hub.subscribe(ws, "c", since=since)
            socks.append((since, ws))
        gevent.sleep(0.05)
        stop = True
        g.join()
        last = hub.history("c")[-1]["id"]
        for since, ws in socks:
            assert settle(lambda ws=ws: ws.ids("c")[-1:] == [last])
            assert ws.ids("c") == list(range(since + 1, last + 1)), since


def test_resume_beyond_history_sends_a_gap_notice_first() -> None:
    with running_hub(history_size=3) as hub:
        for i in range(10):
            hub.publish("c", i)
        ws = FakeSocket()
        hub.subscribe(ws, "c", since=2)
        assert settle(lambda: len(ws.sent) == 4)
        assert ws.texts[0] == {"channel": "c", "gap": {"from": 2, "to": 7}}
        assert ws.ids("c") == [8, 9, 10]


def test_resume_with_nothing_kept_is_all_gap() -> None:
    with running_hub(history_size=0) as hub:
        for i in range(4):
            hub.publish("c", i)
        ws = FakeSocket()
        hub.subscribe(ws, "c", since=1)
        hub.publish("c", "live")
        assert settle(lambda: len(ws.sent) == 2)
        assert ws.texts == [
            {"channel": "c", "gap": {"from": 1, "to": 4}},
            {"channel": "c", "id": 5, "data": "live"},
        ]


def test_resume_from_an_id_the_broker_never_gave_starts_from_now() -> None:
    with running_hub() as hub:
        hub.publish("c", 0)
        ws = FakeSocket()
        hub.subscribe(ws, "c", since=500)  # e.g. ids of a broker that lost its data
        hub.publish("c", 1)
        assert settle(lambda: len(ws.sent) == 2)
        assert ws.texts[0] == {"channel": "c", "gap": {"from": 500, "to": None}}  # never silent
        assert ws.ids("c") == [2]


def test_slow_consumer_is_closed_counted_and_never_blocks_publish(caplog: pytest.LogCaptureFixture) -> None:
    with running_hub(send_queue_size=10, slow_consumer_close_code=1013) as hub:
        slow, fast = SlowSocket(), FakeSocket("fast")
        hub.subscribe(slow, "c")
        hub.subscribe(fast, "c")
        started = time.monotonic()
        for i in range(100):
            hub.publish("c", i)
        assert time.monotonic() - started < 0.5
        assert settle(lambda: len(fast.sent) == 100)
        assert settle(lambda: slow.closed is not None)
        assert slow.closed == (1013, "slow consumer")
        stats = hub.stats()
        assert stats["dropped_slow_consumers"] == 1 and stats["subscribers"] == 1
        assert hub.subscribers("c") == [fast]
        assert "slow consumer" in caplog.text
        slow.release()  # the blocked send ends; its delivery greenlet then ends too


def test_one_delivery_greenlet_per_queued_socket_not_per_message() -> None:
    with running_hub() as hub:
        socks = [FakeSocket(str(i)) for i in range(50)]
        for ws in socks:
            hub.subscribe(ws, "a")
            hub.subscribe(ws, "b")
        for i in range(200):
            hub.publish("a" if i % 2 else "b", i)
        assert settle(lambda: all(len(ws.sent) == 200 for ws in socks))
        workers = {id(sub.worker) for sub in hub._subscribers.values()}
        assert len(workers) == 50


def test_broadcast_reaches_the_hook() -> None:
    with running_hub() as hub:
        got: list[object] = []
        hub.on_broadcast = got.append
        hub.broadcast("to everyone")
        hub.broadcast(b"\x01")
        assert settle(lambda: len(got) == 2)
        assert got == ["to everyone", b"\x01"]


def test_the_mixin_joins_leaves_and_publishes() -> None:
    with running_hub() as hub:

        class Client(HubClientMixin, FakeSocket):
            pass

        Client.hub = hub
        ann, bob = Client("ann"), Client("bob")
        ann.join("room", member={"nick": "ann"})
        bob.join("room")
        assert ann.channels == ["room"]
        assert bob.publish("room", "hi") == 1
        assert settle(lambda: len(ann.sent) == 1 and len(bob.sent) == 1)
        ann.leave("room")
        assert ann.channels == [] and hub.presence("room") == {}


def test_stop_forgets_subscriptions_and_stats_say_disconnected() -> None:
    with running_hub() as hub:
        ws = FakeSocket()
        hub.subscribe(ws, "c", {"n": 1})
    assert hub.stats()["subscribers"] == 0 and hub.stats()["connected"] is False
    assert hub.broker is None


def test_hub_starts_with_the_engine_and_lazily() -> None:
    bus = Bus()
    hub = Hub(bus, config=Config())
    hub.plugin.subscribe()
    bus.start()
    try:
        assert hub.stats()["broker"] == "memory"
    finally:
        bus.stop()
    assert hub.broker is None
    lazy = Hub(Bus(), config=Config())
    try:
        assert lazy.publish("c", 1) == 1  # starts itself
    finally:
        lazy.stop()
    assert isinstance(default_hub, Hub) and isinstance(default_hub.plugin, HubPlugin)
    assert default_hub.plugin.start in rtserver.engine.listeners["start"]


def test_config_keys_are_declared_and_checked() -> None:
    keys = declared()
    for name in (
        "hub.broker",
        "hub.history_size",
        "hub.history_ttl",
        "hub.presence_ttl",
        "hub.send_queue_size",
        "hub.slow_consumer_close_code",
        "hub.reconnect_backoff_max",
        "hub.announce_presence",
        "hub.broker_timeout",
        "hub.redis_prefix",
    ):
        assert name in keys
    config = Config()
    for bad in (
        {"hub.send_queue_size": 0},
        {"hub.slow_consumer_close_code": 1000},
        {"hub.history_size": -1},
        {"hub.presence_ttl": 0},
        {"hub.nope": 1},
    ):
        with pytest.raises(ConfigError):
            config.update(bad)
    config.update({"hub.broker": "amqp://x"})
    with pytest.raises(ConfigError):
        Hub(Bus(), config=config).start()


def test_resume_into_a_hub_that_lost_its_history_is_told_so() -> None:
    """A client resuming with an id this hub never issued (the process restarted, the
    in-memory history is gone) gets a gap notice with an unknown end, then goes live."""
    with running_hub() as hub:
        ws = FakeSocket()
        hub.subscribe(ws, "c", since=41)
        assert settle(lambda: len(ws.sent) == 1)
        assert ws.texts == [{"channel": "c", "gap": {"from": 41, "to": None}}]
        hub.publish("c", "after")
        assert settle(lambda: len(ws.sent) == 2)
        assert ws.texts[1]["data"] == "after"
