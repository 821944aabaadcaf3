"""Server-side sessions: the ``tools.sessions`` tool, ``rtserver.session`` and the stores.

Turn the tool on and use the session like a dict::

    class Root:
        @rtserver.expose
        @rtserver.tools.sessions()
        def login(self, user, password):
            check(user, password)
            rtserver.session.regenerate()  # a new id at every privilege change
            rtserver.session["user"] = user
            raise rtserver.HTTPRedirect("/")

Security defaults: the cookie is HttpOnly and SameSite=Lax, Secure on TLS requests;
ids are 160 random bits from :mod:`secrets`; an id the store does not know (unknown,
expired, malformed) is never adopted, the client gets a new one (no fixation); values
are stored as JSON, never pickled. What one request writes is saved at
``before_finalize``, also for an HTTPError or a redirect (as in CherryPy); an
unexpected exception (500) saves nothing.

Nothing is stored for a visitor until a value is written: a new session that a page
only reads (``session.get('user')``) is neither stored nor sent as a cookie, so
cookieless requests (crawlers, floods) cost no memory. A page that sets a value
(a login, a CSRF token for a form) stores the session and sends its cookie; a stored
session is saved again on every request that uses it, which renews its expiry. Each
store holds at most ``tools.sessions.max_sessions`` sessions (100,000): when it is
full, *new* sessions are refused (the request is answered 503 with Retry-After and an
error is logged) while stored sessions keep working, until expired ones are swept.
Refusing rather than evicting means a flood of new sessions never logs anyone out.

Stores: :class:`RamSession` (default, one process), :class:`FileSession`
(``storage_path``; processes on one host) and ``RedisSession``
(:mod:`rtserver.web.session_redis`; processes on many hosts). A custom store subclasses
:class:`SessionStore` and is given as ``tools.sessions.storage_class``.

Locking (``tools.sessions.locking``): ``implicit`` (default) locks the session when a
request first touches it, until it is saved; ``early`` locks it before the handler runs;
``explicit`` never locks unless the handler calls ``acquire_lock()``. A request waiting
longer than ``lock_timeout`` seconds for the lock is answered 503.

WebSocket handlers get their session from :func:`load_session_for_handshake`: not
locked; ``session.save()`` or ``with session.locked(): ...`` write to it. A socket's
session follows the pages: each read reloads it from the store (unless the socket has
unsaved writes or holds the lock), so it never sees data older than at its last read.

The end of a session reaches its sockets: :meth:`Session.delete` (logout,
``tools.sessions.expire()``) and :meth:`Session.regenerate` (for the old id) call
every listener registered with :func:`add_end_listener` with ``(id, reason)``;
the WebSocket layer registers one at engine start, which tells the sockets of that id
in every process (``rtserver.WebSocket.session_ended``). Expiry is found by the store's
:meth:`SessionStore.expires_at`. Once ended, a socket's session reads as empty and
its ``save()`` / ``locked()`` raise :class:`~rtserver.errors.SessionEnded`: a stale
socket never writes a dead session back.
"""

from __future__ import annotations

import contextlib
import http.cookies
import inspect
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, ItemsView, Iterator, MutableMapping, ValuesView
from typing import TYPE_CHECKING, Any

from ..bus.plugins import Monitor
from ..errors import ConfigError, HTTPError, RTServerError, SessionEnded, SessionLockTimeout
from .builtin_tools import tools
from .context import Proxy, current_request, current_response
from .tools import Tool

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no FileSession
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .hooks import HookMap
    from .request import Request
    from .response import Response

__all__ = [
    "FileSession",
    "RamSession",
    "Session",
    "SessionStore",
    "SessionStoreFull",
    "SessionSweeper",
    "SessionTool",
    "add_end_listener",
    "announce_end",
    "current_session",
    "generate_id",
    "load_session_for_handshake",
    "remove_end_listener",
    "session",
    "valid_id",
]

log = logging.getLogger("rtserver.error.sessions")

#: 160 bits of entropy: OWASP asks for at least 64; 160 is also CherryPy's id length.
ID_BYTES = 20
_ID_RE = re.compile(r"[0-9a-f]{%d}\Z" % (2 * ID_BYTES))
_LOCKING = ("implicit", "early", "explicit")
# RFC 6265bis §4.1.2.7: SameSite is Strict, Lax or None (case-insensitive).
_SAMESITE = {"strict": "Strict", "lax": "Lax", "none": "None"}
# Characters that would end or split a Set-Cookie attribute (RFC 6265bis §4.1.1).
_BAD_ATTR = re.compile(r"[;\x00-\x1f\x7f]")


#: The default of ``tools.sessions.max_sessions``: with a few hundred bytes per session
#: (an id, a user name, a CSRF token) 100,000 sessions are tens of MB in the RAM store,
#: while a site that really has more visitors an hour raises it.
MAX_SESSIONS = 100_000


class SessionStoreFull(RTServerError):
    """A new session cannot be stored: the store holds ``max_sessions`` already.

    In a page request this is answered 503 (with Retry-After); a socket handler's
    ``session.save()`` raises it.
    """


# The "lock" of a session no store holds: nobody else can know its id, so none is
# taken (no lock file, no Redis key for every cookieless request).
_UNSTORED = object()


def generate_id() -> str:
    """A new session id: 40 hex digits (160 bits) from :func:`secrets.token_hex`."""
    return secrets.token_hex(ID_BYTES)


def valid_id(value: Any) -> bool:
    """True for a well-formed id (40 lowercase hex digits); anything else is refused
    before it reaches a store, so no id can name a path or an unrelated key."""
    return isinstance(value, str) and _ID_RE.match(value) is not None


def _short(sid: str | None) -> str:
    """Enough of an id to tell sessions apart in a log; ids are secrets."""
    return f"{sid[:8]}..." if sid else "-"


# ---------------------------------------------------------------------------
# The end of a session: a seam for the layers above (the WebSocket layer)

#: Why a session ended, as given to the listeners and to ``WebSocket.session_ended``.
ENDED_LOGOUT = "logout"  # Session.delete(): tools.sessions.expire(), a logout page
ENDED_REGENERATED = "regenerated"  # Session.regenerate(): the old id is dead
ENDED_EXPIRED = "expired"  # the store no longer holds it (timeout, or deleted elsewhere)

