import sys

import rtserver
from rtserver import engine, tree


class Root:
    @rtserver.expose
    def index(self):
        return "Hello world!"


tree.mount(Root())
if "--signals" in sys.argv:
    engine.signals.subscribe()
engine.start()
engine.block()
