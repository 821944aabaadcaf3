"""Channel policy: who may do what on a channel, for every socket, in one place.

Every channel operation the hub does on behalf of a socket -- ``join`` (subscribe),
``leave``, ``publish``, ``presence`` and ``history`` reads (a resume is a history
read) -- is decided by the hub's :class:`Policy`, whatever the entry point: the
browser protocol of ``ChannelSocket``, ``WebSocket.join``/``publish``, or
``hub.subscribe(ws, ...)``/``hub.publish(..., ws=ws)``. Server code publishing on its
own behalf (``hub.publish(channel, data)`` with no socket) is not a socket and is
never asked about.

The common cases need no code: ``hub.namespaces`` maps channel patterns to rules::

    [global]
    hub.policy.user_key = "uid"          # the session key naming the user
    hub.namespaces = {
        "room:*": {"join": "signed-in", "publish": True, "publish_rate": "5/10s"},
        "user:{user}": {"join": "bound", "publish": False},
        "feed:*": {"join": "anyone", "presence": False},
        "jobs:*": {"join": "nobody"},
    }

A pattern is matched whole; ``*`` stands for any characters, ``{user}`` for the
user's id (the session value under ``hub.policy.user_key``); the first pattern that
matches, in the order written, decides. Rules of a namespace:

* ``join``: ``"anyone"``, ``"signed-in"`` (the session names a user), ``"bound"``
  (``{user}`` is this socket's user) or ``"nobody"`` (server code only);
* ``publish``: whether clients allowed to join may publish (server code always may);
* ``presence``: whether joins appear in presence (and presence may be read at all);
  ``presence_read``: ``"joiners"`` (those allowed to join) or ``"members"`` (sockets
  that have joined);
* ``join_rate``, ``publish_rate``: ``"N/s"``, ``"N/m"``, ``"N/h"`` or ``"N/10s"``: at
  most N in that period for each connection and for each user (across that user's
  sockets in this process), as a token bucket (N at once, then N per period).

History (and so a resume) is readable by those allowed to join. A leave is always
allowed. A channel no namespace matches gets the safe default
:data:`DEFAULT_NAMESPACE`: signed-in users may join and read its presence and
history; clients may not publish.

Anything else is code: subclass :class:`Policy`, override :meth:`Policy.allow`, and
set ``rtserver.hub.policy = MyPolicy()``. A refusal raises :class:`ChannelForbidden`
(a :class:`~rtserver.errors.HubError`) or :class:`RateLimited` (its subclass, with
``retry_after`` in ms); ``ChannelSocket`` answers them as ``forbidden`` and
``rate-limited`` errors, the latter with ``"retry_after": ms``. Refusals are logged at
debug level and counted (``hub.stats()["refused"]``).

Rate limits are per process: with several workers behind Redis each counts its own
sockets (a socket lives in one worker; a user spread over workers gets N per worker).
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import HubError

__all__ = [
    "DEFAULT_NAMESPACE",
    "HISTORY",
    "JOIN",
    "LEAVE",
    "OPERATIONS",
    "PRESENCE",
    "PUBLISH",
    "ChannelForbidden",
    "Identity",
    "Namespace",
    "Policy",
    "Rate",
    "RateLimited",
    "check_namespaces",
    "parse_namespaces",
]

log = logging.getLogger("rtserver.hub.policy")

JOIN = "join"
LEAVE = "leave"
PUBLISH = "publish"
PRESENCE = "presence"
HISTORY = "history"
#: Every operation the policy decides.
OPERATIONS = (JOIN, LEAVE, PUBLISH, PRESENCE, HISTORY)

JOIN_RULES = ("anyone", "signed-in", "bound", "nobody")
PRESENCE_READ_RULES = ("joiners", "members")
_RULE_KEYS = ("join", "publish", "presence", "presence_read", "join_rate", "publish_rate")


class ChannelForbidden(HubError):
    """The hub's policy refused a socket an operation on a channel."""

    #: The protocol's error code.
    reason = "forbidden"
    #: Escaping a handler's callback (``self.join(...)`` in ``opened()``), the refusal
    #: closes the socket with 1008 "policy violation" (RFC 6455 §7.4.1), not 1011.
    ws_close_code = 1008

    def __init__(self, message: str, channel: str, operation: str) -> None:
        super().__init__(message)
        self.channel = channel
        self.operation = operation