_end_listeners: list[Callable[[str, str], None]] = []


def add_end_listener(listener: Callable[[str, str], None]) -> None:
    """Call ``listener(id, reason)`` whenever a session of this process ends
    (``reason``: ``'logout'`` or ``'regenerated'``); registering twice is harmless."""
    if listener not in _end_listeners:
        _end_listeners.append(listener)


def remove_end_listener(listener: Callable[[str, str], None]) -> None:
    """Undo :func:`add_end_listener` (no error when it was not registered)."""
    with contextlib.suppress(ValueError):
        _end_listeners.remove(listener)


def announce_end(sid: str, reason: str) -> None:
    """Tell every listener that session ``sid`` ended; a failing listener is logged."""
    for listener in list(_end_listeners):
        try:
            listener(sid, reason)
        except Exception:
            log.error("Error in a session-ended listener for session %s", _short(sid), exc_info=True)


# ---------------------------------------------------------------------------
# Stores


class _LocalLocks:
    """One lock per session id in this process, created on demand, forgotten when free.

    ``threading.Lock`` is a greenlet lock under gevent's monkey patching, and a thread
    lock otherwise (the cheroot server), so waiting never blocks other requests. A lock
    held longer than ``expiry`` seconds (a request that never ended) is taken over by
    the next waiter whose wait times out, with an error logged: never a deadlock.
    """

    def __init__(self, expiry: float = 300.0) -> None:
        self.expiry = expiry
        self._mutex = threading.Lock()
        # id -> [lock, number of holders and waiters, monotonic time it was taken]
        self._locks: dict[str, list[Any]] = {}

    def acquire(self, sid: str, timeout: float) -> bool:
        with self._mutex:
            entry = self._locks.get(sid)
            if entry is None:
                entry = self._locks[sid] = [threading.Lock(), 0, 0.0]
            entry[1] += 1
        acquired = False
        try:
            lock = entry[0]
            acquired = lock.acquire(timeout=timeout) if timeout > 0 else lock.acquire(blocking=False)
            if not acquired and entry[2] and self.expiry and time.monotonic() - entry[2] > self.expiry:
                log.error("session %s: taking over a lock held for more than %gs", _short(sid), self.expiry)
                acquired = True  # the lock stays taken; it is ours now
            if acquired:
                entry[2] = time.monotonic()
        finally:
            if not acquired:
                self._forget(sid, entry)
        return acquired

    def release(self, sid: str) -> None:
        with self._mutex:
            entry = self._locks.get(sid)
        if entry is None:
            return
        entry[2] = 0.0
        with contextlib.suppress(RuntimeError):  # released already by a taken-over holder
            entry[0].release()
        self._forget(sid, entry)

    def _forget(self, sid: str, entry: list[Any]) -> None:
        with self._mutex:
            entry[1] -= 1
            if entry[1] <= 0 and self._locks.get(sid) is entry:
                del self._locks[sid]

    def __len__(self) -> int:
        return len(self._locks)


class SessionStore:
    """Where sessions live; one instance per configuration, shared by all requests.

    A custom store subclasses this class and overrides:

    * ``load(id)`` -> the data dict of a live session, or None (missing or expired);
    * ``save(id, data, expires)`` -> keep ``data`` until the Unix time ``expires``;
    * ``delete(id)`` -> forget the session (no error when it is missing);
    * ``clean_up()`` -> delete expired sessions (called by the sweeper every
      ``clean_freq`` minutes);

    and, when the defaults do not fit:

    * ``exists(id)`` -> whether a live session has this id (default: ``load``);
    * ``expires_at(id)`` -> the Unix time the session expires, None when it is not
      stored (default: ``exists`` asked again every second; sockets use it to learn
      that their session expired);
    * ``count()`` -> how many sessions are stored (default None: unknown, so
      ``max_sessions`` is not enforced);
    * ``acquire_lock(id, timeout)`` -> a handle; raise :class:`SessionLockTimeout` when
      the lock is not free within ``timeout`` seconds (default: a lock in this process);
    * ``release_lock(id, handle)``;
    * ``close()`` -> release connections and files (engine stop).

    Ids given to a store are always valid (:func:`valid_id`). Data is a dict of
    JSON-serialisable values; :meth:`encode` and :meth:`decode` turn it into text.
    The store is built as ``cls(storage_path=..., url=...)`` from the tool's arguments.
    """

    #: Seconds after which a lock whose request never ended is taken over by a waiter;
    #: a request is cut off by ``response.timeout`` (300 s) before that.
    lock_expiry = 300.0
    #: The most sessions this store holds (``tools.sessions.max_sessions``); 0: no cap.
    #: Set by the tool when it creates the store.
    max_sessions = 0

    def __init__(self, storage_path: str | None = None, url: str | None = None, **options: Any) -> None:
        self.storage_path = storage_path
        self.url = url
        self.options = options
        self._locks = _LocalLocks(self.lock_expiry)
        self._full_logged = 0.0

    @staticmethod
    def encode(data: dict[str, Any]) -> str:
        """``data`` as JSON text; TypeError naming the rule for a value JSON cannot hold."""
        try:
            return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"session values must be JSON-serialisable (str, int, float, bool, None, list, dict): {exc}"
            ) from None

    @staticmethod
    def decode(text: str | bytes) -> dict[str, Any] | None:
        """The dict encoded in ``text``, or None for text that is not a JSON object."""
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def load(self, id: str) -> dict[str, Any] | None:
        """The data of the live session ``id``, or None."""
        raise NotImplementedError

    def save(self, id: str, data: dict[str, Any], expires: float) -> None:
        """Store ``data`` for session ``id`` until the Unix time ``expires``."""
        raise NotImplementedError

    def delete(self, id: str) -> None:
        """Forget session ``id``."""
        raise NotImplementedError

    def exists(self, id: str) -> bool:
        """Whether a live (stored, unexpired) session has this id."""
        return self.load(id) is not None

    def expires_at(self, id: str) -> float | None:
        """The Unix time session ``id`` expires (if not saved again), or None when the
        store does not hold it. The default cannot tell: it answers one second from
        now for a live session, so that a watcher asks again then."""
        return time.time() + 1.0 if self.exists(id) else None

    def count(self) -> int | None:
        """How many sessions the store holds (None: it cannot tell cheaply)."""
        return None

    def has_room(self) -> bool:
        """Whether one more session may be stored (``count() < max_sessions``).

        Asked before a session is stored for the first time; sessions already stored
        are always saved. Logs an error (at most once a minute) when the store is full.
        """
        if not self.max_sessions:
            return True
        n = self.count()
        if n is None or n < self.max_sessions:
            return True
        now = time.monotonic()
        if now - self._full_logged >= 60 or not self._full_logged:
            self._full_logged = now
            log.error(
                "session store %s is full (%d sessions, tools.sessions.max_sessions = %d): new sessions are "
                "refused with 503 until expired ones are swept; stored sessions keep working",
                type(self).__name__,
                n,
                self.max_sessions,
            )
        return False

    def acquire_lock(self, id: str, timeout: float) -> Any:
        """Lock session ``id``; SessionLockTimeout after ``timeout`` seconds."""
        if not self._locks.acquire(id, timeout):
            raise SessionLockTimeout(f"session {_short(id)} stayed locked for more than {timeout:g} s")
        return None

    def release_lock(self, id: str, handle: Any) -> None:
        """Release the lock ``acquire_lock`` returned ``handle`` for."""
        self._locks.release(id)

    def clean_up(self) -> None:
        """Delete the expired sessions."""

    def close(self) -> None:
        """Release what the store holds (connections, files)."""


