"""One exception tree for rtserver.

Every exception rtserver raises on purpose derives from :class:`RTServerError`.
Page handlers raise :class:`HTTPError`, :class:`HTTPRedirect` or :class:`NotFound`
to answer with a status; the text of any other exception never reaches a peer.
"""

from __future__ import annotations

import functools
import http.client
import urllib.parse
from collections.abc import Iterable, Sequence

__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "HTTPError",
    "HTTPRedirect",
    "HandshakeError",
    "HubError",
    "InternalRedirect",
    "NotFound",
    "RTServerError",
    "SessionEnded",
    "SessionLockTimeout",
    "StartupError",
    "TimeoutError",
    "status_line",
]


@functools.lru_cache(maxsize=256)
def status_line(status: int | str) -> tuple[int, str]:
    """Return ``(code, "code Reason")`` for an int or a ``"404 Not Found"`` string.

    Raises ``ValueError`` for anything that is not a 3-digit status from 100 to 599.
    """
    if isinstance(status, int):
        code, reason = status, ""
    else:
        text = str(status).strip()
        code_text, _, reason = text.partition(" ")
        if not (len(code_text) == 3 and code_text.isdigit()):
            raise ValueError(f"illegal HTTP status {status!r}")
        code = int(code_text)
    if not 100 <= code <= 599:
        raise ValueError(f"illegal HTTP status {status!r}")
    reason = reason.strip() or http.client.responses.get(code, "Unknown")
    return code, f"{code} {reason}"


class RTServerError(Exception):
    """Base class of every exception rtserver raises on purpose."""


class ConfigError(RTServerError, ValueError):
    """A config value or key is wrong; the message names the key (and file, section)."""


class StartupError(RTServerError):
    """The process cannot start serving; the message is one line saying what to do
    (a port in use, a broker URL, a missing extra). The engine logs it without a
    traceback and the process exits with 70."""


class TimeoutError(RTServerError):
    """The response ran past ``response.timeout``; answered with 503."""


class HTTPError(RTServerError):
    """Answer the current request with ``status`` and an error page.

    ``HTTPError(404)``, ``HTTPError(400, "length must be a number")``. The message is
    shown on the error page (escaped); keep secrets out of it.
    """

    def __init__(self, status: int | str = 500, message: str | None = None) -> None:
        self.code, self.status = status_line(status)
        if self.code < 400:
            raise ValueError(f"HTTPError status must be 4xx or 5xx, not {status!r}")
        self.reason = self.status.partition(" ")[2]
        self._message = message
        super().__init__(self.status, message)

    @property
    def message(self) -> str:
        """The text shown on the error page."""
        if self._message is not None:
            return self._message
        return _DEFAULT_MESSAGES.get(self.code, self.reason)

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class NotFound(HTTPError):
    """404 for ``path`` (the current path when not given)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        message = None if path is None else f"The path {path!r} was not found."
        super().__init__(404, message)


class HTTPRedirect(RTServerError):
    """Redirect to ``urls`` (one or several; the first is used) with a 3xx status.

    Relative URLs are resolved against the current request's URL, as CherryPy does.
    The default status is 303 for HTTP/1.1 (302 for HTTP/1.0).

    ``offsite`` says whether the target may be on another host. ``None`` (default):
    refused when ``request.allowed_hosts`` is set and the target's host is not in it,
    allowed otherwise (CherryPy's behaviour). ``False``: only this site (the listed
    hosts, or the request's own host); use it for a target taken from the request,
    such as ``?next=``. ``True``: anywhere (a deliberate redirect to an OAuth
    provider, say). A refused redirect is logged as an error and answered 400.
    """

    def __init__(self, urls: str | Sequence[str], status: int | None = None, *, offsite: bool | None = None) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("HTTPRedirect needs at least one URL")
        if status is not None and not 300 <= int(status) <= 399:
            raise ValueError(f"redirect status must be 3xx, not {status!r}")
        self.status = status
        self.offsite = offsite
        super().__init__(self.urls, status)

    def resolved(self, base_url: str) -> list[str]:
        """The URLs made absolute against ``base_url``."""
        return [urllib.parse.urljoin(base_url, u) for u in self.urls]


class InternalRedirect(RTServerError):
    """Run the handler of another path (same request) without telling the client."""

    def __init__(self, path: str, query_string: str = "") -> None:
        if "?" in path:
            path, _, query_string = path.partition("?")
        self.path = path
        self.query_string = query_string
        super().__init__(path, query_string)


class HandshakeError(RTServerError):
    """A WebSocket upgrade request cannot be accepted.

    ``status`` is 400 (malformed), 403 (origin refused) or 426 (version); ``headers``
    are added to the response (``Sec-WebSocket-Version: 13`` for 426).
    """

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = list(headers)
        super().__init__(status, reason)

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}"


class HubError(RTServerError):
    """A hub operation failed (bad channel name, payload not serialisable...)."""


class BrokerUnavailable(HubError):
    """The hub's broker (Redis) cannot be reached; the publish did not happen."""


class SessionLockTimeout(RTServerError):
    """A session lock could not be acquired in time (``tools.sessions.lock_timeout``)."""


class SessionEnded(RTServerError):
    """A socket's session no longer exists: it was deleted (logout), expired or given a
    new id (``regenerate()``) since the socket opened. Raised by ``session.save()`` and
    ``session.locked()`` of a socket handler instead of writing the stale data back."""


_DEFAULT_MESSAGES = {
    400: "The request could not be understood by the server.",
    401: "Authentication is required.",
    403: "You are not allowed to access this resource.",
    404: "Nothing matches the given URI.",
    405: "The method is not allowed for this resource.",
    413: "The request body is too large.",
    500: "The server encountered an unexpected condition.",
    503: "The server is unable to service the request.",
}
