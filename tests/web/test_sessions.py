"""Sessions: cookie flags, fixation, regenerate, stores (RAM, file), expiry and the
sweeper, malformed ids, locking and lock timeouts, the WebSocket handshake API."""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
from typing import Any

import pytest

import rtserver
import rtserver.web.sessions as sessions_module
from rtserver.errors import ConfigError, SessionLockTimeout
from rtserver.testing import serve
from rtserver.web.request import Request
from rtserver.web.sessions import (
    FileSession,
    RamSession,
    Session,
    SessionStore,
    generate_id,
    load_session_for_handshake,
    session,
    valid_id,
)


def set_cookie(headers: http.client.HTTPMessage, name: str = "session_id") -> tuple[str, dict[str, Any]]:
    """The value and attributes (lower-cased names) of the Set-Cookie for ``name``."""
    for line in headers.get_all("Set-Cookie") or []:
        first, *attrs = (part.strip() for part in line.split(";"))
        key, _, value = first.partition("=")
        if key == name:
            parsed: dict[str, Any] = {}
            for attr in attrs:
                akey, eq, avalue = attr.partition("=")
                parsed[akey.lower()] = avalue if eq else True
            return value, parsed
    raise AssertionError(f"no Set-Cookie for {name!r} in {headers.get_all('Set-Cookie')!r}")


#: The toolbox, typed loosely: its tools are set as attributes at run time.
TOOLS: Any = rtserver.tools


def with_sid(sid: str) -> dict[str, str]:
    return {"Cookie": f"session_id={sid}"}


class Root:
    @rtserver.expose
    def index(self) -> str:
        return "hello"

    @rtserver.expose
    def put(self, key: str, value: str) -> str:
        session[key] = value
        return "ok"

    @rtserver.expose
    def read(self, key: str) -> str:
        return str(session.get(key))

    @rtserver.expose
    def login(self, user: str) -> str:
        session.regenerate()
        session["user"] = user
        return "welcome"

    @rtserver.expose
    def login_helper(self, user: str) -> str:
        TOOLS.sessions.regenerate()
        session["user"] = user
        return "welcome"

    @rtserver.expose
    def logout(self) -> str:
        TOOLS.sessions.expire()
        return "bye"

    @rtserver.expose
    def incr(self, delay: str = "0") -> str:
        n = session.get("n", 0)
        time.sleep(float(delay))
        session["n"] = n + 1
        return str(n + 1)

    @rtserver.expose
    def fail(self) -> str:
        session["written"] = "yes"
        raise rtserver.HTTPError(400, "nope")

    @rtserver.expose
    def forward(self) -> str:
        session["forwarded"] = "yes"  # loads and locks the session
        raise rtserver.InternalRedirect("/read?key=forwarded")

    @rtserver.expose
    def stream(self) -> Any:
        rtserver.response.stream = True

        def chunks() -> Any:
            yield "a"
            session["streamed"] = "yes"
            yield "b"

        return chunks()

    @rtserver.expose
    def crash(self) -> str:
        session["crashed"] = "yes"
        raise ValueError("a bug")

    @rtserver.expose
    def bad_value(self) -> str:
        session["when"] = object()
        return "unreachable"


SESSIONS_ON = {"/": {"tools.sessions.on": True}}


def conf(**args: Any) -> dict[str, dict[str, Any]]:
    section: dict[str, Any] = {"tools.sessions.on": True}
    section.update({f"tools.sessions.{k}": v for k, v in args.items()})
    return {"/": section}


def ram_store() -> RamSession:
    stores = [s for s in sessions_module.sweeper().stores() if type(s) is RamSession]
    assert len(stores) == 1
    return stores[0]


# -- cookie flags --------------------------------------------------------------


def test_cookie_is_httponly_samesite_lax_path_and_not_secure_over_plain_http() -> None:
    config = {"/": {"tools.sessions.on": True, "tools.secureheaders.on": True}}
    with serve(Root(), config) as srv:
        status, headers, body = srv.get("/put?key=k&value=v")
    assert status == 200 and body == b"ok"
    sid, attrs = set_cookie(headers)
    assert valid_id(sid) and len(sid) == 40
    assert attrs["httponly"] is True
    assert attrs["samesite"] == "Lax"
    assert attrs["path"] == "/"
    assert attrs["max-age"] == "3600"
    assert "expires" in attrs
    assert "secure" not in attrs
    # secureheaders and sessions together: both sets of headers go out.
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "Strict-Transport-Security" not in headers