class RamSession(SessionStore):
    """Sessions in this process's memory (the default); lost when the engine stops.

    Values are kept as JSON text, as the other stores keep them, so a page sees the
    same types whatever the store, and changes are visible only once saved.
    """

    def __init__(self, storage_path: str | None = None, url: str | None = None, **options: Any) -> None:
        super().__init__(storage_path, url, **options)
        self._cache: dict[str, tuple[str, float]] = {}
        self._last_purge = 0.0

    def load(self, id: str) -> dict[str, Any] | None:
        item = self._cache.get(id)
        if item is None or item[1] <= time.time():
            return None
        return self.decode(item[0])

    def save(self, id: str, data: dict[str, Any], expires: float) -> None:
        self._cache[id] = (self.encode(data), expires)

    def delete(self, id: str) -> None:
        self._cache.pop(id, None)

    def exists(self, id: str) -> bool:
        item = self._cache.get(id)
        return item is not None and item[1] > time.time()

    def expires_at(self, id: str) -> float | None:
        item = self._cache.get(id)
        return item[1] if item is not None and item[1] > time.time() else None

    def clean_up(self) -> None:
        now = time.time()
        for sid, (_text, expires) in list(self._cache.items()):
            if expires <= now:
                self._cache.pop(sid, None)

    def count(self) -> int:
        return len(self._cache)

    def has_room(self) -> bool:
        if not self.max_sessions or len(self._cache) < self.max_sessions:
            return True
        # Full: drop the expired sessions now rather than at the next sweep (a pass over
        # memory, at most once a second however many requests find the store full).
        now = time.monotonic()
        if now - self._last_purge >= 1.0:
            self._last_purge = now
            self.clean_up()
        return super().has_room()

    def __len__(self) -> int:
        return len(self._cache)


