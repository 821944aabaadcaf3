"""tools.csrf: unsafe methods need the session's token and a same-site Origin/Referer."""

from __future__ import annotations

import http.client
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

import rtserver
import rtserver.web.csrf
from rtserver.testing import TestServer, serve
from rtserver.web.csrf import csrf_input, csrf_token
from rtserver.web.sessions import session


def set_cookie(headers: http.client.HTTPMessage, name: str = "session_id") -> str:
    for line in headers.get_all("Set-Cookie") or []:
        key, _, rest = line.partition("=")
        if key == name:
            return rest.split(";", 1)[0]
    raise AssertionError(f"no Set-Cookie for {name!r}")


class Root:
    @rtserver.expose
    def form(self) -> str:
        return csrf_token()

    @rtserver.expose
    def html_form(self) -> str:
        return f'<form method="post" action="/buy">{csrf_input()}</form>'

    @rtserver.expose
    def buy(self, item: str = "book") -> str:  # no csrf_token parameter: the tool consumes it
        return f"bought {item} via {rtserver.request.method}"

    @rtserver.expose
    def login(self) -> str:
        session.regenerate()
        return csrf_token()


CONFIG = {"/": {"tools.sessions.on": True, "tools.csrf.on": True}}


class Client:
    """A browser-ish client: a session cookie, its token, this site's Origin."""

    def __init__(self, srv: TestServer) -> None:
        self.srv = srv
        _, headers, body = srv.get("/form")
        self.sid = set_cookie(headers)
        self.token = body.decode()
        self.origin = f"http://127.0.0.1:{srv.port}"

    def post(self, path: str, data: dict[str, str] | None = None, **headers: str) -> tuple[int, bytes]:
        hdrs = {"Cookie": f"session_id={self.sid}", "Content-Type": "application/x-www-form-urlencoded"}
        hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
        body = urllib.parse.urlencode(data or {}).encode()
        status, _, resp = self.srv.request("POST", path, body=body, headers=hdrs)
        return status, resp


@pytest.fixture
def client() -> Iterator[Client]:
    with serve(Root(), CONFIG) as srv:
        yield Client(srv)


def test_get_is_unaffected(client: Client) -> None:
    status, _, body = client.srv.get("/buy?item=pen")
    assert (status, body) == (200, b"bought pen via GET")


def test_good_token_and_same_origin_pass(client: Client) -> None:
    status, body = client.post("/buy", {"item": "lamp", "csrf_token": client.token}, Origin=client.origin)
    assert (status, body) == (200, b"bought lamp via POST")


def test_token_in_the_header_and_referer_instead_of_origin(client: Client) -> None:
    status, body = client.post("/buy", {"item": "mug"}, X_CSRF_Token=client.token, Referer=client.origin + "/form")
    assert (status, body) == (200, b"bought mug via POST")
    for method in ("PUT", "PATCH", "DELETE"):
        status, _, _ = client.srv.request(
            method,
            "/buy",
            headers={"Cookie": f"session_id={client.sid}", "Origin": client.origin, "X-CSRF-Token": client.token},
        )
        assert status == 200, method


def test_missing_token_is_403(client: Client) -> None:
    status, body = client.post("/buy", {"item": "lamp"}, Origin=client.origin)
    assert status == 403
    assert b"CSRF token missing" in body


@pytest.mark.parametrize("bad", ["x", "A" * 43, "é" * 43])
def test_bad_token_is_403(client: Client, bad: str) -> None:
    status, body = client.post("/buy", {"csrf_token": bad}, Origin=client.origin)
    assert status == 403
    assert b"CSRF token invalid" in body


def test_token_of_another_session_is_403(client: Client) -> None:
    other = Client(client.srv)
    status, _ = client.post("/buy", {"csrf_token": other.token}, Origin=client.origin)
    assert status == 403


def test_repeated_token_field_is_403(client: Client) -> None:
    hdrs = {
        "Cookie": f"session_id={client.sid}",
        "Origin": client.origin,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    body = f"csrf_token={client.token}&csrf_token={client.token}".encode()
    status, _, _ = client.srv.request("POST", "/buy", body=body, headers=hdrs)
    assert status == 403


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "null", "https://127.0.0.1", "http://127.0.0.1.evil.example", "not a url"],
)
def test_cross_site_origin_is_403_even_with_a_good_token(client: Client, origin: str) -> None:
    status, body = client.post("/buy", {"csrf_token": client.token}, Origin=origin)
    assert status == 403
    assert b"Cross-site request refused" in body


def test_cross_site_referer_is_403(client: Client) -> None:
    status, body = client.post("/buy", {"csrf_token": client.token}, Referer="https://evil.example/page")
    assert status == 403 and b"Referer" in body


def test_neither_origin_nor_referer_is_403(client: Client) -> None:
    status, body = client.post("/buy", {"csrf_token": client.token})
    assert status == 403
    assert b"neither an Origin nor a Referer" in body


def test_regenerate_renews_the_token(client: Client) -> None:
    _, headers, body = client.srv.get("/login", headers={"Cookie": f"session_id={client.sid}"})
    new_sid, new_token = set_cookie(headers), body.decode()
    assert new_token != client.token
    client.sid = new_sid
    assert client.post("/buy", {"csrf_token": client.token}, Origin=client.origin)[0] == 403
    assert client.post("/buy", {"csrf_token": new_token}, Origin=client.origin)[0] == 200


def test_csrf_input_is_a_hidden_field(client: Client) -> None:
    _, _, body = client.srv.get("/html_form", headers={"Cookie": f"session_id={client.sid}"})
    assert f'<input type="hidden" name="csrf_token" value="{client.token}">'.encode() in body


def test_trusted_origins_and_origin_check_off() -> None:
    config: dict[str, Any] = {
        "/": {"tools.sessions.on": True, "tools.csrf.on": True, "tools.csrf.trusted_origins": ["https://app.example"]},
        "/buy": {"tools.csrf.check_origin": False},
    }

    class App(Root):
        @rtserver.expose
        def sell(self) -> str:
            return "sold"

    with serve(App(), config) as srv:
        c = Client(srv)
        assert c.post("/sell", {"csrf_token": c.token}, Origin="https://app.example")[0] == 200
        assert c.post("/sell", {"csrf_token": c.token}, Origin="https://other.example")[0] == 403
        # check_origin off: only the token counts.
        assert c.post("/buy", {"csrf_token": c.token})[0] == 200
        assert c.post("/buy", {})[0] == 403


def test_csrf_without_sessions_refuses_unsafe_requests() -> None:
    with serve(Root(), {"/": {"tools.csrf.on": True}}) as srv:
        port = srv.port
        status, _, body = srv.request(
            "POST", "/buy", headers={"Origin": f"http://127.0.0.1:{port}", "X-CSRF-Token": "x"}
        )
        assert status == 403 and b"no session" in body
        assert srv.get("/buy")[0] == 200
