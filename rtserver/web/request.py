"""The request object: what the client asked, built lazily from the WSGI environ."""

from __future__ import annotations

import http.cookies
import logging
import urllib.parse
from typing import TYPE_CHECKING, Any

from .. import errors
from .body import RequestBody
from .httputil import HeaderMap, Host, cookie_jar, host_allowed, split_host

if TYPE_CHECKING:
    from .app import Application
    from .hooks import HookMap

__all__ = ["Request", "parse_query_string"]

log = logging.getLogger("rtserver.error")


def parse_query_string(query_string: str, encoding: str = "utf-8") -> dict[str, Any]:
    """Parse ``a=1&b=2&b=3`` into ``{'a': '1', 'b': ['2', '3']}`` (CherryPy's shape).

    Malformed percent-escapes or bytes that are not ``encoding`` raise HTTPError 400.
    """
    params: dict[str, Any] = {}
    if not query_string:
        return params
    try:
        pairs = urllib.parse.parse_qsl(
            query_string,
            keep_blank_values=True,
            encoding=encoding,
            errors="strict",
            max_num_fields=1000,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.HTTPError(400, f"Malformed query string: {exc.__class__.__name__}") from None
    for key, value in pairs:
        if key in params:
            existing = params[key]
            if isinstance(existing, list):
                existing.append(value)
            else:
                params[key] = [existing, value]
        else:
            params[key] = value
    return params


class Request:
    """The current HTTP request (``rtserver.request`` inside a handler).

    Attributes mirror CherryPy's: ``method``, ``path_info``, ``script_name``,
    ``query_string``, ``protocol``, ``headers``, ``params``, ``cookie``, ``body``,
    ``remote``, ``local``, ``scheme``, ``base``, ``app``, ``config``, ``handler``,
    ``is_index``, ``show_tracebacks``, ``login``, ``ws_handler`` and ``wsgi_environ``.
    """

    # Defaults a config key ``request.X`` may override per path.
    show_tracebacks = False
    show_mismatched_params = True
    process_request_body = True
    methods_with_bodies = ("POST", "PUT", "PATCH", "DELETE")
    throw_errors = False
    #: Host names this path answers (``request.allowed_hosts``); empty: any.
    allowed_hosts: tuple[str, ...] | list[str] = ()

    def __init__(self, environ: dict[str, Any], app: Application | None = None) -> None:
        self.wsgi_environ = environ
        self.app = app
        self.method: str = environ.get("REQUEST_METHOD", "GET")
        self.script_name: str = environ.get("SCRIPT_NAME", "")
        # PEP 3333 gives PATH_INFO as latin-1 decoded bytes; re-decode as UTF-8.
        path = environ.get("PATH_INFO", "") or "/"
        try:
            path = path.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
        self.path_info: str = path
        self.query_string: str = environ.get("QUERY_STRING", "")
        self.protocol: tuple[int, int] = _protocol(environ.get("SERVER_PROTOCOL", "HTTP/1.1"))
        self.scheme: str = environ.get("wsgi.url_scheme", "http")
        self.config: dict[str, Any] = {}
        self.handler: Any = None
        self.is_index: bool | None = None
        self.login: str | None = None
        self.ws_handler: Any = None
        self.hooks: HookMap | None = None
        self.toolmaps: dict[str, dict[str, Any]] = {}
        self.params: dict[str, Any] = {}
        self.args: tuple[Any, ...] = ()
        self.kwargs: dict[str, Any] = {}
        self.json: Any = None
        self._headers: HeaderMap | None = None
        self._cookie: http.cookies.SimpleCookie | None = None
        self._body: RequestBody | None = None
        self.closed = False

    # -- lazily built views of the environ ---------------------------------

    @property
    def headers(self) -> HeaderMap:
        """The request headers (case-insensitive)."""
        if self._headers is None:
            env = self.wsgi_environ
            headers = HeaderMap()
            for key, value in env.items():
                if key.startswith("HTTP_"):
                    headers[key[5:].replace("_", "-")] = value
            if env.get("CONTENT_TYPE"):
                headers["Content-Type"] = env["CONTENT_TYPE"]
            if env.get("CONTENT_LENGTH"):
                headers["Content-Length"] = env["CONTENT_LENGTH"]
            self._headers = headers
        return self._headers

    @property
    def cookie(self) -> http.cookies.SimpleCookie:
        """The request cookies (a ``SimpleCookie``): every well-formed cookie of the
        header, even when others in it are malformed (:func:`~.httputil.parse_cookie`)."""
        if self._cookie is None:
            self._cookie = cookie_jar(self.wsgi_environ.get("HTTP_COOKIE") or "")
        return self._cookie

    @property
    def body(self) -> RequestBody:
        """The request body (``read()``, ``params``, ``fp``)."""
        if self._body is None:
            self._body = RequestBody(self)
        return self._body

    @property
    def rfile(self) -> Any:
        """The raw body stream (``wsgi.input``)."""
        return self.wsgi_environ.get("wsgi.input")

    @property
    def remote(self) -> Host:
        """The peer's address."""
        env = self.wsgi_environ
        return Host(env.get("REMOTE_ADDR", ""), int(env.get("REMOTE_PORT") or 0), env.get("REMOTE_HOST", ""))

    @property
    def local(self) -> Host:
        """The server's address for this connection."""
        env = self.wsgi_environ
        return Host(
            env.get("SERVER_ADDR", env.get("SERVER_NAME", "")),
            int(env.get("SERVER_PORT") or 0),
            env.get("SERVER_NAME", ""),
        )

    @property
    def host(self) -> str:
        """``host[:port]`` as the client addressed us: the Host header, or the
        server's name and port for an HTTP/1.0 request without one."""
        env = self.wsgi_environ
        host = env.get("HTTP_HOST")
        if not host:
            host = env.get("SERVER_NAME", "localhost")
            port = str(env.get("SERVER_PORT", ""))
            if port and port not in ("80", "443"):
                host = f"{host}:{port}"
        return str(host)

    @property
    def base(self) -> str:
        """``scheme://host[:port]`` as the client addressed us."""
        return f"{self.scheme}://{self.host}"

    def check_host(self) -> None:
        """HTTPError 400 unless :attr:`host` is one of ``request.allowed_hosts``.

        Run before the first hook and again by ``tools.proxy`` when it takes the host
        from X-Forwarded-Host, so no URL (``rtserver.url()``, a redirect's Location)
        is ever built from a Host that is not listed. Empty ``allowed_hosts``: any host.
        """
        allowed = self.allowed_hosts
        if not allowed:
            return
        host = self.host
        parts = split_host(host)
        if parts is not None and host_allowed(parts[0], allowed):
            return
        shown = host if len(host) <= 100 else host[:100] + "..."
        log.warning("Refused %s for host %r: not in request.allowed_hosts", self.request_line[:200], shown)
        raise errors.HTTPError(400, f"Invalid Host header {shown!r}: this server does not answer for that host.")

    @property
    def request_line(self) -> str:
        """``GET /path?query HTTP/1.1`` as received (for the access log)."""
        env = self.wsgi_environ
        uri = env.get("REQUEST_URI") or env.get("RAW_URI")
        if not uri:
            uri = urllib.parse.quote(env.get("SCRIPT_NAME", "") + env.get("PATH_INFO", ""))
            if self.query_string:
                uri += "?" + self.query_string
        return f"{self.method} {uri} {env.get('SERVER_PROTOCOL', 'HTTP/1.1')}"

    def url(self, path: str = "", qs: str = "") -> str:
        """An absolute URL for ``path`` (relative to this request) and query ``qs``."""
        if not path:
            path = self.script_name + self.path_info
        elif not path.startswith("/"):
            here = self.script_name + self.path_info
            path = urllib.parse.urljoin(here, path)
        url = self.base + urllib.parse.quote(path, safe="/:@!$&'()*+,;=~")
        if qs:
            url += "?" + qs
        return url

    def interrupt(self, exc: BaseException) -> bool:
        """Raise ``exc`` in the greenlet serving this request (where the server can)."""
        func = self.wsgi_environ.get("rtserver.interrupt")
        if func is None or self.closed:
            return False
        func(exc)
        return True

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.script_name}{self.path_info}>"


def _protocol(text: str) -> tuple[int, int]:
    if text.startswith("HTTP/") and len(text) == 8 and text[5].isdigit() and text[7].isdigit():
        return int(text[5]), int(text[7])
    return (1, 0)
