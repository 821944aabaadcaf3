"""rtserver.Application in cheroot's threaded WSGI server: its threads stay threads."""
import threading

from cheroot import wsgi

import rtserver


class StringGenerator(object):
    @rtserver.expose
    def index(self):
        from gevent import monkey

        return f"patched={monkey.is_module_patched('socket')} thread={type(threading.current_thread()).__name__}"


wsgiapp = rtserver.Application(StringGenerator(), '/')
server = wsgi.Server(('127.0.0.1', 8080), wsgiapp, numthreads=4)
try:
    server.start()
except KeyboardInterrupt:
    server.stop()
