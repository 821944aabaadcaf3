"""WebSocket settings: the ``tools.websocket.*`` config keys and their dataclass."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..config import as_bool, declare, declared, positive
from ..errors import ConfigError

__all__ = ["PREFIX", "WebSocketOptions", "from_config"]

#: Namespace of every key read here.
PREFIX = "tools.websocket."


def _str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def _origins(value: Any) -> tuple[str, ...]:
    if value == "*":
        return ("*",)
    return _str_list(value)


def _size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("expected a number of bytes greater than 0")
    return value


def _optional_seconds(value: Any) -> float | None:
    # 0 and None both switch a timer off.
    if value is None or value == 0:
        return None
    return positive(value)


def _window_bits(value: Any) -> int:
    # RFC 7692 §7.1.2: 8..15; zlib cannot compress with 8 (madler/zlib#171).
    if isinstance(value, bool) or not isinstance(value, int) or not 9 <= value <= 15:
        raise ValueError("expected window bits from 9 to 15")
    return value


def _level(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= 9:
        raise ValueError("expected a zlib level from 0 to 9 (or -1 / None for zlib's default)")
    return value


def _mem_level(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 9:
        raise ValueError("expected a zlib memLevel from 1 to 9")
    return value


def _close_code(value: Any) -> int:
    # RFC 6455 §7.4.1: 1008 policy violation; 1013 (IANA registry) try again later.
    if value not in (1008, 1013):
        raise ValueError("expected 1008 or 1013")
    return int(value)


def _handler(value: Any) -> Any:
    if value is not None and not isinstance(value, type):
        raise ValueError("expected a ws4py WebSocket subclass or None")
    return value


# (field, default, doc, checker). Defaults follow what other servers chose, see docs.
_DECLARATIONS: list[tuple[str, Any, str, Any]] = [
    ("handler_cls", None, "ws4py WebSocket subclass that serves the endpoint.", _handler),
    (
        "protocols",
        (),
        "Subprotocols the endpoint speaks; the first of the client's list found here "
        "is chosen (RFC 6455 §4.2.2), none: no Sec-WebSocket-Protocol header.",
        _str_list,
    ),
    (
        "allowed_origins",
        (),
        "Origins allowed besides the page's own origin (its scheme, host and port; 'https://app.example' or "
        "'app.example:8443'); '*' allows any. Empty: same-origin only.",
        _origins,
    ),
    (
        "max_message_size",
        2**20,
        "Largest incoming message in bytes (after decompression); larger closes with 1009.",
        _size,
    ),
    ("compression", True, "Negotiate permessage-deflate (RFC 7692) when offered.", as_bool),
    (
        "compression_level",
        None,
        "zlib level for outgoing messages (None: zlib's default, 6).",
        _level,
    ),
    (
        "compression_window_bits",
        12,
        "Largest LZ77 window (server and client, 9-15). 12 keeps a deflate pair near "
        "64 KiB per connection instead of ~320 KiB at 15 (websockets' choice too).",
        _window_bits,
    ),
    ("compression_mem_level", 5, "zlib memLevel of the compressor (1-9).", _mem_level),
    (
        "compression_no_context_takeover",
        False,
        "Ask both sides to reset the deflate context after each message "
        "(RFC 7692 §7.1.1): less memory held between messages, worse ratio.",
        as_bool,
    ),
    (
        "ping_interval",
        20.0,
        "Seconds of silence from the peer before a ping is sent (None/0: no pings).",
        _optional_seconds,
    ),
    (
        "ping_timeout",
        20.0,
        "Seconds to wait for the pong before the peer counts as dead (closed 1011).",
        _optional_seconds,
    ),
    (
        "close_timeout",
        10.0,
        "Seconds the closing handshake may take before the TCP connection is dropped.",
        positive,
    ),
    (
        "handshake_timeout",
        10.0,
        "Seconds the HTTP server allows for the upgrade request head (enforced by the server).",
        positive,
    ),
    (
        "send_queue_size",
        4 * 2**20,
        "Bytes of outgoing data queued per connection beyond which a further send "
        "counts the peer as a slow consumer and closes it.",
        _size,
    ),
    (
        "slow_consumer_close_code",
        1008,
        "Close code sent to a slow consumer: 1008 (policy) or 1013 (try again later).",
        _close_code,
    ),
]

for _name, _default, _doc, _check in _DECLARATIONS:
    declare(PREFIX + _name, _default, _doc, check=_check, scope="app")


@dataclasses.dataclass(frozen=True)
class WebSocketOptions:
    """Settings of one WebSocket endpoint; see ``docs/config.md`` for each field.

    ``send_queue_size`` defaults to 4 MiB: four maximum-size messages, about a second
    of a 32 Mbit/s stream, on top of the kernel's socket buffer. It absorbs bursts and
    TCP window stalls of a healthy client, while a client that stopped reading pins at
    most that much (plus one message) before it is closed. websockets' default write
    buffer is 64 KiB with blocking backpressure; we never block a broadcaster, so we
    allow more slack before giving up on a peer.
    """

    handler_cls: Any = None
    protocols: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_message_size: int = 2**20
    compression: bool = True
    compression_level: int | None = None
    compression_window_bits: int = 12
    compression_mem_level: int = 5
    compression_no_context_takeover: bool = False
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 10.0
    handshake_timeout: float = 10.0
    send_queue_size: int = 4 * 2**20
    slow_consumer_close_code: int = 1008

    def __post_init__(self) -> None:
        for name, _default, _doc, check in _DECLARATIONS:
            value = getattr(self, name)
            try:
                checked = check(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{PREFIX}{name} = {value!r}: {exc}") from None
            object.__setattr__(self, name, checked)

    def replace(self, **changes: Any) -> WebSocketOptions:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)


_FIELDS = {name for name, *_rest in _DECLARATIONS}


def from_config(mapping: Mapping[str, Any]) -> WebSocketOptions:
    """Build options from config keys: ``tools.websocket.NAME`` (or bare ``NAME``).

    Keys of other namespaces are ignored; an unknown ``tools.websocket.*`` key that no
    module declared raises :class:`~rtserver.errors.ConfigError` naming it.
    """
    values: dict[str, Any] = {}
    known = declared()
    for key, value in mapping.items():
        if key.startswith(PREFIX):
            name = key[len(PREFIX) :]
        elif "." not in key:
            name = key
        else:
            continue
        if name in _FIELDS:
            values[name] = value
        elif PREFIX + name not in known and name != "on":
            raise ConfigError(f"unknown config key {PREFIX + name!r}")
    return WebSocketOptions(**values)
