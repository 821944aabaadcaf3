"""Limits and timeouts of the HTTP connection server (``server.*`` config keys).

Every key is declared here, next to :class:`HTTPOptions`, which reads them. The
defaults favour safety against slow or abusive clients over leniency; each one says
why it was chosen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from rtserver.config import Key, as_bool, declare, default, non_negative_int, positive, positive_int

__all__ = ["HTTPOptions"]


def _seconds(value: Any) -> float:
    return float(positive(value))


_KEYS: dict[str, Key] = {
    # RFC 9112 §3: a server SHOULD accept request lines of at least 8000 octets;
    # 8 KiB is also what nginx and cheroot allow by default.
    "max_request_line": declare(
        "server.max_request_line",
        8 * 1024,
        "Longest request line (method, target, version) in bytes; longer gets 414.",
        positive_int,
        scope="server",
    ),
    "max_header_size": declare(
        "server.max_header_size",
        64 * 1024,
        "Largest request head (request line and all header fields) in bytes; larger gets 431.",
        positive_int,
        scope="server",
    ),
    "max_header_count": declare(
        "server.max_header_count",
        100,
        "Most header fields in one request (or chunked trailer); more gets 431.",
        positive_int,
        scope="server",
    ),
    "max_request_body_size": declare(
        "server.max_request_body_size",
        100 * 1024 * 1024,
        "Largest request body in bytes (0: no limit); a larger Content-Length gets "
        "413 before the body is read, a chunked body fails with 413 when it grows past it.",
        non_negative_int,
        scope="server",
    ),
    "max_drain_size": declare(
        "server.max_drain_size",
        256 * 1024,
        "Unread request body the server reads and discards to keep a connection alive; "
        "with more left, the connection is closed instead.",
        non_negative_int,
        scope="server",
    ),
    "header_timeout": declare(
        "server.header_timeout",
        10.0,
        "Seconds for a whole request head to arrive (from the first byte, or from "
        "accept for the first request); slower clients get 408 and are disconnected.",
        _seconds,
        scope="server",
    ),
    # Longer than the 60 s idle timeout of the usual reverse proxies and load
    # balancers (nginx upstream keepalive, AWS ALB): the proxy, not us, then closes an
    # idle connection, so it never sends a request on a socket we are closing (the
    # race of RFC 9112 §9.5). nginx itself uses 75 s; browsers keep idle connections
    # for longer still. An idle connection costs one greenlet and one descriptor,
    # and `server.max_connections` bounds them.
    "keepalive_timeout": declare(
        "server.keepalive_timeout",
        75.0,
        "Seconds a keep-alive connection may stay idle between requests.",
        _seconds,
        scope="server",
    ),
    "body_timeout": declare(
        "server.body_timeout",
        30.0,
        "Socket read timeout in seconds while reading a request body; on expiry the body read fails with 408.",
        _seconds,
        scope="server",
    ),
    "write_timeout": declare(
        "server.write_timeout",
        30.0,
        "Seconds a response write may wait for a client that does not read; on expiry the connection is closed.",
        _seconds,
        scope="server",
    ),
    "max_connections": declare(
        "server.max_connections",
        10000,
        "Most open connections; beyond it a new connection gets 503 and is closed, "
        "while the existing ones keep working.",
        positive_int,
        scope="server",
    ),
    "nodelay": declare(
        "server.nodelay",
        True,
        "Set TCP_NODELAY on accepted TCP sockets (without it keep-alive responses stall 40 ms on delayed ACKs).",
        as_bool,
        scope="server",
    ),
    "backlog": declare(
        "server.backlog",
        1024,
        "Length of the listen() queue of pending connections.",
        positive_int,
        scope="server",
    ),
    "reuse_port": declare(
        "server.reuse_port",
        False,
        "Set SO_REUSEPORT so that several processes can listen on one port.",
        as_bool,
        scope="server",
    ),
}


@dataclass(frozen=True)
class HTTPOptions:
    """Limits and timeouts of one HTTP server; defaults are the declared ones."""

    max_request_line: int = default("server.max_request_line")
    max_header_size: int = default("server.max_header_size")
    max_header_count: int = default("server.max_header_count")
    max_request_body_size: int = default("server.max_request_body_size")
    max_drain_size: int = default("server.max_drain_size")
    header_timeout: float = default("server.header_timeout")
    keepalive_timeout: float = default("server.keepalive_timeout")
    body_timeout: float = default("server.body_timeout")
    write_timeout: float = default("server.write_timeout")
    max_connections: int = default("server.max_connections")
    nodelay: bool = default("server.nodelay")
    backlog: int = default("server.backlog")
    reuse_port: bool = default("server.reuse_port")

    def __post_init__(self) -> None:
        for field in fields(self):
            key = _KEYS[field.name]
            object.__setattr__(self, field.name, key.coerce(getattr(self, field.name)))

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any]) -> HTTPOptions:
        """Options from the ``server.*`` keys of a flat config mapping.

        Keys may be given with or without the ``server.`` prefix
        (``{'server.max_connections': 10}`` or ``{'max_connections': 10}``). Keys not
        set take their declared default; other keys are ignored (they belong to
        other readers). A bad value raises ``ConfigError`` naming the key.
        """
        values = {}
        for name, key in _KEYS.items():
            if key.name in mapping:
                values[name] = key.coerce(mapping[key.name])
            elif name in mapping:
                values[name] = key.coerce(mapping[name])
        return cls(**values)