def test_secure_flag_on_tls_requests_via_the_proxy_tool() -> None:
    config = {"/": {"tools.sessions.on": True, "tools.secureheaders.on": True, "tools.proxy.on": True}}
    with serve(Root(), config) as srv:
        _, tls_headers, _ = srv.get("/put?key=k&value=v", headers={"X-Forwarded-Proto": "https"})
        _, plain_headers, _ = srv.get("/put?key=k&value=v")
    assert set_cookie(tls_headers)[1]["secure"] is True
    assert tls_headers["Strict-Transport-Security"] == "max-age=31536000"
    assert "secure" not in set_cookie(plain_headers)[1]


def test_cookie_options_name_path_domain_strict_secure_and_browser_session_cookie() -> None:
    config = conf(name="sid", path="/app", domain="example.test", samesite="strict", secure=True, persistent=False)
    with serve(Root(), config) as srv:
        _, headers, _ = srv.get("/put?key=k&value=v")
    _sid, attrs = set_cookie(headers, "sid")
    assert attrs["path"] == "/app"
    assert attrs["domain"] == "example.test"
    assert attrs["samesite"] == "Strict"
    assert attrs["secure"] is True
    assert "max-age" not in attrs and "expires" not in attrs


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ({"samesite": "None"}, "tools.sessions.samesite"),
        ({"samesite": "sometimes"}, "tools.sessions.samesite"),
        ({"locking": "optimistic"}, "tools.sessions.locking"),
        ({"storage_class": "memcached"}, "tools.sessions.storage_class"),
        ({"storage_class": "file"}, "tools.sessions.storage_class"),
        ({"timeout": 0}, "tools.sessions.timeout"),
        ({"lock_timeout": -1}, "tools.sessions.lock_timeout"),
        ({"name": "bad name;"}, "tools.sessions.name"),
        ({"path": "/; Domain=evil.test"}, "tools.sessions.path"),
        ({"colour": "blue"}, "tools.sessions.colour"),
    ],
)
def test_bad_config_fails_at_start_naming_the_key(args: dict[str, Any], key: str) -> None:
    app = rtserver.Application(Root(), config=conf(**args))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        app.validate()


def test_samesite_none_is_accepted_with_secure() -> None:
    with serve(Root(), conf(samesite="None", secure=True)) as srv:
        _, headers, _ = srv.get("/put?key=k&value=v")
    assert set_cookie(headers)[1]["samesite"] == "None"


# -- ids: fixation, regenerate, malformed ------------------------------------------


def test_values_persist_between_requests_of_one_session() -> None:
    with serve(Root(), SESSIONS_ON) as srv:
        _, headers, _ = srv.get("/put?key=colour&value=blue")
        sid, _ = set_cookie(headers)
        status, headers2, body = srv.get("/read?key=colour", headers=with_sid(sid))
        assert (status, body) == (200, b"blue")
        assert set_cookie(headers2)[0] == sid  # the known id is kept
        _, _, other = srv.get("/read?key=colour")
        assert other == b"None"  # another visitor, another session


def test_unknown_id_from_a_cookie_is_replaced_no_fixation() -> None:
    forged = generate_id()
    with serve(Root(), SESSIONS_ON) as srv:
        _, headers, _ = srv.get("/put?key=k&value=v", headers=with_sid(forged))
        sid, _ = set_cookie(headers)
        assert sid != forged and valid_id(sid)
        assert not ram_store().exists(forged)
        assert ram_store().load(sid) == {"k": "v"}


