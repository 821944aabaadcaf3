"""Hello-world CherryPy 18 app on its own cheroot server: ``python -m benchmarks.apps.hello_cherrypy PORT``."""

from __future__ import annotations

import sys

import cherrypy


class Root:
    @cherrypy.expose
    def index(self) -> str:
        return "Hello world!"


def main() -> None:
    port = int(sys.argv[1] if len(sys.argv) > 1 else 8080)
    cherrypy.config.update(
        {
            "global": {
                "environment": "production",
                "log.screen": False,
                "log.access_file": "",
                "log.error_file": "",
                "server.socket_host": "127.0.0.1",
                "server.socket_port": port,
                "engine.autoreload.on": False,
            }
        }
    )
    cherrypy.log.access_log.propagate = False
    cherrypy.log.access_log.handlers.clear()
    cherrypy.quickstart(Root(), "/")


if __name__ == "__main__":
    main()