class FileSession(SessionStore):
    """One JSON file per session in ``storage_path``, for processes sharing a disk.

    The file is ``session-ID`` (only valid ids are ever joined to the directory), written
    to a temporary file and renamed, so a reader never sees half a session. Each session
    has a ``session-ID.lock`` file locked with ``fcntl.flock``: it serialises requests
    of one session across processes; in this process a greenlet lock comes first, so
    greenlets wait without polling.
    """

    PREFIX = "session-"
    LOCK_SUFFIX = ".lock"

    def __init__(self, storage_path: str | None = None, url: str | None = None, **options: Any) -> None:
        if not storage_path:
            raise ConfigError(
                "tools.sessions.storage_path must name a directory when tools.sessions.storage_class is 'file'"
            )
        if fcntl is None:  # pragma: no cover - Windows
            raise ConfigError("tools.sessions.storage_class 'file' needs fcntl (POSIX); use 'ram' or 'redis'")
        storage_path = os.path.abspath(storage_path)
        os.makedirs(storage_path, mode=0o700, exist_ok=True)
        super().__init__(storage_path, url, **options)
        self.directory = storage_path
        # The number of session files, counted once here, kept as this process saves
        # and deletes, and recounted by every sweep (other processes share the
        # directory): a count that may lag by one sweep, never a listing per request.
        self._count = sum(1 for name in os.listdir(storage_path) if self._session_name(name))

    def _session_name(self, name: str) -> bool:
        return name.startswith(self.PREFIX) and valid_id(name[len(self.PREFIX) :])

    def _path(self, sid: str, suffix: str = "") -> str:
        if not valid_id(sid):
            raise ValueError("invalid session id")
        path = os.path.join(self.directory, self.PREFIX + sid + suffix)
        if os.path.dirname(path) != self.directory:  # cannot happen for a valid id; never trust it
            raise ValueError("invalid session id")
        return path

    def _read(self, path: str) -> tuple[dict[str, Any], float] | None:
        try:
            with open(path, encoding="utf-8") as fh:
                doc = self.decode(fh.read())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            log.warning("unreadable session file %s", os.path.basename(path)[:16], exc_info=True)
            return None
        if doc is None or not isinstance(doc.get("data"), dict):
            return None
        expires = doc.get("expires")
        if not isinstance(expires, (int, float)):
            return None
        return doc["data"], float(expires)

    def load(self, id: str) -> dict[str, Any] | None:
        item = self._read(self._path(id))
        if item is None or item[1] <= time.time():
            return None
        return item[0]

    def expires_at(self, id: str) -> float | None:
        item = self._read(self._path(id))
        return item[1] if item is not None and item[1] > time.time() else None

    def save(self, id: str, data: dict[str, Any], expires: float) -> None:
        path = self._path(id)
        text = self.encode({"expires": expires, "data": data})
        new = not os.path.exists(path)
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if new:
            self._count += 1

    def delete(self, id: str) -> None:
        try:
            os.unlink(self._path(id))
        except FileNotFoundError:
            return
        self._count = max(0, self._count - 1)

    def count(self) -> int:
        return self._count

    def acquire_lock(self, id: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        if not self._locks.acquire(id, timeout):
            raise SessionLockTimeout(f"session {_short(id)} stayed locked for more than {timeout:g} s")
        try:
            fd = self._flock(self._path(id, self.LOCK_SUFFIX), deadline)
        except BaseException:
            self._locks.release(id)
            raise
        if fd is None:
            self._locks.release(id)
            raise SessionLockTimeout(
                f"session {_short(id)} stayed locked (by another process) for more than {timeout:g} s"
            )
        return fd

    def _flock(self, path: str, deadline: float) -> int | None:
        """An fd holding an exclusive flock on ``path``, or None at ``deadline``.

        Polls with LOCK_NB: a blocking flock would stop every greenlet of the process.
        """
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            os.close(fd)
                            return None
                        time.sleep(0.01)
                # The sweeper unlinks the lock file of a deleted session while holding it:
                # a lock on an unlinked file protects nothing, so open the new one.
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(path))
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                return fd
            os.close(fd)

    def release_lock(self, id: str, handle: Any) -> None:
        try:
            if handle is not None:
                os.close(handle)  # closing the fd releases the flock
        finally:
            self._locks.release(id)

    def clean_up(self) -> None:
        now = time.time()
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        present = set(names)
        remaining = 0
        for name in names:
            if not name.startswith(self.PREFIX):
                continue
            if name.endswith(self.LOCK_SUFFIX):
                sid = name[len(self.PREFIX) : -len(self.LOCK_SUFFIX)]
                if valid_id(sid) and self.PREFIX + sid not in present:
                    self._remove(sid, data=False)  # the lock of a session never saved
                continue
            sid = name[len(self.PREFIX) :]
            if not valid_id(sid):
                continue
            remaining += 1
            item = self._read(os.path.join(self.directory, name))
            if (item is None or item[1] <= now) and self._remove(sid, data=True):
                remaining -= 1
        self._count = remaining

    def _remove(self, sid: str, data: bool) -> bool:
        """Delete an expired session and its lock file, unless a request holds it;
        True when the session file is gone."""
        if not self._locks.acquire(sid, 0):
            return False
        try:
            lock_path = self._path(sid, self.LOCK_SUFFIX)
            fd = self._flock(lock_path, time.monotonic())
            if fd is None:
                return False
            try:
                item = self._read(self._path(sid)) if data else None
                if data and item is not None and item[1] > time.time():
                    return False  # saved again since we looked
                if data:
                    self.delete(sid)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock_path)
                return True
            finally:
                os.close(fd)
        finally:
            self._locks.release(sid)


def _store_class(storage_class: Any) -> type[SessionStore]:
    if isinstance(storage_class, type) and issubclass(storage_class, SessionStore):
        return storage_class
    if storage_class == "ram":
        return RamSession
    if storage_class == "file":
        return FileSession
    if storage_class == "redis":
        from .session_redis import RedisSession

        return RedisSession
    raise ConfigError(
        f"tools.sessions.storage_class = {storage_class!r}: use 'ram', 'file', 'redis' or a SessionStore subclass"
    )


# ---------------------------------------------------------------------------
# The sweeper and the store registry


class SessionSweeper(Monitor):
    """Engine plugin: ``clean_up()`` on every session store every ``clean_freq`` minutes.

    Stores are created on first use and registered here; at engine stop they are closed
    (connections released) and forgotten, so the RAM store starts empty on restart.
    """

    def __init__(self, bus: Any) -> None:
        super().__init__(bus, self.sweep, frequency=60, name="SessionSweeper")
        self._mutex = threading.Lock()
        self._stores: dict[Any, list[Any]] = {}  # key -> [store, interval (s), next due]

    def store_for(self, key: Any, factory: Callable[[], SessionStore], clean_freq: float) -> SessionStore:
        """The store registered under ``key``, built by ``factory()`` the first time."""
        entry = self._stores.get(key)
        if entry is None:
            with self._mutex:
                entry = self._stores.get(key)
                if entry is None:
                    entry = self._stores[key] = [factory(), 0.0, 0.0]
        interval = float(clean_freq) * 60
        if interval > 0 and (not entry[1] or interval < entry[1]):
            entry[1] = interval
            entry[2] = time.monotonic() + interval
            if interval < self.frequency:
                self.frequency = interval
                Monitor.stop(self)  # restart the loop: it may be in a long wait
        if self._thread is None and self.bus.state not in (self.bus.states.STOPPING, self.bus.states.EXITING):
            Monitor.start(self)
        store: SessionStore = entry[0]
        return store

    def stores(self) -> list[SessionStore]:
        """The registered stores."""
        return [entry[0] for entry in list(self._stores.values())]

    def sweep(self) -> None:
        """Clean every store whose ``clean_freq`` has come round."""
        now = time.monotonic()
        for entry in list(self._stores.values()):
            if entry[1] and entry[2] <= now:
                entry[2] = now + entry[1]
                try:
                    entry[0].clean_up()
                except Exception:
                    log.error("Error cleaning up session store %r", entry[0], exc_info=True)

    def stop(self) -> None:
        """Stop the loop, close and forget the stores."""
        super().stop()
        with self._mutex:
            entries, self._stores = list(self._stores.values()), {}
        for entry in entries:
            try:
                entry[0].close()
            except Exception:
                log.error("Error closing session store %r", entry[0], exc_info=True)

    # After the servers (25) have finished their requests: they may still save.
    stop.priority = 80  # type: ignore[attr-defined]

    def graceful(self) -> None:
        """Restart the loop; the stores stay."""
        Monitor.stop(self)
        self.start()


_sweeper: SessionSweeper | None = None
_sweeper_lock = threading.Lock()


