"""RedisSession: JSON values with a TTL, a lock across processes, and a login on one
rtserver process seen by a page of another."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import rtserver
import rtserver.web.sessions
from rtserver.errors import SessionLockTimeout
from rtserver.testing import serve
from rtserver.web.session_redis import RedisSession
from rtserver.web.sessions import generate_id, session

REPO = Path(__file__).resolve().parents[2]


def set_cookie(headers: http.client.HTTPMessage, name: str = "session_id") -> str:
    for line in headers.get_all("Set-Cookie") or []:
        key, _, rest = line.partition("=")
        if key == name:
            return rest.split(";", 1)[0]
    raise AssertionError(f"no Set-Cookie for {name!r}")


def with_sid(sid: str) -> dict[str, str]:
    return {"Cookie": f"session_id={sid}"}


class Root:
    @rtserver.expose
    def login(self, user: str) -> str:
        session.regenerate()
        session["user"] = user
        return "welcome"

    @rtserver.expose
    def whoami(self) -> str:
        return str(session.get("user", "nobody"))

    @rtserver.expose
    def incr(self, delay: str = "0") -> str:
        n = session.get("n", 0)
        time.sleep(float(delay))
        session["n"] = n + 1
        return str(n + 1)


@pytest.fixture
def client(redis_server: Any) -> Iterator[Any]:
    c = redis.Redis.from_url(redis_server.url)
    try:
        yield c
    finally:
        c.close()


def redis_conf(url: str, **args: Any) -> dict[str, dict[str, Any]]:
    section = {"tools.sessions.on": True, "tools.sessions.storage_class": "redis", "tools.sessions.url": url}
    section.update({f"tools.sessions.{k}": v for k, v in args.items()})
    return {"/": section}


def test_redis_store_keeps_json_with_a_ttl(redis_server: Any, client: Any) -> None:
    with serve(Root(), redis_conf(redis_server.url, timeout=2)) as srv:
        _, headers, body = srv.get("/login?user=alice")
        assert body == b"welcome"
        sid = set_cookie(headers)
        assert srv.get("/whoami", headers=with_sid(sid))[2] == b"alice"
        key = f"rtserver:session:{sid}"
        assert json.loads(client.get(key)) == {"user": "alice"}
        assert 0 < client.pttl(key) <= 120_000
        # A forged id is not adopted, with Redis too.
        forged = generate_id()
        _, headers, body = srv.get("/whoami", headers=with_sid(forged))
        assert body == b"nobody" and headers.get_all("Set-Cookie") is None  # only read: not stored
        assert not client.exists(f"rtserver:session:{forged}")


def test_every_key_the_redis_store_writes_has_a_ttl(redis_server: Any, client: Any) -> None:
    """The sessions' index (the cap's count) too: it lives as long as its longest-lived
    session, and every login lengthens it, never shortens it."""
    with serve(Root(), redis_conf(redis_server.url, timeout=2)) as srv:
        srv.get("/login?user=alice")
        first = client.pttl("rtserver:session:index")
        time.sleep(0.2)
        srv.get("/login?user=bob")
        ttls = {key.decode(): client.pttl(key) for key in client.scan_iter(count=1000)}
    assert "rtserver:session:index" in ttls
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    assert 0 < first <= ttls["rtserver:session:index"] <= 120_000


def test_redis_expiry_is_the_ttl(redis_server: Any, client: Any) -> None:
    with serve(Root(), redis_conf(redis_server.url, timeout=0.01)) as srv:
        _, headers, _ = srv.get("/login?user=bob")
        sid = set_cookie(headers)
        time.sleep(0.8)
        assert not client.exists(f"rtserver:session:{sid}")
        assert srv.get("/whoami", headers=with_sid(sid))[2] == b"nobody"


def test_redis_lock_serialises_two_stores_as_two_processes(redis_server: Any) -> None:
    a, b = RedisSession(url=redis_server.url), RedisSession(url=redis_server.url)
    try:
        sid = generate_id()
        handle = a.acquire_lock(sid, 1)
        start = time.monotonic()
        with pytest.raises(SessionLockTimeout):
            b.acquire_lock(sid, 0.2)
        assert 0.15 < time.monotonic() - start < 1.0
        a.release_lock(sid, handle)
        b.release_lock(sid, b.acquire_lock(sid, 1))
        assert len(a._locks) == len(b._locks) == 0
    finally:
        a.close()
        b.close()


def test_redis_requests_of_one_session_are_serialised(redis_server: Any) -> None:
    import threading

    with serve(Root(), redis_conf(redis_server.url)) as srv:
        _, headers, _ = srv.get("/incr")
        sid = set_cookie(headers)
        bodies: list[bytes] = []
        threads = [
            threading.Thread(target=lambda: bodies.append(srv.get("/incr?delay=0.3", headers=with_sid(sid))[2]))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert sorted(bodies) == [b"2", b"3"]


APP = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import sys

    import rtserver
    import rtserver.web.sessions
    from rtserver.web.sessions import session

    port, redis_url = int(sys.argv[1]), sys.argv[2]


    class Root:
        @rtserver.expose
        def login(self, user):
            session.regenerate()
            session["user"] = user
            return "welcome " + user

        @rtserver.expose
        def whoami(self):
            return session.get("user", "nobody")


    rtserver.quickstart(
        Root(),
        config={
            "global": {"server.socket_host": "127.0.0.1", "server.socket_port": port, "log.screen": False},
            "/": {"tools.sessions.on": True, "tools.sessions.storage_class": "redis", "tools.sessions.url": redis_url},
        },
    )
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"app process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"app on port {port} did not start")


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def test_login_on_one_process_is_seen_by_another(redis_server: Any, tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(APP, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ports = [_free_port(), _free_port()]
    logs = [open(tmp_path / f"app{i}.log", "wb") for i in range(2)]  # noqa: SIM115 - closed below
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(port), redis_server.url], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        for port, log in zip(ports, logs, strict=True)
    ]
    try:
        deadline = time.monotonic() + 10
        for port, proc in zip(ports, procs, strict=True):
            _wait_for(port, proc, deadline)
        status, headers, body = _get(ports[0], "/login?user=alice")
        assert (status, body) == (200, b"welcome alice")
        sid = set_cookie(headers)
        status, _, body = _get(ports[1], "/whoami", headers=with_sid(sid))
        assert (status, body) == (200, b"alice")
        assert _get(ports[1], "/whoami")[2] == b"nobody"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for log in logs:
            log.close()
    for i in range(len(procs)):
        output = (tmp_path / f"app{i}.log").read_text(encoding="utf-8", errors="replace")
        assert "Traceback" not in output, output


def test_a_burst_beyond_the_pool_waits_for_a_connection_instead_of_failing(redis_server: Any) -> None:
    """redis-py's own pool refuses past 100 connections (MaxConnectionsError, which the
    soak saw as 500s and 1011 closes with a thousand sockets); the store's bounded pool
    makes the 150th caller wait for a free connection instead."""
    import gevent

    from rtserver.web.session_redis import RedisSession

    store = RedisSession(url=redis_server.url)
    try:
        # Each call holds its connection for 0.2 s: 150 at once exceed any pool of 100.
        calls = [gevent.spawn(store.client.blpop, "nothing-comes", 0.2) for _ in range(150)]
        gevent.joinall(calls, timeout=30, raise_error=True)
        assert all(call.successful() for call in calls)
        assert store.client.connection_pool.max_connections == RedisSession.max_connections
    finally:
        store.client.connection_pool.disconnect()
