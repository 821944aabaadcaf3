"""A bare gevent pywsgi hello-world WSGI app: ``python -m benchmarks.apps.hello_pywsgi PORT [nodelay|delay]``.

With ``nodelay`` (the default) a handler subclass sets TCP_NODELAY on every accepted
socket; with ``delay`` it is left off (pywsgi's default: keep-alive responses can wait
for the client's delayed ACK).
"""

from __future__ import annotations

import signal
import socket
import sys

from gevent import pywsgi

BODY = b"Hello world!"


def app(environ, start_response):  # type: ignore[no-untyped-def]
    start_response("200 OK", [("Content-Type", "text/html;charset=utf-8"), ("Content-Length", str(len(BODY)))])
    return [BODY]


class NoDelayHandler(pywsgi.WSGIHandler):
    """Sets TCP_NODELAY on the accepted socket before serving it."""

    def handle(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle()


def main() -> None:
    port = int(sys.argv[1] if len(sys.argv) > 1 else 8080)
    nodelay = (sys.argv[2] if len(sys.argv) > 2 else "nodelay") == "nodelay"
    handler = NoDelayHandler if nodelay else pywsgi.WSGIHandler
    server = pywsgi.WSGIServer(("127.0.0.1", port), app, handler_class=handler, log=None, error_log=None)
    import gevent

    gevent.signal_handler(signal.SIGTERM, server.stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