def sweeper() -> SessionSweeper:
    """The sweeper of ``rtserver.engine`` (subscribed on first use)."""
    global _sweeper
    if _sweeper is None:
        with _sweeper_lock:
            if _sweeper is None:
                from ..runtime import engine  # imported late: the web layer needs no engine to load

                plugin = SessionSweeper(engine)
                plugin.subscribe()
                _sweeper = plugin
    return _sweeper


def _get_store(
    storage_class: Any, storage_path: str | None, url: str | None, clean_freq: float, max_sessions: int = MAX_SESSIONS
) -> SessionStore:
    cls = _store_class(storage_class)
    key = (cls, os.path.abspath(storage_path) if storage_path else None, url)

    def factory() -> SessionStore:
        store = cls(storage_path=storage_path, url=url)
        # One store serves every path configured with it: the cap is the one in force
        # where it was first used (set it in [/] or [global] to make that obvious).
        store.max_sessions = max_sessions
        return store

    return sweeper().store_for(key, factory, clean_freq)


# ---------------------------------------------------------------------------
# The session


class Session(MutableMapping[str, Any]):
    """One session: a dict of JSON-serialisable values, loaded on first access.

    ``id``, ``timeout`` (minutes), ``loaded``, ``missing`` (the client's id was unknown),
    ``regenerated``, ``is_locked``, ``stored``; :meth:`regenerate`, :meth:`save`,
    :meth:`delete`, :meth:`acquire_lock`, :meth:`release_lock`, :meth:`locked`.

    ``stored`` tells whether the store holds the session (None: ask the store when it
    matters). A session it does not hold is stored by :meth:`save` only once a value
    has been written to it.
    """

    def __init__(
        self,
        store: SessionStore,
        id: str,
        *,
        timeout: float = 60,
        lock_timeout: float = 30,
        locking: str = "explicit",
        stored: bool | None = None,
    ) -> None:
        if not valid_id(id):
            raise ValueError("invalid session id")
        self.store = store
        self.id = id
        self.timeout = timeout
        self.lock_timeout = lock_timeout
        self.locking = locking
        self.loaded = False
        self.missing = False
        self.regenerated = False
        self._data: dict[str, Any] = {}
        self._handle: Any = None
        self._locked = False
        self._deleted = False
        self._detached = False  # handed over to a socket: the page no longer saves it
        self._http = False  # a lock timeout answers 503
        self._save_at_end = False
        self._lock_failed = False  # the 503 page must not wait for the lock again
        self._stored = stored
        self._announced = False  # the cookie of a not yet stored session went out
        self._on_new_id: Callable[[str], None] | None = None  # sends the cookie
        self._hookmap: Any = None
        # A socket's session (load_session_for_handshake): reloaded at each read, never
        # written back once its id is no longer stored.
        self._live = False
        self._dirty = False  # written since the last load or save (live sessions)
        self._ended: str | None = None  # why the session ended (live sessions)

    @property
    def stored(self) -> bool:
        """Whether the store holds this session (or it takes a stored one's place after
        :meth:`regenerate`); False for a new visitor's session until a value is saved."""
        if self._stored is None:
            self._stored = self.store.exists(self.id)
        return self._stored

    # -- loading and saving --------------------------------------------------

    def load(self) -> None:
        """Read the data from the store (locking first when ``locking`` is implicit)."""
        if self.locking == "implicit":
            self.acquire_lock()
        self._data = self.store.load(self.id) or {}
        self.loaded = True

    def _ensure_loaded(self) -> dict[str, Any]:
        if not self.loaded:
            self.load()
        return self._data

    def _read(self) -> dict[str, Any]:
        """The data for a read. A socket's session is reloaded first (one store read),
        so it sees what pages saved since; not while it has unsaved writes or holds the
        lock (then its own data is the newest). Found gone, it has ended."""
        if self._live and self._ended is None and not self._dirty and not self._locked and self._stored:
            data = self.store.load(self.id)
            if data is None:
                self.mark_ended(ENDED_EXPIRED)
                announce_end(self.id, ENDED_EXPIRED)
            else:
                self._data = data
        return self._ensure_loaded()

    @property
    def ended(self) -> str | None:
        """Why a socket's session ended (``'logout'``, ``'regenerated'``, ``'expired'``),
        or None while it lives."""
        return self._ended

    def mark_ended(self, reason: str) -> None:
        """Record that this (socket's) session ended: it reads as empty from now on, and
        :meth:`save` / :meth:`locked` raise :class:`SessionEnded`."""
        if self._ended is None:
            self._ended = reason
        self._data = {}
        self.loaded = True
        self._dirty = False

    def _check_not_ended(self) -> None:
        if self._ended is not None:
            raise SessionEnded(f"session {_short(self.id)} ended ({self._ended}): it is not saved")

    def save(self) -> None:
        """Write the data to the store, then release the lock.

        A session the store does not hold yet is stored only when it holds a value
        (reading a session never creates one) and the store has room
        (``max_sessions``); when it is full, a page request is answered 503 and a
        socket handler gets :class:`SessionStoreFull`. A stored session is always
        saved, which renews its expiry.

        Without the lock, it is taken for the write only: last writer wins. For a
        read-modify-write from a socket handler, use ``with session.locked():``.
        """
        try:
            self._check_not_ended()
            if not self.loaded or self._deleted or self._lock_failed:
                return
            first = not self.stored
            if first:
                if not self._data:
                    return  # nothing written: nothing to store, no cookie to send
                if not self.store.has_room():
                    self._refuse_full()
            if not self._locked:
                self.acquire_lock()
            if self._live and not first and not self.store.exists(self.id):
                # Deleted or expired since the socket opened: writing the socket's
                # snapshot back would log the old cookie in again.
                self.mark_ended(ENDED_EXPIRED)
                self._check_not_ended()
            self.store.save(self.id, self._data, time.time() + self.timeout * 60)
            self._dirty = False
            if first:
                self._stored = True
                if self._on_new_id is not None and not self._announced:
                    self._on_new_id(self.id)
        finally:
            self.release_lock()

    def _refuse_full(self) -> None:
        if self._http:
            with contextlib.suppress(RuntimeError):
                current_response().headers["Retry-After"] = "60"
            raise HTTPError(503, "The server cannot open a new session now; try again later.")
        raise SessionStoreFull(f"the session store holds max_sessions={self.store.max_sessions} sessions")

    def delete(self) -> None:
        """Delete the session from the store and empty it (logout).

        The end is announced (:func:`add_end_listener`): the sockets opened with this
        session, in every process, are told (``WebSocket.session_ended``).
        """
        was_stored = self.stored
        self.store.delete(self.id)
        self._data = {}
        self.loaded = True
        self._deleted = True
        self._stored = False
        self._dirty = False
        if was_stored:
            announce_end(self.id, ENDED_LOGOUT)

    def regenerate(self) -> None:
        """Give the session a new id, keeping its data; the old id stops working.

        Call it at every change of privilege (login, logout, sudo): an id an attacker
        planted or saw before then is worthless after (session fixation).

        The sockets opened with the old id are told their session ended (reason
        ``'regenerated'``): their cookie is dead, so they could never reconnect as this
        user; the page that called this keeps the data under the new id.
        """
        self._ensure_loaded()
        self._data.pop("_csrf_token", None)  # a new CSRF token with the new identity
        old, was_locked, old_handle = self.id, self._locked, self._handle
        stored = self.stored
        really_locked = was_locked and old_handle is not _UNSTORED
        new = generate_id()
        if really_locked:
            self._handle = self.store.acquire_lock(new, self.lock_timeout)
        self.id = new
        self.regenerated = True
        self._deleted = False
        self._announced = False
        try:
            if stored:
                self.store.delete(old)
        finally:
            if really_locked:
                self.store.release_lock(old, old_handle)
        if stored:
            announce_end(old, ENDED_REGENERATED)
        # A stored session is saved under its new id whatever it holds: send the new
        # cookie now. A new visitor's session gets its cookie when it is first stored.
        if stored and self._on_new_id is not None:
            self._on_new_id(new)

    # -- locking -------------------------------------------------------------

    @property
    def is_locked(self) -> bool:
        """Whether this object holds the session's lock."""
        return self._locked

    def acquire_lock(self) -> None:
        """Take the session's lock (``lock_timeout`` seconds at most).

        Past the timeout: an error is logged and, in a page request, the request is
        answered 503; elsewhere :class:`SessionLockTimeout` is raised.
        """
        if self._locked:
            return
        if not self.stored:
            # No store holds this id and no client has it: nobody else can lock it.
            self._handle, self._locked = _UNSTORED, True
            return
        try:
            self._handle = self.store.acquire_lock(self.id, self.lock_timeout)
        except SessionLockTimeout:
            self._lock_failed = True
            log.error(
                "session %s: lock not acquired within lock_timeout=%gs (a request holds it too long)",
                _short(self.id),
                self.lock_timeout,
            )
            if self._http:
                with contextlib.suppress(RuntimeError):
                    current_response().headers["Retry-After"] = "1"
                raise HTTPError(503, "This session is busy with another request; try again.") from None
            raise
        self._locked = True
        self._lock_failed = False

    def release_lock(self) -> None:
        """Release the session's lock, if this object holds it."""
        if not self._locked:
            return
        handle, self._handle, self._locked = self._handle, None, False
        if handle is _UNSTORED:
            return
        try:
            self.store.release_lock(self.id, handle)
        except Exception:
            log.error("Error releasing the lock of session %s", _short(self.id), exc_info=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[Session]:
        """``with session.locked(): ...``: reload under the lock, save at the end.

        What a socket handler changes inside the block is saved (and seen by the next
        page request) when it ends without an exception; the lock is released either way.
        A socket whose session ended (deleted, expired, regenerated) gets
        :class:`SessionEnded` instead of the block.
        """
        if self._locked:
            yield self
            return
        self._check_not_ended()
        self.acquire_lock()
        try:
            if self.stored:  # a session no store holds has only what is in memory
                data = self.store.load(self.id)
                if data is None and self._live:
                    self.mark_ended(ENDED_EXPIRED)
                    self._check_not_ended()
                self._data = data or {}
            self._dirty = False
            self.loaded = True
            self._deleted = False
            yield self
        except BaseException:
            self.release_lock()
            raise
        self.save()

    # -- the mapping ---------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._read()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"session keys must be str (JSON object keys), not {type(key).__name__}")
        self._ensure_loaded()[key] = value
        self._deleted = False
        self._dirty = True

    def __delitem__(self, key: str) -> None:
        del self._ensure_loaded()[key]
        self._dirty = True

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._read()))

    def __len__(self) -> int:
        return len(self._read())

    def __contains__(self, key: object) -> bool:
        return key in self._read()

    def items(self) -> ItemsView[str, Any]:
        """The items, read once (one reload for a socket's session)."""
        return dict(self._read()).items()

    def values(self) -> ValuesView[Any]:
        """The values, read once (one reload for a socket's session)."""
        return dict(self._read()).values()

    def __repr__(self) -> str:
        return f"<Session {_short(self.id)} loaded={self.loaded} locked={self._locked}>"


