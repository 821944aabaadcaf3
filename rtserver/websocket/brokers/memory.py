"""The in-process broker (``hub.broker = 'memory'``, the default).

Ids, history and presence live in this process. Publishing appends to an inbox and
returns; one delivery greenlet hands the inbox to the hub in order, so a publisher
never waits for the fan-out and deliveries of one channel never interleave.

Bounds -- no client can make this process keep more than a fixed amount per channel,
nor keep it longer than the channel lives:

* a channel keeps the last ``history_size`` messages and, apart from them, the last
  ``options.presence_history_size`` join/leave events, so that a storm of
  joins and leaves never pushes a message out;
* a channel is *in use* while the hub listens to it (a socket of this process is
  subscribed) or has present members. Once it is not, its state is kept only while
  it has messages in history: with none left, the counter, events and history are
  dropped at once; with some, the channel is *idle* and is dropped once its history
  has expired (``history_ttl``; checked on publishes and leaves and at least once a
  minute, the longest idle first) or, when more than
  ``options.max_idle_channels`` channels are idle, the longest idle first
  (a resume then gets a gap notice);
* ids stay monotonic across a drop: a channel created again starts a new epoch
  above every id this broker ever gave a dropped channel (one number for the whole
  process), so an id a client still holds is never given out again, and a resume
  from an old id gets a gap notice, never another message under that id. For a
  channel it has no state for, :meth:`MemoryBroker.history` answers that highest
  retired id as the last one: every id the channel may have had is at most that,
  and every id it will have is above.
"""

from __future__ import annotations

import collections
import heapq
import logging
import time
from typing import Any

import gevent
from gevent.event import Event

from . import Broker, BrokerOptions, Entry, Sink, envelope, json_text

__all__ = ["MemoryBroker"]

log = logging.getLogger("rtserver.hub")

#: A kept entry and when it was stored (monotonic seconds).
_Kept = tuple[Entry, float]


class _State:
    """What the broker keeps for one channel."""

    __slots__ = ("events", "last", "messages")

    def __init__(self, last: int) -> None:
        #: The last id given out (the epoch's base until the first publish).
        self.last = last
        #: Data messages; created on the first one (most channels never get any).
        self.messages: collections.deque[_Kept] | None = None
        #: Join/leave events, bounded on their own.
        self.events: collections.deque[_Kept] | None = None


def _keep(kept: collections.deque[_Kept] | None, size: int, item: _Kept) -> collections.deque[_Kept] | None:
    """Append ``item`` to a deque of at most ``size`` entries (None when ``size`` is 0)."""
    if size <= 0:
        return None
    if kept is None or kept.maxlen != size:
        kept = collections.deque(kept or (), maxlen=size)
    kept.append(item)
    return kept


def _prune(kept: collections.deque[_Kept] | None, limit: float | None) -> None:
    """Forget the entries stored before ``limit`` (None: no age limit)."""
    if kept is not None and limit is not None:
        while kept and kept[0][1] < limit:
            kept.popleft()


