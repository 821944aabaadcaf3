"""The same small application on the three server kinds: gevent, cheroot and native."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ws4py.websocket import EchoWebSocket

import rtserver
from rtserver import testing
from rtserver.servers.cheroot import CherootServer, NativeServer

from .deploy_support import make_certificates, verifying_context

KINDS = ["gevent", "cheroot", "native"]


class WhoSocket(rtserver.WebSocket):
    """Says who the page session belongs to, and writes to it."""

    def opened(self) -> None:
        self.send(str(self.session.get("user")))
        with self.session.locked():
            self.session["seen_by_socket"] = True


class Root:
    @rtserver.expose
    def index(self) -> str:
        return "Hello World!"

    @rtserver.expose
    def echo(self, text: str = "", **kwargs: Any) -> str:
        return f"{rtserver.request.method} {text}"

    @rtserver.expose
    def scheme(self) -> str:
        return rtserver.request.scheme

    @rtserver.expose
    def remote(self) -> str:
        return f"{rtserver.request.remote.ip} {rtserver.request.base}"

    @rtserver.expose
    def stream(self) -> Iterator[str]:
        for i in range(3):
            yield f"chunk{i};"

    stream._rt_config = {"response.stream": True}  # type: ignore[attr-defined]

    @rtserver.expose
    def boom(self) -> str:
        raise ValueError("handler failure")

    @rtserver.expose
    def login(self, user: str) -> str:
        rtserver.session.regenerate()
        rtserver.session["user"] = user
        return "in"

    @rtserver.expose
    def whoami(self) -> str:
        return str(rtserver.session.get("user"))

    @rtserver.expose
    def whoami_seen(self) -> str:
        return str(rtserver.session.get("seen_by_socket"))

    ws = EchoWebSocket  # a ws4py class on the tree: the WebSocket tool upgrades
    who = WhoSocket


CONFIG = {
    "/": {
        "tools.response_headers.on": True,
        "tools.response_headers.headers": [("X-Tool", "on")],
        "tools.sessions.on": True,
    }
}


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def srv(kind: str) -> Iterator[testing.TestServer]:
    with testing.serve(Root(), CONFIG, kind=kind) as server:
        yield server


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def test_the_kind_runs(srv: testing.TestServer, kind: str) -> None:
    expected = {"gevent": "GeventHTTPServer", "cheroot": "CherootServer", "native": "NativeServer"}[kind]
    assert type(rtserver.server.httpserver).__name__ == expected


def test_pages_and_tools(srv: testing.TestServer) -> None:
    status, headers, body = srv.get("/")
    assert (status, body) == (200, b"Hello World!")
    assert headers["X-Tool"] == "on"
    assert srv.get("/echo?text=a%20b")[2] == b"GET a b"
    assert srv.post("/echo", {"text": "posted"})[2] == b"POST posted"
    status, headers, body = srv.request("HEAD", "/")
    assert (status, body, headers["Content-Length"]) == (200, b"", "12")
    assert srv.get("/missing")[0] == 404
    assert srv.get("/stream")[2] == b"chunk0;chunk1;chunk2;"


def test_keep_alive(srv: testing.TestServer) -> None:
    conn = srv.connection()
    try:
        for _ in range(3):
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert resp.read() == b"Hello World!"
    finally:
        conn.close()


def test_handler_error_is_a_500(srv: testing.TestServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="rtserver"):
        status, _, body = srv.get("/boom")
    assert status == 500
    assert b"handler failure" not in body
    assert "handler failure" in caplog.text


def test_websocket_echo(srv: testing.TestServer) -> None:
    with srv.websocket_connect("/ws") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=5) == b"\x00\x01"
    # The server still serves pages afterwards (its worker was given back).
    assert srv.get("/")[0] == 200


def test_sessions_shared_by_pages_and_sockets(srv: testing.TestServer) -> None:
    status, headers, _ = srv.post("/login", {"user": "ann"})
    assert status == 200
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    pair = cookie.split(";", 1)[0]
    assert srv.get("/whoami", headers={"Cookie": pair})[2] == b"ann"
    with srv.websocket_connect("/who", additional_headers={"Cookie": pair}) as ws:
        assert ws.recv(timeout=5) == "ann"
    # what the socket wrote is there for the next page request
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if b"True" in srv.get("/whoami_seen", headers={"Cookie": pair})[2]:
            break
        time.sleep(0.02)
    assert srv.get("/whoami_seen", headers={"Cookie": pair})[2] == b"True"


def test_refused_upgrade_is_plain_http(srv: testing.TestServer) -> None:
    status, _, _ = srv.get("/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    assert status == 400


# -- Unix domain sockets ------------------------------------------------------------------


def _unix_get(path: str, target: str = "/") -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_unix_socket(kind: str, tmp_path: Path) -> None:
    path = str(tmp_path / "rt.sock")
    with testing.serve(Root(), kind=kind, global_config={"server.socket_file": path}):
        assert rtserver.server.bound_address == path
        reply = _unix_get(path)
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert reply.endswith(b"Hello World!")
    assert not Path(path).exists()


# -- TLS ----------------------------------------------------------------------------------


def _tls_config(certs: dict[str, str]) -> dict[str, Any]:
    return {
        "server.ssl_certificate": certs["cert"],
        "server.ssl_private_key": certs["key"],
        "server.ssl_certificate_chain": certs["chain"],
    }


def test_https_and_wss(kind: str, certs: dict[str, str]) -> None:
    config = {"/": {"tools.secureheaders.on": True, "tools.sessions.on": True}}
    with testing.serve(Root(), config, kind=kind, global_config=_tls_config(certs)) as srv:
        assert srv.url.startswith("https://")
        status, headers, body = srv.get("/scheme")
        assert (status, body) == (200, b"https")
        assert headers["Strict-Transport-Security"].startswith("max-age=")
        # Session cookies are Secure on TLS requests without any configuration.
        status, headers, _ = srv.post("/login", {"user": "tls"})
        assert status == 200 and "; Secure" in headers["Set-Cookie"]
        # The chain is sent: a client trusting only the root verifies the leaf.
        import http.client

        conn = http.client.HTTPSConnection("127.0.0.1", srv.port, timeout=5, context=verifying_context(certs["ca"]))
        try:
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"Hello World!"
        finally:
            conn.close()
        with srv.websocket_connect("/ws", ssl=verifying_context(certs["ca"])) as ws:
            ws.send("over tls")
            assert ws.recv(timeout=5) == "over tls"


def test_no_hsts_over_plain_http(srv: testing.TestServer) -> None:
    app = rtserver.tree.apps[""]
    app.merge({"/": {"tools.secureheaders.on": True}})
    status, headers, body = srv.get("/scheme")
    assert (status, body) == (200, b"http")
    assert headers["X-Frame-Options"] == "DENY"
    assert "Strict-Transport-Security" not in headers


def test_proxy_headers_only_when_on(srv: testing.TestServer) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Host": "example.org"}
    assert srv.get("/scheme", headers=forwarded)[2] == b"http"
    assert srv.get("/remote", headers=forwarded)[2].startswith(b"127.0.0.1 http://127.0.0.1:")
    rtserver.tree.apps[""].merge({"/": {"tools.proxy.on": True}})
    assert srv.get("/scheme", headers=forwarded)[2] == b"https"
    assert srv.get("/remote", headers=forwarded)[2] == b"203.0.113.9 https://example.org"


# -- several servers ----------------------------------------------------------------------


def _get(addr: Any, path: str = "/") -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_extra_server_object(kind: str) -> None:
    extra = rtserver.Server()
    extra.socket_host = "127.0.0.1"
    extra.socket_port = 0
    extra.kind = kind
    extra.subscribe()
    try:
        with testing.serve(Root(), CONFIG) as srv:
            assert extra.running
            assert extra.bound_address != rtserver.server.bound_address
            assert _get(extra.bound_address) == (200, b"Hello World!")
            assert srv.get("/")[2] == b"Hello World!"
        assert not extra.running
    finally:
        extra.unsubscribe()


def test_extra_server_from_config(kind: str) -> None:
    global_config = {"server.admin.socket_port": 0, "server.admin.socket_host": "127.0.0.1", "server.admin.kind": kind}
    with testing.serve(Root(), CONFIG, global_config=global_config) as srv:
        admin = rtserver.servers["admin"]
        assert admin.running and admin.kind == kind
        assert _get(admin.bound_address, "/echo?text=x") == (200, b"GET x")
        assert srv.get("/")[0] == 200
    assert "admin" not in rtserver.servers


# -- setting httpserver by hand, as the guide does ------------------------------------------


def test_native_server_as_in_the_guide() -> None:
    # rtserver.servers (the dict of extra servers) hands out the server classes.
    assert rtserver.servers.NativeServer is NativeServer  # type: ignore[attr-defined]
    assert rtserver.servers.CherootServer is CherootServer  # type: ignore[attr-defined]
    from rtserver.servers import NativeServer as from_package

    assert from_package is NativeServer


@pytest.mark.parametrize("cls", [NativeServer, CherootServer])
def test_httpserver_set_by_hand(cls: type) -> None:
    server = rtserver.server
    server.httpserver = cls(server)
    try:
        with testing.serve(Root()) as srv:
            assert isinstance(server.httpserver, cls)
            assert srv.get("/")[2] == b"Hello World!"
    finally:
        server.httpserver = None