# ---------------------------------------------------------------------------
# The tool


def sessions(
    timeout: float = 60,
    name: str = "session_id",
    path: str = "/",
    domain: str | None = None,
    secure: bool = False,
    httponly: bool = True,
    persistent: bool = True,
    clean_freq: float = 5,
    locking: str = "implicit",
    storage_class: str | type[SessionStore] = "ram",
    storage_path: str | None = None,
    url: str | None = None,
    samesite: str = "Lax",
    lock_timeout: float = 30,
    max_sessions: int = MAX_SESSIONS,
    debug: bool = False,
) -> None:
    """Server-side sessions: ``rtserver.session`` for this request, cookie ``name``.

    A session is stored, and its cookie sent, once a value is written to it.

    Args:
        timeout: minutes a session lives after its last save.
        name: the name of the session cookie.
        path: the cookie's Path attribute.
        domain: the cookie's Domain attribute (None: this host only, the safest).
        secure: always send the cookie with Secure (it is added on TLS requests anyway).
        httponly: send the cookie with HttpOnly (scripts cannot read it).
        persistent: give the cookie Max-Age/Expires of ``timeout`` (False: a browser-session cookie).
        clean_freq: minutes between two sweeps of expired sessions (0: never sweep).
        locking: 'implicit' (lock on first access), 'early' (lock before the handler) or 'explicit'.
        storage_class: 'ram', 'file', 'redis' or a SessionStore subclass.
        storage_path: the directory of the 'file' store.
        url: the Redis URL of the 'redis' store (default redis://127.0.0.1:6379/0).
        samesite: the cookie's SameSite attribute, 'Lax', 'Strict' or 'None' (which needs secure).
        lock_timeout: seconds a request waits for the session's lock before a 503.
        max_sessions: most sessions the store holds (0: no cap); when full, new sessions are refused
            with 503 (and an error logged) while stored ones keep working, so a flood never logs anyone
            out. The cap where the store is first used applies.
        debug: log what the tool decides about ids.
    """
    request = current_request()
    response = current_response()
    store = _get_store(storage_class, storage_path, url, clean_freq, max_sessions)
    cookie = _CookieSettings(name, path, domain, secure, httponly, persistent, timeout, samesite)
    sess = _start_session(request, response, store, cookie, timeout, lock_timeout, locking, debug)
    if locking == "early":
        sess.acquire_lock()
        sess.load()