def test_regenerate_rotates_the_id_and_keeps_the_data() -> None:
    with serve(Root(), SESSIONS_ON) as srv:
        _, headers, _ = srv.get("/put?key=cart&value=3")
        before, _ = set_cookie(headers)
        for page in ("/login", "/login_helper"):
            _, headers, body = srv.get(f"{page}?user=alice", headers=with_sid(before))
            assert body == b"welcome"
            after, _ = set_cookie(headers)
            assert after != before and valid_id(after)
            assert srv.get("/read?key=cart", headers=with_sid(after))[2] == b"3"
            assert srv.get("/read?key=user", headers=with_sid(after))[2] == b"alice"
            # The old id is dead: whoever held it gets a fresh, empty session.
            _, old_headers, old_body = srv.get("/read?key=user", headers=with_sid(before))
            # (a fresh session that is only read: neither stored nor sent as a cookie)
            assert old_body == b"None" and old_headers.get_all("Set-Cookie") is None
            before = after


def test_expire_deletes_the_session_and_the_cookie() -> None:
    with serve(Root(), SESSIONS_ON) as srv:
        _, headers, _ = srv.get("/put?key=user&value=bob")
        sid, _ = set_cookie(headers)
        _, headers, body = srv.get("/logout", headers=with_sid(sid))
        assert body == b"bye"
        value, attrs = set_cookie(headers)
        assert attrs["max-age"] == "0"
        assert srv.get("/read?key=user", headers=with_sid(sid))[2] == b"None"


MALFORMED = [
    "../../../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "/tmp/x",
    "a" * 4096,
    "Z" * 40,
    "A" * 40,  # upper-case hex is not what we issue
    "0" * 39,
    "0" * 41,
    '"' + "0" * 40 + '"x',
    "",
]


@pytest.mark.parametrize("bad", MALFORMED)
def test_malformed_ids_get_a_new_session_never_an_error(bad: str, tmp_path: Any) -> None:
    store_dir = tmp_path / "store"
    with serve(Root(), conf(storage_class="file", storage_path=str(store_dir))) as srv:
        status, headers, body = srv.get("/put?key=k&value=v", headers={"Cookie": f"session_id={bad}"})
    assert status == 200 and body == b"ok"
    sid, _ = set_cookie(headers)
    assert valid_id(sid) and sid != bad
    # Nothing was written anywhere but the store, and only under the new id.
    assert sorted(os.listdir(tmp_path)) == ["store"]
    assert sorted(n for n in os.listdir(store_dir) if not n.endswith(".lock")) == [f"session-{sid}"]


def test_unparsable_cookie_header_gets_a_new_session() -> None:
    with serve(Root(), SESSIONS_ON) as srv:
        status, headers, _ = srv.get("/put?key=k&value=v", headers={"Cookie": 'session_id="\\x00; ;;=='})
    assert status == 200 and valid_id(set_cookie(headers)[0])


def test_store_refuses_invalid_ids_itself(tmp_path: Any) -> None:
    store = FileSession(storage_path=str(tmp_path))
    for bad in ("../x", "0" * 39, "G" * 40):
        with pytest.raises(ValueError):
            store.load(bad)
    with pytest.raises(ValueError):
        Session(store, "../etc")


# -- stores ----------------------------------------------------------------------


def test_values_are_json_and_unsupported_values_are_a_500_not_pickled() -> None:
    with serve(Root(), SESSIONS_ON) as srv:
        _, headers, _ = srv.get("/bad_value")
        assert headers.get_content_type() == "text/html"
    store = RamSession()
    store.save(generate_id(), {"n": 1, "t": [1, 2]}, time.time() + 60)
    with pytest.raises(TypeError, match="JSON"):
        store.save(generate_id(), {"x": {1, 2}}, time.time() + 60)
    with pytest.raises(TypeError, match="str"):
        Session(store, generate_id())[1] = "x"  # type: ignore[index]


