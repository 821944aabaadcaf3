"""Run an rtserver application on 127.0.0.1 with a free port, for tests.

::

    with rtserver.testing.serve(Root(), config={'/': {...}}) as srv:
        status, headers, body = srv.get('/')
        with srv.websocket_connect('/ws') as ws:
            ws.send('hi'); assert ws.recv() == 'hi'

The engine is started and stopped around the block; the global config, the tree and
the extra servers are restored afterwards, so tests do not leak into each other.
"""

from __future__ import annotations

import contextlib
import http.client
import json as _json
from collections.abc import Iterator
from typing import Any

from . import runtime

__all__ = ["TestServer", "serve"]


class TestServer:
    """A running server: its base URL, port and a few request helpers."""

    __test__ = False  # not a pytest test class

    def __init__(self, server: Any) -> None:
        self.server = server

    @property
    def host(self) -> str:
        addr = self.server.bound_address
        return addr[0] if isinstance(addr, tuple) else "127.0.0.1"

    @property
    def port(self) -> int:
        addr = self.server.bound_address
        return int(addr[1]) if isinstance(addr, tuple) else 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (https with TLS)."""
        return self.server.base_url

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT`` (wss with TLS)."""
        return self.url.replace("http", "ws", 1)

    def connection(self, timeout: float = 10) -> http.client.HTTPConnection:
        """A new keep-alive HTTP connection to the server."""
        if self.url.startswith("https"):
            import ssl

            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=ctx)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request on a fresh connection: ``(status, headers, body)``."""
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def get(
        self, path: str, headers: dict[str, str] | None = None, timeout: float = 10
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """GET ``path``."""
        return self.request("GET", path, headers=headers, timeout=timeout)

    def post(
        self,
        path: str,
        data: dict[str, str] | bytes | None = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """POST a form (dict), raw bytes, or ``json``."""
        import urllib.parse

        hdrs = dict(headers or {})
        body: bytes | None
        if json is not None:
            body = _json.dumps(json).encode()
            hdrs.setdefault("Content-Type", "application/json")
        elif isinstance(data, dict):
            body = urllib.parse.urlencode(data).encode()
            hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
        else:
            body = data
        return self.request("POST", path, body=body, headers=hdrs)

    def websocket_connect(self, path: str, **kwargs: Any) -> Any:
        """A connected ``websockets.sync.client`` connection to ``path``."""
        from websockets.sync.client import connect

        kwargs.setdefault("open_timeout", 10)
        kwargs.setdefault("close_timeout", 5)
        if self.url.startswith("https"):
            import ssl

            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            kwargs.setdefault("ssl", ctx)
        return connect(self.ws_url + path, **kwargs)


@contextlib.contextmanager
def serve(
    root: Any = None,
    config: Any = None,
    script_name: str = "",
    global_config: dict[str, Any] | None = None,
    kind: str = "gevent",
) -> Iterator[TestServer]:
    """Mount ``root`` and run the engine with one server on 127.0.0.1:0 (``kind``)."""
    engine, tree, server, gconf = runtime.engine, runtime.tree, runtime.server, runtime.config
    saved_apps = dict(tree.apps)
    saved_conf = dict(gconf)
    saved_server = {
        k: getattr(server, k)
        for k in (
            "socket_host",
            "socket_port",
            "socket_file",
            "kind",
            "ssl_certificate",
            "ssl_private_key",
            "ssl_certificate_chain",
        )
    }
    saved_options = dict(server.options)
    tree.apps.clear()
    tree._reorder()
    try:
        gconf.update(
            {"server.socket_host": "127.0.0.1", "server.socket_port": 0, "log.screen": False, "server.kind": kind}
        )
        if global_config:
            gconf.update(global_config)
        if root is not None:
            tree.mount(root, script_name, config)
        engine.start()
        try:
            yield TestServer(server)
        finally:
            engine.stop()
    finally:
        for name in list(runtime.servers):
            extra = runtime.servers.pop(name)
            extra.unsubscribe()
        tree.apps.clear()
        tree.apps.update(saved_apps)
        tree._reorder()
        # Put back the declared defaults of keys the test set, so plugins (the
        # timeout monitor's frequency, say) do not keep a test's values.
        from .config import declared

        keys = declared()
        added = {k: keys[k].default for k in gconf if k not in saved_conf and k in keys}
        restore = {**added, **saved_conf}
        gconf.update(restore)
        gconf.clear()
        gconf.update(saved_conf)
        for key, value in saved_server.items():
            setattr(server, key, value)
        server.options = saved_options
        server.httpserver = None
