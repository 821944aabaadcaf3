"""The built-in tools and the toolbox ``rtserver.tools``.

``trailing_slash`` (on by default), ``secureheaders``, ``staticdir``, ``staticfile``,
``json_in``, ``json_out``, ``gzip``, ``allow``, ``response_headers``, ``proxy``.
Sessions, CSRF and the WebSocket upgrade register themselves from their own modules.
"""

from __future__ import annotations

import gzip as _gzip
import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..config import _DOC_SECTIONS
from ..errors import ConfigError, HTTPError, HTTPRedirect
from .context import current_request, current_response
from .dispatch import call_handler
from .httputil import AddressSet, address_set, parse_address
from .static import staticdir, staticfile
from .tools import HandlerTool, Tool, Toolbox

__all__ = ["tools"]


def trailing_slash(missing: bool = True, extra: bool = False, status: int | None = None) -> None:
    """Redirect ``/dir`` to ``/dir/`` when the handler is an ``index``.

    Args:
        missing: redirect a path to an index handler that lacks its trailing slash.
        extra: redirect ``/page/`` to ``/page`` for a handler that is not an index.
        status: the redirect status (default 301).
    """
    request = current_request()
    path = request.path_info
    if request.is_index is True and missing and not path.endswith("/"):
        raise HTTPRedirect(request.url(request.script_name + path + "/", request.query_string), status or 301)
    if request.is_index is False and extra and path.endswith("/") and path != "/":
        raise HTTPRedirect(request.url(request.script_name + path[:-1], request.query_string), status or 301)


def secureheaders(
    frame_options: str | None = "DENY",
    content_type_options: str | None = "nosniff",
    csp: str | None = "default-src 'self'",
    referrer_policy: str | None = "strict-origin-when-cross-origin",
    hsts: str | None = "max-age=31536000",
) -> None:
    """Security headers on every response; HSTS only on requests that came over TLS.

    RFC 6797 §7.2: Strict-Transport-Security is never sent over plain HTTP. Note
    ``default-src 'self'`` (quoted keyword) is valid CSP; ``default-src='self'`` is not.

    Args:
        frame_options: X-Frame-Options value (None leaves the header out).
        content_type_options: X-Content-Type-Options value (None leaves it out).
        csp: Content-Security-Policy value (None leaves it out).
        referrer_policy: Referrer-Policy value (None leaves it out).
        hsts: Strict-Transport-Security value sent on TLS requests (None: never).
    """
    request = current_request()
    headers = current_response().headers
    for name, value in (
        ("X-Frame-Options", frame_options),
        ("X-Content-Type-Options", content_type_options),
        ("Content-Security-Policy", csp),
        ("Referrer-Policy", referrer_policy),
    ):
        if value and name not in headers:
            headers[name] = value
    if hsts and request.scheme == "https":
        headers["Strict-Transport-Security"] = hsts


def json_in(
    content_type: str | Sequence[str] = ("application/json", "text/javascript"),
    force: bool = True,
    max_body: int = 2**20,
    max_depth: int = 64,
    max_items: int = 100_000,
) -> None:
    """Decode a JSON request body into ``request.json`` (400 when malformed).

    Decoded by :func:`rtserver.web.jsonlimits.loads`: bounded in size, nesting and
    count of values, so no body can take more than a few MiB to decode; NaN,
    Infinity and lone surrogates (``"\\ud800"``) are refused with the rest of what
    is not RFC 8259 JSON.

    Args:
        content_type: media type(s) accepted as JSON.
        force: answer 415 to a body of another media type (else leave it alone).
        max_body: largest body in bytes; larger gets 413 (a Content-Length before the body is read). 1 MiB
            is far above a typical API payload, and decodes in tens of milliseconds.
        max_depth: deepest nesting of arrays and objects; deeper gets 400. 64 serves any real document.
        max_items: most values (keys and containers included) in the body; more gets 400. 100,000 values hold
            under ~10 MiB once decoded, where 1 MiB of ``[[],[],...]`` would make 350,000 lists.
    """
    from . import jsonlimits

    request = current_request()
    body = request.body
    if not body.has_body:
        return
    types = [content_type] if isinstance(content_type, str) else list(content_type)
    media = body.content_type.partition(";")[0].strip().lower()
    if media not in types:
        if force:
            raise HTTPError(415, f"Expected a body of type {', '.join(types)}.")
        return
    body.processed = True  # not a form
    if body.length is not None and body.length > max_body:
        raise HTTPError(413, f"A JSON body may have at most {max_body} bytes.")
    if body._data is None and body.length is None:  # chunked: read one byte past the limit, no more
        body._data = body.read(max_body + 1)
    try:
        request.json = jsonlimits.loads(body.fullvalue(), max_bytes=max_body, max_depth=max_depth, max_items=max_items)
    except jsonlimits.JSONLimitError as exc:
        if exc.kind == jsonlimits.TOO_LARGE:
            raise HTTPError(413, f"A JSON body may have at most {max_body} bytes.") from None
        raise HTTPError(400, f"Invalid JSON document: {exc.message}.") from None