class MemoryBroker(Broker):
    """Everything in one process (see the module docstring)."""

    name = "memory"

    def __init__(self, options: BrokerOptions) -> None:
        self.options = options
        self._states: dict[str, _State] = {}
        self._presence: dict[str, dict[str, Any]] = {}
        self._listening: set[str] = set()
        #: Channels with state but not in use, the longest idle first.
        self._idle: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: The highest id ever given to a channel since dropped: new epochs start above.
        self._retired = 0
        self._inbox: collections.deque[tuple[str | None, Any]] = collections.deque()
        self._wakeup = Event()
        self._sink: Sink | None = None
        self._worker: gevent.Greenlet | None = None

    def start(self, sink: Sink) -> None:
        self._sink = sink
        if self._worker is None:
            self._worker = gevent.spawn(self._run)

    def stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.kill(block=True, timeout=1)
        self._inbox.clear()

    def _run(self) -> None:
        inbox, wakeup = self._inbox, self._wakeup
        while True:
            while inbox:
                channel, item = inbox.popleft()
                sink = self._sink
                if sink is None:
                    continue
                try:
                    if channel is None:
                        sink.deliver_broadcast(item)
                    else:
                        sink.deliver(channel, item)
                except Exception:
                    log.exception("hub: delivery failed")
            wakeup.clear()
            if not inbox:
                wakeup.wait(self._sweep_every())
            self._expire_idle()

    def _sweep_every(self) -> float | None:
        # Often enough that expired history goes soon after its ttl, yet a no-op
        # wake-up once a minute at most with the default day.
        ttl = self.options.history_ttl
        return min(ttl, 60.0) if ttl > 0 else None

    # -- messages ------------------------------------------------------------------------

    def publish(self, channel: str, kind: str, field: str, data: bytes, floor: int = 0) -> Entry:
        self._expire_idle()
        state = self._states.get(channel)
        if state is None:
            # A new epoch: above every id a dropped channel had, so none is reused.
            state = self._states[channel] = _State(self._retired)
            prev = 0
        else:
            prev = state.last
        msg_id = max(state.last, floor) + 1
        state.last = msg_id
        entry = Entry(msg_id, prev, kind, envelope(json_text(channel), msg_id, kind, field, data))
        item = (entry, time.monotonic())
        if field == "presence":
            state.events = _keep(state.events, self.options.presence_history_size, item)
        else:
            state.messages = _keep(state.messages, self.options.history_size, item)
        self._inbox.append((channel, entry))
        self._wakeup.set()
        if not self._in_use(channel):
            self._settle(channel)
        return entry

    def broadcast(self, message: str | bytes) -> None:
        self._inbox.append((None, message))
        self._wakeup.set()

    def listen(self, channel: str) -> None:
        """Every publish of the process reaches the hub; only note the channel is in use."""
        self._listening.add(channel)
        self._idle.pop(channel, None)

    def unlisten(self, channel: str) -> None:
        """The channel's history stays for later resumes while it has some."""
        self._listening.discard(channel)
        self._settle(channel)
        self._expire_idle()

    def history(self, channel: str, since: int | None) -> tuple[list[Entry], int]:
        state = self._states.get(channel)
        if state is None:
            # Forgotten (or never used): whatever ids it had are at most ``_retired``,
            # so that is its last id as far as a resume is concerned.
            return [], self._retired
        limit = self._age_limit()
        _prune(state.messages, limit)
        _prune(state.events, limit)
        floor = -1 if since is None else since
        kept = heapq.merge(state.messages or (), state.events or (), key=lambda item: item[0].id)
        entries = [entry for entry, _t in kept if entry.id > floor]
        last = state.last
        if not self._in_use(channel):
            self._settle(channel)
        return entries, last

    # -- channel life ----------------------------------------------------------------------

    def _in_use(self, channel: str) -> bool:
        return channel in self._listening or channel in self._presence

    def _age_limit(self) -> float | None:
        ttl = self.options.history_ttl
        return time.monotonic() - ttl if ttl > 0 else None

    def _settle(self, channel: str) -> None:
        """``channel`` is not in use: drop it unless messages are kept, else mark it idle."""
        state = self._states.get(channel)
        if state is None or self._in_use(channel):
            return
        _prune(state.messages, self._age_limit())
        if not state.messages:
            self._drop(channel)
            return
        self._idle[channel] = None
        self._idle.move_to_end(channel)
        while len(self._idle) > self.options.max_idle_channels:
            self._drop(next(iter(self._idle)))

    def _expire_idle(self) -> None:
        """Drop the longest idle channels whose history has expired.

        The idle channels are in the order they went idle (or got a message), so a
        channel waits behind the ones before it at most ``history_ttl`` after it went
        idle. Each channel is dropped once: the work is O(1) per channel, amortised.
        """
        limit = self._age_limit()
        if limit is None:
            return
        idle = self._idle
        while idle:
            oldest = next(iter(idle))
            messages = self._states[oldest].messages
            if messages and messages[-1][1] >= limit:
                return
            self._drop(oldest)

    def _drop(self, channel: str) -> None:
        state = self._states.pop(channel, None)
        self._idle.pop(channel, None)
        if state is not None and state.last > self._retired:
            self._retired = state.last

    # -- presence ----------------------------------------------------------------------

    def presence_join(self, channel: str, member_id: str, info: Any, announce: bool) -> None:
        self._presence.setdefault(channel, {})[member_id] = info
        self._idle.pop(channel, None)

    def presence_leave(self, channel: str, member_id: str) -> bool:
        members = self._presence.get(channel)
        if not members or member_id not in members:
            return False
        del members[member_id]
        if not members:
            del self._presence[channel]
            self._settle(channel)
        return True

    def presence(self, channel: str) -> dict[str, Any]:
        return dict(self._presence.get(channel, {}))
