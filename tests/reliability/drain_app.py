"""The application of test_drain: ``python -m rtserver run tests.reliability.drain_app:root``.

``/`` answers at once, ``/slow`` after one second, ``/echo`` is ws4py's echo socket.
"""

from __future__ import annotations

import time

from ws4py.websocket import EchoWebSocket

import rtserver


class Root:
    """Pages and an echo socket."""

    echo = EchoWebSocket

    @rtserver.expose
    def index(self) -> str:
        return "ok"

    @rtserver.expose
    def slow(self) -> str:
        time.sleep(1.0)  # monkey-patched by the CLI: yields to the other greenlets
        return "done"


root = Root()