class _CookieSettings:
    __slots__ = ("domain", "httponly", "name", "path", "persistent", "samesite", "secure", "timeout")

    def __init__(
        self,
        name: str,
        path: str,
        domain: str | None,
        secure: bool,
        httponly: bool,
        persistent: bool,
        timeout: float,
        samesite: str,
    ) -> None:
        self.name = name
        self.path = path
        self.domain = domain
        self.secure = secure
        self.httponly = httponly
        self.persistent = persistent
        self.timeout = timeout
        self.samesite = _SAMESITE.get(str(samesite).lower(), "Lax")

    def set(self, request: Request, response: Response, sid: str, expire: bool = False) -> None:
        """Put the Set-Cookie for ``sid`` on ``response`` (RFC 6265bis §4.1)."""
        jar = response.cookie
        jar[self.name] = sid
        morsel = jar[self.name]
        morsel["path"] = self.path  # §4.1.2.4
        if self.domain:
            morsel["domain"] = self.domain  # §4.1.2.3: also sent to subdomains
        if expire:
            # §4.1.2.2: Max-Age=0 makes the browser drop the cookie at once.
            morsel["max-age"] = 0
            morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
        elif self.persistent:
            seconds = max(1, math.ceil(self.timeout * 60))
            morsel["max-age"] = seconds  # §4.1.2.2: wins over Expires where both are known
            morsel["expires"] = seconds  # for old clients that only know Expires
        if self.httponly:
            morsel["httponly"] = True  # §4.1.2.6: not readable by scripts
        if self.secure or request.scheme == "https":
            morsel["secure"] = True  # §4.1.2.5: never sent over plain HTTP
        morsel["samesite"] = self.samesite  # §4.1.2.7: Lax keeps it off cross-site POSTs


def _start_session(
    request: Request,
    response: Response | None,
    store: SessionStore,
    cookie: _CookieSettings,
    timeout: float,
    lock_timeout: float,
    locking: str,
    debug: bool,
) -> Session:
    """The session of ``request``: the client's id only when the store knows it."""
    existing = getattr(request, "session", None)
    if isinstance(existing, Session) and not existing._detached:
        # An internal redirect runs the tool again with a fresh hook map: keep the
        # session (and the lock it may hold), hook it to the new map.
        _attach_end_hooks(request, existing)
        return existing
    morsel = request.cookie.get(cookie.name)
    sent = morsel.value if morsel is not None else None
    sid: str | None = None
    if sent is not None:
        if not valid_id(sent):
            if debug:
                log.debug("malformed session id in cookie %r: a new session", cookie.name)
        elif store.exists(sent):
            sid = sent
        elif debug:
            log.debug("unknown or expired session %s: a new session", _short(sent))
    sess = Session(
        store, sid or generate_id(), timeout=timeout, lock_timeout=lock_timeout, locking=locking, stored=sid is not None
    )
    sess.missing = sent is not None and sid is None
    sess._http = True
    if response is not None:

        def on_new_id(new: str) -> None:
            cookie.set(request, response, new)

        sess._on_new_id = on_new_id
        if sid is not None:
            # A stored session: renew the cookie's Max-Age with the session's expiry.
            # A new one gets its cookie when it is first stored (Session.save).
            cookie.set(request, response, sid)
    request.session = sess  # type: ignore[attr-defined]
    request._session_cookie = cookie  # type: ignore[attr-defined]
    _attach_end_hooks(request, sess)
    return sess


def _attach_end_hooks(request: Request, sess: Session) -> None:
    """Release the lock on every way out of this request (the hook map is its own copy)."""
    hooks: HookMap | None = request.hooks
    if hooks is None or sess._hookmap is hooks:
        return
    sess._hookmap = hooks
    hooks.attach("before_error_response", _release_session, priority=10, session=sess)
    hooks.attach("on_end_request", _end_session, failsafe=True, priority=10, session=sess)


def _save_session() -> None:
    """before_finalize: save the session (and release its lock) so the data is stored
    before the response goes out; a streamed response saves at the end of the stream."""
    sess = getattr(current_request(), "session", None)
    if not isinstance(sess, Session) or sess._detached:
        return
    if current_response().stream:
        sess._save_at_end = True
        if not sess.stored and sess._data and sess._on_new_id is not None:
            # Stored at the end of the stream: its cookie must go out with the headers.
            sess._on_new_id(sess.id)
            sess._announced = True
        return
    sess.save()


def _release_session(session: Session) -> None:
    """before_error_response (an unexpected exception): save nothing, free the lock."""
    session._save_at_end = False
    session.release_lock()


def _end_session(session: Session) -> None:
    """on_end_request (failsafe): save a streamed response's session; release the lock."""
    if session._save_at_end and not session._detached:
        session._save_at_end = False
        if session.stored or session._announced:
            session.save()
        elif session._data:
            # Written while the response streamed, after its headers (and so the
            # cookie) went out: nobody could find it again, so it is not stored.
            log.warning("a new session written during a streamed response is not stored: its cookie was not sent")
    session.release_lock()


