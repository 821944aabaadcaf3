"""Hub brokers: where message ids, history, presence and cross-process delivery live.

A broker is the hub's back end. :class:`MemoryBroker` keeps everything in the
process; :class:`~rtserver.websocket.brokers.redis.RedisBroker` shares it between
processes through Redis. Both speak the interface of :class:`Broker`, and both hand
every message to the hub in one delivery greenlet, in id order per channel, through
the :class:`Sink` the hub gives to :meth:`Broker.start`.

Wire format (built once per message, by :func:`envelope` or the Redis script):

* text: the JSON object ``{"channel": c, "id": n, "data": ...}`` (``"presence"``
  instead of ``"data"`` for join/leave events), sent as a text message;
* bytes: a binary message made of the UTF-8 JSON header ``{"channel": c, "id": n}``,
  one LF (0x0A), then the payload bytes unchanged.

Each stored message also knows ``prev``, the id of the message before it in its
channel (0 for the first one a broker ever assigned). Ids increase within a channel
but need not be dense (with Redis they start at a time-based value, so that they
keep increasing when Redis restarts without its data); ``prev`` is what tells a
subscriber whether it missed something.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple, Protocol

from ...errors import ConfigError, StartupError

__all__ = [
    "BINARY",
    "TEXT",
    "Broker",
    "BrokerOptions",
    "Entry",
    "Sink",
    "check_broker",
    "create_broker",
    "envelope",
    "json_text",
]

#: Entry kinds: a JSON text envelope, or a binary envelope (header line + bytes).
TEXT = "t"
BINARY = "b"


class Entry(NamedTuple):
    """One message of a channel, as stored and delivered."""

    id: int
    prev: int
    kind: str  # TEXT or BINARY
    payload: bytes  # the envelope exactly as a client receives it


class BrokerOptions(NamedTuple):
    """What a broker needs from the hub's config."""

    history_size: int = 100
    history_ttl: float = 0  # seconds; 0: no age limit
    presence_ttl: float = 20
    reconnect_backoff_max: float = 5
    timeout: float = 5
    prefix: str = "rtserver:hub:"
    presence_history_size: int = 20  # join/leave events kept apart from messages
    max_idle_channels: int = 10_000  # memory: channels without subscribers keeping history
    key_ttl: float = 24 * 3600.0  # redis: seconds every key outlives its channel's last write


class Sink(Protocol):
    """What a broker calls back (always from its delivery greenlet)."""

    def deliver(self, channel: str, entry: Entry) -> None: ...

    def deliver_broadcast(self, message: str | bytes) -> None: ...

    def broker_reconnected(self) -> None: ...


def json_text(value: Any) -> str:
    """Compact JSON, non-ASCII kept as is (the envelope's encoding)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def envelope(channel_json: str, msg_id: int, kind: str, field: str, data: bytes) -> bytes:
    """Build the envelope of message ``msg_id`` (see the module docstring).

    ``data`` is the JSON text of the value (``kind`` TEXT) or the raw bytes (BINARY).
    The Redis script builds the same bytes.
    """
    if kind == TEXT:
        return b'{"channel":%s,"id":%d,"%s":%s}' % (channel_json.encode(), msg_id, field.encode(), data)
    return b'{"channel":%s,"id":%d}\n%s' % (channel_json.encode(), msg_id, data)


class Broker:
    """The interface of a hub back end (see the module docstring)."""

    name = "broker"

    def start(self, sink: Sink) -> None:
        """Connect and start delivering to ``sink``."""
        raise NotImplementedError

    def stop(self) -> None:
        """Disconnect; deliveries stop. Every connection is closed."""
        raise NotImplementedError

    @property
    def connected(self) -> bool:
        """Whether the broker can take publishes right now."""
        return True

    def publish(self, channel: str, kind: str, field: str, data: bytes, floor: int = 0) -> Entry:
        """Assign the next id of ``channel``, keep the message, deliver it everywhere.

        ``floor`` is the highest id of the channel the caller has seen: the new id is
        above it. Raises :class:`~rtserver.errors.BrokerUnavailable` when the message
        could not be stored (it was then not delivered either).
        """
        raise NotImplementedError

    def broadcast(self, message: str | bytes) -> None:
        """Hand ``message`` to ``Sink.deliver_broadcast`` of every hub on the broker."""
        raise NotImplementedError

    def listen(self, channel: str) -> None:
        """Start receiving ``channel``; returns once messages published from now on
        will be delivered (or once the broker is known to be down: its reconnection
        then calls ``Sink.broker_reconnected``)."""
        raise NotImplementedError

    def unlisten(self, channel: str) -> None:
        """Stop receiving ``channel``."""
        raise NotImplementedError

    def history(self, channel: str, since: int | None) -> tuple[list[Entry], int]:
        """``(entries after since still kept, in order; the channel's last id)``."""
        raise NotImplementedError

    def presence_join(self, channel: str, member_id: str, info: Any, announce: bool) -> None:
        """Record ``member_id`` (with ``info``) as present in ``channel``."""
        raise NotImplementedError

    def presence_leave(self, channel: str, member_id: str) -> bool:
        """Forget ``member_id``; True if it was present."""
        raise NotImplementedError

    def presence(self, channel: str) -> dict[str, Any]:
        """``{member_id: info}`` of the members present in ``channel``."""
        raise NotImplementedError

    def heartbeat(self, members: list[tuple[str, str, Any, bool]]) -> None:
        """Keep ``(channel, member_id, info, announce)`` present for another ttl."""

    def reap(self, channels: list[str]) -> list[tuple[str, str, Any]]:
        """Remove expired members of ``channels``; return the announced ones as
        ``(channel, member_id, info)`` (each reported by exactly one caller)."""
        return []


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

#: How to get redis-py, for the one line saying it is missing.
REDIS_INSTALL = "pip install 'rtserver[redis]' (from a checkout: bash scripts/setup.sh redis)"


def _redacted(spec: str) -> str:
    """``spec`` with the password of a URL (``scheme://user:secret@host``) hidden."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", spec)


def check_broker(spec: str) -> None:
    """Check a ``hub.broker`` value before anything connects.

    Raises :class:`ConfigError` for a value that is neither ``'memory'`` nor a Redis
    URL, and :class:`StartupError` for a Redis URL when redis-py cannot be imported;
    either message is one line naming the key and what to do.
    """
    if spec == "memory":
        return
    if not isinstance(spec, str) or not spec.startswith(_REDIS_SCHEMES):
        scheme = spec.partition("://")[0] if isinstance(spec, str) and "://" in spec else None
        what = f"unsupported scheme {scheme!r}" if scheme else "not a broker URL"
        raise ConfigError(
            f"hub.broker = {_redacted(str(spec))!r}: {what}; use 'memory' (this process only) or a Redis URL "
            "such as 'redis://127.0.0.1:6379/0' (also rediss:// and unix://)"
        )
    try:
        import redis  # noqa: F401
    except ImportError:
        raise StartupError(
            f"hub.broker = {_redacted(spec)!r} needs redis-py, which is not installed: {REDIS_INSTALL}"
        ) from None


def create_broker(spec: str, options: BrokerOptions) -> Broker:
    """The broker for ``hub.broker``: ``'memory'`` or a ``redis://`` / ``rediss://`` /
    ``unix://`` URL. Raises as :func:`check_broker` does, at engine start (the hub's
    plugin), where the engine logs the one line and the process exits with 70."""
    check_broker(spec)
    if spec == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(options)
    from .redis import RedisBroker

    return RedisBroker(spec, options)
