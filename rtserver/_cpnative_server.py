"""CherryPy's module name for the native server, so that the guide's
``from cherrypy._cpnative_server import CPHTTPServer`` ports as is."""

from .servers.cheroot import NativeServer as CPHTTPServer

__all__ = ["CPHTTPServer"]
