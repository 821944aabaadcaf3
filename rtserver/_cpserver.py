"""CherryPy's module name for :class:`rtserver.Server`, so that the guide's
``from cherrypy._cpserver import Server`` ports by writing ``rtserver`` for ``cherrypy``."""

from .servers.base import Server

__all__ = ["Server"]
