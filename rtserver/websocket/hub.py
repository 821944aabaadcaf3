"""The realtime hub: channels, presence, history and resume, in one process or many.

A socket subscribes to channels; anyone (a socket handler, a page handler, a
background greenlet) publishes to a channel, and every subscriber of it receives the
message, in every process sharing the broker::

    from rtserver.websocket.hub import hub

    class Chat(rtserver.WebSocket):          # rtserver.WebSocket mixes in HubClientMixin
        def opened(self):
            last = self.query_params.get("last")
            self.join("room:1", member={"nick": "ann"}, since=int(last) if last else None)

        def received_message(self, message):
            self.publish("room:1", {"text": str(message)})

    @rtserver.expose
    def announce(self, text):                # a page handler
        hub.publish("room:1", {"text": text})

What a client receives (each message encoded once, whatever the number of subscribers):

* ``publish(c, data)`` with str or JSON-able data: the text message
  ``{"channel": c, "id": n, "data": data}``;
* ``publish(c, b"...")``: a binary message, the UTF-8 JSON header ``{"channel": c,
  "id": n}``, one LF byte, then the bytes unchanged (split at the first ``b"\\n"``);
* join/leave events (``announce``): ``{"channel": c, "id": n, "presence":
  {"action": "join"|"leave", "member": member_id, "info": info}}``; they take an id
  like any message, but history keeps the last ``hub.presence_history_size`` of
  them apart from the messages: joins and leaves never push a message out;
* a resume that cannot be served in full: ``{"channel": c, "gap": {"from": x, "to":
  y}}`` before the messages that are still kept -- messages with ``x < id <= y``
  are lost for this subscriber; ``"to": null`` when the broker lost its data (a
  Redis restart without persistence) and nothing newer exists yet, so how much was
  lost after ``x`` is unknown.

Ids increase within a channel (they need not be consecutive). A client remembers the
last id it saw and, after reconnecting, joins with ``since=that_id``: it then receives
exactly what it missed, in order, before anything newer, with no duplicate.
``subscribe(..., limit=n)`` replays at most the newest n kept messages; the older
ones are then covered by a gap notice (``ChannelSocket`` passes its
``history_limit``, so no request makes the server send more than that).

Bounds: what the hub and its broker keep for a channel lives only as long as the
channel does, and no client can make them keep more channels than configured.

* A channel lives while a socket is subscribed to it or its history still holds a
  message. The hub forgets a channel when its last local subscriber leaves; the
  memory broker drops its counter, join/leave events and history as soon as the
  channel has no subscriber and no message left (see
  :mod:`~rtserver.websocket.brokers.memory`); with Redis every key the hub writes
  expires (``hub.redis_ttl`` after the channel's last publish for its counter and
  history, ``2 x hub.presence_ttl`` for presence).
* ``hub.max_channels`` caps the channels with subscribers in this process: a
  subscription to one more raises :class:`TooManyChannels` (a :class:`HubError`;
  ``ChannelSocket`` answers ``too-many-channels``). The memory broker keeps the
  history of at most as many more channels without subscribers, forgetting the
  longest idle first.
* Epochs: ids stay monotonic when a channel's state was dropped and the channel is
  used again. The new counter starts above every id the channel had before -- with
  the memory broker above every id this process gave any dropped channel, with
  Redis from the clock (ms x 1000) -- and its first message has ``prev`` 0. A client
  resuming with an id from before therefore gets a gap notice (``"to": null`` while
  the new epoch has no message yet), never another message under an id it holds.

Backpressure: publishing never waits for a subscriber. Sockets of rtserver's
WebSocket runtime (they have ``send_prepared``) get a pre-encoded frame and use the
runtime's bounded send queue, which closes a slow consumer. Any other ws4py socket
gets a bounded queue here (``hub.send_queue_size`` messages) drained by one greenlet
per socket; when it is full the socket is closed with ``hub.slow_consumer_close_code``.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import time
from typing import Any

import gevent
from gevent.event import Event

from ..bus.bus import Bus
from ..bus.plugins import SimplePlugin
from ..config import (
    Config,
    as_bool,
    declare,
    global_config,
    non_negative,
    non_negative_int,
    positive,
    positive_int,
    string,
)
from ..errors import BrokerUnavailable, HubError
from .brokers import BINARY, TEXT, Broker, BrokerOptions, Entry, create_broker, json_text
from .policy import HISTORY, JOIN, LEAVE, PRESENCE, PUBLISH, ChannelForbidden, Policy, RateLimited, check_namespaces

__all__ = ["ChannelForbidden", "Hub", "HubClientMixin", "HubPlugin", "RateLimited", "TooManyChannels", "hub"]

log = logging.getLogger("rtserver.hub")


def _close_code(value: Any) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not (value in (1008, 1011, 1013) or 4000 <= value <= 4999)
    ):
        raise ValueError("expected 1008, 1011, 1013 or an application code 4000-4999")
    return value


declare(
    "hub.broker",
    "memory",
    "Where the hub keeps ids, history and presence: 'memory' (this process) or a Redis URL 'redis://host:port/db' shared by every process.",
    string,
    scope="global",
)
declare(
    "hub.history_size",
    100,
    "Messages kept per channel for history() and resume (0 keeps none).",
    non_negative_int,
    scope="global",
)
declare(
    "hub.history_ttl",
    24 * 3600,
    "Age in seconds after which a kept message is forgotten (0: no age limit). With Redis a channel's history also expires this long after its last message.",
    non_negative,
    scope="global",
)
# Join/leave events kept per channel for resumes, apart from the messages: a client
# back from a short disconnect in a busy room gets the few it missed; one away longer
# gets a gap notice for them, and the "joined" reply's presence is complete anyway.
# 20 events: about 9 KB per channel at most with the memory broker (measured), a
# fifth of what its 100 messages of hub.history_size take.
declare(
    "hub.presence_history_size",
    20,
    "Join and leave events kept per channel for resumes, apart from its messages, so that presence never pushes a message out of history (0 keeps none: a resume across one gets a gap notice).",
    non_negative_int,
    scope="global",
)
# Far above what one process serves in practice (thousands of sockets share their
# rooms, ChannelSocket allows 20 per socket), yet it bounds the hub's bookkeeping
# (well under 1 KB per channel without history) and, with the memory broker, the
# history kept: twice this many channels of hub.history_size messages at most.
declare(
    "hub.max_channels",
    10_000,
    "Most channels with subscribers in this process; subscribing to one more raises HubError (ChannelSocket answers too-many-channels). The memory broker keeps the history of at most as many more channels without subscribers (the longest idle is forgotten first).",
    positive_int,
    scope="global",
)
# A day, as hub.history_ttl by default: a channel's counter then lasts as long as its
# history, so a client back within a day gets exact gap notices, and an abandoned
# channel (say, 10,000 rooms joined and left by one client) costs Redis nothing a day
# later. Ids survive the expiry: a new counter starts from the clock.
declare(
    "hub.redis_ttl",
    24 * 3600,
    "Seconds a channel's Redis keys (its id counter, history and join/leave events) outlive its last publish; its history expires sooner when hub.history_ttl is shorter, presence keys after 2 x hub.presence_ttl. A channel recreated later starts a new epoch of ids (still increasing).",
    positive,
    scope="global",
)
declare(
    "hub.presence_ttl",
    20,
    "Seconds a member stays present without a heartbeat (Redis: members of a crashed process disappear after this; heartbeats every third of it).",
    positive,
    scope="global",
)
declare(
    "hub.announce_presence",
    False,
    "Publish join and leave events to channels by default (subscribe(..., announce=...) overrides).",
    as_bool,
    scope="global",
)
declare(
    "hub.send_queue_size",
    1000,
    "Messages queued per subscriber for sockets without the runtime's own send queue; more closes the socket as a slow consumer.",
    positive_int,
    scope="global",
)
declare(
    "hub.slow_consumer_close_code",
    1008,
    "Close code sent to a subscriber whose hub queue is full: 1008 (policy) or 1013 (try again later).",
    _close_code,
    scope="global",
)
declare(
    "hub.reconnect_backoff_max",
    5,
    "Longest wait in seconds between two attempts to reconnect to the broker (backoff doubles from 50 ms).",
    positive,
    scope="global",
)
declare(
    "hub.broker_timeout",
    5,
    "Seconds a broker command (connect, publish, subscribe confirmation) may take before BrokerUnavailable.",
    positive,
    scope="global",
)
declare(
    "hub.redis_prefix",
    "rtserver:hub:",
    "Prefix of every Redis key and pub/sub channel of the hub (run several apps on one Redis).",
    string,
    scope="global",
)

# The channel policy (rtserver.websocket.policy): {} declares no namespace, so every
# channel gets the safe default -- signed-in users may join, clients may not publish.
declare(
    "hub.namespaces",
    {},
    "Channel namespaces: {pattern: rules}, e.g. {'room:*': {'join': 'signed-in', 'publish': True, 'publish_rate': '5/s'}, 'user:{user}': {'join': 'bound'}}. Rules: join ('anyone', 'signed-in', 'bound', 'nobody'), publish, presence (bools), presence_read ('joiners', 'members'), join_rate and publish_rate ('N/s', 'N/m', 'N/h', 'N/10s'; per connection and per user). Unmatched channels: signed-in users may join, clients may not publish.",
    check_namespaces,
    scope="global",
)
# "user": the key most apps store the signed-in user under; the chat uses "uid".
declare(
    "hub.policy.user_key",
    "user",
    "The session key naming a socket's user for the channel policy (absent or empty: not signed in).",
    string,
    scope="global",
)

#: The channel name ``broadcast`` uses (reserved: cannot be subscribed to).
BROADCAST_CHANNEL = "__broadcast__"


#: How long a join :meth:`Hub.authorize` allowed stays granted for the next subscribe.
_GRANT_SECONDS = 5.0


class TooManyChannels(HubError):
    """This process already has ``hub.max_channels`` channels with subscribers."""


class _Message:
    """One message to deliver, with its encodings made at most once."""

    __slots__ = ("_frame", "_text", "binary", "channel", "entry")

    def __init__(self, channel: str, entry: Entry) -> None:
        self.channel = channel
        self.entry = entry
        self.binary = entry.kind == BINARY
        self._frame: bytes | None = None
        self._text: str | None = None

    def frame(self) -> bytes:
        """The complete WebSocket frame (for ``send_prepared``)."""
        if self._frame is None:
            self._frame = _prepare_frame(self.entry.payload, self.binary)
        return self._frame

    def send_args(self) -> tuple[Any, bool]:
        """``(payload, binary)`` for a ws4py ``send``."""
        if self.binary:
            return self.entry.payload, True
        if self._text is None:
            self._text = self.entry.payload.decode("utf-8")
        return self._text, False


def _prepare_frame(payload: bytes, binary: bool) -> bytes:
    from .connection import prepare_frame

    return prepare_frame(payload, binary=binary)


class _Membership:
    """One socket in one channel."""

    __slots__ = ("announce", "info", "last", "member_id", "pending")

    def __init__(self, member_id: str | None, info: Any, announce: bool, last: int | None) -> None:
        self.member_id = member_id
        self.info = info
        self.announce = announce
        #: Last id delivered (or skipped by a gap notice); None: from the next message.
        self.last = last
        #: While a resume reads history, live messages wait here.
        self.pending: collections.deque[Entry] | None = None


class _Subscriber:
    """One socket and its channels; delivers directly or through its own queue."""

    __slots__ = ("channels", "closed", "direct", "hub", "queue", "wakeup", "worker", "ws")

    def __init__(self, hub: Hub, ws: Any) -> None:
        self.hub = hub
        self.ws = ws
        self.channels: dict[str, _Membership] = {}
        self.closed = False
        # rtserver's runtime: non-blocking sends with its own bounded queue.
        self.direct = callable(getattr(ws, "send_prepared", None))
        self.queue: collections.deque[_Message | dict[str, Any]] = collections.deque()
        self.wakeup: Event | None = None
        self.worker: gevent.Greenlet | None = None

    def deliver(self, item: _Message | dict[str, Any]) -> None:
        """Hand one message (or a gap notice dict) over without blocking."""
        if self.closed:
            return
        if self.direct:
            try:
                if isinstance(item, dict):
                    ok = self.ws.send(json_text(item))
                else:
                    ok = self.ws.send_prepared(item.frame())
            except Exception as exc:
                log.debug("hub: send to %r failed: %s", self.ws, exc)
                ok = False
            if ok is False:
                self.hub._lost(self, slow=_runtime_says_slow(self.ws))
            else:
                self.hub._delivered += 1
            return
        queued = len(self.queue)
        if queued >= self.hub._send_queue_size:
            self.hub._lost(self, slow=True)
            return
        if queued * 2 >= self.hub._send_queue_size:
            self.hub._backlogged = True  # let the delivery greenlets run soon
        self.queue.append(item)
        if self.worker is None:
            self.wakeup = Event()
            self.worker = gevent.spawn(self._drain)
        elif self.wakeup is not None:
            self.wakeup.set()

    def _drain(self) -> None:
        """The socket's delivery greenlet: lives as long as the subscriber."""
        queue, ws, wakeup = self.queue, self.ws, self.wakeup
        assert wakeup is not None
        while not self.closed:
            while queue and not self.closed:
                item = queue.popleft()
                try:
                    if isinstance(item, dict):
                        ok = ws.send(json_text(item))
                    else:
                        payload, binary = item.send_args()
                        ok = ws.send(payload, binary=True) if binary else ws.send(payload)
                except Exception as exc:
                    log.debug("hub: send to %r failed: %s", ws, exc)
                    ok = False
                if ok is False:
                    self.hub._lost(self, slow=False)
                    return
                self.hub._delivered += 1
            wakeup.clear()
            if not queue and not self.closed:
                wakeup.wait()

    def stop(self) -> None:
        """Forget queued messages and let the delivery greenlet end."""
        self.closed = True
        self.queue.clear()
        if self.wakeup is not None:
            self.wakeup.set()