class RateLimited(ChannelForbidden):
    """Refused for going too fast: ``retry_after`` ms until the next may succeed."""

    reason = "rate-limited"

    def __init__(self, message: str, channel: str, operation: str, retry_after: int) -> None:
        super().__init__(message, channel, operation)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Identity:
    """Who a socket acts for: its session's user (None: not signed in), its peer."""

    user: str | None
    address: str | None
    connection: int

    @property
    def signed_in(self) -> bool:
        return self.user is not None


_RATE_RE = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*(s|m|h)\s*\Z")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Rate:
    """At most ``count`` in ``period`` seconds (``"5/s"``, ``"10/30s"``, ``"100/h"``)."""

    count: int
    period: float

    @classmethod
    def parse(cls, text: Any) -> Rate:
        match = _RATE_RE.match(text) if isinstance(text, str) else None
        if match is None or int(match.group(1)) < 1:
            raise ValueError(f"a rate is 'N/s', 'N/m', 'N/h' or 'N/10s' with N >= 1, not {text!r}")
        scale = int(match.group(2)) if match.group(2) else 1
        if scale < 1:
            raise ValueError(f"a rate's period is at least 1, not {text!r}")
        return cls(int(match.group(1)), scale * _UNITS[match.group(3)])


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*|\{user\})", pattern)
    out = []
    for part in parts:
        if part == "*":
            out.append(".*")
        elif part == "{user}":
            out.append("(?P<user>.+)")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


@dataclass(frozen=True)
class Namespace:
    """The rules of the channels matching ``pattern`` (see the module docstring)."""

    pattern: str
    join: str = "signed-in"
    publish: bool = False
    presence: bool = True
    presence_read: str = "joiners"
    join_rate: Rate | None = None
    publish_rate: Rate | None = None
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", _pattern_regex(self.pattern))

    def match(self, channel: str) -> re.Match[str] | None:
        return self.regex.match(channel)


#: For a channel no namespace matches. Signed-in users may join (so presence and
#: history are not open to anonymous sockets); clients may not publish unless a
#: namespace says so -- Centrifugo's default: a channel is a server's broadcast
#: until declared otherwise.
DEFAULT_NAMESPACE = Namespace("*")


def parse_namespaces(value: Any) -> tuple[Namespace, ...]:
    """``hub.namespaces`` as :class:`Namespace` objects; ValueError names what is wrong."""
    if isinstance(value, tuple) and all(isinstance(ns, Namespace) for ns in value):
        return value
    if not isinstance(value, Mapping):
        raise ValueError("expected a dict {pattern: {rule: value}}")
    parsed = []
    for pattern, rules in value.items():
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"a namespace pattern is a non-empty str, not {pattern!r}")
        if pattern.count("{user}") > 1 or re.search(r"\{(?!user\})", pattern):
            raise ValueError(f"namespace {pattern!r}: the only placeholder is one {{user}}")
        if not isinstance(rules, Mapping):
            raise ValueError(f"namespace {pattern!r}: expected a dict of rules")
        unknown = [k for k in rules if k not in _RULE_KEYS]
        if unknown:
            raise ValueError(f"namespace {pattern!r}: unknown rule {unknown[0]!r}; rules: {', '.join(_RULE_KEYS)}")
        join = rules.get("join", "signed-in")
        if join not in JOIN_RULES:
            raise ValueError(f"namespace {pattern!r}: join = {join!r}: expected one of {', '.join(JOIN_RULES)}")
        if join == "bound" and "{user}" not in pattern:
            raise ValueError(f"namespace {pattern!r}: join = 'bound' needs {{user}} in the pattern")
        flags = {}
        for name, default in (("publish", False), ("presence", True)):
            flag = rules.get(name, default)
            if not isinstance(flag, bool):
                raise ValueError(f"namespace {pattern!r}: {name} = {flag!r}: expected True or False")
            flags[name] = flag
        read = rules.get("presence_read", "joiners")
        if read not in PRESENCE_READ_RULES:
            raise ValueError(
                f"namespace {pattern!r}: presence_read = {read!r}: expected one of {', '.join(PRESENCE_READ_RULES)}"
            )
        rates: dict[str, Rate | None] = {}
        for name in ("join_rate", "publish_rate"):
            raw = rules.get(name)
            try:
                rates[name] = None if raw is None else Rate.parse(raw)
            except ValueError as exc:
                raise ValueError(f"namespace {pattern!r}: {name}: {exc}") from None
        parsed.append(Namespace(pattern, join, flags["publish"], flags["presence"], read, **rates))
    return tuple(parsed)


