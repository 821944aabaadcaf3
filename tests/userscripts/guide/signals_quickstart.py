import rtserver


class Root:
    @rtserver.expose
    def index(self):
        return "Hello world!"


if __name__ == '__main__':
    rtserver.quickstart(Root())
