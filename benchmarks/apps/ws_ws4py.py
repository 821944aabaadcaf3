"""Plain ws4py 0.6 on gevent for benchmarks/ws.py: ``python -m benchmarks.apps.ws_ws4py PORT``.

``ws4py.server.geventserver.WSGIServer`` + ``WebSocketWSGIApplication``: ``/echo`` serves
``EchoWebSocket``; ``/fan`` sockets broadcast what they receive to every socket of the
server's pool (ws4py's way: walk ``server.pool`` and ``send`` to each, blocking).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import resource  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from ws4py.server.geventserver import WSGIServer  # noqa: E402
from ws4py.server.wsgiutils import WebSocketWSGIApplication  # noqa: E402
from ws4py.websocket import EchoWebSocket, WebSocket  # noqa: E402

server: WSGIServer


class FanSocket(WebSocket):
    def received_message(self, message) -> None:  # type: ignore[no-untyped-def]
        data = message.data
        for greenlet in list(server.pool):
            ws = getattr(greenlet._run, "__self__", None)  # the pool tracks ws.run
            if isinstance(ws, FanSocket) and not ws.terminated:
                try:
                    ws.send(data, message.is_binary)
                except Exception:
                    pass


def main() -> None:
    global server
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = int(sys.argv[1])
    echo = WebSocketWSGIApplication(handler_cls=EchoWebSocket)
    fan = WebSocketWSGIApplication(handler_cls=FanSocket)

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        if environ.get("PATH_INFO") == "/fan":
            return fan(environ, start_response)
        if environ.get("PATH_INFO") == "/echo":
            return echo(environ, start_response)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = WSGIServer(("127.0.0.1", port), app, log=None, error_log=None, backlog=1024)
    gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(server.stop, 1))
    server.serve_forever()


if __name__ == "__main__":
    main()
