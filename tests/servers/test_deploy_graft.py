"""Grafting foreign WSGI apps on the tree (the guide's "Hosting a foreign WSGI application")."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import rtserver
from rtserver import testing

from .deploy_support import upgrade_to_echo

WSGI_KINDS = ["gevent", "cheroot"]


def raw_wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[Any]:
    # Verbatim from the guide: it returns a list of str, which we accept leniently.
    status = "200 OK"
    response_headers = [("Content-type", "text/plain")]
    start_response(status, response_headers)
    return ["Hello world!"]


def where_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = json.dumps({"script": environ["SCRIPT_NAME"], "path": environ["PATH_INFO"], "qs": environ["QUERY_STRING"]})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body.encode()]


def failing_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    raise RuntimeError("legacy failure")


def failing_late_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"partial"
    raise RuntimeError("legacy failure while streaming")


class Root:
    @rtserver.expose
    def index(self) -> str:
        return "page"

    @rtserver.expose
    def ws(self) -> bytes:
        return upgrade_to_echo()


TOOL_ON = {"tools.response_headers.on": True, "tools.response_headers.headers": [("X-Tool", "on")]}


@pytest.fixture(params=WSGI_KINDS)
def srv(request: pytest.FixtureRequest) -> Iterator[testing.TestServer]:
    with testing.serve(Root(), kind=request.param, global_config=TOOL_ON) as server:
        rtserver.tree.graft(raw_wsgi_app, "/legacy")
        rtserver.tree.graft(where_app, "/where")
        rtserver.tree.graft(failing_app, "/fails")
        rtserver.tree.graft(failing_late_app, "/fails-late")
        yield server


def test_graft_beside_pages_and_sockets(srv: testing.TestServer) -> None:
    status, headers, body = srv.get("/legacy")
    assert (status, body) == (200, b"Hello world!")
    assert srv.get("/")[2] == b"page"
    with srv.websocket_connect("/ws") as ws:
        ws.send("beside a graft")
        assert ws.recv(timeout=5) == "beside a graft"


def test_tools_do_not_apply_to_a_graft(srv: testing.TestServer) -> None:
    assert srv.get("/")[1]["X-Tool"] == "on"
    assert "X-Tool" not in srv.get("/legacy")[1]


def test_graft_sees_its_script_name(srv: testing.TestServer) -> None:
    status, _, body = srv.get("/where/a/b?x=1")
    assert status == 200
    assert json.loads(body) == {"script": "/where", "path": "/a/b", "qs": "x=1"}


def test_graft_errors_are_contained(srv: testing.TestServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="rtserver"):
        status, _, body = srv.get("/fails")
        assert status == 500
        assert b"legacy failure" not in body
        assert "legacy failure" in caplog.text
        # Failing after the head was sent: the response is cut, the server lives on.
        try:
            srv.get("/fails-late")
        except Exception:
            pass
        assert "legacy failure while streaming" in caplog.text
    assert srv.get("/")[2] == b"page"
    assert srv.get("/legacy")[2] == b"Hello world!"


@pytest.mark.parametrize("kind", WSGI_KINDS)
def test_graft_at_the_root_as_in_the_guide(kind: str) -> None:
    with testing.serve(kind=kind) as srv:
        rtserver.tree.graft(raw_wsgi_app, "/")
        assert srv.get("/")[2] == b"Hello world!"
        assert srv.get("/any/path")[2] == b"Hello world!"


def test_graft_on_the_native_server_is_a_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    with testing.serve(Root(), kind="native") as srv:
        rtserver.tree.graft(raw_wsgi_app, "/legacy")
        with caplog.at_level(logging.ERROR, logger="rtserver"):
            status, _, body = srv.get("/legacy")
        assert status == 500
        assert body == b"500 Internal Server Error"
        assert "grafted WSGI apps cannot run on the native server" in caplog.text
        assert srv.get("/")[2] == b"page"
