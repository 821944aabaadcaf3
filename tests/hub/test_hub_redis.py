"""The hub over Redis: ids and history shared by processes, exactly-once delivery in
order, presence of crashed processes expiring, Redis restarts and lost connections."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest

from rtserver.errors import BrokerUnavailable

from .fakes import FakeSocket, running_hub, settle

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_two_hubs_share_ids_history_presence_and_broadcast(redis_server: Any) -> None:
    url = redis_server.url
    with running_hub(broker=url) as h1, running_hub(broker=url) as h2:
        a, b = FakeSocket("a"), FakeSocket("b")
        h1.subscribe(a, "c", {"nick": "ann"})
        h2.subscribe(b, "c", {"nick": "bob"})
        ids = [h1.publish("c", "one"), h2.publish("c", {"two": 2}), h1.publish("c", b"\x03")]
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert settle(lambda: len(a.sent) == 3 and len(b.sent) == 3)
        assert a.sent == b.sent
        assert a.texts[0] == {"channel": "c", "id": ids[0], "data": "one"}
        header, _, data = a.sent[2][0].partition(b"\n")
        assert a.sent[2][1] is True and json.loads(header) == {"channel": "c", "id": ids[2]} and data == b"\x03"
        assert [m["id"] for m in h2.history("c", since=ids[0])] == ids[1:]
        assert sorted(v["nick"] for v in h1.presence("c").values()) == ["ann", "bob"]
        # Resume on the other process: exactly what came after.
        r = FakeSocket("r")
        h2.subscribe(r, "c", since=ids[0])
        assert settle(lambda: len(r.sent) == 2)
        assert r.sent == a.sent[1:]
        got1: list[Any] = []
        got2: list[Any] = []
        h1.on_broadcast = got1.append
        h2.on_broadcast = got2.append
        h2.broadcast("all")
        h1.broadcast(b"\x00")
        assert settle(lambda: len(got1) == 2 and len(got2) == 2)
        assert got1 == got2 == ["all", b"\x00"]
        h1.socket_closed(a)
        assert [v["nick"] for v in h2.presence("c").values()] == ["bob"]


def test_publish_without_redis_raises_and_hub_reconnects(redis_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    with running_hub(broker=redis_server.url, reconnect_backoff_max=0.1, broker_timeout=1) as hub:
        ws = FakeSocket()
        hub.subscribe(ws, "c")
        first = hub.publish("c", "before")
        assert settle(lambda: len(ws.sent) == 1)
        redis_server.stop()
        with pytest.raises(BrokerUnavailable):
            hub.publish("c", "lost")
        assert "unavailable" in caplog.text
        assert settle(lambda: not hub.stats()["connected"])
        redis_server.start()
        assert settle(lambda: hub.stats()["connected"], timeout=5)
        after = hub.publish("c", "after")
        assert after > first  # ids keep growing although Redis lost its data
        assert settle(lambda: len(ws.sent) == 2)
        assert ws.data("c") == ["before", "after"]
        assert not any("gap" in m for m in ws.texts)


def test_messages_missed_while_disconnected_are_filled_from_history(redis_server: Any) -> None:
    """A hub whose pub/sub connection drops gets what it missed from the stream:
    nothing lost, nothing doubled, in order."""
    import redis

    url = redis_server.url
    with running_hub(broker=url, reconnect_backoff_max=0.5) as h1, running_hub(broker=url) as h2:
        subs = [FakeSocket(str(i)) for i in range(10)]
        for ws in subs:
            h1.subscribe(ws, "c")
        for i in range(5):
            h2.publish("c", i)
        assert settle(lambda: all(len(ws.sent) == 5 for ws in subs))
        # Cut h1's pub/sub connection and keep publishing while it reconnects.
        admin = redis.Redis.from_url(url)
        try:
            killed = admin.client_kill_filter(_type="pubsub")
            assert killed >= 2
        finally:
            admin.close()
            admin.connection_pool.disconnect()
        for i in range(5, 40):
            h2.publish("c", i)
            gevent.sleep(0.002)
        assert settle(lambda: all(len(ws.sent) == 40 for ws in subs), timeout=10)
        gevent.sleep(0.1)
        for ws in subs:
            assert ws.data("c") == list(range(40))
            assert ws.ids("c") == sorted(set(ws.ids("c")))


def test_history_size_and_ttl_with_redis(redis_server: Any) -> None:
    with running_hub(broker=redis_server.url, history_size=3, history_ttl=0.3) as hub:
        ids = [hub.publish("c", i) for i in range(5)]
        assert [m["data"] for m in hub.history("c")] == [2, 3, 4]
        ws = FakeSocket()
        hub.subscribe(ws, "c", since=ids[0])
        assert settle(lambda: len(ws.sent) == 4)
        assert ws.texts[0] == {"channel": "c", "gap": {"from": ids[0], "to": ids[1]}}
        gevent.sleep(0.4)
        assert hub.history("c") == []


@contextlib.contextmanager
def _worker(url: str, name: str, *args: Any) -> Iterator[subprocess.Popen[str]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join((ROOT, os.path.join(ROOT, "tests"))))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub.worker", url, name, *map(str, args)],
        cwd=os.path.join(ROOT, "tests"),
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _expect(proc: subprocess.Popen[str], prefix: str, timeout: float = 30) -> str:
    assert proc.stdout is not None
    with gevent.Timeout(timeout):
        line = proc.stdout.readline()
    assert line.startswith(prefix), line
    return line[len(prefix) :].strip()


def _tell(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def test_three_processes_deliver_every_message_once_in_order_across_a_redis_restart(redis_server: Any) -> None:
    """3 processes x 100 subscribers x 2 channels; 1,000 messages published from all
    three; Redis is killed and restarted mid-run. Every subscriber gets all 1,000,
    in per-channel order, none doubled, no gap."""
    url = redis_server.url
    shares = (334, 333, 333)
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(_worker(url, f"p{i}", "fanout", 100, share)) for i, share in enumerate(shares)]
        for proc in procs:
            _expect(proc, "ready")
        for proc in procs:
            _tell(proc, "go")
        gevent.sleep(0.4)
        redis_server.restart()
        published = sum(int(_expect(proc, "published ")) for proc in procs)
        assert published == 1000
        for proc in procs:
            _tell(proc, f"expect {published}")
        results = [json.loads(_expect(proc, "result ")) for proc in procs]
    for result in results:
        assert result["problems"] == [], result
        assert result["stats"]["delivered"] == 100 * 1000
    assert sum(r["retries"] for r in results) > 0  # the restart did happen mid-run


def test_members_of_a_killed_process_leave_presence(redis_server: Any) -> None:
    url = redis_server.url
    with running_hub(broker=url, presence_ttl=1) as hub, _worker(url, "w", "presence", 5) as proc:
        watcher = FakeSocket()
        hub.subscribe(watcher, "room", {"nick": "watcher"})
        _expect(proc, "ready")
        assert len(hub.presence("room")) == 6
        os.kill(proc.pid, signal.SIGKILL)
        started = time.monotonic()
        assert settle(lambda: len(hub.presence("room")) == 1, timeout=5)
        assert time.monotonic() - started < 2.5  # presence_ttl + one heartbeat
        assert list(hub.presence("room").values()) == [{"nick": "watcher"}]
        # The leave events are announced once, by a surviving process.
        assert settle(lambda: sum(m.get("presence", {}).get("action") == "leave" for m in watcher.texts) == 5)


def test_resume_across_a_redis_restart_that_lost_history_gets_a_gap_notice(redis_server) -> None:
    """Redis restarted without persistence: a client resuming from before the restart
    is told that what it missed is gone, never silently given less."""
    with running_hub(broker=redis_server.url, reconnect_backoff_max=0.1, broker_timeout=1) as hub:
        k1 = hub.publish("c", "m1")  # the client saw m1, then disconnected
        hub.publish("c", "m2")
        hub.publish("c", "m3")  # missed while away
        redis_server.restart()  # m2 and m3 are gone with Redis's data
        assert settle(lambda: hub.stats()["connected"], timeout=5)

        early = FakeSocket()  # resumes before anything new was published
        hub.subscribe(early, "c", since=k1)
        assert settle(lambda: len(early.sent) >= 1)
        assert early.texts[0] == {"channel": "c", "gap": {"from": k1, "to": None}}

        k4 = hub.publish("c", "m4")
        late = FakeSocket()  # resumes after a new message
        hub.subscribe(late, "c", since=k1)
        assert settle(lambda: len(late.sent) >= 2)
        gap, message = late.texts[:2]
        assert gap == {"channel": "c", "gap": {"from": k1, "to": k4 - 1}}
        assert message["id"] == k4 and message["data"] == "m4"
        assert settle(lambda: len(early.sent) >= 2)
        assert early.texts[1]["data"] == "m4"  # the early one goes on live
