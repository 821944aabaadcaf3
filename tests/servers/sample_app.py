"""The application the command-line and gunicorn tests run in a subprocess."""

import os

from ws4py.websocket import EchoWebSocket

import rtserver
from rtserver.websocket.wsgi import websocket_app


class Root:
    @rtserver.expose
    def index(self) -> str:
        return "Hello from rtserver"

    @rtserver.expose
    def pid(self) -> str:
        return str(os.getpid())

    @rtserver.expose
    def kind(self) -> str:
        return type(rtserver.server.httpserver).__name__

    @rtserver.expose
    def scheme(self) -> str:
        return rtserver.request.scheme


root = Root()
app = rtserver.Application(root)

# A socket beside the pages (grafted on the tree every server serves).
rtserver.tree.graft(websocket_app(EchoWebSocket), "/ws")
