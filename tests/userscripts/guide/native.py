import rtserver


class Root(object):
    @rtserver.expose
    def index(self):
        return "Hello World!"


if __name__ == '__main__':
    from rtserver._cpnative_server import CPHTTPServer
    rtserver.server.httpserver = CPHTTPServer(rtserver.server)

    rtserver.quickstart(Root(), '/')
