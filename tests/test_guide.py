"""Every page example of CherryPy's "Advanced" guide, with `rtserver` for `cherrypy`."""

import random
import signal
import string
import threading
import time
import urllib.request
import wsgiref.simple_server

import pytest
from conftest import signal_script

import rtserver
from rtserver.testing import serve


class StringGenerator:
    @rtserver.expose(["generer", "generar"])
    def generate(self, length=8):
        return "".join(random.sample(string.hexdigits, int(length)))


def test_aliases():
    with serve(StringGenerator()) as s:
        for path in ("/generate", "/generer", "/generar"):
            status, _, body = s.get(path + "?length=6")
            assert status == 200 and len(body) == 6
            assert all(chr(c) in string.hexdigits for c in body)


def test_response_timeout_attributes_and_check_timeout():
    class Root:
        @rtserver.expose
        def index(self):
            response = rtserver.response
            assert response.timeout == 300 and response.timed_out is False
            response.timeout = 0.05
            time.sleep(0.1)
            response.check_timeout()
            return str(response.timed_out)

    with serve(Root()) as s:
        assert s.get("/")[0] == 503  # the pipeline raised rtserver.TimeoutError


def test_timeout_monitor_config_from_the_guide(tmp_path):
    conf = tmp_path / "monitor.conf"
    conf.write_text("[global]\nengine.timeout_monitor.frequency: 60 * 60\n")
    rtserver.config.update(str(conf))
    try:
        assert rtserver.engine.timeout_monitor.frequency == 3600
    finally:
        rtserver.config.update({"engine.timeout_monitor.frequency": 60})
        rtserver.config.pop("engine.timeout_monitor.frequency")
    off = tmp_path / "off.conf"
    off.write_text("[global]\nengine.timeout_monitor.on: False\n")
    rtserver.config.update(str(off))
    try:
        assert rtserver.engine.timeout_monitor.start not in rtserver.engine.listeners["start"]
    finally:
        rtserver.config.update({"engine.timeout_monitor.on": True})
        rtserver.config.pop("engine.timeout_monitor.on")
    rtserver.engine.timeout_monitor.unsubscribe()
    assert rtserver.engine.timeout_monitor.start not in rtserver.engine.listeners["start"]
    rtserver.engine.timeout_monitor.subscribe()


def test_signals_with_a_manual_setup(tmp_path):
    ready = tmp_path / "ready"
    script = f"""
        from gevent import monkey; monkey.patch_all()
        import rtserver
        class Root:
            @rtserver.expose
            def index(self):
                return "hi"
        rtserver.config.update({{"server.socket_port": 0, "log.screen": False}})
        rtserver.tree.mount(Root())
        rtserver.engine.signals.subscribe()
        rtserver.engine.subscribe("start", lambda: open({str(ready)!r}, "w").close(), priority=90)
        rtserver.engine.subscribe("exit", lambda: print("clean exit", flush=True))
        rtserver.engine.start()
        rtserver.engine.block()
        """
    code, out, err = signal_script(script, ready, [signal.SIGTERM])
    assert code == 0, err
    assert "clean exit" in out


def secureheaders():
    headers = rtserver.response.headers
    headers["X-Frame-Options"] = "DENY"
    headers["X-XSS-Protection"] = "1; mode=block"
    headers["Content-Security-Policy"] = "default-src='self'"
    if rtserver.server.ssl_certificate is not None and rtserver.server.ssl_private_key is not None:
        headers["Strict-Transport-Security"] = "max-age=31536000"


def test_the_guides_secureheaders_tool_as_written(tmp_path):
    builtin = rtserver.tools.secureheaders
    rtserver.tools.secureheaders = rtserver.Tool("before_finalize", secureheaders, priority=60)
    try:
        conf = tmp_path / "app.conf"
        conf.write_text("[/]\ntools.secureheaders.on = True\n")

        class Root:
            @rtserver.expose
            def index(self):
                return "secure"

        with serve(Root(), str(conf)) as s:
            status, headers, _ = s.get("/")
        assert status == 200
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-XSS-Protection"] == "1; mode=block"
        assert headers["Content-Security-Policy"] == "default-src='self'"
        assert "Strict-Transport-Security" not in headers
    finally:
        rtserver.tools.secureheaders = builtin


def raw_wsgi_app(environ, start_response):
    status = "200 OK"
    response_headers = [("Content-type", "text/plain")]
    start_response(status, response_headers)
    return ["Hello world!"]


def test_graft_a_foreign_wsgi_app():
    class Root:
        @rtserver.expose
        def index(self):
            return "pages"

    with serve(Root()) as s:
        rtserver.tree.graft(raw_wsgi_app, "/legacy")
        assert s.get("/legacy")[2] == b"Hello world!"
        assert s.get("/legacy/deeper")[2] == b"Hello world!"
        assert s.get("/")[2] == b"pages"


def _serve_wsgi_with(kind: str, app):
    """Start ``app`` under a foreign WSGI server; return (url, stop)."""
    if kind == "wsgiref":

        class Quiet(wsgiref.simple_server.WSGIRequestHandler):
            def log_message(self, *args):
                pass

        httpd = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=Quiet)
        t = threading.Thread(target=httpd.serve_forever, daemon=True)
        t.start()

        def stop():
            httpd.shutdown()
            httpd.server_close()

        return f"http://127.0.0.1:{httpd.server_port}", stop
    if kind == "pywsgi":
        from gevent.pywsgi import WSGIServer

        srv = WSGIServer(("127.0.0.1", 0), app, log=None)
        srv.start()
        return f"http://127.0.0.1:{srv.server_port}", srv.stop
    from cheroot.wsgi import Server as CherootWSGI

    srv = CherootWSGI(("127.0.0.1", 0), app)
    srv.prepare()
    t = threading.Thread(target=srv.serve, daemon=True)
    t.start()
    return f"http://127.0.0.1:{srv.bind_addr[1]}", srv.stop


@pytest.mark.parametrize("kind", ["pywsgi", "cheroot", "wsgiref"])
def test_application_is_a_wsgi_app_in_any_server(kind):
    myconf = {"/": {"tools.response_headers.on": True, "tools.response_headers.headers": [("X-App", "yes")]}}
    wsgiapp = rtserver.Application(StringGenerator(), "/", config=myconf)
    url, stop = _serve_wsgi_with(kind, wsgiapp)
    try:
        with urllib.request.urlopen(url + "/generer?length=5", timeout=10) as resp:
            assert resp.status == 200 and len(resp.read()) == 5
            assert resp.headers["X-App"] == "yes"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url + "/nope", timeout=10)
        assert info.value.code == 404
        info.value.close()
    finally:
        stop()


def test_the_tree_is_a_wsgi_app_dispatching_on_script_name():
    tree = rtserver.Tree()
    tree.mount(StringGenerator(), "/gen")
    tree.graft(raw_wsgi_app, "/raw")
    url, stop = _serve_wsgi_with("pywsgi", tree)
    try:
        with urllib.request.urlopen(url + "/gen/generate?length=3", timeout=10) as resp:
            assert len(resp.read()) == 3
        with urllib.request.urlopen(url + "/raw/x", timeout=10) as resp:
            assert resp.read() == b"Hello world!"
    finally:
        stop()