def json_out(content_type: str = "application/json", handler: Any = None) -> None:
    """Encode the handler's result (any JSON-able value) as the JSON response body.

    Args:
        content_type: the Content-Type of the response.
        handler: a callable turning the handler's result into bytes (default: compact JSON).
    """
    request = current_request()
    inner = request.handler
    if inner is None:
        return

    def json_handler(*args: Any, **kwargs: Any) -> bytes:
        body_params = request._body.params if request._body is not None else {}
        value = call_handler(inner, args, kwargs, body_params, request.show_mismatched_params)
        if handler is not None:
            return handler(value)  # type: ignore[no-any-return]
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    request.handler = json_handler
    current_response().headers["Content-Type"] = content_type


_GZIP_TYPES = (
    "text/html",
    "text/plain",
    "text/css",
    "application/javascript",
    "text/javascript",
    "application/json",
    "image/svg+xml",
)


def gzip(compress_level: int = 5, mime_types: Sequence[str] = _GZIP_TYPES, min_size: int = 256) -> None:
    """Gzip the response body when the client accepts it and the type is compressible.

    Args:
        compress_level: zlib level, 1 (fast) to 9 (small).
        mime_types: media types that are compressed.
        min_size: buffered bodies smaller than this many bytes are sent as they are.
    """
    request = current_request()
    response = current_response()
    headers = response.headers
    vary = headers.get("Vary")
    if not vary:
        headers["Vary"] = "Accept-Encoding"
    elif "accept-encoding" not in vary.lower():
        headers["Vary"] = vary + ", Accept-Encoding"
    code = int(str(response.status).split(" ", 1)[0])
    if code < 200 or code in (204, 206, 304) or "Content-Encoding" in headers:
        return
    media = headers.get("Content-Type", "").partition(";")[0].strip().lower()
    if media not in mime_types:
        return
    if not _accepts_gzip(request.headers.get("Accept-Encoding", "")):
        return
    if response.body_is_buffered and not response.stream:
        data = b"".join(response.body)
        if len(data) < min_size:
            return
        response.body = _gzip.compress(data, compress_level, mtime=0)
    else:
        headers.pop("Content-Length", None)
        response.body = _gzip_stream(response.body, compress_level)
    headers["Content-Encoding"] = "gzip"
    headers.pop("Content-Md5", None)


def _accepts_gzip(value: str) -> bool:
    for item in value.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


def _gzip_stream(body: Iterable[bytes], level: int) -> Iterator[bytes]:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    try:
        for chunk in body:
            out = compressor.compress(chunk)
            if out:
                yield out
        yield compressor.flush()
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


def allow(methods: Sequence[str] = ("GET", "HEAD")) -> None:
    """Answer 405 Method Not Allowed (with an Allow header) to any other method.

    Args:
        methods: the methods allowed (HEAD is implied by GET).
    """
    allowed = [m.upper() for m in ([methods] if isinstance(methods, str) else methods)]
    if "GET" in allowed and "HEAD" not in allowed:
        allowed.append("HEAD")
    request = current_request()
    if request.method not in allowed:
        current_response().headers["Allow"] = ", ".join(allowed)
        raise HTTPError(405)


