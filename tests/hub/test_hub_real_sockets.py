"""The hub end to end with real WebSockets: 3 ``python -m rtserver run`` processes
share a private Redis, 100 raw WebSocket clients are connected to each (300 in all,
each in channels c0 and c1), and 1,000 messages are published through the
``/publish`` page of all three processes (tests/hub/real_socket_app.py).

* Every socket receives all 1,000, each exactly once, with the id ``/publish``
  answered, in increasing id order per channel; no gap notice.
* Redis is killed and restarted (without persistence: its history is lost) while
  the messages are published: a publish during the outage fails loudly (500, the
  hub's ``BrokerUnavailable``); every publish that succeeded (200) -- before, during
  and after the restart -- reaches every socket exactly once, in per-channel id
  order; nothing published before the restart is delivered again; no socket is
  disconnected and no gap notice is sent (no message that succeeded was lost).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.pool
import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.hub.real_socket_app:root"
PROCESSES = 3
SOCKETS_PER_PROCESS = 100
MESSAGES = 1000
CHANNELS = ("c0", "c1")
PUBLISHERS_PER_PROCESS = 3
KEY = base64.b64encode(b"rtserver-hub-key").decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        gevent.sleep(interval)
    return True


# -- server processes ------------------------------------------------------------------------


class Node:
    """One ``python -m rtserver run`` process serving the test app."""

    def __init__(self, index: int, port: int, proc: subprocess.Popen[bytes], directory: Path) -> None:
        self.index = index
        self.port = port
        self.proc = proc
        self.directory = directory

    def logs(self) -> str:
        parts = []
        for name in (f"out{self.index}.log", f"error{self.index}.log"):
            path = self.directory / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        status, body = self.get("/stats")
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result


@contextlib.contextmanager
def cluster(redis_url: str, directory: Path) -> Iterator[list[Node]]:
    """Start PROCESSES servers of the app sharing ``redis_url``; stop them all after."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RTSERVER_LISTEN_FD", None)
    nodes: list[Node] = []
    try:
        for i in range(PROCESSES):
            port = _free_port()
            conf = directory / f"node{i}.conf"
            conf.write_text(
                "[global]\n"
                f"hub.broker = {redis_url!r}\n"
                "log.screen = False\n"
                f"log.error_file = {str(directory / f'error{i}.log')!r}\n"
                # Room for every message published while a process reconnects.
                "hub.history_size = 1000\n"
                "hub.reconnect_backoff_max = 0.2\n"
                "hub.broker_timeout = 2\n"
            )
            with open(directory / f"out{i}.log", "wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "rtserver", "run", APP, "--host", "127.0.0.1", "--port", str(port)]
                    + ["-c", str(conf)],
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            nodes.append(Node(i, port, proc, directory))
        for node in nodes:

            def up(node: Node = node) -> bool:
                if node.proc.poll() is not None:
                    raise AssertionError(f"server {node.index} exited with {node.proc.returncode}:\n{node.logs()}")
                try:
                    return node.get("/", timeout=1.0)[0] == 200
                except OSError:
                    return False

            assert _wait(up, 30), f"server {node.index} did not answer:\n{node.logs()}"
        yield nodes
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                node.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait(5)
                raise AssertionError(f"server {node.index} did not stop on SIGTERM:\n{node.logs()}") from None


# -- WebSocket clients -------------------------------------------------------------------------


class Client:
    """A raw-socket WebSocket client that only reads: keeps every text message."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.path = path
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.messages: list[bytes] = []
        self.problems: list[str] = []
        self.ended: str | None = None
        self.reader: gevent.Greenlet | None = None

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock = sock
        sock.sendall(
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed during the handshake: {data!r}")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head.splitlines()[0]!r}")
        sock.settimeout(None)
        self.buf += rest
        self.reader = gevent.spawn(self._read)

    def _read(self) -> None:
        assert self.sock is not None
        while self.ended is None:
            self._parse()
            if self.ended is not None:
                return
            try:
                chunk = self.sock.recv(262144)
            except OSError as exc:
                self.ended = f"error: {exc}"
                return
            if not chunk:
                self.ended = "eof"
                return
            self.buf += chunk

    def _parse(self) -> None:
        buf = self.buf
        end = len(buf)
        pos = 0
        while end - pos >= 2:
            first, n = buf[pos], buf[pos + 1] & 0x7F
            offset = pos + 2
            if n == 126:
                if end - pos < 4:
                    break
                n = struct.unpack_from("!H", buf, pos + 2)[0]
                offset = pos + 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
                offset = pos + 10
            if offset + n > end:
                break
            opcode = first & 0x0F
            payload = bytes(buf[offset : offset + n])
            pos = offset + n
            if not first & 0x80 or opcode not in (1, 8, 9, 10):
                self.problems.append(f"unexpected frame: opcode {opcode}, fin {bool(first & 0x80)}")
            elif opcode == 1:
                self.messages.append(payload)
            elif opcode == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.ended = f"close frame {code} {payload[2:]!r}"
                break
        del buf[:pos]

    def close(self) -> None:
        if self.reader is not None:
            self.reader.kill(block=True, timeout=5)
        if self.sock is not None:
            self.sock.close()


@contextlib.contextmanager
def clients(nodes: list[Node]) -> Iterator[list[Client]]:
    """SOCKETS_PER_PROCESS clients on each node, in every channel; subscribed when yielded."""
    _raise_nofile(4096)
    query = urllib.parse.urlencode([("channel", c) for c in CHANNELS])
    every = [Client(node.port, f"/ws?{query}") for node in nodes for _ in range(SOCKETS_PER_PROCESS)]
    try:
        pool = gevent.pool.Pool(50)
        for client in every:
            pool.spawn(client.connect)
        pool.join(timeout=30, raise_error=True)
        assert all(c.reader is not None for c in every), "not every client connected in 30 s"
        want = dict.fromkeys(CHANNELS, SOCKETS_PER_PROCESS)
        for node in nodes:

            def subscribed(node: Node = node) -> bool:
                return node.stats()["channel_sizes"] == want

            assert _wait(subscribed, 15), node.stats()
        yield every
    finally:
        for client in every:
            client.close()


# -- publishing ---------------------------------------------------------------------------------


class Attempt:
    """One call of ``/publish``: what was sent and what came back."""

    __slots__ = ("body", "channel", "finished", "msg_id", "node", "publisher", "seq", "status", "try_")

    def __init__(self, seq: int, try_: int, channel: str, node: int, publisher: int) -> None:
        self.seq = seq
        self.try_ = try_
        self.channel = channel
        self.node = node
        self.publisher = publisher
        self.status: int | None = None
        self.body = b""
        self.msg_id: int | None = None
        self.finished = 0.0

    @property
    def key(self) -> tuple[int, int]:
        return (self.seq, self.try_)


class Publisher:
    """Publishes its share of the sequence numbers through one node, on one keep-alive
    connection; a failed publish is retried (a new attempt) after ``retry_pause``."""

    def __init__(self, number: int, node: Node, seqs: list[int], pause: float, retry_pause: float) -> None:
        self.number = number
        self.node = node
        self.seqs = seqs
        self.pause = pause
        self.retry_pause = retry_pause
        self.attempts: list[Attempt] = []
        self.conn: http.client.HTTPConnection | None = None

    def _post(self, attempt: Attempt) -> None:
        body = urllib.parse.urlencode(
            {"channel": attempt.channel, "data": json.dumps({"seq": attempt.seq, "try": attempt.try_})}
        )
        for _ in range(2):  # once more on a fresh connection if the kept-alive one broke
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.node.port, timeout=10)
            try:
                self.conn.request("POST", "/publish", body, {"Content-Type": "application/x-www-form-urlencoded"})
                resp = self.conn.getresponse()
                attempt.status, attempt.body = resp.status, resp.read()
                if resp.will_close:
                    self.close()
                return
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                attempt.body = repr(exc).encode()
        attempt.status = -1  # no answer at all

    def run(self) -> None:
        for seq in self.seqs:
            for try_ in range(200):
                attempt = Attempt(seq, try_, CHANNELS[seq % len(CHANNELS)], self.node.index, self.number)
                self.attempts.append(attempt)
                self._post(attempt)
                attempt.finished = time.monotonic()
                if attempt.status == 200:
                    attempt.msg_id = int(attempt.body)
                    break
                gevent.sleep(self.retry_pause)
            gevent.sleep(self.pause)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def publishers(nodes: list[Node], pause: float, retry_pause: float) -> list[Publisher]:
    """MESSAGES sequence numbers: seq ``s`` goes through node ``s % PROCESSES`` to
    channel ``c{s % 2}``; each node's share is split between several publishers."""
    result: list[Publisher] = []
    for node in nodes:
        share = [s for s in range(MESSAGES) if s % PROCESSES == node.index]
        for k in range(PUBLISHERS_PER_PROCESS):
            result.append(Publisher(len(result), node, share[k::PUBLISHERS_PER_PROCESS], pause, retry_pause))
    return result


# -- checks -------------------------------------------------------------------------------------


def check_publishers(pubs: list[Publisher]) -> tuple[dict[tuple[int, int], Attempt], dict[tuple[int, int], Attempt]]:
    """``(succeeded, failed)`` attempts by key; ids answered by one publisher increase per channel."""
    succeeded: dict[tuple[int, int], Attempt] = {}
    failed: dict[tuple[int, int], Attempt] = {}
    for pub in pubs:
        last: dict[str, int] = {}
        for a in pub.attempts:
            if a.status == 200:
                assert a.msg_id is not None
                assert a.msg_id > last.get(a.channel, 0), f"publisher {pub.number}: ids of {a.channel} went back"
                last[a.channel] = a.msg_id
                succeeded[a.key] = a
            else:
                failed[a.key] = a
    assert sorted(a.seq for a in succeeded.values()) == list(range(MESSAGES)), "not every message was published"
    ids = [(a.channel, a.msg_id) for a in succeeded.values()]
    assert len(set(ids)) == len(ids), "an id was given twice"
    return succeeded, failed


def check_client(
    client: Client, succeeded: dict[tuple[int, int], Attempt], failed: dict[tuple[int, int], Attempt]
) -> tuple[list[str], set[tuple[int, int]]]:
    """Problems of one client, and which failed attempts it received anyway."""
    problems = list(client.problems)
    if client.ended is not None:
        problems.append(f"connection ended: {client.ended}")
    messages = [json.loads(p) for p in client.messages]
    gaps = [m for m in messages if "gap" in m]
    if gaps:
        problems.append(f"gap notices: {gaps[:3]}")
    data = [m for m in messages if "data" in m]
    if len(data) + len(gaps) != len(messages):
        problems.append("messages that are neither data nor gap notices")
    counts = Counter((m["data"]["seq"], m["data"]["try"]) for m in data)
    doubled = [k for k, n in counts.items() if n > 1]
    if doubled:
        problems.append(f"{len(doubled)} received more than once, e.g. {doubled[:3]}")
    missing = [k for k in succeeded if k not in counts]
    if missing:
        problems.append(f"{len(missing)} of {len(succeeded)} published messages missing, e.g. {sorted(missing)[:5]}")
    unknown = [k for k in counts if k not in succeeded and k not in failed]
    if unknown:
        problems.append(f"never published: {unknown[:3]}")
    for m in data:
        a = succeeded.get((m["data"]["seq"], m["data"]["try"]))
        if a is not None and (m["channel"], m["id"]) != (a.channel, a.msg_id):
            problems.append(f"{m} arrived, /publish said {a.channel} id {a.msg_id}")
            break
    for channel in CHANNELS:
        ids = [m["id"] for m in data if m["channel"] == channel]
        if any(b <= a for a, b in itertools.pairwise(ids)):
            problems.append(f"{channel}: ids not increasing")
    return problems, {k for k in counts if k in failed}


def wait_delivered(every: list[Client], count: int, timeout: float) -> None:
    """Until every client has ``count`` messages (or ended); then a moment for extras."""
    _wait(lambda: all(len(c.messages) >= count or c.ended is not None for c in every), timeout, 0.1)
    gevent.sleep(0.3)  # a duplicate or stray message would arrive now


def report(every: list[Client], succeeded: dict[Any, Attempt], failed: dict[Any, Attempt]) -> set[tuple[int, int]]:
    """Assert every client got what it should; return the failed attempts delivered anyway."""
    bad: list[str] = []
    delivered_failed: set[tuple[int, int]] = set()
    for i, client in enumerate(every):
        problems, got = check_client(client, succeeded, failed)
        delivered_failed |= got
        if problems:
            bad.append(f"client {i} (port {client.port}): {'; '.join(problems)}")
    assert not bad, f"{len(bad)} of {len(every)} clients wrong:\n" + "\n".join(bad[:10])
    return delivered_failed


# -- tests --------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_300_sockets_on_3_processes_get_1000_messages_once_in_order(redis_server: Any, tmp_path: Path) -> None:
    started = time.monotonic()
    with cluster(redis_server.url, tmp_path) as nodes, clients(nodes) as every:
        ready = time.monotonic()
        pubs = publishers(nodes, pause=0, retry_pause=0.05)
        jobs = [gevent.spawn(p.run) for p in pubs]
        try:
            gevent.joinall(jobs, timeout=60, raise_error=True)
        finally:
            gevent.killall(jobs, timeout=5)
            for p in pubs:
                p.close()
        published = time.monotonic()
        succeeded, failed = check_publishers(pubs)
        assert not failed, [(a.key, a.status, a.body[:200]) for a in failed.values()][:5]
        wait_delivered(every, MESSAGES, 30)
        delivered = time.monotonic()
        report(every, succeeded, failed)
        for node in nodes:
            stats = node.stats()
            assert stats["delivered"] == SOCKETS_PER_PROCESS * MESSAGES, stats
            assert stats["dropped_slow_consumers"] == 0, stats
    print(
        f"\nstart+connect {ready - started:.1f} s, publish {published - ready:.1f} s, "
        f"all delivered {delivered - published:.1f} s after the last publish"
    )


@pytest.mark.timeout(120)
def test_redis_restart_while_publishing_loses_no_successful_publish(redis_server: Any, tmp_path: Path) -> None:
    started = time.monotonic()
    with cluster(redis_server.url, tmp_path) as nodes, clients(nodes) as every:
        ready = time.monotonic()
        # ~110 publishes per publisher, 5 ms apart: about a second of publishing.
        pubs = publishers(nodes, pause=0.005, retry_pause=0.02)
        jobs = [gevent.spawn(p.run) for p in pubs]
        try:
            # Restart once about a third of the messages went out.
            assert _wait(lambda: sum(a.status == 200 for p in pubs for a in p.attempts) >= MESSAGES // 3, 30)
            before_restart = time.monotonic()
            redis_server.restart()
            restarted = time.monotonic()
            gevent.joinall(jobs, timeout=60, raise_error=True)
        finally:
            gevent.killall(jobs, timeout=5)
            for p in pubs:
                p.close()
        published = time.monotonic()
        succeeded, failed = check_publishers(pubs)
        # The outage was seen, and it failed loudly: 500 from the page, not a hang.
        assert failed, "no publish failed: the restart did not happen while publishing"
        assert {a.status for a in failed.values()} == {500}, [(a.status, a.body[:200]) for a in failed.values()][:5]
        assert any("BrokerUnavailable" in node.logs() for node in nodes)
        early = [a for a in succeeded.values() if a.finished < before_restart]
        late = [a for a in succeeded.values() if a.finished > restarted]
        assert len(early) > 100 and len(late) > 100, (len(early), len(late))
        # Ids keep increasing across the restart although Redis lost its counters.
        for channel in CHANNELS:
            assert max(a.msg_id or 0 for a in early if a.channel == channel) < min(
                a.msg_id or 0 for a in late if a.channel == channel
            )
        wait_delivered(every, len(succeeded), 30)
        delivered = time.monotonic()
        delivered_failed = report(every, succeeded, failed)
        for node in nodes:
            stats = node.stats()
            assert stats["connected"] and stats["subscribers"] == SOCKETS_PER_PROCESS, stats
            assert stats["dropped_slow_consumers"] == 0, stats
    print(
        f"\nstart+connect {ready - started:.1f} s, publish {published - ready:.1f} s "
        f"({len(failed)} failed during the outage, {len(delivered_failed)} of them delivered anyway), "
        f"all delivered {delivered - published:.1f} s after the last publish"
    )
