"""Making the process cooperative: gevent's monkey patching, done once, when rtserver serves.

rtserver serves every connection in a greenlet. That only works when the blocking calls
a handler makes (``time.sleep``, a socket, ``urllib``, redis-py) yield to gevent's hub
instead of stopping the process, which is what ``gevent.monkey.patch_all()`` arranges.

When: the moment the process commits to being an rtserver server, that is when
``engine.start()`` (and so ``quickstart()``) runs with one of rtserver's servers
subscribed, and first thing in ``rtserver run`` and its workers. Not at ``import
rtserver``: a WSGI host of another kind (cheroot's threaded server, ``wsgiref``, mod_wsgi)
serving :class:`rtserver.Application` must keep the threads and sockets it expects.

Patching late is sound for everything that looks its blocking calls up through the
module (``time.sleep``, ``socket.create_connection``, ``threading.Lock``), which is how
the standard library and the common client libraries call them. Two things patching
cannot reach are refused with one line saying what to do instead of a silent hang:
threads that are already running, and sockets already opened (they would block every
request). Names copied out of the patched modules before (``from time import sleep``
in the app's own modules, urllib3's ``from ssl import SSLContext``) are pointed at the
patched objects in every module outside the standard library, gevent and rtserver, so
that such code cooperates too.

A process that patched itself already is left as it is, with no warning.
"""

from __future__ import annotations

import gc
import socket
import sys
import sysconfig
import threading
import warnings
from types import ModuleType
from typing import Any

from .errors import StartupError

__all__ = ["NotCooperative", "ensure_cooperative", "is_cooperative"]

# The modules whose patched names are re-pointed in other modules' globals. Only
# the callables and classes a handler would block in; constants are left alone.
_REBIND_MODULES = ("time", "socket", "ssl", "threading", "select", "selectors", "subprocess", "queue")


class NotCooperative(StartupError):
    """The process can no longer be made cooperative; the message says what to do."""


def is_cooperative() -> bool:
    """Whether sockets and threads of this process are gevent's (patched)."""
    if "gevent.monkey" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("socket") and monkey.is_module_patched("threading"))


_FIX = "put `from gevent import monkey; monkey.patch_all()` as the first line of the script"


def ensure_cooperative() -> None:
    """Patch the process for gevent unless it is patched already.

    Raises :class:`NotCooperative` when threads are running or plain sockets are open:
    those would stay blocking, so the server would hang on them.
    """
    if is_cooperative():
        return
    if threading.current_thread() is not threading.main_thread():
        raise NotCooperative(f"rtserver must start from the main thread, or {_FIX}")
    running = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if running:
        names = ", ".join(running[:3]) + (" ..." if len(running) > 3 else "")
        raise NotCooperative(
            f"{len(running)} thread(s) started before rtserver ({names}) would block the gevent server; "
            f"start them after engine.start(), or {_FIX}"
        )
    opened = _open_plain_sockets()
    if opened:
        raise NotCooperative(
            f"{len(opened)} socket(s) opened before rtserver started ({opened[0]}) would block every request; "
            f"open them after engine.start() (or lazily), or {_FIX}"
        )
    from gevent import monkey

    originals = {name: dict(vars(sys.modules[name])) for name in _REBIND_MODULES if name in sys.modules}
    plain_thread = threading.Thread
    # gevent warns when ssl was imported before patching. Every ssl object made from
    # now on comes from the patched module, and names copied earlier are re-pointed
    # below, so the warning's concern is handled here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", monkey.MonkeyPatchWarning)
        monkey.patch_all()
    _rebind_copied_names(originals)
    _fix_thread_subclasses(plain_thread)


def _open_plain_sockets() -> list[str]:
    """Describe open sockets of the unpatched class (made before patching)."""
    found = []
    plain = socket.socket
    for obj in gc.get_objects():
        if type(obj) is plain:
            try:
                if obj.fileno() < 0:
                    continue
                found.append(_describe(obj))
            except OSError:
                continue
    return found


def _describe(sock: socket.socket) -> str:
    try:
        peer: Any = sock.getpeername()
    except OSError:
        peer = None
    try:
        local: Any = sock.getsockname()
    except OSError:
        local = None
    if peer:
        return f"fd {sock.fileno()} connected to {peer}"
    return f"fd {sock.fileno()} on {local}"


def _rebind_copied_names(originals: dict[str, dict[str, Any]]) -> None:
    """Point names copied from a patched module (``from time import sleep``) at the
    patched objects, in modules outside the standard library, gevent and rtserver."""
    replaced: dict[int, Any] = {}
    for name, before in originals.items():
        after = vars(sys.modules[name])
        for attr, old in before.items():
            new = after.get(attr)
            if new is not old and (callable(old) or isinstance(old, type)):
                replaced[id(old)] = (old, new)
    if not replaced:
        return
    for module in list(sys.modules.values()):
        if not isinstance(module, ModuleType) or not _is_application_module(module):
            continue
        namespace = vars(module)
        for attr, value in list(namespace.items()):
            hit = replaced.get(id(value))
            if hit is not None and hit[0] is value:
                namespace[attr] = hit[1]


def _fix_thread_subclasses(plain: type[threading.Thread]) -> None:
    """Let ``join()`` return for thread classes defined before the patch.

    gevent's own ``Thread`` releases a thread's "state lock" when its greenlet ends
    (no OS thread ends, so the interpreter never does). A class that subclassed the
    unpatched ``threading.Thread`` before patching (cheroot's worker threads, when
    cheroot was imported first) lacks that, and joining it would wait forever.
    Python 3.13 changed the mechanism, and gevent patches it there differently.
    """
    if not hasattr(plain, "_set_tstate_lock"):
        return
    from gevent import getcurrent
    from gevent.threading import Thread as GeventThread

    def set_tstate_lock(self: Any, _inherited: Any = plain._set_tstate_lock) -> None:
        _inherited(self)
        lock = self._tstate_lock

        def finished(_greenlet: Any) -> None:
            if lock is not None and lock.locked():
                lock.release()
                self._stop()

        current = getcurrent()
        if hasattr(current, "rawlink"):  # a greenlet started as a patched thread
            current.rawlink(finished)

    pending = list(plain.__subclasses__())
    while pending:
        cls = pending.pop()
        if issubclass(cls, GeventThread):
            continue
        pending.extend(cls.__subclasses__())
        if "_set_tstate_lock" not in vars(cls):
            cls._set_tstate_lock = set_tstate_lock  # type: ignore[attr-defined]


_STDLIB = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])


def _is_application_module(module: ModuleType) -> bool:
    name = module.__name__
    top = name.partition(".")[0]
    if top in ("gevent", "rtserver", "greenlet", "zope") or top in sys.builtin_module_names:
        return False
    if top in sys.stdlib_module_names:
        return False
    path = getattr(module, "__file__", None) or ""
    return not (path and path.startswith(_STDLIB) and "site-packages" not in path)
