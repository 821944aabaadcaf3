"""Safe by default: no client exhausts the server, every bad input is a 4xx.

Escaped error-page templates, sessions stored only once written (and capped per
store), a cookie parser that survives malformed neighbours, X-Forwarded-For read
from the right, a private and cheap stats page, no dotfiles from static directories,
``request.allowed_hosts`` and off-site redirects, and a WebSocket origin check that
compares schemes.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import gevent
import pytest
from websockets.exceptions import InvalidStatus
from ws4py.websocket import EchoWebSocket

import rtserver
import rtserver.web.sessions as sessions_module
from rtserver.errors import ConfigError, HandshakeError
from rtserver.testing import TestServer, serve
from rtserver.web.httputil import cookie_jar, parse_cookie
from rtserver.web.sessions import session
from rtserver.websocket.handshake import negotiate, negotiate_environ
from rtserver.websocket.options import WebSocketOptions

pytestmark = pytest.mark.timeout(60)

KINDS = ["gevent", "cheroot", "native"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def set_cookie(headers: http.client.HTTPMessage, name: str = "session_id") -> str:
    for line in headers.get_all("Set-Cookie") or []:
        key, _, rest = line.partition("=")
        if key == name:
            return rest.split(";", 1)[0]
    raise AssertionError(f"no Set-Cookie for {name!r} in {headers.get_all('Set-Cookie')!r}")


def with_sid(sid: str) -> dict[str, str]:
    return {"Cookie": f"session_id={sid}"}


def get_host(srv: TestServer, path: str, host: str, **headers: str) -> tuple[int, http.client.HTTPMessage, bytes]:
    """GET ``path`` with the Host header ``host`` (http.client leaves its own out);
    ``X_Forwarded_Host=...`` sends X-Forwarded-Host."""
    return srv.get(path, headers={"Host": host, **{k.replace("_", "-"): v for k, v in headers.items()}})


class SocketSession(rtserver.WebSocket):
    """Writes to the session of the page that opened it, then says so."""

    def opened(self) -> None:
        with self.session.locked():
            self.session["from_socket"] = "yes"
        self.send("written")


class Root:
    @rtserver.expose
    def index(self) -> str:
        return "hello"

    @rtserver.expose
    def read(self) -> str:
        return str(session.get("user"))

    @rtserver.expose
    def login(self, user: str) -> str:
        session.regenerate()
        session["user"] = user
        return "in"

    @rtserver.expose
    def logout(self) -> str:
        rtserver.tools.sessions.expire()
        return "out"

    @rtserver.expose
    def form(self) -> str:
        from rtserver.web.csrf import csrf_input

        return f'<form method="post">{csrf_input()}</form>'

    @rtserver.expose
    def remote(self) -> str:
        return rtserver.request.remote.ip

    @rtserver.expose
    def where(self) -> str:
        return rtserver.url("/here")

    @rtserver.expose
    def go(self, to: str, offsite: str = "") -> None:
        flag = {"": None, "yes": True, "no": False}[offsite]
        raise rtserver.HTTPRedirect(to, offsite=flag)

    class dir:
        @rtserver.expose
        def index(self) -> str:
            return "a directory"

    sock = SocketSession
    echo = EchoWebSocket


def ram_store() -> sessions_module.RamSession:
    stores = [s for s in sessions_module.sweeper().stores() if type(s) is sessions_module.RamSession]
    assert len(stores) == 1
    return stores[0]


SESSIONS = {"/": {"tools.sessions.on": True}}


# -- 1. error-page templates are filled with escaped values ---------------------------


XSS = "/<script>alert(1)</script>"


def test_error_page_template_gets_escaped_values(tmp_path: Path) -> None:
    page = tmp_path / "404.html"
    page.write_text("<html><h1>%(status)s</h1><p>%(message)s</p><small>%(version)s</small></html>")
    with serve(Root(), {"/": {"error_page.404": str(page)}}) as srv:
        status, _, body = srv.get("/%3Cscript%3Ealert(1)%3C/script%3E")
    assert status == 404
    text = body.decode()
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert text.startswith("<html><h1>404 Not Found</h1>")  # the template's own HTML stays


def test_error_page_callable_gets_the_raw_values_and_escapes_itself() -> None:
    seen: list[str] = []

    def page(status: str, message: str, traceback: str, version: str) -> str:
        seen.append(message)
        return "custom"

    with serve(Root(), {"/": {"error_page.404": page}}) as srv:
        status, _, body = srv.get("/%3Cb%3E")
    assert (status, body) == (404, b"custom")
    assert "<b>" in seen[0]  # documented: a callable escapes what it puts in HTML


# -- 2. sessions are stored once written, and capped ----------------------------------


def test_reading_a_session_stores_nothing_and_sends_no_cookie() -> None:
    with serve(Root(), SESSIONS) as srv:
        for path in ["/", "/read"] * 20:  # a crawler: 40 cookieless requests
            status, headers, _ = srv.get(path)
            assert status == 200
            assert headers.get_all("Set-Cookie") is None
        assert len(ram_store()) == 0
        # A page that writes stores the session and sends its cookie.
        status, headers, _ = srv.get("/login?user=ann")
        sid = set_cookie(headers)
        assert len(ram_store()) == 1
        status, headers, body = srv.get("/read", headers=with_sid(sid))
        assert body == b"ann"
        assert set_cookie(headers) == sid  # a stored session's cookie is renewed


def test_a_form_with_a_csrf_token_writes_the_session() -> None:
    config = {"/": {"tools.sessions.on": True, "tools.csrf.on": True}}
    with serve(Root(), config) as srv:
        _, headers, body = srv.get("/form")
        sid = set_cookie(headers)
        assert b'name="csrf_token"' in body
        assert sessions_module.sweeper().stores()[0].exists(sid)


def test_early_locking_of_cookieless_requests_leaves_no_files(tmp_path: Path) -> None:
    config = {
        "/": {
            "tools.sessions.on": True,
            "tools.sessions.storage_class": "file",
            "tools.sessions.storage_path": str(tmp_path),
            "tools.sessions.locking": "early",
        }
    }
    with serve(Root(), config) as srv:
        for _ in range(10):
            assert srv.get("/read")[2] == b"None"
        assert os.listdir(tmp_path) == []  # neither session nor lock files
        _, headers, _ = srv.get("/login?user=bo")
        sid = set_cookie(headers)
        assert srv.get("/read", headers=with_sid(sid))[2] == b"bo"
    assert f"session-{sid}" in os.listdir(tmp_path)


def _fill(srv: TestServer, n: int) -> list[str]:
    sids = []
    for i in range(n):
        status, headers, _ = srv.get(f"/login?user=u{i}")
        assert status == 200
        sids.append(set_cookie(headers))
    return sids


@pytest.mark.parametrize("storage", ["ram", "file"])
def test_a_full_store_refuses_new_sessions_and_keeps_the_stored_ones(
    storage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    section: dict[str, Any] = {"tools.sessions.on": True, "tools.sessions.max_sessions": 3}
    if storage == "file":
        section.update({"tools.sessions.storage_class": "file", "tools.sessions.storage_path": str(tmp_path)})
    caplog.set_level(logging.ERROR, logger="rtserver")
    with serve(Root(), {"/": section}) as srv:
        sids = _fill(srv, 3)
        status, headers, body = srv.get("/login?user=late")
        assert status == 503
        assert headers["Retry-After"] == "60"
        assert headers.get_all("Set-Cookie") is None
        assert b"new session" in body
        assert any("max_sessions" in r.getMessage() for r in caplog.records)
        # Nobody was logged out, and stored sessions still save (and log in again).
        assert srv.get("/read", headers=with_sid(sids[0]))[2] == b"u0"
        status, headers, _ = srv.get("/login?user=again", headers=with_sid(sids[1]))
        assert status == 200
        assert srv.get("/read", headers=with_sid(set_cookie(headers)))[2] == b"again"
        # Pages that only read still work for new visitors.
        assert srv.get("/read")[:3:2] == (200, b"None")
        # A logout makes room.
        assert srv.get("/logout", headers=with_sid(sids[2]))[0] == 200
        assert srv.get("/login?user=late")[0] == 200
    if storage == "file":
        assert len([n for n in os.listdir(tmp_path) if not n.endswith(".lock")]) == 3


def test_expired_sessions_make_room_in_a_full_ram_store() -> None:
    config = {"/": {"tools.sessions.on": True, "tools.sessions.max_sessions": 2, "tools.sessions.timeout": 0.005}}
    with serve(Root(), config) as srv:
        _fill(srv, 2)
        assert srv.get("/login?user=c")[0] == 503
        time.sleep(1.1)  # past the 0.3 s timeout and the 1 s between two purges
        assert srv.get("/login?user=c")[0] == 200


def test_redis_store_is_capped_and_stores_only_written_sessions(redis_server: Any) -> None:
    import redis

    config = {
        "/": {
            "tools.sessions.on": True,
            "tools.sessions.storage_class": "redis",
            "tools.sessions.url": redis_server.url,
            "tools.sessions.max_sessions": 2,
        }
    }
    client = redis.Redis.from_url(redis_server.url)
    try:
        with serve(Root(), config) as srv:
            for _ in range(5):
                assert srv.get("/read")[2] == b"None"
            assert client.dbsize() == 0  # no session, no lock, no index
            sids = _fill(srv, 2)
            assert srv.get("/login?user=x")[0] == 503
            assert srv.get("/read", headers=with_sid(sids[0]))[2] == b"u0"
            assert 0 < client.pttl(f"rtserver:session:{sids[0]}") <= 3600 * 1000
            assert srv.get("/logout", headers=with_sid(sids[1]))[0] == 200
            assert srv.get("/login?user=x")[0] == 200
    finally:
        client.close()


def test_max_sessions_is_checked_at_start() -> None:
    app = rtserver.Application(Root(), config={"/": {"tools.sessions.on": True, "tools.sessions.max_sessions": -1}})
    with pytest.raises(ConfigError, match=r"tools\.sessions\.max_sessions"):
        app.validate()


def test_a_socket_of_a_new_visitor_gets_a_session_the_pages_see(kind: str) -> None:
    with serve(Root(), SESSIONS, kind=kind) as srv, srv.websocket_connect("/sock") as ws:
        assert ws.recv(timeout=5) == "written"
        # The 101 carried the new session's cookie; the socket wrote before "written".
        cookie = ws.response.headers["Set-Cookie"]
        sid = cookie.split(";", 1)[0].partition("=")[2]
        store = sessions_module.sweeper().stores()[0]
        assert store.load(sid) == {"from_socket": "yes"}
        # The visitor's next page has that session (and renews its cookie).
        status, headers, body = srv.get("/read", headers=with_sid(sid))
        assert (status, body) == (200, b"None")
        assert set_cookie(headers) == sid


def test_a_socket_of_a_logged_in_user_shares_the_session(kind: str) -> None:
    with serve(Root(), SESSIONS, kind=kind) as srv:
        _, headers, _ = srv.get("/login?user=dee")
        sid = set_cookie(headers)
        with srv.websocket_connect("/sock", additional_headers=with_sid(sid)) as ws:
            assert ws.recv(timeout=5) == "written"
        store = sessions_module.sweeper().stores()[0]
        assert store.load(sid) == {"user": "dee", "from_socket": "yes"}


# -- 3. a malformed cookie does not hide the others ------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        'consent={"a":1}; session_id=SID',
        "a b; session_id=SID",
        'bad"name=1; =x; novalue; session_id=SID; tail="unterminated',
        "session_id=SID; consent=[1,2]",
        "session_id=SID; session_id=0000000000000000000000000000000000000000",  # the first wins
    ],
)
def test_the_session_cookie_survives_malformed_neighbours(header: str, kind: str) -> None:
    with serve(Root(), SESSIONS, kind=kind) as srv:
        _, headers, _ = srv.get("/login?user=eve")
        sid = set_cookie(headers)
        status, _, body = srv.get("/read", headers={"Cookie": header.replace("SID", sid)})
        assert (status, body) == (200, b"eve")


def test_two_cookie_header_lines_are_both_read(kind: str) -> None:
    with serve(Root(), SESSIONS, kind=kind) as srv:
        _, headers, _ = srv.get("/login?user=fay")
        sid = set_cookie(headers)
        conn = srv.connection()
        try:
            conn.putrequest("GET", "/read")
            conn.putheader("Cookie", 'consent={"a":1}')
            conn.putheader("Cookie", f"session_id={sid}")
            conn.endheaders()
            assert conn.getresponse().read() == b"fay"
        finally:
            conn.close()


def test_parse_cookie_keeps_every_well_formed_pair() -> None:
    assert parse_cookie('consent={"a":1}; a b; x=1; y="q\\"uoted"; z=; =v; w') == {
        "consent": '{"a":1}',
        "x": "1",
        "y": 'q"uoted',
        "z": "",
    }
    jar = cookie_jar("path=/x; theme=dark")  # SimpleCookie cannot hold a cookie named path
    assert list(jar) == ["theme"] and jar["theme"].value == "dark"


# -- 4. X-Forwarded-For is read from the right -----------------------------------------


def proxy_conf(**args: Any) -> dict[str, dict[str, Any]]:
    section: dict[str, Any] = {"tools.proxy.on": True}
    section.update({f"tools.proxy.{k}": v for k, v in args.items()})
    return {"/": section}


@pytest.mark.parametrize(
    ("trusted", "forwarded", "client"),
    [
        # The client wrote 6.6.6.6; the proxy (127.0.0.1) appended what it saw.
        (None, "6.6.6.6, 203.0.113.9", "203.0.113.9"),
        (["127.0.0.1"], "6.6.6.6, 203.0.113.9", "203.0.113.9"),
        # A chain of trusted proxies, given as a network: the first untrusted from the right.
        (["127.0.0.1", "10.0.0.0/8"], "6.6.6.6, 203.0.113.9, 10.0.0.2, 10.1.2.3", "203.0.113.9"),
        (["127.0.0.1", "10.0.0.0/8"], "[2001:db8::7]:4711, 10.0.0.2", "2001:db8::7"),
        (["127.0.0.1", "10.0.0.0/8"], "203.0.113.9:5555", "203.0.113.9"),
        # Every entry a trusted proxy: the leftmost is the nearest to the client we know.
        (["127.0.0.1", "10.0.0.0/8"], "10.0.0.5, 10.0.0.2", "10.0.0.5"),
        # Garbage where the client address should be: the peer's address stays.
        (None, "203.0.113.9, not-an-address", "127.0.0.1"),
        # A peer that is not a trusted proxy: its headers are not believed.
        (["10.9.9.9"], "203.0.113.9", "127.0.0.1"),
    ],
)
def test_x_forwarded_for_from_the_right(trusted: Any, forwarded: str, client: str) -> None:
    args = {} if trusted is None else {"trusted": trusted}
    with serve(Root(), proxy_conf(**args)) as srv:
        status, _, body = srv.get("/remote", headers={"X-Forwarded-For": forwarded})
    assert (status, body.decode()) == (200, client)


def test_proxy_trusted_list_is_checked_at_start() -> None:
    app = rtserver.Application(Root(), config=proxy_conf(trusted=["10.0.0.0/33"]))
    with pytest.raises(ConfigError, match=r"tools\.proxy\.trusted"):
        app.validate()


# -- 5. the stats page: private, and O(1) per request ---------------------------------


def stats_conf(**args: Any) -> dict[str, dict[str, Any]]:
    section: dict[str, Any] = {"tools.stats.on": True}
    section.update({f"tools.stats.{k}": v for k, v in args.items()})
    return {"/stats": section}


def test_stats_answer_loopback_by_default_and_404_to_others() -> None:
    with serve(Root(), stats_conf()) as srv:
        status, headers, _ = srv.get("/stats")
        assert (status, headers["Content-Type"]) == (200, "application/json")
        missing = srv.get("/no-such-page")
    with serve(Root(), stats_conf(allow=["10.0.0.0/8"])) as srv:
        status, _, body = srv.get("/stats")
        assert status == 404
        # The page of a path that does not exist, word for word (but for the path).
        assert body.replace(b"/stats", b"/no-such-page") == missing[2]


def test_behind_the_proxy_tool_the_client_address_is_checked() -> None:
    config = {**stats_conf(), "/": {"tools.proxy.on": True, "tools.proxy.trusted": ["127.0.0.1"]}}
    with serve(Root(), config) as srv:
        assert srv.get("/stats", headers={"X-Forwarded-For": "203.0.113.9"})[0] == 404
        assert srv.get("/stats", headers={"X-Forwarded-For": "127.0.0.1"})[0] == 200


def test_scanned_figures_are_sampled_not_computed_per_request() -> None:
    sleepers: list[Any] = []
    try:
        with serve(Root(), stats_conf(sample_interval=60)) as srv:
            first = json.loads(srv.get("/stats")[2])
            sleepers.extend(gevent.spawn(gevent.sleep, 30) for _ in range(50))
            gevent.sleep(0)  # let them start
            second = json.loads(srv.get("/stats")[2])
            assert second["process"]["greenlets"] == first["process"]["greenlets"]  # the sample
            assert second["sampled_age"] >= 0 and second["uptime"] >= first["uptime"]
        with serve(Root(), stats_conf(sample_interval=0)) as srv:
            third = json.loads(srv.get("/stats")[2])
            assert third["process"]["greenlets"] >= first["process"]["greenlets"] + 50
            assert third["sampled_age"] == 0
    finally:
        gevent.killall(sleepers)


@pytest.mark.parametrize(("arg", "value"), [("allow", ["localhost"]), ("sample_interval", -1)])
def test_stats_arguments_are_checked_at_start(arg: str, value: Any) -> None:
    app = rtserver.Application(Root(), config=stats_conf(**{arg: value}))
    with pytest.raises(ConfigError, match=rf"tools\.stats\.{arg}"):
        app.validate()


# -- 6. no dotfiles from static directories ---------------------------------------------


@pytest.fixture
def public(tmp_path: Path) -> Path:
    root = tmp_path / "public"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "config").write_text("[remote] url = secret")
    (root / ".env").write_text("PASSWORD=secret")
    (root / "sub").mkdir()
    (root / "sub" / ".htpasswd").write_text("secret")
    (root / ".well-known" / "acme-challenge").mkdir(parents=True)
    (root / ".well-known" / "acme-challenge" / "token").write_text("proof")
    (root / "app.css").write_text("body{}")
    return root


def static_conf(root: Path, **args: Any) -> dict[str, dict[str, Any]]:
    section: dict[str, Any] = {"tools.staticdir.on": True, "tools.staticdir.dir": str(root)}
    section.update({f"tools.staticdir.{k}": v for k, v in args.items()})
    return {"/static": section}


def test_dotfiles_are_not_served(public: Path, kind: str) -> None:
    with serve(Root(), static_conf(public), kind=kind) as srv:
        for path in ("/static/.env", "/static/.git/config", "/static/sub/.htpasswd", "/static/%2eenv"):
            status, _, body = srv.get(path)
            assert status == 404, path
            assert b"secret" not in body
        assert srv.get("/static/app.css")[:3:2] == (200, b"body{}")
        assert srv.get("/static/.well-known/acme-challenge/token")[:3:2] == (200, b"proof")


def test_dotfiles_are_served_when_configured(public: Path) -> None:
    with serve(Root(), static_conf(public, dotfiles=True)) as srv:
        assert srv.get("/static/.env")[:3:2] == (200, b"PASSWORD=secret")


# -- 7. allowed hosts and off-site redirects --------------------------------------------


HOSTS = {"/": {"request.allowed_hosts": ["example.com", ".example.org"]}}


def test_any_host_is_answered_by_default() -> None:
    with serve(Root()) as srv:
        assert get_host(srv, "/where", "anything.test")[2] == b"http://anything.test/here"


def test_requests_for_other_hosts_are_400(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rtserver")
    with serve(Root(), HOSTS, kind=kind) as srv:
        for host in ("example.com", "EXAMPLE.com.", "example.com:8080", "example.org", "www.example.org"):
            status, _, body = get_host(srv, "/where", host)
            assert status == 200, host
            assert body.startswith(b"http://") and body.endswith(b"/here")
        for host in ("evil.test", "example.com.evil.test", "notexample.org", "127.0.0.1", "a@example.com"):
            status, headers, body = get_host(srv, "/dir", host)  # an index: trailing_slash redirects
            assert status == 400, host
            assert "Location" not in headers
            # (a server may refuse a malformed Host itself, with its own short page)
            assert b"Invalid Host header" in body or "@" in host
    assert any("allowed_hosts" in r.getMessage() for r in caplog.records)


def test_a_forwarded_host_is_checked_too() -> None:
    config = {"/": {**HOSTS["/"], "tools.proxy.on": True}}
    with serve(Root(), config) as srv:
        assert get_host(srv, "/where", "example.com", X_Forwarded_Host="www.example.org")[2] == (
            b"http://www.example.org/here"
        )
        status, headers, _ = get_host(srv, "/dir", "example.com", X_Forwarded_Host="evil.test")
        assert status == 400 and "Location" not in headers


def test_redirects_to_unlisted_hosts_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="rtserver")
    with serve(Root(), HOSTS) as srv:
        status, headers, _ = get_host(srv, "/go?to=/home", "example.com")
        assert (status, headers["Location"]) == (303, "http://example.com/home")
        status, headers, _ = get_host(srv, "/go?to=https://www.example.org/x", "example.com")
        assert (status, headers["Location"]) == (303, "https://www.example.org/x")
        for target in ("https://evil.test/", "//evil.test/x", "javascript:alert(1)"):
            status, headers, body = get_host(srv, f"/go?to={target}", "example.com")
            assert status == 400, target
            assert "Location" not in headers
            assert b"not on this site" in body
        # A deliberate off-site redirect says so.
        status, headers, _ = get_host(srv, "/go?to=https://id.provider.test/auth&offsite=yes", "example.com")
        assert (status, headers["Location"]) == (303, "https://id.provider.test/auth")
    assert any("Refused the redirect" in r.getMessage() for r in caplog.records)


def test_offsite_false_refuses_other_hosts_without_a_list() -> None:
    with serve(Root()) as srv:
        status, headers, _ = get_host(srv, "/go?to=/next&offsite=no", "site.test")
        assert (status, headers["Location"]) == (303, "http://site.test/next")
        assert get_host(srv, "/go?to=//evil.test/&offsite=no", "site.test")[0] == 400
        # offsite unset and no list: CherryPy's behaviour, any target.
        assert get_host(srv, "/go?to=//evil.test/", "site.test")[1]["Location"] == "http://evil.test/"


@pytest.mark.parametrize("value", ["https://example.com", "example.com:80", "/path", [1], ".."])
def test_allowed_hosts_values_are_checked(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"request\.allowed_hosts"):
        rtserver.Application(Root(), config={"/": {"request.allowed_hosts": value}})


# -- 8. the WebSocket origin check compares schemes -------------------------------------


def upgrade_headers(**extra: str) -> list[tuple[str, str]]:
    headers = {
        "Host": "example.com",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return list(headers.items())


@pytest.mark.parametrize(
    ("secure", "host", "origin", "ok"),
    [
        (True, "example.com", "https://example.com", True),
        (True, "example.com:443", "https://example.com", True),
        (True, "example.com", "https://example.com:443", True),
        (True, "example.com", "http://example.com", False),  # the bug: a plain page on wss
        (True, "example.com:443", "http://example.com:443", False),
        (False, "example.com", "http://example.com:80", True),
        (False, "example.com", "https://example.com", False),
        (False, "example.com:8080", "https://example.com:8080", False),
        (True, "example.com:8443", "https://example.com:8443", True),
    ],
)
def test_same_origin_means_same_scheme_host_and_port(secure: bool, host: str, origin: str, ok: bool) -> None:
    headers = upgrade_headers(Host=host, Origin=origin)
    if ok:
        assert negotiate("GET", headers, WebSocketOptions(), secure=secure).origin == origin
    else:
        with pytest.raises(HandshakeError) as info:
            negotiate("GET", headers, WebSocketOptions(), secure=secure)
        assert info.value.status == 403


def test_a_tls_environ_refuses_a_plain_http_origin() -> None:
    environ = {
        "REQUEST_METHOD": "GET",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "https",
        **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in upgrade_headers(Origin="http://example.com")},
    }
    with pytest.raises(HandshakeError):
        negotiate_environ(environ, WebSocketOptions())
    environ["HTTP_ORIGIN"] = "https://example.com"
    assert negotiate_environ(environ, WebSocketOptions()).origin == "https://example.com"


def test_a_plain_server_refuses_an_https_origin(kind: str) -> None:
    with serve(Root(), kind=kind) as srv:
        with srv.websocket_connect("/echo", origin=f"http://127.0.0.1:{srv.port}") as ws:
            ws.send("same origin")
            assert ws.recv(timeout=5) == "same origin"
        with (
            pytest.raises(InvalidStatus) as info,
            srv.websocket_connect("/echo", origin=f"https://127.0.0.1:{srv.port}"),
        ):
            pass
        assert info.value.response.status_code == 403
