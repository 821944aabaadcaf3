"""Unit tests of the opening handshake (RFC 6455 §4.2, RFC 7692): no sockets."""

from __future__ import annotations

import pytest

from rtserver.errors import ConfigError, HandshakeError
from rtserver.websocket.handshake import accept_key, negotiate, negotiate_environ
from rtserver.websocket.options import WebSocketOptions, from_config

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example


def request(**overrides: str | None) -> list[tuple[str, str]]:
    headers = {
        "Host": "example.com:8080",
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    for name, value in overrides.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return list(headers.items())


def refused(headers: list[tuple[str, str]], options: WebSocketOptions | None = None, **kw: str) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        negotiate(kw.pop("method", "GET"), headers, options or WebSocketOptions(), **kw)  # type: ignore[arg-type]
    return info.value


def test_accept_key_matches_rfc_example() -> None:
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_valid_request_gives_101_headers() -> None:
    hs = negotiate("GET", request(), WebSocketOptions())
    assert hs.response_headers == [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ]
    assert hs.subprotocol is None and hs.extensions == [] and hs.extension_names == []
    assert hs.request_headers["sec-websocket-key"] == KEY


def test_tokens_are_case_insensitive() -> None:
    negotiate("GET", request(Upgrade="WebSocket", Connection="UPGRADE"), WebSocketOptions())


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"method": "POST"}, 405),
        ({"http_version": "HTTP/1.0"}, 400),
        ({"http_version": "garbage"}, 400),
    ],
)
def test_method_and_version_of_http(kwargs: dict[str, str], status: int) -> None:
    assert refused(request(), None, **kwargs).status == status


def test_post_is_told_to_use_get() -> None:
    assert ("Allow", "GET") in refused(request(), method="POST").headers


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"Host": None}, 400),
        ({"Host": ""}, 400),
        ({"Upgrade": None}, 400),
        ({"Upgrade": "h2c"}, 400),
        ({"Connection": None}, 400),
        ({"Connection": "keep-alive"}, 400),
        ({"Sec-WebSocket-Key": None}, 400),
        ({"Sec-WebSocket-Key": "not base64!"}, 400),
        ({"Sec-WebSocket-Key": "c2hvcnQ="}, 400),  # 5 bytes
        ({"Sec-WebSocket-Key": KEY + ", " + KEY}, 400),  # joined duplicates (WSGI)
        ({"Sec-WebSocket-Version": "8"}, 426),  # hybi-08, which ws4py accepts
        ({"Sec-WebSocket-Version": "14"}, 426),
        ({"Sec-WebSocket-Version": None}, 426),
        ({"Sec-WebSocket-Version": "13, 8"}, 400),
    ],
)
def test_rejections(overrides: dict[str, str | None], status: int) -> None:
    assert refused(request(**overrides)).status == status


def test_426_names_the_supported_version() -> None:
    assert refused(request(Sec_WebSocket_Version="8")).headers == [("Sec-WebSocket-Version", "13")]


@pytest.mark.parametrize("name", ["Sec-WebSocket-Key", "Sec-WebSocket-Version", "Host"])
def test_duplicate_headers_are_refused(name: str) -> None:
    headers = request()
    headers.append((name, dict(headers)[name]))
    assert refused(headers).status == 400


# -- origin (RFC 6455 §10.2) --------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    ["http://example.com:8080", "HTTP://EXAMPLE.com:8080", "http://example.com:8080/"],
)
def test_same_origin_is_allowed(origin: str) -> None:
    assert negotiate("GET", request(Origin=origin), WebSocketOptions()).origin == origin


def test_default_ports_are_normalised() -> None:
    hdrs = request(Host="example.com", Origin="http://example.com:80")
    negotiate("GET", hdrs, WebSocketOptions())
    hdrs = request(Host="example.com:443", Origin="https://example.com")
    negotiate("GET", hdrs, WebSocketOptions(), secure=True)


def test_absent_origin_is_allowed() -> None:
    assert negotiate("GET", request(), WebSocketOptions()).origin is None


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://example.com:9999", "null", "http://example.com.evil.org:8080"]
)
def test_cross_site_origin_is_refused_by_default(origin: str) -> None:
    assert refused(request(Origin=origin)).status == 403


def test_allowed_origins_list() -> None:
    options = WebSocketOptions(allowed_origins=("https://app.example", "other.example:8443"))
    negotiate("GET", request(Origin="https://app.example"), options)
    negotiate("GET", request(Origin="https://app.example:443"), options)
    negotiate("GET", request(Origin="http://other.example:8443"), options)
    assert refused(request(Origin="http://app.example"), options).status == 403  # scheme differs
    assert refused(request(Origin="https://evil.example"), options).status == 403


def test_star_allows_any_origin() -> None:
    options = WebSocketOptions(allowed_origins=("*",))
    assert negotiate("GET", request(Origin="https://evil.example"), options).origin == "https://evil.example"
    assert from_config({"tools.websocket.allowed_origins": "*"}).allowed_origins == ("*",)


def test_duplicate_origin_is_refused() -> None:
    headers = request(Origin="http://example.com:8080")
    headers.append(("Origin", "http://example.com:8080"))
    assert refused(headers).status == 400


# -- subprotocols ----------------------------------------------------------------


def test_first_of_clients_list_that_server_supports() -> None:
    options = WebSocketOptions(protocols=("v2.chat", "v1.chat"))
    hs = negotiate("GET", request(Sec_WebSocket_Protocol="v3.chat, v1.chat, v2.chat"), options)
    assert hs.subprotocol == "v1.chat"
    assert ("Sec-WebSocket-Protocol", "v1.chat") in hs.response_headers


