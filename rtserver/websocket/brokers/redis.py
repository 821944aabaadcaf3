"""The Redis broker (``hub.broker = 'redis://host:port/db'``): many processes, one hub.

Keys (``P`` is ``hub.redis_prefix``, ``c`` the channel name). Every key the hub
writes has a TTL, refreshed by the writes that keep it useful, so a channel nobody
uses any more leaves nothing behind in a Redis that may also hold the sessions:

* ``P n:c`` -- the channel's last id (a counter); expires ``hub.redis_ttl`` after
  the channel's last publish (of any kind);
* ``P h:c`` -- a stream of the last ``hub.history_size`` messages, entry id ``0-<id>``,
  fields ``k`` (kind), ``p`` (previous id), ``t`` (ms), ``e`` (the envelope);
  it expires ``hub.history_ttl`` (at most ``hub.redis_ttl``) after the last message;
* ``P e:c`` -- a list of the last ``hub.presence_history_size`` join/leave events,
  each ``<kind><id>,<prev>,<ms>:<envelope>``, apart from the messages so that they
  never push one out of the stream; same expiry as the stream (a list of a few
  short items costs far less than a stream, whose first node alone takes ~4 KB);
* ``P m:c`` -- the pub/sub channel every process listening to ``c`` subscribes to;
  payload ``<kind><id>,<prev>:<envelope>`` (pub/sub keeps no key);
* ``P p:c`` / ``P x:c`` -- presence: a hash member id -> ``{"info", "announce"}``
  and a sorted set member id -> expiry (Redis time, ms), kept alive by heartbeats;
  both expire ``2 x hub.presence_ttl`` after the last heartbeat or join;
* ``P broadcast`` -- the pub/sub channel of :meth:`RedisBroker.broadcast`.

One Lua script assigns the id, appends to the stream (or the events list) and
publishes, atomically: the order of ids is the order of delivery, in every process.
A new counter -- the first of a channel, or one after the counter expired or Redis
restarted without its data -- starts a new epoch above both the caller's ``floor``
and the current time in ms x 1000, so ids keep increasing (as long as a channel
averages fewer than a million messages a second) and its first message has
``prev`` 0; the counter always outlives the channel's history, so an epoch never
starts while older messages are still kept. Keys written by an older rtserver
without a TTL get one on their channel's next publish.

One greenlet per process reads the pub/sub connection. When it breaks, it reconnects
with exponential backoff (up to ``hub.reconnect_backoff_max``), subscribes again and
calls ``Sink.broker_reconnected()``; the hub then fills what it missed from history.
redis-py is imported here only: rtserver runs without the ``redis`` extra.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from typing import Any

import gevent
from gevent.event import Event

from ...errors import BrokerUnavailable, ConfigError
from . import Broker, BrokerOptions, Entry, Sink, json_text

__all__ = ["RedisBroker"]

log = logging.getLogger("rtserver.hub")

#: Connections to Redis per process (one of them held by the pub/sub reader); callers
#: beyond it wait up to hub.broker_timeout for a free one.
_MAX_CONNECTIONS = 64

# KEYS: counter, stream, pub/sub channel, events list. ARGV: kind, channel (JSON),
# field, data, floor, now (ms), entries kept (of the stream or of the events list),
# their ttl (ms), the counter's ttl (ms), the ttl (ms) of a channel that keeps no
# message (its counter and events, refreshed by each join/leave).
_PUBLISH = """
local quiet = ARGV[3] == 'presence' and redis.call('EXISTS', KEYS[2]) == 0
local last = redis.call('GET', KEYS[1])
local prev = 0
local n
if last then
  prev = tonumber(last)
  n = redis.call('INCR', KEYS[1])
else
  local base = math.max(tonumber(ARGV[5]), tonumber(ARGV[6]) * 1000)
  redis.call('SET', KEYS[1], string.format('%d', base))
  n = redis.call('INCR', KEYS[1])
end
if quiet then
  redis.call('PEXPIRE', KEYS[1], ARGV[10])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[9])
end
local nid = string.format('%d', n)
local pid = string.format('%d', prev)
local env
if ARGV[1] == 't' then
  env = '{"channel":' .. ARGV[2] .. ',"id":' .. nid .. ',"' .. ARGV[3] .. '":' .. ARGV[4] .. '}'
else
  env = '{"channel":' .. ARGV[2] .. ',"id":' .. nid .. '}\\n' .. ARGV[4]