def _runtime_says_slow(ws: Any) -> bool:
    # The runtime closes a slow consumer itself; its connection records why.
    local_close: Any = getattr(getattr(ws, "_rt_conn", None), "local_close", None)
    return bool(local_close) and local_close[1] == "slow consumer"


class _Channel:
    """A channel with subscribers in this process."""

    __slots__ = ("filling", "known", "last", "name", "pending", "subs")

    def __init__(self, name: str) -> None:
        self.name = name
        self.subs: dict[int, _Subscriber] = {}
        #: Last id fanned out here; None until the first message.
        self.last: int | None = None
        #: Highest id of the channel seen here (published, delivered or read): the
        #: floor of the next publish, so ids grow even if the broker lost its counter.
        self.known = 0
        #: While the channel fills a gap from history, live messages wait here.
        self.pending: collections.deque[Entry] | None = None
        self.filling = False


class HubPlugin(SimplePlugin):
    """The hub's face on the engine bus: ``start`` connects the broker, ``stop``
    disconnects it. (A separate object because ``Hub.subscribe`` subscribes sockets.)"""

    def __init__(self, bus: Bus, hub: Hub) -> None:
        super().__init__(bus)
        self.hub = hub

    def start(self) -> None:
        """Connect the hub's broker."""
        self.hub.start()

    # After the servers: sockets (and their subscriptions) only come later.
    start.priority = 60  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Drop the subscriptions and disconnect the broker."""
        self.hub.stop()


class Hub:
    """The hub: channels, presence, history and resume over a broker.

    ``hub.plugin`` is its bus plugin (``hub.plugin.subscribe()`` ties it to the
    engine: the broker connects on ``start`` and disconnects on ``stop``). Every
    method is safe from any greenlet; used before the engine started, the hub starts
    itself with the global config (``hub.*`` keys, read at start).
    """

    def __init__(self, bus: Bus, config: Config | None = None) -> None:
        self.bus = bus
        self.plugin = HubPlugin(bus, self)
        self.config = config if config is not None else global_config
        #: Called with each message of :meth:`broadcast` (str or bytes), in every
        #: process; wire it to the WebSocket plugin's broadcast.
        self.on_broadcast: Any = None
        self.broker: Broker | None = None
        self.node = os.urandom(4).hex()
        self._ids = itertools.count(1)
        self._channels: dict[str, _Channel] = {}
        self._subscribers: dict[int, _Subscriber] = {}
        self._heartbeat: gevent.Greenlet | None = None
        self._published = 0
        self._delivered = 0
        self._dropped = 0
        self._send_queue_size = 1000
        self._close_code = 1008
        self._announce = False
        self._presence_ttl = 20.0
        self._max_channels = 10_000
        self._backlogged = False
        #: Who may do what on a channel, for every socket (set your own before start).
        self.policy: Policy = Policy()
        #: Joins a caller already authorized (:meth:`authorize`), by (socket, channel).
        self._granted: dict[tuple[int, str], float] = {}

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Connect the broker named by ``hub.broker`` (once)."""
        if self.broker is not None:
            return
        get = self.config.get_key
        self._send_queue_size = int(get("hub.send_queue_size"))
        self._close_code = int(get("hub.slow_consumer_close_code"))
        self._announce = bool(get("hub.announce_presence"))
        self._presence_ttl = float(get("hub.presence_ttl"))
        self._max_channels = int(get("hub.max_channels"))
        self.policy.configure(self.config)
        options = BrokerOptions(
            history_size=int(get("hub.history_size")),
            history_ttl=float(get("hub.history_ttl")),
            presence_ttl=self._presence_ttl,
            reconnect_backoff_max=float(get("hub.reconnect_backoff_max")),
            timeout=float(get("hub.broker_timeout")),
            prefix=str(get("hub.redis_prefix")),
            presence_history_size=int(get("hub.presence_history_size")),
            max_idle_channels=self._max_channels,
            key_ttl=float(get("hub.redis_ttl")),
        )
        broker = create_broker(str(get("hub.broker")), options)
        self.broker = broker
        broker.start(self)
        if broker.name != "memory":
            self._heartbeat = gevent.spawn(self._beat)

    def stop(self) -> None:
        """Drop every subscription (members leave presence) and disconnect the broker."""
        broker, self.broker = self.broker, None
        beat, self._heartbeat = self._heartbeat, None
        if beat is not None:
            beat.kill(block=True, timeout=1)
        for sub in list(self._subscribers.values()):
            sub.stop()
            if broker is not None:
                for channel, m in sub.channels.items():
                    if m.member_id is not None:
                        try:
                            broker.presence_leave(channel, m.member_id)
                        except BrokerUnavailable:
                            pass
        self._subscribers.clear()
        self._channels.clear()
        if broker is not None:
            broker.stop()

    def _broker(self) -> Broker:
        broker = self.broker
        if broker is None:
            self.start()
            broker = self.broker
            assert broker is not None
        return broker

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe(
        self,
        ws: Any,
        channel: str,
        member: Any = None,
        *,
        since: int | None = None,
        announce: bool | None = None,
        limit: int | None = None,
    ) -> None:
        """Subscribe socket ``ws`` to ``channel``.

        ``member``: what the app attaches (JSON-able, e.g. ``{"nick": "ann"}``); a
        socket given one appears in :meth:`presence`. ``announce`` publishes join and
        leave events (default ``hub.announce_presence``; needs ``member``).
        ``since``: resume after that id -- the messages after it are delivered first,
        in order, then live ones, none lost or doubled; a ``gap`` notice says what is
        no longer kept. ``limit``: replay at most that many of them (the newest; a
        gap notice covers the others). Raises :class:`TooManyChannels` when
        ``channel`` would be one more than ``hub.max_channels`` here, and
        :class:`BrokerUnavailable` when the broker cannot serve it (the socket is
        then not subscribed).
        """
        _check_channel(channel)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise HubError(f"limit is a number of messages (0 or more), not {limit!r}")
        broker = self._broker()
        sub = self._subscribers.get(id(ws))
        if sub is not None and channel in sub.channels:
            return
        granted = self._granted.pop((id(ws), channel), None)
        if granted is not None and time.monotonic() - granted < _GRANT_SECONDS:
            namespace = self.policy.namespace(channel)[0]
        else:
            namespace = self.policy.check(ws, channel, JOIN)
        if since is not None:
            self.policy.check(ws, channel, HISTORY)
        if not namespace.presence:
            member = None
        self.check_capacity(channel)
        if sub is None:
            sub = self._subscribers[id(ws)] = _Subscriber(self, ws)
        announce = self._announce if announce is None else bool(announce)
        member_id = f"{self.node}-{next(self._ids)}" if member is not None else None
        m = _Membership(member_id, member, announce and member_id is not None, since)
        if since is not None:
            m.pending = collections.deque()
        ch = self._channels.get(channel)
        if ch is None:
            ch = self._channels[channel] = _Channel(channel)
        sub.channels[channel] = m
        ch.subs[id(ws)] = sub
        try:
            broker.listen(channel)
            if since is not None:
                self._resume(broker, sub, m, channel, since, limit)
            if member_id is not None:
                broker.presence_join(channel, member_id, member, m.announce)
        except BaseException:
            m.pending = None
            self._remove(sub, channel, announce_leave=False)
            raise
        self._flush_pending(sub, m, channel)
        if m.announce and member_id is not None:
            self._publish(channel, "presence", {"action": "join", "member": member_id, "info": member})

    def authorize(self, ws: Any, channel: str, operation: str = JOIN) -> None:
        """Ask the policy now whether ``ws`` may ``operation`` on ``channel`` (raises
        :class:`ChannelForbidden`). An allowed join is not asked again by the next
        :meth:`subscribe` of ``ws`` to ``channel`` (within a few seconds): a caller
        that sends history before subscribing decides first, and counts once."""
        self.policy.check(ws, channel, operation, joined=channel in self.channels_of(ws))
        if operation == JOIN:
            if len(self._granted) > 10_000:
                self._granted.clear()  # stale grants only cost a second check
            self._granted[(id(ws), channel)] = time.monotonic()

    def check_capacity(self, channel: str) -> None:
        """Raise :class:`TooManyChannels` if subscribing to ``channel`` would make one
        channel more than ``hub.max_channels`` in this process."""
        if channel not in self._channels and len(self._channels) >= self._max_channels:
            raise TooManyChannels(
                f"cannot subscribe to {channel!r}: this process already has {len(self._channels)} channels "
                "with subscribers (hub.max_channels)"
            )

    def _resume(
        self, broker: Broker, sub: _Subscriber, m: _Membership, channel: str, since: int, limit: int | None
    ) -> None:
        """Replay what ``channel`` kept after ``since`` (the newest ``limit``), gaps said."""
        entries, last = broker.history(channel, since)
        self._note_last(channel, last)
        skipped = 0  # the newest id kept but not replayed (beyond ``limit``)
        if limit is not None and len(entries) > limit:
            skipped = entries[-limit - 1].id
            entries = entries[len(entries) - limit :] if limit else []
        if since > last:
            # Ids from before the broker lost its data (a Redis restart without
            # persistence, a memory hub restarted): what came after ``since`` is
            # unknown, so say so ("to": None) and resume from now.
            m.last = last
            if since > 0:
                sub.deliver({"channel": channel, "gap": {"from": since, "to": None}})
        elif skipped:
            self._send_gap(sub, m, channel, since, skipped)
        elif entries and entries[0].prev == 0 and since > 0 and entries[0].id - 1 > since:
            # The id chain starts again (prev 0, a new epoch) after ``since``: what the
            # client missed was lost with the broker's data or the dropped channel.
            self._send_gap(sub, m, channel, since, entries[0].id - 1)
        for entry in entries:
            self._send_entry(sub, m, _Message(channel, entry))
            self._yield_if_backlogged()
        if m.last is not None and last > m.last:
            if m.last > 0:
                self._send_gap(sub, m, channel, m.last, last)
            else:
                m.last = last  # ``since=0`` saw nothing, so nothing is lost for it

    def _flush_pending(self, sub: _Subscriber, m: _Membership, channel: str) -> None:
        pending = m.pending
        while pending:
            entry = pending.popleft()
            self._send_entry(sub, m, _Message(channel, entry))
            self._yield_if_backlogged()
        m.pending = None  # no switch since the deque was seen empty

    def unsubscribe(self, ws: Any, channel: str) -> None:
        """Unsubscribe ``ws`` from ``channel`` (no error if it was not subscribed)."""
        self.policy.check(ws, channel, LEAVE)
        sub = self._subscribers.get(id(ws))
        if sub is not None and channel in sub.channels:
            self._remove(sub, channel, announce_leave=True)

    def socket_closed(self, ws: Any) -> None:
        """Forget ``ws`` everywhere; the WebSocket runtime calls it when a socket closes."""
        sub = self._subscribers.get(id(ws))
        if sub is not None:
            self._drop(sub)
        self.policy.forget(ws)

    def channels_of(self, ws: Any) -> list[str]:
        """The channels ``ws`` is subscribed to."""
        sub = self._subscribers.get(id(ws))
        return list(sub.channels) if sub is not None else []

    def subscribers(self, channel: str) -> list[Any]:
        """The sockets of this process subscribed to ``channel``."""
        ch = self._channels.get(channel)
        return [sub.ws for sub in ch.subs.values()] if ch is not None else []

    def _drop(self, sub: _Subscriber) -> None:
        sub.stop()
        for channel in list(sub.channels):
            self._remove(sub, channel, announce_leave=True)
        self._subscribers.pop(id(sub.ws), None)

    def _remove(self, sub: _Subscriber, channel: str, announce_leave: bool) -> None:
        m = sub.channels.pop(channel, None)
        if not sub.channels:
            sub.stop()
            self._subscribers.pop(id(sub.ws), None)
        ch = self._channels.get(channel)
        if ch is not None and ch.subs.get(id(sub.ws)) is sub:
            del ch.subs[id(sub.ws)]
        try:
            if m is not None:
                self._leave_presence(channel, m, announce_leave)
        finally:
            # Last, so the broker sees the leave event while the channel is in use
            # and can drop the channel's state at once after it.
            if ch is not None and not ch.subs and self._channels.get(channel) is ch:
                del self._channels[channel]
                if self.broker is not None:
                    self.broker.unlisten(channel)

    def _leave_presence(self, channel: str, m: _Membership, announce: bool) -> None:
        if m.member_id is None or self.broker is None:
            return
        try:
            left = self.broker.presence_leave(channel, m.member_id)
            if left and m.announce and announce:
                self._publish(channel, "presence", {"action": "leave", "member": m.member_id, "info": m.info})
        except BrokerUnavailable:
            pass  # logged by the broker; the member expires with presence_ttl

    def _lost(self, sub: _Subscriber, slow: bool) -> None:
        """A send failed or a queue overflowed: drop the socket, close a slow one."""
        if sub.closed and id(sub.ws) not in self._subscribers:
            return
        if slow:
            self._dropped += 1
            log.warning(
                "hub: slow consumer %r dropped (%d messages queued); closing with %d",
                sub.ws,
                len(sub.queue),
                self._close_code,
            )
        self._drop(sub)
        if slow and not sub.direct:
            gevent.spawn(_close_quietly, sub.ws, self._close_code)

    # -- publishing -------------------------------------------------------------------------

    def publish(self, channel: str, data: Any, *, ws: Any = None) -> int:
        """Publish ``data`` (str, bytes or JSON-able) to ``channel``; return its id.

        ``ws``: the socket this is published for, which the policy must allow
        (:class:`ChannelForbidden`, :class:`RateLimited`); None for server code.
        Returns once the broker has the message (never waiting for subscribers).
        Raises :class:`HubError` if ``data`` cannot be encoded and
        :class:`BrokerUnavailable` if the broker cannot be reached (nothing sent).
        """
        _check_channel(channel)
        if ws is not None:
            self._broker()  # started, so the policy has read its config
            self.policy.check(ws, channel, PUBLISH, joined=channel in self.channels_of(ws))
        return self._publish(channel, "data", data)

    def _publish(self, channel: str, field: str, data: Any) -> int:
        broker = self._broker()
        if isinstance(data, (bytes, bytearray, memoryview)):
            kind, encoded = BINARY, bytes(data)
        else:
            kind = TEXT
            try:
                encoded = json_text(data).encode("utf-8")
            except (TypeError, ValueError) as exc:
                raise HubError(f"cannot publish {type(data).__name__} to {channel!r}: {exc}") from None
        ch = self._channels.get(channel)
        entry = broker.publish(channel, kind, field, encoded, floor=ch.known if ch is not None else 0)
        self._note_last(channel, entry.id)
        self._published += 1
        return entry.id

    def broadcast(self, message: str | bytes) -> None:
        """Send ``message`` to every socket of every process (via ``on_broadcast``)."""
        self._broker().broadcast(message)

    def _note_last(self, channel: str, msg_id: int) -> None:
        # Only for channels with local subscribers: nothing is kept for the others.
        ch = self._channels.get(channel)
        if ch is not None and msg_id > ch.known:
            ch.known = msg_id

    # -- delivery (Sink: called by the broker's delivery greenlet) -----------------------------

    def deliver(self, channel: str, entry: Entry) -> None:
        """Fan ``entry`` out to this process's subscribers of ``channel``."""
        self._note_last(channel, entry.id)
        ch = self._channels.get(channel)
        if ch is None:
            return
        if ch.pending is not None:
            ch.pending.append(entry)
            return
        if ch.last is not None:
            if entry.id <= ch.last:
                return  # already delivered (a history fill overlapped)
            if entry.prev > ch.last:
                # Missed messages (a broker reconnection): fill from history first.
                self._start_fill(ch)
                assert ch.pending is not None
                ch.pending.append(entry)
                return
        self._fan_out(ch, _Message(channel, entry))
        self._yield_if_backlogged()

    def _yield_if_backlogged(self) -> None:
        # A burst fanned out without a switch would fill the queues of sockets that
        # are merely not scheduled yet; let their delivery greenlets run first.
        if self._backlogged:
            self._backlogged = False
            gevent.sleep(0)

    def _fan_out(self, ch: _Channel, msg: _Message) -> None:
        entry = msg.entry
        ch.last = entry.id
        for sub in list(ch.subs.values()):
            m = sub.channels.get(ch.name)
            if m is None:
                continue
            if m.pending is not None:
                m.pending.append(entry)
                continue
            self._send_entry(sub, m, msg)

    def _send_entry(self, sub: _Subscriber, m: _Membership, msg: _Message) -> None:
        entry = msg.entry
        if m.last is not None:
            if entry.id <= m.last:
                return
            if entry.prev > m.last:
                self._send_gap(sub, m, msg.channel, m.last, entry.prev)
        m.last = entry.id
        sub.deliver(msg)

    def _send_gap(self, sub: _Subscriber, m: _Membership, channel: str, after: int, upto: int) -> None:
        m.last = upto
        sub.deliver({"channel": channel, "gap": {"from": after, "to": upto}})

    def _start_fill(self, ch: _Channel) -> None:
        if ch.pending is None:
            ch.pending = collections.deque()
        if not ch.filling:
            ch.filling = True
            gevent.spawn(self._fill, ch)

    def _fill(self, ch: _Channel) -> None:
        try:
            self._fill_from_history(ch)
        finally:
            ch.filling = False

    def _fill_from_history(self, ch: _Channel) -> None:
        """Deliver what ``ch`` missed from history, then what arrived meanwhile."""
        while self._channels.get(ch.name) is ch and ch.pending is not None:
            broker = self.broker
            if broker is None:
                return
            try:
                entries, _last = broker.history(ch.name, ch.last)
            except BrokerUnavailable:
                gevent.sleep(0.1)  # the broker reconnects meanwhile; live messages wait
                continue
            for entry in entries:
                if ch.last is None or entry.id > ch.last:
                    self._fan_out(ch, _Message(ch.name, entry))
                    self._yield_if_backlogged()
            pending = ch.pending
            while pending:
                entry = pending[0]
                if ch.last is not None and entry.id <= ch.last:
                    pending.popleft()
                    continue
                if ch.last is not None and entry.prev > ch.last:
                    break  # still missing something: read history again
                pending.popleft()
                self._fan_out(ch, _Message(ch.name, entry))
            else:
                ch.pending = None
                return
            if not entries:
                # History does not have it any more: tell each subscriber.
                entry = pending.popleft()
                self._fan_out(ch, _Message(ch.name, entry))

    def broker_reconnected(self) -> None:
        """The broker lost messages while disconnected: fill every channel."""
        for ch in list(self._channels.values()):
            if ch.last is not None:
                self._start_fill(ch)

    def deliver_broadcast(self, message: str | bytes) -> None:
        """A :meth:`broadcast` arrived: hand it to ``on_broadcast``."""
        callback = self.on_broadcast
        if callback is not None:
            callback(message)

    # -- presence and history ---------------------------------------------------------------

    def presence(self, channel: str, *, ws: Any = None) -> dict[str, Any]:
        """``{member_id: info}`` of the members of ``channel`` (in every process).

        ``ws``: the socket asking, which the policy must allow; None for server code.
        """
        broker = self._broker()
        if ws is not None:
            self.policy.check(ws, channel, PRESENCE, joined=channel in self.channels_of(ws))
        return broker.presence(channel)

    def history(self, channel: str, since: int | None = None, *, ws: Any = None) -> list[dict[str, Any]]:
        """The kept messages of ``channel`` after id ``since``, oldest first.

        Each is ``{"channel", "id", "data"}`` (or ``"presence"``) as on the wire;
        bytes data comes back as bytes. ``ws``: the socket asking, which the policy
        must allow; None for server code.
        """
        broker = self._broker()
        if ws is not None:
            self.policy.check(ws, channel, HISTORY)
        entries, _last = broker.history(channel, since)
        return [_decode(entry) for entry in entries]

    def _beat(self) -> None:
        """Redis: keep this process's members present; reap members of dead ones."""
        while True:
            gevent.sleep(self._presence_ttl / 3)
            broker = self.broker
            if broker is None:
                return
            members = [
                (channel, m.member_id, m.info, m.announce)
                for sub in list(self._subscribers.values())
                for channel, m in sub.channels.items()
                if m.member_id is not None
            ]
            try:
                broker.heartbeat(members)
                for channel, member_id, info in broker.reap(list(self._channels)):
                    self._publish(channel, "presence", {"action": "leave", "member": member_id, "info": info})
            except BrokerUnavailable:
                continue
            except Exception:
                log.exception("hub: presence heartbeat failed")

    # -- introspection ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters of this process: published, delivered, dropped_slow_consumers,
        refused (channel operations the policy refused), subscribers (sockets), channels (with local subscribers), broker, connected."""
        broker = self.broker
        return {
            "published": self._published,
            "delivered": self._delivered,
            "dropped_slow_consumers": self._dropped,
            "refused": sum(self.policy.refused.values()),
            "subscribers": len(self._subscribers),
            "channels": len(self._channels),
            "broker": broker.name if broker is not None else None,
            "connected": broker.connected if broker is not None else False,
        }

    def channel_sizes(self) -> dict[str, int]:
        """``{channel: sockets of this process subscribed}`` for every local channel."""
        return {name: len(ch.subs) for name, ch in list(self._channels.items())}


def _decode(entry: Entry) -> dict[str, Any]:
    if entry.kind == BINARY:
        header, _, data = entry.payload.partition(b"\n")
        message: dict[str, Any] = json.loads(header)
        message["data"] = data
        return message
    return dict(json.loads(entry.payload))


def _check_channel(channel: str) -> None:
    if not isinstance(channel, str) or not channel:
        raise HubError(f"a channel name is a non-empty str, not {channel!r}")
    if channel == BROADCAST_CHANNEL:
        raise HubError(f"{channel!r} is reserved for broadcast()")


def _close_quietly(ws: Any, code: int) -> None:
    try:
        ws.close(code, "slow consumer")
    except Exception as exc:
        log.debug("hub: closing %r failed: %s", ws, exc)


class HubClientMixin:
    """Channel helpers for a ws4py handler (mixed into ``rtserver.WebSocket``).

    ``self.join(channel, member=..., since=...)``, ``self.leave(channel)``,
    ``self.publish(channel, data)``; ``self.channels`` lists the joined ones. Set
    ``hub`` on a subclass to use another hub than the process's.
    """

    hub: Hub | None = None

    def _hub(self) -> Hub:
        return self.hub if self.hub is not None else _default_hub()

    def join(
        self,
        channel: str,
        member: Any = None,
        *,
        since: int | None = None,
        announce: bool | None = None,
        limit: int | None = None,
    ) -> None:
        """Subscribe this socket to ``channel`` (see :meth:`Hub.subscribe`)."""
        self._hub().subscribe(self, channel, member, since=since, announce=announce, limit=limit)

    def leave(self, channel: str) -> None:
        """Unsubscribe this socket from ``channel``."""
        self._hub().unsubscribe(self, channel)

    def publish(self, channel: str, data: Any) -> int:
        """Publish ``data`` to ``channel`` for this socket, as the policy allows (see
        :meth:`Hub.publish`); return its id."""
        return self._hub().publish(channel, data, ws=self)

    @property
    def channels(self) -> list[str]:
        """The channels this socket has joined."""
        return self._hub().channels_of(self)


def _default_hub() -> Hub:
    return hub


def _make_default() -> Hub:
    from ..runtime import engine

    instance = Hub(engine)
    instance.plugin.subscribe()
    return instance


#: The process's hub, a plugin of ``rtserver.engine``.
hub: Hub = _make_default()
