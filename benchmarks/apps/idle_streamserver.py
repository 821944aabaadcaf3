"""Reference for memory per idle socket: a bare gevent StreamServer whose connection
greenlets block in ``recv`` (``python -m benchmarks.apps.idle_streamserver PORT``).
"""

from __future__ import annotations

import resource
import signal
import sys

import gevent
from gevent.server import StreamServer


def handle(sock, address) -> None:  # type: ignore[no-untyped-def]
    while sock.recv(65536):
        pass


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = StreamServer(("127.0.0.1", int(sys.argv[1])), handle, backlog=1024)
    gevent.signal_handler(signal.SIGTERM, server.stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
