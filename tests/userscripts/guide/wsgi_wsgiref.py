"""rtserver.Application in the standard library's WSGI server: rtserver patches nothing."""
import sys
import threading
from wsgiref.simple_server import make_server

import rtserver


class StringGenerator(object):
    @rtserver.expose
    def index(self):
        from gevent import monkey  # only to report: the server is not rtserver's

        return f"patched={monkey.is_module_patched('socket')} thread={threading.current_thread().name}"


wsgiapp = rtserver.Application(StringGenerator(), '/')
httpd = make_server('127.0.0.1', 8080, wsgiapp)
print("serving", file=sys.stderr, flush=True)
httpd.serve_forever()