def check_namespaces(value: Any) -> Any:
    """The config checker of ``hub.namespaces``: the dict, once every rule is valid."""
    parse_namespaces(value)
    return value


class _Buckets:
    """Token buckets by key: ``rate.count`` at once, refilled at ``rate.count`` per
    ``rate.period``. Full buckets are forgotten when there are many (bounded memory)."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self._buckets: dict[Any, tuple[float, float]] = {}
        self._max_keys = max_keys

    def wait(self, key: Any, rate: Rate, now: float) -> float:
        """Seconds until ``key`` has a token (0: now)."""
        tokens = self._tokens(key, rate, now)
        return 0.0 if tokens >= 1 else (1 - tokens) * rate.period / rate.count

    def take(self, key: Any, rate: Rate, now: float) -> None:
        self._buckets[key] = (self._tokens(key, rate, now) - 1, now)
        if len(self._buckets) > self._max_keys:
            self._buckets = {k: (t, s) for k, (t, s) in self._buckets.items() if now - s < rate.period and k != key} | {
                key: self._buckets[key]
            }

    def _tokens(self, key: Any, rate: Rate, now: float) -> float:
        old = self._buckets.get(key)
        if old is None:
            return float(rate.count)
        tokens, stamp = old
        return min(float(rate.count), tokens + (now - stamp) * rate.count / rate.period)

    def forget(self, match: Any) -> None:
        for key in [k for k in self._buckets if k[1] == match]:
            del self._buckets[key]


_NOUNS = {JOIN: "joins", PUBLISH: "messages"}


class Policy:
    """Decides every channel operation of a socket (see the module docstring).

    ``namespaces`` (a ``hub.namespaces`` dict) and ``user_key`` default to the hub's
    config, read when the hub starts. Override :meth:`allow` for rules config cannot
    say; it is asked after the namespace's own rules passed, before rate limits.
    """

    def __init__(self, namespaces: Any = None, user_key: str | None = None) -> None:
        self._given = (namespaces, user_key)
        self.namespaces: tuple[Namespace, ...] = parse_namespaces(namespaces or {})
        self.user_key = user_key or "user"
        self._buckets = _Buckets()
        self._lock = threading.Lock()
        #: Refusals by reason (``forbidden``, ``rate-limited``).
        self.refused: collections.Counter[str] = collections.Counter()

    def configure(self, config: Any) -> None:
        """Read ``hub.namespaces`` and ``hub.policy.user_key`` for what was not given."""
        namespaces, user_key = self._given
        self.namespaces = parse_namespaces(namespaces if namespaces is not None else config.get_key("hub.namespaces"))
        self.user_key = user_key or str(config.get_key("hub.policy.user_key"))
        with self._lock:
            self._buckets = _Buckets()  # the rates may have changed

    # -- identity and namespaces -----------------------------------------------------------

    def identity(self, ws: Any) -> Identity:
        """Who ``ws`` acts for: the session's ``user_key`` value, the peer's address."""
        user: Any = None
        try:
            session = getattr(ws, "session", None)
            if session is not None:
                user = session.get(self.user_key)
        except Exception as exc:  # a session store that fails: not signed in
            log.debug("policy: no session user for %r: %s", ws, exc)
        address: str | None = None
        try:
            address = str(ws.remote[0])
        except Exception:
            address = None
        return Identity(str(user) if user not in (None, "") else None, address, id(ws))

    def namespace(self, channel: str) -> tuple[Namespace, re.Match[str] | None]:
        """The namespace deciding ``channel`` (the first match) and its match."""
        for ns in self.namespaces:
            match = ns.match(channel)
            if match is not None:
                return ns, match
        return DEFAULT_NAMESPACE, DEFAULT_NAMESPACE.match(channel)

    # -- decisions -------------------------------------------------------------------------

    def may_join(self, identity: Identity, ns: Namespace, match: re.Match[str] | None) -> bool:
        """The namespace's ``join`` rule for ``identity``."""
        if ns.join == "anyone":
            return True
        if ns.join == "signed-in":
            return identity.signed_in
        if ns.join == "bound":
            return identity.signed_in and match is not None and match.group("user") == identity.user
        return False

    def rules_allow(
        self, identity: Identity, channel: str, operation: str, ns: Namespace, match: Any, joined: bool
    ) -> bool:
        """What the namespace's rules say (no rate limits, no :meth:`allow`)."""
        if operation == LEAVE:
            return True
        if not self.may_join(identity, ns, match):
            return False
        if operation == PUBLISH:
            return ns.publish
        if operation == PRESENCE:
            return ns.presence and (ns.presence_read == "joiners" or joined)
        return True  # join, history

    def allow(self, identity: Identity, channel: str, operation: str, namespace: Namespace) -> bool:
        """The app's own rule, asked once the namespace allowed ``operation``
        (the default allows). Raise :class:`ChannelForbidden` for another message."""
        return True

    def check(self, ws: Any, channel: str, operation: str, joined: bool = False) -> Namespace:
        """Allow ``ws`` ``operation`` on ``channel`` or raise :class:`ChannelForbidden`
        / :class:`RateLimited`; an allowed join or publish counts against its rate."""
        identity = self.identity(ws)
        ns, match = self.namespace(channel)
        try:
            if not (
                self.rules_allow(identity, channel, operation, ns, match, joined)
                and self.allow(identity, channel, operation, ns)
            ):
                raise ChannelForbidden(f"You may not {operation} on this channel.", channel, operation)
            rate = ns.join_rate if operation == JOIN else ns.publish_rate if operation == PUBLISH else None
            if rate is not None:
                self._take(identity, ns, operation, rate, channel)
        except ChannelForbidden as exc:
            self.refused[exc.reason] += 1
            log.debug(
                "policy: %s on %r refused (%s) for user %r at %s",
                operation,
                channel,
                exc.reason,
                identity.user,
                identity.address,
            )
            raise
        return ns

    def _take(self, identity: Identity, ns: Namespace, operation: str, rate: Rate, channel: str) -> None:
        keys: list[tuple[str, tuple[str, Any], str]] = [(ns.pattern, ("conn", identity.connection), operation)]
        if identity.user is not None:
            keys.append((ns.pattern, ("user", identity.user), operation))
        now = time.monotonic()
        with self._lock:
            wait = max(self._buckets.wait(key, rate, now) for key in keys)
            if wait > 0:
                retry = max(1, int(wait * 1000 + 0.999))
                raise RateLimited(
                    f"Slow down: at most {rate.count} {_NOUNS[operation]} in {rate.period:g} seconds. "
                    f"Try again in {retry / 1000:.1f} s.",
                    channel,
                    operation,
                    retry,
                )
            for key in keys:
                self._buckets.take(key, rate, now)

    def forget(self, ws: Any) -> None:
        """Drop the per-connection counts of a closed socket."""
        with self._lock:
            self._buckets.forget(("conn", id(ws)))
