"""Fake subscribers and hub factories for the hub tests (no WebSocket runtime needed)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import gevent
from gevent.event import Event

from rtserver.bus.bus import Bus
from rtserver.config import Config
from rtserver.websocket.hub import Hub


class FakeSocket:
    """Records what it is sent; ``send`` raises once closed (as ws4py's does)."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.sent: list[tuple[Any, bool]] = []
        self.closed: tuple[int, str] | None = None

    def __repr__(self) -> str:
        return f"<FakeSocket {self.name}>"

    def send(self, payload: Any, binary: bool = False) -> Any:
        if self.closed is not None:
            raise OSError("socket is closed")
        self.sent.append((payload, binary))

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    @property
    def texts(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p, binary in self.sent if not binary]

    def ids(self, channel: str) -> list[int]:
        return [m["id"] for m in self.texts if m.get("channel") == channel and "id" in m]

    def data(self, channel: str) -> list[Any]:
        return [m["data"] for m in self.texts if m.get("channel") == channel and "data" in m]


class SlowSocket(FakeSocket):
    """A peer that stops reading: ``send`` blocks until ``release()``."""

    def __init__(self, name: str = "slow") -> None:
        super().__init__(name)
        self.gate = Event()

    def send(self, payload: Any, binary: bool = False) -> Any:
        self.gate.wait()
        super().send(payload, binary)

    def release(self) -> None:
        self.gate.set()


class PreparedSocket(FakeSocket):
    """Looks like a socket of rtserver's runtime: has ``send_prepared(frame)``."""

    def __init__(self, name: str = "prepared") -> None:
        super().__init__(name)
        self.frames: list[bytes] = []
        self.accept = True

    def send(self, payload: Any, binary: bool = False) -> Any:
        if not self.accept:
            return False
        self.sent.append((payload, binary))
        return True

    def send_prepared(self, frame: bytes) -> bool:
        if not self.accept:
            return False
        self.frames.append(frame)
        return True

    @property
    def texts(self) -> list[dict[str, Any]]:
        return [json.loads(_unframe(f)) for f in self.frames if f[0] & 0x0F == 1] + super().texts


def _unframe(frame: bytes) -> bytes:
    length = frame[1] & 0x7F
    offset = 2
    if length == 126:
        length, offset = int.from_bytes(frame[2:4], "big"), 4
    elif length == 127:
        length, offset = int.from_bytes(frame[2:10], "big"), 10
    return frame[offset : offset + length]


def unframe(frame: bytes) -> tuple[int, bytes]:
    """``(opcode, payload)`` of an unmasked server frame."""
    return frame[0] & 0x0F, _unframe(frame)


#: Fake sockets have no session: these tests are about delivery, not the channel
#: policy (tests/hub/test_policy.py), so every channel is open to them.
OPEN = {"*": {"join": "anyone", "publish": True}}


@contextlib.contextmanager
def running_hub(**settings: Any) -> Iterator[Hub]:
    """A started hub with its own bus and config (``hub_history_size=5`` style keys;
    ``namespaces`` defaults to :data:`OPEN`)."""
    config = Config()
    settings.setdefault("namespaces", OPEN)
    config.update({"hub." + k: v for k, v in settings.items()})
    hub = Hub(Bus(), config=config)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


def settle(predicate: Any, timeout: float = 5.0) -> bool:
    """Yield to other greenlets until ``predicate()`` is true (or the timeout)."""
    with gevent.Timeout(timeout, False):
        while not predicate():
            gevent.sleep(0.001)
        return True
    return bool(predicate())
