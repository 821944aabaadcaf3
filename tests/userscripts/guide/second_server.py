import rtserver
from rtserver._cpserver import Server


class Root:
    @rtserver.expose
    def index(self):
        return f"port {rtserver.request.local.port}"


server = Server()
server.socket_port = 8090
server.subscribe()

rtserver.quickstart(Root())
