"""``RedisSession``: sessions in Redis, shared by every process of an application.

``tools.sessions.storage_class = 'redis'`` and ``tools.sessions.url = 'redis://host:6379/0'``.
Values are JSON text under ``rtserver:session:ID``; Redis expires them itself (a TTL set
at every save). Requests of one session are serialised across processes by a redis-py
``Lock`` (``rtserver:session:lock:ID``), which expires after
:attr:`RedisSession.lock_expiry` seconds even if its holder died.

``tools.sessions.max_sessions`` holds for every process sharing the database: the ids
and expiry times of the sessions are kept in the sorted set ``rtserver:session:index``
(written with each save, in the same round trip), whose expired entries are trimmed
when a new session asks for room and by the sweeper. As with the other stores, a
session is stored only once a value is written to it.

``redis`` is imported only when this store is used: rtserver runs without the
``redis`` extra (``pip install 'rtserver[redis]'``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..errors import ConfigError, SessionLockTimeout
from .sessions import SessionStore, _short

__all__ = ["RedisSession"]

log = logging.getLogger("rtserver.error.sessions")


class RedisSession(SessionStore):
    """Sessions in Redis (``url``): JSON values, expiry by TTL, a lock across processes."""

    #: Prefix of every key this store writes.
    prefix = "rtserver:session:"
    #: The URL used when ``tools.sessions.url`` is not set.
    default_url = "redis://127.0.0.1:6379/0"
    #: Seconds after which a lock whose holder vanished (a crashed process) frees itself.
    lock_expiry = 300.0
    #: Seconds between two attempts to take a busy lock.
    lock_poll = 0.01
    #: Connections to Redis per process. Requests beyond it wait for a free one
    #: (redis-py's own pool refuses past 100 since 8.0, which a thousand sockets
    #: reading their sessions at once exceeded: 500s and 1011 closes). 64 keeps a
    #: round trip's worth of work queued without flooding Redis's client table.
    max_connections = 64
    #: Seconds a request waits for a free connection before failing.
    pool_timeout = 5.0

    def __init__(self, storage_path: str | None = None, url: str | None = None, **options: Any) -> None:
        try:
            import redis
        except ImportError:
            raise ConfigError(
                "tools.sessions.storage_class = 'redis' needs the redis package: pip install 'rtserver[redis]'"
            ) from None
        super().__init__(storage_path, url or self.default_url, **options)
        self._lock_error = redis.exceptions.LockError
        pool = redis.BlockingConnectionPool.from_url(
            url or self.default_url, max_connections=self.max_connections, timeout=self.pool_timeout
        )
        self.client = redis.Redis(connection_pool=pool)
        self._index = self.prefix + "index"  # not an id (40 hex digits): no clash

    def _key(self, sid: str) -> str:
        return self.prefix + sid

    def load(self, id: str) -> dict[str, Any] | None:
        raw = self.client.get(self._key(id))
        if raw is None:
            return None
        data = self.decode(raw)
        if data is None:
            log.warning("session %s: stored value is not a JSON object; ignored", _short(id))
        return data

    def save(self, id: str, data: dict[str, Any], expires: float) -> None:
        ttl_ms = max(1, int((expires - time.time()) * 1000))
        text = self.encode(data)
        if not self.max_sessions:
            self.client.set(self._key(id), text, px=ttl_ms)
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self._key(id), text, px=ttl_ms)
        pipe.zadd(self._index, {id: expires})
        # The index lives as long as its longest-lived session, no key without a TTL:
        # NX gives a new index its first TTL, GT only ever lengthens it.
        pipe.pexpire(self._index, ttl_ms, nx=True)
        pipe.pexpire(self._index, ttl_ms, gt=True)
        pipe.execute()

    def delete(self, id: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self._key(id))
        pipe.zrem(self._index, id)
        pipe.execute()

    def count(self) -> int | None:
        """The live sessions of the index (its expired entries trimmed first)."""
        if not self.max_sessions:
            return None
        pipe = self.client.pipeline(transaction=False)
        pipe.zremrangebyscore(self._index, "-inf", time.time())
        pipe.zcard(self._index)
        return int(pipe.execute()[1])

    def exists(self, id: str) -> bool:
        return bool(self.client.exists(self._key(id)))

    def expires_at(self, id: str) -> float | None:
        """From the key's TTL (one PTTL round trip); None when the key is gone."""
        ttl_ms = int(self.client.pttl(self._key(id)))
        if ttl_ms == -1:  # no TTL: written by something else; ask again in a minute
            return time.time() + 60.0
        return time.time() + ttl_ms / 1000 if ttl_ms > 0 else None

    def acquire_lock(self, id: str, timeout: float) -> Any:
        # Greenlets of this process queue on a local lock first: only one of them polls
        # Redis at a time.
        deadline = time.monotonic() + timeout
        if not self._locks.acquire(id, timeout):
            raise SessionLockTimeout(f"session {_short(id)} stayed locked for more than {timeout:g} s")
        try:
            lock = self.client.lock(
                self.prefix + "lock:" + id,
                timeout=max(self.lock_expiry, timeout),
                sleep=self.lock_poll,
                blocking_timeout=max(0.0, deadline - time.monotonic()),
                thread_local=False,  # released by whichever greenlet ends the request
            )
            if not lock.acquire():
                raise SessionLockTimeout(
                    f"session {_short(id)} stayed locked (by another process) for more than {timeout:g} s"
                )
        except BaseException:
            self._locks.release(id)
            raise
        return lock

    def release_lock(self, id: str, handle: Any) -> None:
        try:
            if handle is not None:
                handle.release()
        except self._lock_error:
            log.warning(
                "session %s: the Redis lock expired before it was released (held over %gs)",
                _short(id),
                self.lock_expiry,
            )
        finally:
            self._locks.release(id)

    def clean_up(self) -> None:
        """Trim the index: Redis itself drops expired sessions by their TTL."""
        self.client.zremrangebyscore(self._index, "-inf", time.time())

    def close(self) -> None:
        self.client.close()
