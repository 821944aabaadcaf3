"""Object dispatch: from a URL path to an exposed page handler in the tree.

``/a/b/c`` walks ``root.a.b.c``; ``index`` answers a path that ends at an object;
``default`` takes whatever segments are left as positional arguments; the remaining
segments after a found handler become its positional arguments. Dots in segments map
to underscores (``/feed.xml`` → ``feed_xml``), as CherryPy's dispatcher does.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import HTTPError, NotFound

__all__ = ["Dispatched", "call_handler", "expose", "find_handler", "is_socket_class"]


def expose(func: Any = None, alias: str | Sequence[str] | None = None) -> Any:
    """Expose a page handler (or a class: every public method is then reachable).

    ``@expose``, ``@expose()``, ``@expose('alias')``, ``@expose(['a', 'b'])``: each alias
    answers at its own path, beside the function's own name.
    """

    def _set_aliases(f: Any, aliases: str | Sequence[str] | None, frame_locals: dict[str, Any]) -> Any:
        f.exposed = True
        if aliases is not None:
            names = [aliases] if isinstance(aliases, str) else list(aliases)
            for name in names:
                # As CherryPy does: the alias becomes another attribute of the class
                # being defined, so it dispatches like any method.
                frame_locals[name.replace(".", "_")] = f
        return f

    parents = sys._getframe(1).f_locals
    if isinstance(func, (str, list, tuple)):
        # @expose('alias') or @expose(['a', 'b'])
        alias, func = func, None
    if func is None:
        return lambda f: _set_aliases(f, alias, parents)
    if isinstance(func, type):
        func.exposed = True  # type: ignore[attr-defined]
        return func
    return _set_aliases(func, alias, parents)


class Dispatched:
    """The result of dispatch: the handler, its positional arguments and config trail."""

    __slots__ = ("handler", "is_index", "trail", "vpath")

    def __init__(self, handler: Any, vpath: list[str], trail: list[tuple[str, Any]], is_index: bool) -> None:
        self.handler = handler
        self.vpath = vpath
        self.trail = trail  # [(path, node)] from the root down, for _rt_config lookups
        self.is_index = is_index


def _segments(path: str) -> list[str]:
    return [s for s in path.strip("/").split("/") if s]


def is_socket_class(obj: Any) -> bool:
    """True for a WebSocket handler class attached to the tree (duck-typed on ws4py's API)."""
    return isinstance(obj, type) and hasattr(obj, "received_message") and hasattr(obj, "opened")


def _exposed(obj: Any, parent: Any) -> bool:
    if obj is None:
        return False
    if getattr(obj, "exposed", False):
        return (callable(obj) and not isinstance(obj, type)) or is_socket_class(obj)
    if is_socket_class(obj):
        return True
    # A method of an instance whose class was exposed with @expose on the class.
    owner = getattr(obj, "__self__", None)
    return owner is parent and owner is not None and getattr(type(owner), "exposed", False) is True


def find_handler(root: Any, path: str) -> Dispatched | None:
    """Find the exposed handler for ``path`` in the tree under ``root``, or None."""
    segments = _segments(path)
    fullpath = segments + ["index"]
    # trail entries: (name, object, parent, segments left after it)
    trail: list[tuple[str, Any, Any, int]] = [("", root, None, len(fullpath))]
    node = root
    for i, name in enumerate(fullpath):
        objname = name.replace(".", "_")
        parent = node
        if node is None or objname.startswith("_"):
            node = None
        else:
            node = getattr(node, objname, None)
        trail.append((name, node, parent, len(fullpath) - i - 1))
        if node is None:
            break

    config_trail: list[tuple[str, Any]] = []
    acc = ""
    for name, obj, _parent, _left in trail:
        if name and name != "index":
            acc += "/" + name
        config_trail.append((acc or "/", obj))

    last = len(fullpath)  # the trail index of the appended "index"
    for idx in range(len(trail) - 1, -1, -1):
        _name, candidate, parent, segleft = trail[idx]
        if candidate is None:
            continue
        vpath = fullpath[len(fullpath) - segleft : -1]
        default = getattr(candidate, "default", None)
        if default is not None and _exposed(default, candidate):
            return Dispatched(default, vpath, config_trail[: idx + 1] + [("", default)], path.endswith("/"))
        if _exposed(candidate, parent):
            return Dispatched(candidate, vpath, config_trail[: idx + 1], idx == last)
    return None


def call_handler(
    handler: Any, args: Sequence[Any], kwargs: dict[str, Any], body_params: dict[str, Any], show_params: bool
) -> Any:
    """Call ``handler(*args, **kwargs)``; a mismatch of the call itself becomes 404/400.

    CherryPy's rule: missing parameters, extra path segments and unknown query-string
    parameters are 404 (the resource does not exist); unknown or repeated body
    parameters are 400 (the request is malformed).
    """
    try:
        return handler(*args, **kwargs)
    except TypeError:
        tb = sys.exc_info()[2]
        # Only a TypeError raised by the call itself (no deeper frame) is a mismatch.
        if tb is not None and tb.tb_next is None:
            _raise_mismatch(handler, args, kwargs, body_params, show_params)
        raise


def _raise_mismatch(
    handler: Any, args: Sequence[Any], kwargs: dict[str, Any], body_params: dict[str, Any], show: bool
) -> None:
    try:
        sig = inspect.signature(handler)
    except (TypeError, ValueError):
        return
    positional: list[str] = []
    defaults: set[str] = set()
    varargs = varkw = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            varargs = True
        elif p.kind is p.VAR_KEYWORD:
            varkw = True
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            if p.kind is not p.KEYWORD_ONLY:
                positional.append(p.name)
            if p.default is not p.empty:
                defaults.add(p.name)
    names = positional + [p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]
    usage = dict.fromkeys(names, 0)
    extra_positional = 0
    for i in range(len(args)):
        if i < len(positional):
            usage[positional[i]] += 1
        else:
            extra_positional += 1
    extra_kwargs = set()
    for key in kwargs:
        if key in usage:
            usage[key] += 1
        else:
            extra_kwargs.add(key)
    for name in defaults:
        if usage[name] == 0:
            usage[name] = 1
    missing = [n for n, c in usage.items() if c == 0]
    multiple = [n for n, c in usage.items() if c > 1]

    def msg(text: str, items: Sequence[str] | set[str]) -> str | None:
        return f"{text}: {', '.join(sorted(items))}" if show else None

    if missing:
        raise NotFound() if not show else HTTPError(404, msg("Missing parameters", missing))
    if extra_positional and not varargs:
        raise NotFound()
    qs_params = set(kwargs) - set(body_params)
    if multiple:
        status = 404 if qs_params & set(multiple) else 400
        raise HTTPError(status, msg("Multiple values for parameters", multiple))
    if extra_kwargs and not varkw:
        extra_qs = qs_params & extra_kwargs
        if extra_qs:
            raise HTTPError(404, msg("Unexpected query string parameters", extra_qs))
        extra_body = set(body_params) & extra_kwargs
        if extra_body:
            raise HTTPError(400, msg("Unexpected body parameters", extra_body))
