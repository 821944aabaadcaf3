"""Hook points: named moments of the request pipeline where tools run.

In CherryPy's order: ``on_start_resource``, ``before_request_body``, ``before_handler``,
``before_finalize``, ``on_end_resource``, ``on_end_request``, ``before_error_response``,
``after_error_response``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["HOOK_POINTS", "Hook", "HookMap"]

HOOK_POINTS = (
    "on_start_resource",
    "before_request_body",
    "before_handler",
    "before_finalize",
    "on_end_resource",
    "on_end_request",
    "before_error_response",
    "after_error_response",
)


class Hook:
    """A callback attached to a hook point with a priority (lower runs first)."""

    __slots__ = ("callback", "failsafe", "kwargs", "priority")

    def __init__(
        self, callback: Callable[..., Any], priority: int | None = None, failsafe: bool = False, **kwargs: Any
    ) -> None:
        self.callback = callback
        if priority is None:
            priority = getattr(callback, "priority", 50)
        self.priority = int(priority)
        self.failsafe = failsafe or getattr(callback, "failsafe", False)
        self.kwargs = kwargs

    def __call__(self) -> Any:
        return self.callback(**self.kwargs)

    def __repr__(self) -> str:
        name = getattr(self.callback, "__name__", repr(self.callback))
        return f"<Hook {name} priority={self.priority}>"


class HookMap(dict[str, list[Hook]]):
    """``{point: [Hook, ...]}`` kept sorted by priority."""

    # A copy shares its lists with the original until its first attach (copy on
    # write): every request gets a copy of its path's cached map, few attach to it.
    _owned = True

    def __init__(self) -> None:
        super().__init__((point, []) for point in HOOK_POINTS)

    def attach(
        self,
        point: str,
        callback: Callable[..., Any],
        failsafe: bool = False,
        priority: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Attach ``callback(**kwargs)`` to ``point``."""
        if point not in self:
            raise ValueError(f"unknown hook point {point!r} (known: {', '.join(HOOK_POINTS)})")
        if not self._owned:
            for name, shared in self.items():
                self[name] = list(shared)
            self._owned = True
        hooks = self[point]
        hooks.append(Hook(callback, priority, failsafe, **kwargs))
        hooks.sort(key=lambda h: h.priority)

    def run(self, point: str) -> None:
        """Run the hooks of ``point``; failsafe hooks run even after one failed."""
        hooks = self[point]
        if not hooks:
            return
        exc: BaseException | None = None
        for hook in hooks:
            if exc is None or hook.failsafe:
                try:
                    hook()
                except Exception as e:
                    if exc is None:
                        exc = e
        if exc is not None:
            raise exc

    def copy(self) -> HookMap:
        """A copy whose lists can be changed without touching this one."""
        new = HookMap.__new__(HookMap)
        dict.update(new, self)
        new._owned = False
        return new