end
local keep = tonumber(ARGV[7])
if keep > 0 and ARGV[3] == 'presence' then
  redis.call('RPUSH', KEYS[4], ARGV[1] .. nid .. ',' .. pid .. ',' .. ARGV[6] .. ':' .. env)
  redis.call('LTRIM', KEYS[4], -keep, -1)
  if quiet then
    redis.call('PEXPIRE', KEYS[4], ARGV[10])
  else
    redis.call('PEXPIRE', KEYS[4], ARGV[8])
  end
elseif keep > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[7], '0-' .. nid, 'k', ARGV[1], 'p', pid, 't', ARGV[6], 'e', env)
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
end
redis.call('PUBLISH', KEYS[3], ARGV[1] .. nid .. ',' .. pid .. ':' .. env)
return {n, prev}
"""

# KEYS: hash, zset; ARGV: ttl ms, then (member id, value) pairs.
_HEARTBEAT = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], expiry, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1] * 2)
redis.call('PEXPIRE', KEYS[2], ARGV[1] * 2)
return 1
"""

# KEYS: hash, zset; returns member id, info value, member id, ... of live members.
_PRESENCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')
local out = {}
for _, id in ipairs(ids) do
  local v = redis.call('HGET', KEYS[1], id)
  if v then
    out[#out + 1] = id
    out[#out + 1] = v
  end
end
return out
"""

# KEYS: hash, zset; removes expired members, returns id, value pairs.
_REAP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[2], id)
  local v = redis.call('HGET', KEYS[1], id)
  redis.call('HDEL', KEYS[1], id)
  out[#out + 1] = id
  out[#out + 1] = v or 'null'
end
return out
"""

# KEYS: hash, zset; ARGV: member id. Returns 1 if it was present.
_LEAVE = """
local removed = redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
return removed
"""


def _parse_event(item: bytes) -> tuple[Entry, int]:
    """A join/leave event of the events list, and when it was stored (ms)."""
    head, _, env = item.partition(b":")
    msg_id, prev, stored = head[1:].split(b",")
    return Entry(int(msg_id), int(prev), head[:1].decode(), env), int(stored)


class RedisBroker(Broker):
    """Ids, history, presence and delivery through Redis (see the module docstring)."""

    name = "redis"

    def __init__(self, url: str, options: BrokerOptions) -> None:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ConfigError("hub.broker is a Redis URL but redis-py is not installed (pip install rtserver[redis])")
        self.url = url
        self.options = options
        p = options.prefix
        self._p = p
        self._bcast = (p + "broadcast").encode()
        self._mprefix = (p + "m:").encode()
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._pubsub: Any = None
        self._sink: Sink | None = None
        self._listener: gevent.Greenlet | None = None
        self._listening: set[str] = set()
        self._confirm: dict[bytes, Event] = {}
        self._connected = False
        self._stopping = False

    # -- life cycle ------------------------------------------------------------------

    def start(self, sink: Sink) -> None:
        from redis import BlockingConnectionPool, Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._sink = sink
        self._stopping = False
        timeout = self.options.timeout
        # No silent retries: a publish is not idempotent; callers see BrokerUnavailable.
        # A bounded pool whose callers wait for a free connection: redis-py's default
        # pool refuses past 100 connections (8.0), and a thousand sockets publishing
        # at once would then fail instead of queueing for a round trip.
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=_MAX_CONNECTIONS,
            timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        self._client = Redis(connection_pool=pool)
        for name, source in (
            ("publish", _PUBLISH),
            ("heartbeat", _HEARTBEAT),
            ("presence", _PRESENCE),
            ("reap", _REAP),
            ("leave", _LEAVE),
        ):
            self._scripts[name] = self._client.register_script(source)
        ready = Event()
        self._listener = gevent.spawn(self._run, ready)
        # Wait for the first connection, but start anyway if Redis is down: the
        # listener keeps trying, and publishes raise BrokerUnavailable meanwhile.
        ready.wait(timeout)
        if not self._connected:
            log.warning("hub: Redis at %s is not reachable yet; retrying in the background", self._safe_url)

    def stop(self) -> None:
        self._stopping = True
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.kill(block=True, timeout=2)
        self._close_pubsub()
        if self._client is not None:
            self._client.close()
            self._client.connection_pool.disconnect()
            self._client = None
        self._connected = False
        for event in self._confirm.values():
            event.set()
        self._confirm.clear()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def _safe_url(self) -> str:
        # Never log a password.
        head, sep, tail = self.url.rpartition("@")
        return ("redis://***@" + tail) if sep else self.url

    def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:
                pass

    def _run(self, ready: Event) -> None:
        from redis.exceptions import RedisError

        backoff = 0.05
        first = True
        while not self._stopping:
            try:
                pubsub = self._client.pubsub()
                self._pubsub = pubsub
                channels = [self._bcast] + [self._mchan(c) for c in self._listening]
                expected = set(channels)
                pubsub.subscribe(*channels)
                while expected:
                    msg = pubsub.get_message(timeout=self.options.timeout)
                    if msg is None:
                        raise TimeoutError("no subscription confirmation")
                    if msg["type"] == "subscribe":
                        expected.discard(msg["channel"])
                    else:
                        self._handle(msg)
                self._connected = True
                for event in self._confirm.values():
                    event.set()
                self._confirm.clear()
                if not first:
                    log.warning("hub: reconnected to Redis at %s", self._safe_url)
                    if self._sink is not None:
                        self._sink.broker_reconnected()
                first = False
                backoff = 0.05
                ready.set()
                while True:
                    msg = pubsub.get_message(timeout=None)
                    if msg is not None:
                        self._handle(msg)
            except (RedisError, OSError) as exc:
                if self._stopping:
                    break
                if self._connected or first:
                    log.warning("hub: Redis at %s unavailable (%s); reconnecting", self._safe_url, exc)
            finally:
                self._connected = False
                self._close_pubsub()
            ready.set()
            gevent.sleep(backoff)
            backoff = min(backoff * 2, self.options.reconnect_backoff_max)

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "subscribe":
            event = self._confirm.pop(msg["channel"], None)
            if event is not None:
                event.set()
            return
        if kind != "message":
            return
        sink = self._sink
        if sink is None:
            return
        channel: bytes = msg["channel"]
        data: bytes = msg["data"]
        try:
            if channel == self._bcast:
                sink.deliver_broadcast(data[1:].decode("utf-8") if data[:1] == b"t" else data[1:])
                return
            head_end = data.index(b":")
            ids = data[1:head_end].split(b",")
            entry = Entry(int(ids[0]), int(ids[1]), data[:1].decode(), data[head_end + 1 :])
            sink.deliver(channel[len(self._mprefix) :].decode("utf-8"), entry)
        except Exception:
            log.exception("hub: delivery of a message from Redis failed")

    # -- keys --------------------------------------------------------------------------

    def _mchan(self, channel: str) -> bytes:
        return self._mprefix + channel.encode("utf-8")

    def _key(self, kind: str, channel: str) -> str:
        return f"{self._p}{kind}:{channel}"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from redis.exceptions import RedisError

        if self._client is None:
            raise BrokerUnavailable("the hub is not started")
        try:
            return fn(*args, **kwargs)
        except (RedisError, OSError) as exc:
            log.error("hub: %s failed, Redis at %s unavailable: %s", what, self._safe_url, exc)
            raise BrokerUnavailable(f"Redis unavailable ({what})") from exc

    # -- messages ----------------------------------------------------------------------

    def _history_ttl_ms(self) -> int:
        """How long kept messages and events live after the last one: ``history_ttl``
        when set, never longer than the counter (``key_ttl``)."""
        ttl = self.options.history_ttl
        return max(1, int(min(ttl, self.options.key_ttl) * 1000 if ttl > 0 else self.options.key_ttl * 1000))

    def _quiet_ttl_ms(self) -> int:
        """How long the counter and join/leave events of a channel that keeps no
        message outlive its last join or leave: three presence heartbeats, at least a
        minute. Rooms that only ever see joins and leaves (a churn of distinct rooms)
        then cost keys for a minute, not for ``key_ttl``; dropping their counter is
        safe, since a counter made again starts a new epoch from the clock."""
        return max(60_000, int(self.options.presence_ttl * 3 * 1000), 1)

    def publish(self, channel: str, kind: str, field: str, data: bytes, floor: int = 0) -> Entry:
        keep = self.options.presence_history_size if field == "presence" else self.options.history_size
        args = [
            kind,
            json_text(channel),
            field,
            data,
            floor,
            int(time.time() * 1000),
            max(0, int(keep)),
            self._history_ttl_ms(),
            max(1, int(self.options.key_ttl * 1000)),
            self._quiet_ttl_ms(),
        ]
        keys = [self._key("n", channel), self._key("h", channel), self._mchan(channel), self._key("e", channel)]
        msg_id, prev = self._call("publish", self._scripts["publish"], keys=keys, args=args)
        # The envelope is built by the script; the caller only needs id and prev.
        return Entry(int(msg_id), int(prev), kind, b"")

    def broadcast(self, message: str | bytes) -> None:
        payload = b"t" + message.encode("utf-8") if isinstance(message, str) else b"b" + bytes(message)
        self._call("broadcast", self._client_or_raise().publish, self._bcast, payload)

    def _client_or_raise(self) -> Any:
        if self._client is None:
            raise BrokerUnavailable("the hub is not started")
        return self._client

    def listen(self, channel: str) -> None:
        if channel in self._listening:
            return
        self._listening.add(channel)
        pubsub = self._pubsub
        if pubsub is None or not self._connected:
            return  # the listener subscribes it when it (re)connects
        key = self._mchan(channel)
        event = self._confirm.setdefault(key, Event())
        try:
            pubsub.subscribe(key)
        except Exception as exc:  # the listener notices too and reconnects
            log.debug("hub: SUBSCRIBE %s failed: %s", channel, exc)
            return
        if not event.wait(self.options.timeout):
            self._listening.discard(channel)
            raise BrokerUnavailable(f"Redis did not confirm the subscription to {channel!r}")

    def unlisten(self, channel: str) -> None:
        if channel not in self._listening:
            return
        self._listening.discard(channel)
        pubsub = self._pubsub
        if pubsub is not None and self._connected:
            try:
                pubsub.unsubscribe(self._mchan(channel))
            except Exception as exc:
                log.debug("hub: UNSUBSCRIBE %s failed: %s", channel, exc)

    def history(self, channel: str, since: int | None) -> tuple[list[Entry], int]:
        client = self._client_or_raise()
        start = "-" if since is None or since < 0 else f"(0-{since}"

        def run() -> Any:
            with client.pipeline(transaction=True) as pipe:
                pipe.xrange(self._key("h", channel), start, "+")
                pipe.lrange(self._key("e", channel), 0, -1)
                pipe.get(self._key("n", channel))
                return pipe.execute()

        rows, events, last = self._call("history", run)
        ttl_ms = int(self.options.history_ttl * 1000)
        limit = int(time.time() * 1000) - ttl_ms if ttl_ms > 0 else 0
        floor = -1 if since is None else since
        messages = []
        for _sid, fields in rows:
            if int(fields[b"t"]) >= limit:
                msg_id = int(_sid.split(b"-", 1)[1])
                messages.append(Entry(msg_id, int(fields[b"p"]), fields[b"k"].decode(), fields[b"e"]))
        kept_events = [entry for entry, stored in map(_parse_event, events) if entry.id > floor and stored >= limit]
        return list(heapq.merge(messages, kept_events, key=lambda entry: entry.id)), int(last or 0)

    # -- presence ----------------------------------------------------------------------

    def _ttl_ms(self) -> int:
        return max(1, int(self.options.presence_ttl * 1000))

    def presence_join(self, channel: str, member_id: str, info: Any, announce: bool) -> None:
        value = json_text({"info": info, "announce": bool(announce)})
        keys = [self._key("p", channel), self._key("x", channel)]
        self._call("presence", self._scripts["heartbeat"], keys=keys, args=[self._ttl_ms(), member_id, value])

    def presence_leave(self, channel: str, member_id: str) -> bool:
        keys = [self._key("p", channel), self._key("x", channel)]
        return bool(self._call("presence", self._scripts["leave"], keys=keys, args=[member_id]))

    def presence(self, channel: str) -> dict[str, Any]:
        keys = [self._key("p", channel), self._key("x", channel)]
        flat = self._call("presence", self._scripts["presence"], keys=keys)
        return {flat[i].decode(): json.loads(flat[i + 1]).get("info") for i in range(0, len(flat), 2)}

    def heartbeat(self, members: list[tuple[str, str, Any, bool]]) -> None:
        by_channel: dict[str, list[Any]] = {}
        for channel, member_id, info, announce in members:
            by_channel.setdefault(channel, []).extend(
                (member_id, json_text({"info": info, "announce": bool(announce)}))
            )
        if not by_channel:
            return
        client = self._client_or_raise()
        script = self._scripts["heartbeat"]

        def run() -> None:
            with client.pipeline(transaction=False) as pipe:
                for channel, pairs in by_channel.items():
                    keys = [self._key("p", channel), self._key("x", channel)]
                    script(keys=keys, args=[self._ttl_ms(), *pairs], client=pipe)
                pipe.execute()

        self._call("heartbeat", run)

    def reap(self, channels: list[str]) -> list[tuple[str, str, Any]]:
        if not channels:
            return []
        client = self._client_or_raise()
        script = self._scripts["reap"]

        def run() -> list[Any]:
            with client.pipeline(transaction=False) as pipe:
                for channel in channels:
                    script(keys=[self._key("p", channel), self._key("x", channel)], client=pipe)
                return list(pipe.execute())

        results = self._call("reap", run)
        gone = []
        for channel, flat in zip(channels, results, strict=True):
            for i in range(0, len(flat), 2):
                value = json.loads(flat[i + 1]) or {}
                if value.get("announce"):
                    gone.append((channel, flat[i].decode(), value.get("info")))
        return gone
