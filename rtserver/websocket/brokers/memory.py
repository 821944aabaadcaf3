"""The in-process broker (``hub.broker = 'memory'``, the default).

Ids, history and presence live in this process. Publishing appends to an inbox and
returns; one delivery greenlet hands the inbox to the hub in order, so a publisher
never waits for the fan-out and deliveries of one channel never interleave.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

import gevent
from gevent.event import Event

from . import Broker, BrokerOptions, Entry, Sink, envelope, json_text

__all__ = ["MemoryBroker"]

log = logging.getLogger("rtserver.hub")


class MemoryBroker(Broker):
    """Everything in one process (see the module docstring)."""

    name = "memory"

    def __init__(self, options: BrokerOptions) -> None:
        self.options = options
        self._last: dict[str, int] = {}
        # channel -> deque of (entry, monotonic time stored)
        self._history: dict[str, collections.deque[tuple[Entry, float]]] = {}
        self._presence: dict[str, dict[str, Any]] = {}
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
                wakeup.wait()

    def publish(self, channel: str, kind: str, field: str, data: bytes, floor: int = 0) -> Entry:
        prev = self._last.get(channel, 0)
        msg_id = max(prev, floor) + 1
        self._last[channel] = msg_id
        entry = Entry(msg_id, prev, kind, envelope(json_text(channel), msg_id, kind, field, data))
        size = self.options.history_size
        if size > 0:
            kept = self._history.get(channel)
            if kept is None or kept.maxlen != size:
                kept = self._history[channel] = collections.deque(kept or (), maxlen=size)
            kept.append((entry, time.monotonic()))
        self._inbox.append((channel, entry))
        self._wakeup.set()
        return entry

    def broadcast(self, message: str | bytes) -> None:
        self._inbox.append((None, message))
        self._wakeup.set()

    def listen(self, channel: str) -> None:
        """Nothing to do: every publish of the process reaches the hub."""

    def unlisten(self, channel: str) -> None:
        """Nothing to do (history stays for later resumes)."""

    def history(self, channel: str, since: int | None) -> tuple[list[Entry], int]:
        kept = self._history.get(channel)
        last = self._last.get(channel, 0)
        if not kept:
            return [], last
        ttl = self.options.history_ttl
        if ttl > 0:
            limit = time.monotonic() - ttl
            while kept and kept[0][1] < limit:
                kept.popleft()
        floor = -1 if since is None else since
        return [entry for entry, _t in kept if entry.id > floor], last

    def presence_join(self, channel: str, member_id: str, info: Any, announce: bool) -> None:
        self._presence.setdefault(channel, {})[member_id] = info

    def presence_leave(self, channel: str, member_id: str) -> bool:
        members = self._presence.get(channel)
        if not members or member_id not in members:
            return False
        del members[member_id]
        if not members:
            del self._presence[channel]
        return True

    def presence(self, channel: str) -> dict[str, Any]:
        return dict(self._presence.get(channel, {}))