def test_file_store_keeps_one_json_file_per_session(tmp_path: Any) -> None:
    with serve(Root(), conf(storage_class="file", storage_path=str(tmp_path))) as srv:
        _, headers, _ = srv.get("/put?key=colour&value=green")
        sid, _ = set_cookie(headers)
        assert srv.get("/read?key=colour", headers=with_sid(sid))[2] == b"green"
    path = tmp_path / f"session-{sid}"
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["data"] == {"colour": "green"}
    assert doc["expires"] > time.time() + 3500
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_file_store_lock_works_across_store_instances(tmp_path: Any) -> None:
    # Two FileSession objects on one directory stand for two processes: only the
    # flock is shared between them.
    a, b = FileSession(storage_path=str(tmp_path)), FileSession(storage_path=str(tmp_path))
    sid = generate_id()
    handle = a.acquire_lock(sid, 1)
    try:
        start = time.monotonic()
        with pytest.raises(SessionLockTimeout):
            b.acquire_lock(sid, 0.2)
        assert 0.15 < time.monotonic() - start < 1.5
    finally:
        a.release_lock(sid, handle)
    b.release_lock(sid, b.acquire_lock(sid, 1))


def test_a_custom_store_subclasses_sessionstore() -> None:
    class DictStore(SessionStore):
        data: dict[str, str] = {}

        def load(self, id: str) -> dict[str, Any] | None:
            text = self.data.get(id)
            return self.decode(text) if text else None

        def save(self, id: str, data: dict[str, Any], expires: float) -> None:
            self.data[id] = self.encode(data)

        def delete(self, id: str) -> None:
            self.data.pop(id, None)

    with serve(Root(), conf(storage_class=DictStore)) as srv:
        _, headers, _ = srv.get("/put?key=a&value=1")
        sid, _ = set_cookie(headers)
        assert srv.get("/read?key=a", headers=with_sid(sid))[2] == b"1"
    assert json.loads(DictStore.data[sid]) == {"a": "1"}


def test_http_errors_save_as_cherrypy_does_unexpected_errors_save_nothing() -> None:
    with serve(Root(), conf(lock_timeout=0.5)) as srv:
        _, headers, _ = srv.get("/put?key=k&value=v")
        sid, _ = set_cookie(headers)
        status, headers, _ = srv.get("/fail", headers=with_sid(sid))
        assert status == 400
        assert set_cookie(headers)[0] == sid  # the cookie still goes out with the error
        assert srv.get("/read?key=written", headers=with_sid(sid))[2] == b"yes"
        status, headers, _ = srv.get("/crash", headers=with_sid(sid))
        assert status == 500
        assert set_cookie(headers)[0] == sid
        start = time.monotonic()
        status, _, body = srv.get("/read?key=crashed", headers=with_sid(sid))
        assert (status, body) == (200, b"None")
        assert time.monotonic() - start < 0.4  # not blocked: the lock was released


# -- expiry and the sweeper ----------------------------------------------------


def test_expired_sessions_are_not_adopted_and_are_swept() -> None:
    # timeout 0.01 min = 0.6 s; sweep every 0.005 min = 0.3 s.
    with serve(Root(), conf(timeout=0.01, clean_freq=0.005)) as srv:
        _, headers, _ = srv.get("/put?key=k&value=v")
        sid, attrs = set_cookie(headers)
        assert attrs["max-age"] == "1"
        store = ram_store()
        assert store.exists(sid)
        time.sleep(1.2)
        assert sid not in store._cache  # removed by the sweeper, not only ignored
        _, headers, body = srv.get("/read?key=k", headers=with_sid(sid))
        assert body == b"None"
        assert headers.get_all("Set-Cookie") is None  # a new session, only read: no cookie