def _defaults() -> dict[str, Any]:
    sig = inspect.signature(sessions)
    return {p.name: p.default for p in sig.parameters.values()}


def _check(args: dict[str, Any], where: str) -> None:
    """ConfigError naming the key for a wrong value of a tools.sessions argument."""
    values = _defaults()
    values.update({k: v for k, v in args.items() if k not in ("on", "priority")})

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{where}tools.sessions.{key} = {values[key]!r}: {message}")

    for key in ("timeout", "lock_timeout"):
        if isinstance(values[key], bool) or not isinstance(values[key], (int, float)) or values[key] <= 0:
            fail(key, "must be a positive number")
    if (
        isinstance(values["clean_freq"], bool)
        or not isinstance(values["clean_freq"], (int, float))
        or values["clean_freq"] < 0
    ):
        fail("clean_freq", "must be a number of minutes (0: never sweep)")
    if values["locking"] not in _LOCKING:
        fail("locking", f"must be one of {', '.join(map(repr, _LOCKING))}")
    samesite = values["samesite"]
    if not isinstance(samesite, str) or samesite.lower() not in _SAMESITE:
        fail("samesite", "must be 'Lax', 'Strict' or 'None'")
    max_sessions = values["max_sessions"]
    if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 0:
        fail("max_sessions", "must be a whole number of sessions (0: no cap)")
    if samesite.lower() == "none" and values["secure"] is not True:
        # RFC 6265bis storage model: browsers ignore a SameSite=None cookie without Secure.
        fail("samesite", "SameSite=None requires tools.sessions.secure = True")
    name = values["name"]
    try:
        if not isinstance(name, str) or not name:
            raise http.cookies.CookieError
        http.cookies.SimpleCookie()[name] = "x"
    except http.cookies.CookieError:
        fail("name", "must be a valid cookie name (an RFC 6265bis token)")
    for key in ("path", "domain"):
        value = values[key]
        if value is not None and (not isinstance(value, str) or _BAD_ATTR.search(value)):
            fail(key, "must be a string without ';' or control characters")
    if not isinstance(values["path"], str) or not values["path"].startswith("/"):
        fail("path", "must start with '/'")
    try:
        cls = _store_class(values["storage_class"])
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    if cls is FileSession and not values["storage_path"]:
        fail("storage_class", "the 'file' store needs tools.sessions.storage_path")


class SessionTool(Tool):
    """``tools.sessions``: the session tool, with :meth:`regenerate` and :meth:`expire`."""

    def __init__(self) -> None:
        super().__init__("before_handler", sessions, priority=50)

    def check_args(self, args: dict[str, Any], where: str = "") -> None:
        """Unknown arguments and wrong values raise ConfigError naming the key."""
        super().check_args(args, where)
        _check(args, where)

    def setup(self, hooks: Any, conf: dict[str, Any]) -> None:
        super().setup(hooks, conf)
        hooks.attach("before_finalize", _save_session, priority=90)

    def regenerate(self) -> None:
        """Give the current session a new id, keeping its data (call at login)."""
        current_session().regenerate()

    def expire(self) -> None:
        """Delete the current session and tell the browser to drop its cookie (logout)."""
        request = current_request()
        current_session().delete()
        cookie = getattr(request, "_session_cookie", None)
        if isinstance(cookie, _CookieSettings):
            cookie.set(request, current_response(), current_session().id, expire=True)


def current_session() -> Session:
    """The session of the request served by this greenlet.

    RuntimeError outside a request or when ``tools.sessions`` is off for its path.
    """
    sess = getattr(current_request(), "session", None)
    if not isinstance(sess, Session):
        raise RuntimeError("rtserver.session needs tools.sessions.on = True for this path")
    return sess


#: The current request's session (a proxy): ``rtserver.session['user']``.
session: Any = Proxy(current_session)


def load_session_for_handshake(request: Request) -> Session:
    """The session of a WebSocket handshake ``request``, for the life of the socket.

    Loaded now and not locked (a socket lives long; a lock held that long would stall
    every page of the user). When the session tool already ran for this request, its
    session is saved and handed over. Write with ``session.save()`` (last writer wins)
    or ``with session.locked(): ...`` (reload, change, save under the lock); either way
    the next page request of the user sees the change. Reads reload what pages saved
    since; once the session is deleted, expired or regenerated, ``save()`` and
    ``locked()`` raise :class:`SessionEnded`. For a visitor without a stored
    session the 101 response carries the new session's cookie (nothing is stored until
    the socket writes), so that what the socket writes is the user's session too.
    """
    sess = getattr(request, "session", None)
    if not isinstance(sess, Session):
        args = _defaults()
        args.update({k: v for k, v in (request.toolmaps.get("sessions") or {}).items() if k in args})
        try:
            response: Response | None = current_response()
        except RuntimeError:
            response = None
        store = _get_store(
            args["storage_class"], args["storage_path"], args["url"], args["clean_freq"], args["max_sessions"]
        )
        cookie = _CookieSettings(
            args["name"],
            args["path"],
            args["domain"],
            args["secure"],
            args["httponly"],
            args["persistent"],
            args["timeout"],
            args["samesite"],
        )
        sess = _start_session(
            request, response, store, cookie, args["timeout"], args["lock_timeout"], "explicit", args["debug"]
        )
    if sess.is_locked or sess.loaded:
        sess.save()
    sess._detached = True
    stored = sess.stored
    if not stored and sess._on_new_id is not None and not sess._announced:
        sess._on_new_id(sess.id)
        sess._announced = True
    socket_session = Session(
        sess.store, sess.id, timeout=sess.timeout, lock_timeout=sess.lock_timeout, locking="explicit", stored=stored
    )
    socket_session._data = (sess.store.load(sess.id) or {}) if stored else {}
    socket_session.loaded = True
    socket_session._live = True
    socket_session.missing = sess.missing
    return socket_session


tools.sessions = SessionTool()
