"""The server side of the WebSocket opening handshake (RFC 6455 §4.2), with no I/O.

:func:`negotiate` validates an upgrade request and returns a :class:`Handshake`: the
101 response headers, the chosen subprotocol and the permessage-deflate extension
(RFC 7692) to hand to :func:`rtserver.websocket.connection.serve`. Any refusal raises
:class:`~rtserver.errors.HandshakeError` carrying the HTTP status and headers to answer.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader, InvalidHeaderFormat, NegotiationError
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.headers import build_extension, parse_extension, parse_subprotocol

from ..errors import HandshakeError
from .options import WebSocketOptions

__all__ = ["GUID", "Handshake", "accept_key", "negotiate", "negotiate_environ"]

#: RFC 6455 §1.3: the GUID appended to Sec-WebSocket-Key.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_DEFAULT_PORTS = {"http": "80", "ws": "80", "https": "443", "wss": "443"}
# The scheme of the page a socket on this scheme belongs to (its Origin's scheme).
_PAGE_SCHEMES = {"ws": "http", "wss": "https"}

HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclasses.dataclass(slots=True)  # one per open socket: no __dict__
class Handshake:
    """An accepted opening handshake.

    ``response_headers`` go into ``start_response('101 Switching Protocols', ...)``;
    ``extensions`` are websockets extension objects for the protocol engine.
    """

    response_headers: list[tuple[str, str]]
    subprotocol: str | None
    extensions: list[Extension]
    origin: str | None = None
    #: Source of :attr:`request_headers`: a Headers object or a WSGI environ.
    source: Any = dataclasses.field(default=None, repr=False)

    @property
    def request_headers(self) -> Headers:
        """The request's headers (built on demand from an environ: less memory held)."""
        if isinstance(self.source, Headers):
            return self.source
        return Headers(_environ_pairs(self.source or {}))

    @property
    def extension_names(self) -> list[str]:
        """Names of the negotiated extensions (what ws4py calls ``extensions``)."""
        return [str(ext.name) for ext in self.extensions]


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for ``key`` (RFC 6455 §4.2.2 item 5.4)."""
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def negotiate(
    method: str,
    headers: HeadersLike,
    options: WebSocketOptions,
    *,
    host_url_scheme: str = "http",
    secure: bool = False,
    http_version: str = "HTTP/1.1",
) -> Handshake:
    """Validate an upgrade request and choose subprotocol and extensions.

    ``headers`` is a list of ``(name, value)`` pairs (duplicates are seen) or a
    mapping (a WSGI environ adapter joins duplicates with commas, which still fails
    the Key and Version checks). Raises HandshakeError: 405 (method), 400 (malformed,
    duplicate Key or Version), 426 (version other than 13), 403 (origin refused).
    """
    hdrs = _as_headers(headers)
    if method != "GET":  # RFC 6455 §4.1 item 2: the method MUST be GET
        raise HandshakeError(405, "WebSocket upgrade requires GET", [("Allow", "GET")])
    if not _version_at_least_11(http_version):  # §4.1 item 2: HTTP/1.1 or higher
        raise HandshakeError(400, "WebSocket upgrade requires HTTP/1.1")

    hosts = hdrs.get_all("Host")
    if len(hosts) != 1 or not hosts[0].strip():  # §4.2.1 item 2
        raise HandshakeError(400, "missing or duplicate Host header")
    host = hosts[0].strip()

    if "websocket" not in _tokens(hdrs.get_all("Upgrade")):  # §4.2.1 item 3
        raise HandshakeError(400, "Upgrade header must include 'websocket'")
    if "upgrade" not in _tokens(hdrs.get_all("Connection")):  # §4.2.1 item 4
        raise HandshakeError(400, "Connection header must include 'Upgrade'")

    keys = hdrs.get_all("Sec-WebSocket-Key")  # §4.2.1 item 5
    if len(keys) != 1:
        raise HandshakeError(400, "exactly one Sec-WebSocket-Key header is required")
    key = keys[0].strip()
    try:
        raw_key = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw_key = b""
    if len(raw_key) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key must be 16 bytes in base64")

    versions = hdrs.get_all("Sec-WebSocket-Version")  # §4.2.1 item 6
    if len(versions) > 1 or (versions and "," in versions[0]):
        raise HandshakeError(400, "duplicate Sec-WebSocket-Version header")
    if not versions or versions[0].strip() != "13":
        # §4.4: answer with the versions we speak.
        raise HandshakeError(426, "unsupported WebSocket version", [("Sec-WebSocket-Version", "13")])

    origin = _check_origin(hdrs, host, options, "https" if secure else host_url_scheme)
    subprotocol = _choose_subprotocol(hdrs, options)
    ext_header, extensions = _negotiate_extensions(hdrs, options)

    response = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(key)),
    ]
    if subprotocol is not None:
        response.append(("Sec-WebSocket-Protocol", subprotocol))
    if ext_header is not None:
        response.append(("Sec-WebSocket-Extensions", ext_header))
    return Handshake(response, subprotocol, extensions, origin, hdrs)


def negotiate_environ(environ: Mapping[str, Any], options: WebSocketOptions) -> Handshake:
    """:func:`negotiate` for a WSGI environ (reads ``HTTP_*`` keys)."""
    scheme = str(environ.get("wsgi.url_scheme", "http"))
    handshake = negotiate(
        str(environ.get("REQUEST_METHOD", "")),
        _environ_pairs(environ),
        options,
        host_url_scheme=scheme,
        secure=scheme == "https",
        http_version=str(environ.get("SERVER_PROTOCOL", "HTTP/1.0")),
    )
    handshake.source = environ  # the connection keeps the environ anyway
    return handshake


def _environ_pairs(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    # CGI names: HTTP_SEC_WEBSOCKET_KEY -> SEC-WEBSOCKET-KEY (compared case-insensitively).
    return [
        (name[5:].replace("_", "-"), value)
        for name, value in environ.items()
        if name.startswith("HTTP_") and isinstance(value, str)
    ]


def _as_headers(headers: HeadersLike) -> Headers:
    if isinstance(headers, Headers):
        return headers
    items = headers.items() if isinstance(headers, Mapping) else headers
    result = Headers()
    for name, value in items:
        try:
            result[str(name)] = str(value)
        except InvalidHeader:  # a control character in a value: RFC 9110 §5.5
            raise HandshakeError(400, "malformed header field") from None
    return result


def _version_at_least_11(version: str) -> bool:
    name, _, number = version.partition("/")
    major, _, minor = number.partition(".")
    if name != "HTTP" or not major.isdigit() or not (minor or "0").isdigit():
        return False
    return (int(major), int(minor or "0")) >= (1, 1)


def _tokens(values: list[str]) -> set[str]:
    # Comma-separated token lists (RFC 9110 §5.6.1), compared case-insensitively.
    return {item.strip().lower() for value in values for item in value.split(",")}


def _host_port(netloc: str, scheme: str) -> str:
    """Lower-cased ``host[:port]`` with the scheme's default port dropped."""
    netloc = netloc.strip().lower().rstrip(".")
    if netloc.startswith("["):  # IPv6 literal
        end = netloc.find("]")
        host, port = netloc[: end + 1], netloc[end + 2 :] if end >= 0 else ""
    else:
        host, _, port = netloc.partition(":")
    host = host.rstrip(".")
    if not port or port == _DEFAULT_PORTS.get(scheme):
        return host
    return f"{host}:{port}"


