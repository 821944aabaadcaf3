"""Hello-world rtserver app for the benchmarks.

Run directly: ``python -m benchmarks.apps.hello_rtserver PORT [KIND]`` (or set
``RTSERVER_BENCH_PORT`` / ``RTSERVER_BENCH_KIND``); ``RTSERVER_BENCH_PROFILE=FILE``
writes a cProfile of the serving process to FILE on exit;
``RTSERVER_BENCH_REUSE_PORT=1`` sets ``server.reuse_port`` (several processes, one port). Or through the CLI:
``python -m rtserver run benchmarks.apps.hello_rtserver:root --port P``.
"""

from __future__ import annotations

import os
import sys

import rtserver


class Root:
    @rtserver.expose
    def index(self) -> str:
        return "Hello world!"


root = Root()


def main() -> None:
    from gevent import monkey

    monkey.patch_all()
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("RTSERVER_BENCH_PORT", "8080"))
    kind = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("RTSERVER_BENCH_KIND", "gevent")
    conf = {
        "global": {
            "log.screen": False,
            "server.socket_host": "127.0.0.1",
            "server.socket_port": port,
            "server.kind": kind,
        }
    }
    if os.environ.get("RTSERVER_BENCH_REUSE_PORT"):
        conf["global"]["server.reuse_port"] = True
    profile = os.environ.get("RTSERVER_BENCH_PROFILE")
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        try:
            rtserver.quickstart(root, config=conf)
        finally:
            prof.disable()
            prof.dump_stats(profile)
    else:
        rtserver.quickstart(root, config=conf)


if __name__ == "__main__":
    main()
