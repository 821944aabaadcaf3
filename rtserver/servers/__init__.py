"""HTTP servers: the Server plugin, and the cheroot kinds (imported on first use).

``rtserver.servers.NativeServer(rtserver.server)`` and ``CherootServer`` as in the guide.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CherootServer", "NativeServer"]


def __getattr__(name: str) -> Any:
    # cheroot is imported only by processes that run it.
    if name in ("CherootServer", "NativeServer"):
        from . import cheroot

        return getattr(cheroot, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