def _check_origin(hdrs: Headers, host: str, options: WebSocketOptions, scheme: str) -> str | None:
    """The Origin if it is this page's own (same scheme, host and port) or listed in
    ``allowed_origins``; HandshakeError 403 otherwise. Behind a TLS-terminating proxy
    turn ``tools.proxy`` on, so that ``scheme`` is the https the browser used."""
    origins = hdrs.get_all("Origin")
    if not origins:
        # Not a browser (RFC 6455 §10.2): origin checks protect browsers' users only.
        return None
    if len(origins) > 1:
        raise HandshakeError(400, "duplicate Origin header")
    origin = origins[0].strip()
    allowed = options.allowed_origins
    if "*" in allowed:
        return origin
    parsed = urllib.parse.urlsplit(origin)
    if origin == "null" or not parsed.scheme or not parsed.netloc:
        # "null" (sandboxed frames, file:) is only allowed when listed.
        if origin in allowed:
            return origin
        raise HandshakeError(403, "origin not allowed")
    origin_scheme = parsed.scheme.lower()
    origin_hp = _host_port(parsed.netloc, origin_scheme)
    # Same origin (RFC 6454 §5): scheme, host and port. The scheme counts: a page on
    # http://host (where a network attacker may inject script) must not open the
    # wss://host endpoint with the user's cookies. An https page's origin is
    # https://host (443 implied), a ws(s) request's page scheme is http(s).
    page_scheme = _PAGE_SCHEMES.get(scheme.lower(), scheme.lower())
    if origin_scheme == page_scheme and origin_hp == _host_port(host, page_scheme):
        return origin
    for entry in allowed:
        if "://" in entry:
            e = urllib.parse.urlsplit(entry.strip())
            if e.scheme.lower() == parsed.scheme.lower() and _host_port(e.netloc, e.scheme.lower()) == origin_hp:
                return origin
        elif _host_port(entry, parsed.scheme.lower()) == origin_hp:
            return origin
    raise HandshakeError(403, "origin not allowed")


def _choose_subprotocol(hdrs: Headers, options: WebSocketOptions) -> str | None:
    values = hdrs.get_all("Sec-WebSocket-Protocol")
    if not values or not options.protocols:
        return None
    offered: list[str] = []
    try:
        for value in values:
            offered.extend(parse_subprotocol(value))
    except InvalidHeaderFormat:
        raise HandshakeError(400, "malformed Sec-WebSocket-Protocol header") from None
    for proto in offered:  # client order (RFC 6455 §4.2.2 item 5.4)
        if proto in options.protocols:
            return proto
    return None


def _deflate_factory(options: WebSocketOptions) -> ServerPerMessageDeflateFactory:
    settings: dict[str, Any] = {"memLevel": options.compression_mem_level}
    if options.compression_level is not None:
        settings["level"] = options.compression_level
    bits = options.compression_window_bits
    return ServerPerMessageDeflateFactory(
        server_no_context_takeover=options.compression_no_context_takeover,
        client_no_context_takeover=options.compression_no_context_takeover,
        server_max_window_bits=bits,
        client_max_window_bits=bits,
        compress_settings=settings,
    )


def _negotiate_extensions(hdrs: Headers, options: WebSocketOptions) -> tuple[str | None, list[Extension]]:
    values = hdrs.get_all("Sec-WebSocket-Extensions")
    if not values or not options.compression:
        return None, []
    try:
        offers = [item for value in values for item in parse_extension(value)]
    except InvalidHeaderFormat:
        raise HandshakeError(400, "malformed Sec-WebSocket-Extensions header") from None
    factory = _deflate_factory(options)
    accepted: list[Extension] = []
    response: list[Any] = []
    # RFC 7692 §5: the server accepts at most one offer, the first it supports.
    for name, params in offers:
        if name != factory.name or accepted:
            continue
        try:
            response_params, extension = factory.process_request_params(params, accepted)
        except NegotiationError:
            continue
        response.append((name, response_params))
        accepted.append(extension)
    if not accepted:
        return None, []
    return build_extension(response), accepted
