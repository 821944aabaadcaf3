"""The request being served in this greenlet (or thread): ``rtserver.request`` etc.

A ``ContextVar`` holds it; under gevent each greenlet has its own context, so two
requests served concurrently never see each other's objects.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .request import Request
    from .response import Response

__all__ = ["Proxy", "current_request", "current_response", "serving"]

serving: contextvars.ContextVar[tuple[Request, Response]] = contextvars.ContextVar("rtserver.serving")


def current_request() -> Request:
    """The request served by this greenlet; RuntimeError outside a request."""
    try:
        return serving.get()[0]
    except LookupError:
        raise RuntimeError("rtserver.request is only available while a request is served") from None


def current_response() -> Response:
    """The response of the request served by this greenlet."""
    try:
        return serving.get()[1]
    except LookupError:
        raise RuntimeError("rtserver.response is only available while a request is served") from None


class Proxy:
    """Forwards attribute access to the object returned by ``getter()``."""

    __slots__ = ("_getter",)

    def __init__(self, getter: Any) -> None:
        object.__setattr__(self, "_getter", getter)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._getter(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._getter(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._getter(), name)

    def __getitem__(self, key: Any) -> Any:
        return self._getter()[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._getter()[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._getter()[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._getter()

    def __iter__(self) -> Any:
        return iter(self._getter())

    def __len__(self) -> int:
        return len(self._getter())

    def __bool__(self) -> bool:
        try:
            return bool(self._getter())
        except RuntimeError:
            return False

    def __repr__(self) -> str:
        try:
            return f"<proxy of {self._getter()!r}>"
        except RuntimeError:
            return "<proxy (nothing served)>"
