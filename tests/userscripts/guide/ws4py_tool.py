"""ws4py's CherryPy recipe, with rtserver for cherrypy: a tool upgrades /ws."""
import rtserver
from ws4py.websocket import EchoWebSocket


class Root(object):
    @rtserver.expose
    def index(self):
        return "pages and sockets on one port"

    @rtserver.expose
    def ws(self):
        handler = rtserver.request.ws_handler  # the EchoWebSocket of this connection


rtserver.quickstart(Root(), '/', config={
    '/ws': {'tools.websocket.on': True, 'tools.websocket.handler_cls': EchoWebSocket},
})
