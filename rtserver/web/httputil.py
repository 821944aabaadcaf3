"""Small HTTP helpers shared by the web layer: a case-insensitive header map,
the Host tuple, HTTP dates, the error page."""

from __future__ import annotations

import email.utils
import html
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

__all__ = ["HeaderMap", "Host", "error_page_html", "http_date", "parse_http_date"]


class Host(NamedTuple):
    """A network address: ``ip``, ``port`` and ``name`` (as CherryPy's ``lib.httputil.Host``)."""

    ip: str
    port: int
    name: str = ""


class HeaderMap(dict[str, str]):
    """A dict of headers with case-insensitive keys, stored title-cased.

    ``headers['content-type']`` and ``headers['Content-Type']`` are the same entry.
    Use :meth:`add` for headers that may repeat on the wire (``Set-Cookie`` is handled
    by ``response.cookie``).
    """

    __slots__ = ("_extra",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        super().__init__()
        self._extra: list[tuple[str, str]] = []
        pairs = items.items() if isinstance(items, Mapping) else items
        for key, value in pairs:
            self[key] = value

    @staticmethod
    def _key(key: str) -> str:
        return key.title()

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.title())

    def __setitem__(self, key: str, value: str) -> None:
        dict.__setitem__(self, key.title(), value)

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self, key.title())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.title())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """The value of ``key`` (any case) or ``default``."""
        return dict.get(self, key.title(), default)

    def setdefault(self, key: str, default: str = "") -> str:  # type: ignore[override]
        """Set ``key`` to ``default`` unless present; return its value."""
        return dict.setdefault(self, key.title(), default)

    def pop(self, key: str, *default: Any) -> Any:  # type: ignore[override]
        """Remove ``key`` (any case) and return its value."""
        return dict.pop(self, key.title(), *default)

    def update(self, *args: Any, **kwargs: str) -> None:  # type: ignore[override]
        """Set several headers."""
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def add(self, key: str, value: str) -> None:
        """Add a header line that may repeat (sent besides any value set with ``[]``)."""
        self._extra.append((key.title(), value))

    def elements(self, key: str) -> list[str]:
        """The comma-separated tokens of a header, stripped and lower-cased."""
        value = self.get(key)
        if not value:
            return []
        return [t.strip().lower() for t in value.split(",") if t.strip()]

    def output(self) -> list[tuple[str, str]]:
        """The header lines to send, as ``(name, value)`` pairs of ``str``."""
        lines = [(k, str(v)) for k, v in dict.items(self)]
        if self._extra:
            lines.extend(self._extra)
        return lines

    def copy(self) -> HeaderMap:
        """A copy."""
        new = HeaderMap(dict.items(self))
        new._extra = list(self._extra)
        return new

    def __iter__(self) -> Iterator[str]:
        return dict.__iter__(self)


_date_cache: tuple[int, str] = (0, "")


def http_date(timestamp: float | None = None) -> str:
    """An RFC 9110 §5.6.7 IMF-fixdate; cached per second when ``timestamp`` is None."""
    global _date_cache
    if timestamp is not None:
        return email.utils.formatdate(timestamp, usegmt=True)
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


def parse_http_date(value: str | None) -> float | None:
    """The timestamp of an HTTP date header, or None when absent or malformed."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return parsed.timestamp()


def error_page_html(status: str, message: str, traceback: str = "", version: str = "") -> str:
    """The default error page: status, message and (if allowed) traceback, all escaped."""
    esc = html.escape
    tb = f'<pre id="traceback">{esc(traceback)}</pre>\n' if traceback else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(status)}</title>\n"
        "<style>body{font-family:system-ui,sans-serif;margin:3em;color:#222}"
        "pre{background:#f4f4f4;padding:1em;overflow:auto}</style>\n</head>\n<body>\n"
        f"<h2>{esc(status)}</h2>\n<p>{esc(message)}</p>\n{tb}"
        f"<footer><small>rtserver {esc(version)}</small></footer>\n</body>\n</html>\n"
    )