def test_subprotocol_over_several_headers() -> None:
    headers = request(Sec_WebSocket_Protocol="a")
    headers.append(("Sec-WebSocket-Protocol", "b"))
    assert negotiate("GET", headers, WebSocketOptions(protocols=("b",))).subprotocol == "b"


def test_no_common_subprotocol_sends_no_header() -> None:
    hs = negotiate("GET", request(Sec_WebSocket_Protocol="x"), WebSocketOptions(protocols=("y",)))
    assert hs.subprotocol is None
    assert all(name != "Sec-WebSocket-Protocol" for name, _ in hs.response_headers)
    hs = negotiate("GET", request(Sec_WebSocket_Protocol="x"), WebSocketOptions())
    assert hs.subprotocol is None


def test_malformed_subprotocol_header() -> None:
    options = WebSocketOptions(protocols=("x",))
    assert refused(request(Sec_WebSocket_Protocol="a b, @"), options).status == 400


# -- permessage-deflate (RFC 7692) -------------------------------------------------------


def extension_header(hs: object) -> str | None:
    return dict(hs.response_headers).get("Sec-WebSocket-Extensions")  # type: ignore[attr-defined]


def test_deflate_negotiated_by_default() -> None:
    hs = negotiate("GET", request(Sec_WebSocket_Extensions="permessage-deflate"), WebSocketOptions())
    assert hs.extension_names == ["permessage-deflate"]
    assert extension_header(hs) == "permessage-deflate; server_max_window_bits=12"


def test_deflate_parameters() -> None:
    offer = "permessage-deflate; client_max_window_bits; server_no_context_takeover"
    hs = negotiate("GET", request(Sec_WebSocket_Extensions=offer), WebSocketOptions())
    header = extension_header(hs)
    assert header is not None
    assert "server_no_context_takeover" in header and "client_max_window_bits=12" in header
    ext = hs.extensions[0]
    assert ext.local_no_context_takeover and ext.remote_max_window_bits == 12  # type: ignore[attr-defined]


def test_deflate_first_acceptable_offer_wins() -> None:
    offers = "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits=10"
    hs = negotiate("GET", request(Sec_WebSocket_Extensions=offers), WebSocketOptions())
    assert extension_header(hs) == "permessage-deflate; server_max_window_bits=12; client_max_window_bits=10"
    assert len(hs.extensions) == 1


def test_deflate_no_context_takeover_option() -> None:
    options = WebSocketOptions(compression_no_context_takeover=True)
    hs = negotiate("GET", request(Sec_WebSocket_Extensions="permessage-deflate"), options)
    header = extension_header(hs)
    assert header is not None and "server_no_context_takeover" in header and "client_no_context_takeover" in header


def test_deflate_off_and_unknown_extensions() -> None:
    hs = negotiate("GET", request(Sec_WebSocket_Extensions="permessage-deflate"), WebSocketOptions(compression=False))
    assert hs.extensions == [] and extension_header(hs) is None
    hs = negotiate("GET", request(Sec_WebSocket_Extensions="x-webkit-deflate-frame"), WebSocketOptions())
    assert hs.extensions == [] and extension_header(hs) is None


def test_malformed_extension_header() -> None:
    assert refused(request(Sec_WebSocket_Extensions="permessage-deflate; =x")).status == 400


# -- environ and options ------------------------------------------------------------------


def environ(**headers: str) -> dict[str, object]:
    env: dict[str, object] = {
        "REQUEST_METHOD": "GET",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "example.com:8080",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": KEY,
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }
    env.update(headers)
    return env


def test_negotiate_environ() -> None:
    hs = negotiate_environ(environ(HTTP_SEC_WEBSOCKET_PROTOCOL="chat"), WebSocketOptions(protocols=("chat",)))
    assert hs.subprotocol == "chat"
    assert hs.request_headers["Sec-WebSocket-Protocol"] == "chat"


def test_negotiate_environ_refusals() -> None:
    with pytest.raises(HandshakeError) as info:
        negotiate_environ(environ(SERVER_PROTOCOL="HTTP/1.0"), WebSocketOptions())
    assert info.value.status == 400
    with pytest.raises(HandshakeError) as info:
        negotiate_environ(environ(HTTP_ORIGIN="https://evil.example"), WebSocketOptions())
    assert info.value.status == 403
    with pytest.raises(HandshakeError) as info:
        negotiate_environ(environ(HTTP_SEC_WEBSOCKET_KEY=KEY + "," + KEY), WebSocketOptions())
    assert info.value.status == 400


def test_https_origin_under_tls() -> None:
    env = environ(HTTP_HOST="example.com", HTTP_ORIGIN="https://example.com")
    env["wsgi.url_scheme"] = "https"
    negotiate_environ(env, WebSocketOptions())


def test_options_from_config() -> None:
    options = from_config(
        {
            "tools.websocket.on": True,
            "tools.websocket.max_message_size": 1024,
            "tools.websocket.protocols": ["a", "b"],
            "tools.websocket.ping_interval": 0,
            "tools.websocket.slow_consumer_close_code": 1013,
            "server.socket_port": 8080,
        }
    )
    assert options.max_message_size == 1024
    assert options.protocols == ("a", "b")
    assert options.ping_interval is None
    assert options.slow_consumer_close_code == 1013


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_message_size", 0),
        ("slow_consumer_close_code", 1000),
        ("compression_window_bits", 8),
        ("ping_timeout", -1),
        ("protocols", [1]),
        ("nonsense", 1),
    ],
)
def test_bad_options(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        from_config({f"tools.websocket.{key}": value})


def test_keys_are_declared() -> None:
    from rtserver.config import declared as declared_keys

    declared = declared_keys()
    for name in ("max_message_size", "allowed_origins", "send_queue_size", "handshake_timeout", "compression"):
        assert declared[f"tools.websocket.{name}"].scope == "app"