def response_headers(headers: Sequence[tuple[str, str]] | dict[str, str] = (), force: bool = True) -> None:
    """Set the given headers on every response of the path.

    Args:
        headers: a list of (name, value) pairs or a dict.
        force: replace a header the handler set itself.
    """
    target = current_response().headers
    items = headers.items() if isinstance(headers, dict) else headers
    for name, value in items:
        if force or name not in target:
            target[name] = value


def proxy(
    base: str | None = None,
    local: str = "X-Forwarded-Host",
    remote: str = "X-Forwarded-For",
    scheme: str = "X-Forwarded-Proto",
    trusted: Sequence[str] | None = None,
) -> None:
    """Behind a reverse proxy: take scheme, host and client address from its headers.

    Only turn this on behind a proxy you control: the headers are believed as sent.
    The client address is read from the right of X-Forwarded-For: a proxy appends the
    address it saw, so the entries on the left are whatever the client wrote. With
    ``trusted`` unset the last entry (added by the proxy in front of us) is the client;
    with ``trusted`` listing every proxy of the chain, the rightmost entry that is not
    one of them is. A forwarded host goes through ``request.allowed_hosts`` (400).

    Args:
        base: a fixed ``scheme://host`` to use instead of the forwarded host.
        local: the header carrying the original Host.
        remote: the header carrying the client address, read from the right: its last entry that is
            not a trusted proxy (a client writes what it likes on the left).
        scheme: the header carrying the original scheme (http or https).
        trusted: addresses or networks ('10.0.0.0/8'; 'unix' for a Unix socket peer) of the proxies
            whose headers are believed and whose X-Forwarded-For entries are skipped; None: any peer,
            and only the last entry is taken.
    """
    request = current_request()
    env = request.wsgi_environ
    proxies = address_set(trusted) if trusted is not None else None
    if proxies is not None and env.get("REMOTE_ADDR") not in proxies:
        return
    headers = request.headers
    proto = headers.get(scheme) if scheme else None
    if proto:
        proto = proto.split(",")[0].strip().lower()
        if proto in ("http", "https"):
            env["wsgi.url_scheme"] = request.scheme = proto
    if base:
        env["HTTP_HOST"] = base.split("://", 1)[-1]
        request.check_host()
    elif local:
        host = headers.get(local)
        if host:
            env["HTTP_HOST"] = host.split(",")[0].strip()
            request.check_host()
    if remote:
        forwarded = headers.get(remote)
        if forwarded:
            client = _forwarded_client(forwarded.split(","), proxies)
            if client is not None:
                env["REMOTE_ADDR"] = client


def _forwarded_client(entries: Sequence[str], proxies: AddressSet | None) -> str | None:
    """The client address of X-Forwarded-For ``entries``: from the right, the first
    one that is not a trusted proxy (the last one when every peer is trusted).

    None when that entry is not an IP address (the header is garbage there: keep the
    peer's address). When every entry is a trusted proxy, the leftmost one is taken.
    """
    chosen: str | None = None
    for entry in reversed(entries):
        addr = parse_address(entry)
        if addr is None:
            return None
        chosen = str(addr)
        if proxies is None or addr not in proxies:
            return chosen
    return chosen


class _ProxyTool(Tool):
    """``tools.proxy``, whose ``trusted`` list is checked at start-up."""

    def check_args(self, args: dict[str, Any], where: str = "") -> None:
        super().check_args(args, where)
        trusted = args.get("trusted")
        if trusted is not None:
            try:
                address_set(trusted)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}tools.proxy.trusted = {trusted!r}: {exc}") from None


tools = Toolbox()
_DOC_SECTIONS.append(lambda: tools.markdown())
tools.trailing_slash = Tool("before_handler", trailing_slash, priority=20)
tools.secureheaders = Tool("before_finalize", secureheaders, priority=60)
tools.json_in = Tool("before_request_body", json_in, priority=30)
tools.json_out = Tool("before_handler", json_out, priority=30)
tools.gzip = Tool("before_finalize", gzip, priority=90)
tools.allow = Tool("on_start_resource", allow)
tools.response_headers = Tool("on_start_resource", response_headers)
tools.proxy = _ProxyTool("before_request_body", proxy, priority=30)
tools.staticdir = HandlerTool(staticdir)
tools.staticfile = HandlerTool(staticfile)