def test_file_store_sweeper_removes_expired_files(tmp_path: Any) -> None:
    with serve(Root(), conf(storage_class="file", storage_path=str(tmp_path), timeout=0.005, clean_freq=0.005)) as srv:
        _, headers, _ = srv.get("/put?key=k&value=v")
        sid, _ = set_cookie(headers)
        assert (tmp_path / f"session-{sid}").exists()
        deadline = time.monotonic() + 3
        while os.listdir(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert os.listdir(tmp_path) == []  # the session file and its lock file


def test_engine_stop_closes_and_forgets_the_stores() -> None:
    with serve(Root(), SESSIONS_ON) as srv:
        srv.get("/put?key=k&value=v")
        assert sessions_module.sweeper().stores()
    assert sessions_module.sweeper().stores() == []


# -- locking -----------------------------------------------------------------------


def _concurrently(
    srv: Any, paths: list[str], headers: dict[str, str], stagger: float = 0.05
) -> list[tuple[int, bytes, float]]:
    results: list[Any] = [None] * len(paths)
    start = time.monotonic()

    def fetch(i: int, path: str) -> None:
        status, _, body = srv.get(path, headers=headers)
        results[i] = (status, body, time.monotonic() - start)

    threads = []
    for i, path in enumerate(paths):
        thread = threading.Thread(target=fetch, args=(i, path))
        thread.start()
        threads.append(thread)
        time.sleep(stagger)
    for thread in threads:
        thread.join(10)
    return results


@pytest.mark.parametrize("locking", ["implicit", "early"])
def test_two_requests_of_one_session_are_serialised(locking: str) -> None:
    with serve(Root(), conf(locking=locking)) as srv:
        _, headers, _ = srv.get("/incr")
        sid, _ = set_cookie(headers)
        results = _concurrently(srv, ["/incr?delay=0.4", "/incr?delay=0.4"], with_sid(sid))
        assert sorted(r[1] for r in results) == [b"2", b"3"]  # no lost update
        assert max(r[2] for r in results) >= 0.75  # the second waited for the first
        assert srv.get("/read?key=n", headers=with_sid(sid))[2] == b"3"


def test_explicit_locking_does_not_serialise_so_updates_are_lost() -> None:
    # The contrast that shows what the lock is for.
    with serve(Root(), conf(locking="explicit")) as srv:
        _, headers, _ = srv.get("/incr")
        sid, _ = set_cookie(headers)
        results = _concurrently(srv, ["/incr?delay=0.3", "/incr?delay=0.3"], with_sid(sid))
        assert [r[1] for r in results] == [b"2", b"2"]
        assert max(r[2] for r in results) < 0.55


def test_a_lock_held_past_lock_timeout_is_a_503_and_a_logged_error(caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="rtserver")
    with serve(Root(), conf(lock_timeout=0.3)) as srv:
        _, headers, _ = srv.get("/incr")
        sid, _ = set_cookie(headers)
        results: list[Any] = []

        def waiter() -> None:
            results.append(srv.request("GET", "/incr", headers=with_sid(sid)))

        holder = threading.Thread(target=lambda: srv.get("/incr?delay=1.2", headers=with_sid(sid)))
        holder.start()
        time.sleep(0.1)
        start = time.monotonic()
        thread = threading.Thread(target=waiter)
        thread.start()
        thread.join(5)
        elapsed = time.monotonic() - start
        holder.join(5)
        status, resp_headers, _ = results[0]
        assert status == 503
        assert resp_headers["Retry-After"] == "1"
        assert 0.25 < elapsed < 0.55  # one lock_timeout, not two
        assert srv.get("/read?key=n", headers=with_sid(sid))[2] == b"2"  # the holder's write
    assert any("lock_timeout" in r.getMessage() for r in caplog.records)
    assert not any(sid in r.getMessage() for r in caplog.records)  # ids are secrets


def test_local_locks_are_forgotten_when_free() -> None:
    store = RamSession()
    sid = generate_id()
    handle = store.acquire_lock(sid, 1)
    with pytest.raises(SessionLockTimeout):
        store.acquire_lock(sid, 0)
    store.release_lock(sid, handle)
    assert len(store._locks) == 0


# -- sessions in sockets (the handshake API) ------------------------------------


def _handshake_request(sid: str, toolmaps: dict[str, Any] | None = None) -> Request:
    request = Request({"REQUEST_METHOD": "GET", "PATH_INFO": "/ws", "HTTP_COOKIE": f"session_id={sid}"})
    request.toolmaps = toolmaps or {}
    return request


def test_handshake_session_is_loaded_without_holding_the_lock() -> None:
    with serve(Root(), conf(lock_timeout=0.5)) as srv:
        _, headers, _ = srv.get("/put?key=user&value=alice")
        sid, _ = set_cookie(headers)
        ws_session = load_session_for_handshake(_handshake_request(sid))
        assert ws_session.id == sid and ws_session["user"] == "alice"
        assert not ws_session.is_locked
        # The socket holds no lock: pages of the user are not blocked.
        assert srv.get("/put?key=page&value=1", headers=with_sid(sid))[0] == 200
        # locked(): reload (sees the page's write), change, save under the lock.
        with ws_session.locked():
            assert ws_session.is_locked
            assert ws_session["page"] == "1"
            ws_session["room"] = "lobby"
        assert not ws_session.is_locked
        assert srv.get("/read?key=room", headers=with_sid(sid))[2] == b"lobby"
        # save(): takes the lock briefly.
        ws_session["mood"] = "happy"
        ws_session.save()
        assert not ws_session.is_locked
        assert srv.get("/read?key=mood", headers=with_sid(sid))[2] == b"happy"
        # An exception inside locked() saves nothing and frees the lock.
        with pytest.raises(KeyError), ws_session.locked():
            ws_session["room"] = "attic"
            raise KeyError("boom")
        assert srv.get("/read?key=room", headers=with_sid(sid))[2] == b"lobby"


def test_handshake_with_an_unknown_id_gets_a_new_session() -> None:
    forged = generate_id()
    with serve(Root(), SESSIONS_ON):
        ws_session = load_session_for_handshake(_handshake_request(forged))
    assert ws_session.id != forged and ws_session.missing and dict(ws_session) == {}


def test_handshake_after_the_session_tool_ran_hands_the_session_over() -> None:
    handed: list[Session] = []

    class App(Root):
        @rtserver.expose
        def ws(self) -> str:
            session["seen"] = "handshake"
            handed.append(load_session_for_handshake(rtserver.request))
            return ""

    with serve(App(), conf(lock_timeout=0.5)) as srv:
        _, headers, _ = srv.get("/put?key=user&value=carol")
        sid, _ = set_cookie(headers)
        status, _, _ = srv.get("/ws", headers=with_sid(sid))
        assert status == 200
        ws_session = handed[0]
        assert ws_session.id == sid and dict(ws_session) == {"user": "carol", "seen": "handshake"}
        with ws_session.locked():
            ws_session["socket"] = "wrote"
        # The page's own end-of-request save did not overwrite the socket's write.
        assert srv.get("/read?key=socket", headers=with_sid(sid))[2] == b"wrote"
        assert srv.get("/read?key=seen", headers=with_sid(sid))[2] == b"handshake"


def test_session_proxy_outside_a_session_path() -> None:
    assert not session
    with pytest.raises(RuntimeError):
        session["x"] = 1


def test_a_lock_whose_request_never_ended_is_taken_over_after_lock_expiry(caplog: Any) -> None:
    class ShortLease(RamSession):
        lock_expiry = 0.2

    store = ShortLease()
    sid = generate_id()
    store.acquire_lock(sid, 1)  # never released: a request that vanished
    with pytest.raises(SessionLockTimeout):
        store.acquire_lock(sid, 0.05)
    time.sleep(0.2)
    handle = store.acquire_lock(sid, 0.05)
    store.release_lock(sid, handle)
    assert any("taking over" in r.getMessage() for r in caplog.records)


def test_internal_redirect_keeps_the_session_and_its_lock() -> None:
    with serve(Root(), conf(lock_timeout=0.5)) as srv:
        _, headers, _ = srv.get("/put?key=k&value=v")
        sid, _ = set_cookie(headers)
        start = time.monotonic()
        status, _, body = srv.get("/forward", headers=with_sid(sid))
        assert (status, body) == (200, b"yes")
        assert time.monotonic() - start < 0.4  # no wait on its own lock
        assert srv.get("/read?key=forwarded", headers=with_sid(sid))[2] == b"yes"


def test_a_streamed_response_saves_at_the_end_of_the_stream() -> None:
    with serve(Root(), conf(lock_timeout=0.5)) as srv:
        _, headers, _ = srv.get("/put?key=k&value=v")
        sid, _ = set_cookie(headers)
        status, _, body = srv.get("/stream", headers=with_sid(sid))
        assert (status, body) == (200, b"ab")
        assert srv.get("/read?key=streamed", headers=with_sid(sid))[2] == b"yes"
