"""CSRF protection: ``tools.csrf`` (off by default) and :func:`csrf_token` for templates.

With ``tools.csrf.on``, every unsafe request (POST, PUT, PATCH, DELETE) must:

1. come from this site: its ``Origin`` (or, without one, its ``Referer``) must be this
   server's own origin (scheme, host and port as the request addressed us; behind a
   TLS-terminating proxy turn ``tools.proxy`` on) or one of ``trusted_origins``;
2. carry the session's token, in the ``csrf_token`` form field or the
   ``X-CSRF-Token`` header (compared in constant time).

Otherwise it is answered 403 with the reason. The token lives in the session (key
``_csrf_token``), so ``tools.sessions`` must be on too; it is renewed when the session
id is regenerated (login). Example::

    class Root:
        @rtserver.expose
        def index(self):
            return f'<form method="post" action="/buy">{csrf_input()}<button>Buy</button></form>'

        @rtserver.expose
        def buy(self):  # the csrf_token field is consumed by the tool
            ...

    config = {"/": {"tools.sessions.on": True, "tools.csrf.on": True}}

SameSite=Lax session cookies already keep most cross-site POSTs unauthenticated; this
tool also covers same-site attackers (a sibling subdomain) and older browsers.
"""

from __future__ import annotations

import hmac
import html
import logging
import secrets
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import HTTPError
from .builtin_tools import tools
from .context import current_request
from .sessions import Session, current_session
from .tools import Tool

if TYPE_CHECKING:
    from .request import Request

__all__ = ["CSRF_SESSION_KEY", "UNSAFE_METHODS", "csrf", "csrf_input", "csrf_token"]

log = logging.getLogger("rtserver.error.csrf")

#: The session key holding the token.
CSRF_SESSION_KEY = "_csrf_token"
#: Methods that change state (RFC 9110 §9.2.1: every other method is safe).
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def csrf_token() -> str:
    """The current session's CSRF token (made on first use): put it in forms and in
    the ``X-CSRF-Token`` header of script requests."""
    sess = current_session()
    token = sess.get(CSRF_SESSION_KEY)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        sess[CSRF_SESSION_KEY] = token
    return token


def csrf_input(field: str = "csrf_token") -> str:
    """A hidden ``<input>`` carrying :func:`csrf_token`, for an HTML form."""
    return f'<input type="hidden" name="{html.escape(field)}" value="{html.escape(csrf_token())}">'


def _origin_of(value: str) -> str | None:
    """``scheme://host[:port]`` of a URL or an Origin (default port left out), or None."""
    try:
        parts = urllib.parse.urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("http", "https") or not host:
        return None
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def _forbid(request: Request, reason: str) -> HTTPError:
    log.warning("CSRF check refused %s: %s", request.request_line, reason)
    return HTTPError(403, reason)


def _check_origin(request: Request, trusted_origins: Sequence[str]) -> None:
    own = _origin_of(request.base)
    allowed = {own} | {
        _origin_of(o) for o in ([trusted_origins] if isinstance(trusted_origins, str) else trusted_origins)
    }
    allowed.discard(None)
    origin = request.headers.get("Origin")
    if origin is not None:
        # RFC 6454 §7: browsers send Origin on every cross-origin request and on
        # same-origin POSTs; "null" comes from sandboxed or privacy-sensitive contexts.
        source, value = "Origin", origin
    else:
        referer = request.headers.get("Referer")
        if not referer:
            raise _forbid(
                request, "Cross-site request check failed: the request has neither an Origin nor a Referer header."
            )
        source, value = "Referer", referer
    if _origin_of(value) not in allowed:
        raise _forbid(request, f"Cross-site request refused: the {source} header does not match this site ({own}).")


def _sent_token(request: Request, field: str, header: str) -> str | None:
    value: Any = request.headers.get(header) if header else None
    from_form = request.params.pop(field, None) if field else None  # the handler does not see it
    if value is None:
        value = from_form
    if value is None:
        return None
    if not isinstance(value, str):
        raise _forbid(request, f"CSRF token refused: the {field!r} field must be sent once, as text.")
    return value


def csrf(
    field: str = "csrf_token",
    header: str = "X-CSRF-Token",
    methods: Sequence[str] = UNSAFE_METHODS,
    check_origin: bool = True,
    trusted_origins: Sequence[str] = (),
    debug: bool = False,
) -> None:
    """Refuse (403) unsafe requests without this site's Origin and the session's token.

    Args:
        field: the form field carrying the token (removed from the handler's arguments).
        header: the request header carrying the token (for scripts).
        methods: the methods checked (the unsafe ones).
        check_origin: also require an Origin (or Referer) of this site.
        trusted_origins: other origins allowed to post here, like 'https://app.example.com'.
        debug: log accepted requests too.
    """
    request = current_request()
    if request.method.upper() not in {m.upper() for m in methods}:
        return
    if check_origin:
        _check_origin(request, trusted_origins)
    sent = _sent_token(request, field, header)
    sess = getattr(request, "session", None)
    if not isinstance(sess, Session):
        log.error(
            "tools.csrf is on for %s but tools.sessions is not: every unsafe request is refused", request.path_info
        )
        raise HTTPError(403, "CSRF check failed: this path has no session (turn tools.sessions on).")
    if not sent:
        raise _forbid(request, f"CSRF token missing: send it in the {field!r} form field or the {header} header.")
    expected = sess.get(CSRF_SESSION_KEY)
    if not isinstance(expected, str) or not hmac.compare_digest(sent.encode("utf-8"), expected.encode("utf-8")):
        raise _forbid(request, "CSRF token invalid or expired: reload the page and try again.")
    if debug:
        log.debug("CSRF check passed for %s", request.request_line)


tools.csrf = Tool("before_handler", csrf, priority=60)
