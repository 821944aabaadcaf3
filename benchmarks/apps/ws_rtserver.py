"""rtserver WebSocket endpoints for benchmarks/ws.py and hub.py: ``python -m benchmarks.apps.ws_rtserver PORT [BROKER]``.

* ``/echo``: ws4py's own ``EchoWebSocket``;
* ``/fan``: joins the hub channel ``fan``; a message it receives is published to
  ``fan`` with ``hub.publish`` (every subscriber, in every process sharing the broker,
  gets ``{"channel": "fan", "id": n, "data": text}``).

Served through the page tree (``class Root: echo = EchoWebSocket``) when the
``websocket`` tool exists, else grafted with ``rtserver.websocket.wsgi.websocket_app``
(``RTSERVER_BENCH_WS_MOUNT=graft`` forces that). Message and send-queue limits are
raised to 32/64 MiB so the 16 MiB echo fits, and ``server.max_connections`` to 30,000
for the idle-socket memory test. ``BROKER`` is ``hub.broker`` (default ``memory``).
``RTSERVER_BENCH_PROFILE=PREFIX`` writes a cProfile to ``PREFIX.PID`` on exit.
"""

from __future__ import annotations

import os
import sys

from gevent import monkey

monkey.patch_all()

import resource  # noqa: E402

from ws4py.websocket import EchoWebSocket, WebSocket  # noqa: E402

import rtserver  # noqa: E402
import rtserver.servers.options  # noqa: E402  (declares server.max_connections)
from rtserver.websocket.hub import hub  # noqa: E402

WS_OPTIONS = {"max_message_size": 32 * 2**20, "send_queue_size": 64 * 2**20}


class FanSocket(WebSocket):
    """Subscribes to channel ``fan``; publishes what it receives there."""

    def opened(self) -> None:
        hub.subscribe(self, "fan")

    def received_message(self, message) -> None:  # type: ignore[no-untyped-def]
        hub.publish("fan", message.data.decode("utf-8") if message.is_text else bytes(message.data))

    def closed(self, code, reason=None) -> None:  # type: ignore[no-untyped-def]
        hub.socket_closed(self)


class Root:
    @rtserver.expose
    def index(self) -> str:
        return "ok"

    echo = EchoWebSocket
    fan = FanSocket


def mount() -> str:
    """Mount the endpoints; return how ('tree' or 'graft')."""
    mode = os.environ.get("RTSERVER_BENCH_WS_MOUNT", "auto")
    if mode == "auto":
        mode = "tree" if "websocket" in rtserver.tools.names() else "graft"
    if mode == "tree":
        ws_conf = {f"tools.websocket.{k}": v for k, v in WS_OPTIONS.items()}
        rtserver.tree.mount(Root(), "", {"/echo": dict(ws_conf), "/fan": dict(ws_conf)})
    else:
        from rtserver.websocket.options import WebSocketOptions
        from rtserver.websocket.wsgi import websocket_app

        class Index:
            index = Root.index

        opts = WebSocketOptions(**WS_OPTIONS)
        rtserver.tree.mount(Index(), "")
        rtserver.tree.graft(websocket_app(EchoWebSocket, opts), "/echo")
        rtserver.tree.graft(websocket_app(FanSocket, opts), "/fan")
    return mode


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = int(sys.argv[1])
    broker = sys.argv[2] if len(sys.argv) > 2 else "memory"
    rtserver.config.update(
        {
            "log.screen": False,
            "server.socket_host": "127.0.0.1",
            "server.socket_port": port,
            "server.max_connections": 30000,
            "server.reuse_port": True,
            "hub.broker": broker,
        }
    )
    mode = mount()
    print(f"mounted by {mode}", flush=True)
    profile = os.environ.get("RTSERVER_BENCH_PROFILE")
    if not profile:
        rtserver.quickstart()
        return
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    try:
        rtserver.quickstart()
    finally:
        prof.disable()
        prof.dump_stats(f"{profile}.{os.getpid()}")


if __name__ == "__main__":
    main()
