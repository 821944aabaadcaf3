"""Tools: custom tools by config and decorator, hook order, and the built-in tools."""

import gzip
import json

import pytest

import rtserver
from rtserver.testing import serve
from rtserver.web.hooks import HOOK_POINTS

calls: list[str] = []


def _recorder(point):
    def record(tag="x"):
        calls.append(f"{point}:{tag}")

    return record


@pytest.fixture
def recording_tools():
    calls.clear()
    names = []
    for point in HOOK_POINTS:
        name = f"rec_{point}"
        setattr(rtserver.tools, name, rtserver.Tool(point, _recorder(point)))
        names.append(name)
    yield names
    for name in names:
        delattr(rtserver.tools, name)


def test_custom_tool_runs_at_every_hook_point_in_cherrypys_order(recording_tools):
    class Root:
        @rtserver.expose
        def index(self):
            calls.append("handler")
            return "ok"

        @rtserver.expose
        def fail(self):
            calls.append("handler")
            raise rtserver.HTTPError(409)

        @rtserver.expose
        def crash(self):
            calls.append("handler")
            raise ZeroDivisionError

    conf = {"/": {f"tools.{name}.on": True for name in recording_tools}}
    with serve(Root(), conf) as s:
        assert s.get("/")[0] == 200
        assert calls == [
            "on_start_resource:x",
            "before_request_body:x",
            "before_handler:x",
            "handler",
            "before_finalize:x",
            "on_end_resource:x",
            "on_end_request:x",
        ]
        calls.clear()
        # An HTTPError still runs before_finalize (sessions are saved), as CherryPy.
        assert s.get("/fail")[0] == 409
        assert calls == [
            "on_start_resource:x",
            "before_request_body:x",
            "before_handler:x",
            "handler",
            "before_finalize:x",
            "on_end_resource:x",
            "on_end_request:x",
        ]
        calls.clear()
        # An unexpected exception runs the error hooks instead.
        assert s.get("/crash")[0] == 500
        assert calls == [
            "on_start_resource:x",
            "before_request_body:x",
            "before_handler:x",
            "handler",
            "on_end_resource:x",
            "before_error_response:x",
            "after_error_response:x",
            "on_end_request:x",
        ]


def test_tool_arguments_from_config_and_decorator_are_the_same():
    seen = []
    rtserver.tools.tagger = rtserver.Tool("before_handler", lambda tag="none": seen.append(tag))
    try:

        class Root:
            @rtserver.expose
            def by_config(self):
                return "c"

            @rtserver.expose
            @rtserver.tools.tagger(tag="deco")
            def by_decorator(self):
                return "d"

        with serve(Root(), {"/by_config": {"tools.tagger.on": True, "tools.tagger.tag": "conf"}}) as s:
            s.get("/by_config")
            s.get("/by_decorator")
        assert seen == ["conf", "deco"]
    finally:
        del rtserver.tools.tagger


def test_priorities_order_tools_on_one_hook_point():
    order = []
    rtserver.tools.late = rtserver.Tool("before_handler", lambda: order.append("late"), priority=90)
    rtserver.tools.early = rtserver.Tool("before_handler", lambda: order.append("early"), priority=10)
    try:

        class Root:
            @rtserver.expose
            def index(self):
                return "ok"

        with serve(Root(), {"/": {"tools.late.on": True, "tools.early.on": True}}) as s:
            s.get("/")
        assert order == ["early", "late"]
    finally:
        del rtserver.tools.late
        del rtserver.tools.early


def test_tool_decorator_needs_call():
    with pytest.raises(TypeError, match="decorator"):
        rtserver.tools.gzip(lambda: None)


