"""Small HTTP helpers shared by the web layer: a case-insensitive header map,
the Host tuple, HTTP dates, the error page, Cookie headers and Host names."""

from __future__ import annotations

import email.utils
import functools
import html
import http.cookies
import ipaddress
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

__all__ = [
    "AddressSet",
    "HeaderMap",
    "Host",
    "address_set",
    "cookie_jar",
    "error_page_html",
    "host_allowed",
    "http_date",
    "parse_address",
    "parse_cookie",
    "parse_http_date",
    "split_host",
]


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


# ---------------------------------------------------------------------------
# Cookie headers

# RFC 6265 §4.1.1: a cookie-name is an RFC 9110 token.
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_DECODER = http.cookies.SimpleCookie()


def parse_cookie(header: str) -> dict[str, str]:
    """The cookies of a ``Cookie`` header as ``{name: value}``, skipping malformed pairs.

    Not :class:`http.cookies.SimpleCookie`: its ``load()`` stops at the first pair it
    cannot parse and drops the rest of the header, so a cookie some script set without
    quoting (``consent={"a":1}``, ``a b``) placed before ``session_id`` hid the session
    cookie and logged the user out. Browsers send whatever the sites set, so this
    parser follows RFC 6265 §5.4 (``name=value`` pairs separated by ``;``) and keeps
    every pair whose name is a token, whatever the others look like. Values are taken
    as sent, except that a value in double quotes is unquoted as SimpleCookie does.
    A name sent twice keeps its first value: RFC 6265 §5.4 lists the cookie with the
    longest (most specific) Path first.
    """
    cookies: dict[str, str] = {}
    for pair in header.split(";"):
        name, eq, value = pair.partition("=")
        name = name.strip()
        if not eq or name in cookies or not _COOKIE_NAME.match(name):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = _DECODER.value_decode(value)[0]
        cookies[name] = value
    return cookies


def cookie_jar(header: str) -> http.cookies.SimpleCookie:
    """:func:`parse_cookie` as a ``SimpleCookie`` (``jar['name'].value``, CherryPy's API).

    Names SimpleCookie cannot hold (its reserved attribute names, like ``path``) are left
    out; every other well-formed cookie is in the jar.
    """
    jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    for name, value in parse_cookie(header).items():
        morsel: http.cookies.Morsel[str] = http.cookies.Morsel()
        try:
            morsel.set(name, value, value)
        except http.cookies.CookieError:
            continue
        jar[name] = morsel
    return jar


# ---------------------------------------------------------------------------
# Host names

# A DNS name or an IPv4 address, or an IPv6 literal in brackets, and an optional port
# (the shape Django accepts for a Host header).
_HOST_RE = re.compile(r"([a-z0-9.-]+|\[[a-f0-9]*:[a-f0-9.:]+\])(?::([0-9]{1,5}))?\Z")


def split_host(value: str) -> tuple[str, str] | None:
    """``(host, port)`` of a Host header value, lower-cased, without a final dot;
    None when it is not a host name or address (``port`` is '' when absent)."""
    match = _HOST_RE.match(value.strip().lower())
    if match is None:
        return None
    host, port = match.group(1), match.group(2) or ""
    if not host.startswith("["):
        host = host.removesuffix(".")
    if not host:
        return None
    return host, port


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """Whether ``host`` (a name without its port) matches one of ``patterns``.

    As Django's ALLOWED_HOSTS: ``'example.com'`` matches that name only,
    ``'.example.com'`` matches it and every subdomain, ``'*'`` matches anything.
    Names are compared without case and without a final dot; ports are not compared.
    """
    host = host.lower().removesuffix(".")
    for pattern in patterns:
        pattern = pattern.strip().lower().removesuffix(".")
        if pattern == "*":
            return True
        if pattern.startswith("."):
            if host == pattern[1:] or host.endswith(pattern):
                return True
        elif host == pattern:
            return True
    return False


# ---------------------------------------------------------------------------
# Peer addresses

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> IPAddress | None:
    """The IP address of ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1`` or
    ``[2001:db8::1]:5678`` (X-Forwarded-For entries, REMOTE_ADDR); None otherwise."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class AddressSet:
    """A set of addresses and networks (``'127.0.0.1'``, ``'10.0.0.0/8'``, ``'::1'``),
    plus ``'unix'`` for peers on a Unix domain socket (which have no address)."""

    __slots__ = ("networks", "unix")

    def __init__(self, entries: Iterable[str]) -> None:
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.unix = False
        for entry in entries:
            if not isinstance(entry, str):
                raise ValueError(f"expected an address or network as a string, not {entry!r}")
            if entry.strip().lower() == "unix":
                self.unix = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network (like '10.0.0.0/8'), nor 'unix'") from None
        self.networks = tuple(networks)

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def of(entries: str | tuple[str, ...]) -> AddressSet:
        """The set for a config value (cached: tool arguments come back on every request)."""
        return AddressSet([entries] if isinstance(entries, str) else entries)

    def __contains__(self, address: object) -> bool:
        if address is None or address == "":
            return self.unix  # REMOTE_ADDR is empty on a Unix domain socket
        addr = parse_address(address) if isinstance(address, str) else address
        if not isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # ::ffff:10.1.2.3 is 10.1.2.3 (dual-stack sockets)
        return any(addr in net for net in self.networks)


def address_set(entries: str | Sequence[str]) -> AddressSet:
    """:class:`AddressSet` of a config value: one string or a list of them (cached)."""
    return AddressSet.of(entries if isinstance(entries, str) else tuple(entries))