class Api:
    @rtserver.expose
    @rtserver.tools.json_out()
    def data(self):
        return {"n": 1, "s": "é"}

    @rtserver.expose
    @rtserver.tools.json_in()
    @rtserver.tools.json_out()
    def echo(self):
        return {"got": rtserver.request.json}

    @rtserver.expose
    @rtserver.tools.json_out()
    def needs(self, a):
        return a

    @rtserver.expose
    @rtserver.tools.allow(methods=["POST"])
    def post_only(self):
        return "posted"

    @rtserver.expose
    @rtserver.tools.response_headers(headers=[("X-Custom", "1")])
    def headers(self):
        return "h"

    @rtserver.expose
    @rtserver.tools.gzip()
    def big(self):
        return "hello " * 1000

    @rtserver.expose
    @rtserver.tools.gzip()
    def big_stream(self):
        return ("line %d\n" % i for i in range(2000))

    @rtserver.expose
    def where(self):
        req = rtserver.request
        return f"{req.scheme} {req.base} {req.remote.ip}"


def test_json_out_and_json_in():
    with serve(Api()) as s:
        status, headers, body = s.get("/data")
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert json.loads(body) == {"n": 1, "s": "é"}
        status, _, body = s.post("/echo", json={"a": [1, 2]})
        assert json.loads(body) == {"got": {"a": [1, 2]}}
        assert s.request("POST", "/echo", b"{nope", {"Content-Type": "application/json"})[0] == 400
        assert s.request("POST", "/echo", b"a=1", {"Content-Type": "text/plain"})[0] == 415
        # json_out keeps CherryPy's argument-mismatch rule
        assert s.get("/needs")[0] == 404


def test_allow_answers_405_with_allow_header():
    with serve(Api()) as s:
        status, headers, _ = s.get("/post_only")
        assert status == 405 and headers["Allow"] == "POST"
        assert s.post("/post_only", {})[2] == b"posted"


def test_response_headers_tool():
    with serve(Api()) as s:
        assert s.get("/headers")[1]["X-Custom"] == "1"


def test_gzip_buffered_and_streamed():
    with serve(Api()) as s:
        status, headers, body = s.get("/big", headers={"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] == "gzip" and headers["Vary"] == "Accept-Encoding"
        assert gzip.decompress(body) == b"hello " * 1000
        assert int(headers["Content-Length"]) == len(body) < 200
        status, headers, body = s.get("/big_stream", headers={"Accept-Encoding": "gzip, deflate"})
        assert headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(body) == "".join("line %d\n" % i for i in range(2000)).encode()
        status, headers, body = s.get("/big", headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in headers and body == b"hello " * 1000


def test_secureheaders_builtin_and_no_hsts_over_plain_http():
    with serve(Api(), {"/": {"tools.secureheaders.on": True}}) as s:
        headers = s.get("/headers")[1]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "default-src 'self'"
    assert headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert "Strict-Transport-Security" not in headers


def test_proxy_tool_only_when_on():
    fwd = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "example.org", "X-Forwarded-For": "203.0.113.9, 10.0.0.1"}
    with serve(Api()) as s:
        assert s.get("/where", headers=fwd)[2] == f"http {s.url} 127.0.0.1".encode()
    # 10.0.0.1 is a proxy of the chain: list it, or its own address is the client's.
    proxies = {"tools.proxy.trusted": ["127.0.0.1", "10.0.0.0/8"]}
    with serve(Api(), {"/": {"tools.proxy.on": True, "tools.secureheaders.on": True, **proxies}}) as s:
        status, headers, body = s.get("/where", headers=fwd)
        assert body == b"https https://example.org 203.0.113.9"
        assert headers["Strict-Transport-Security"] == "max-age=31536000"
    with serve(Api(), {"/": {"tools.proxy.on": True, "tools.proxy.trusted": ["10.9.9.9"]}}) as s:
        assert s.get("/where", headers=fwd)[2] == f"http {s.url} 127.0.0.1".encode()


def test_a_requests_hook_map_never_changes_the_cached_one():
    from rtserver.web.hooks import HookMap

    cached = HookMap()
    cached.attach("before_handler", lambda: None)
    per_request = cached.copy()
    per_request.attach("on_end_request", lambda: None)
    per_request.attach("before_handler", lambda: None)
    assert len(cached["before_handler"]) == 1 and cached["on_end_request"] == []
    assert len(per_request["before_handler"]) == 2 and len(per_request["on_end_request"]) == 1
