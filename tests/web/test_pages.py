"""The page tree over a real server: dispatch, aliases, arguments, redirects, errors,
bodies, streaming — the HTTP answers a CherryPy user expects."""

import json
import time

import gevent
import pytest

import rtserver
from rtserver.testing import serve


class Sub:
    @rtserver.expose
    def index(self):
        return "sub index"

    @rtserver.expose
    def default(self, *args, **kwargs):
        return f"default {list(args)} {sorted(kwargs.items())}"


@rtserver.expose
class Exposed:
    def index(self):
        return "class index"

    def other(self):
        return "class other"

    def _private(self):
        return "never"


class Root:
    sub = Sub()
    exposed = Exposed()

    @rtserver.expose
    def index(self):
        return "Hello world!"

    @rtserver.expose("alias")
    def single(self):
        return "single"

    @rtserver.expose(["generer", "generar"])
    def generate(self, length=8):
        return "x" * int(length)

    @rtserver.expose
    def page(self, a, b="2"):
        return f"page a={a} b={b}"

    @rtserver.expose
    def feed_xml(self):
        return "<feed/>"

    @rtserver.expose
    def raw(self):
        rtserver.response.headers["Content-Type"] = "application/octet-stream"
        return b"\x00\x01\x02"

    @rtserver.expose
    def nothing(self):
        return None

    @rtserver.expose
    def unicode(self):
        return "héllo ☃"

    @rtserver.expose
    def listed(self):
        return ["a", b"b", "c"]

    @rtserver.expose
    def stream(self, n="3", delay="0"):
        def gen():
            for i in range(int(n)):
                yield f"chunk{i};"
                gevent.sleep(float(delay))

        return gen()

    @rtserver.expose
    def error(self, code="418", msg=None):
        raise rtserver.HTTPError(int(code), msg)

    @rtserver.expose
    def missing(self):
        raise rtserver.NotFound()

    @rtserver.expose
    def boom(self):
        raise RuntimeError("database password is hunter2")

    @rtserver.expose
    def redirect(self, to="/page?a=1", status=None):
        raise rtserver.HTTPRedirect(to, int(status) if status else None)

    @rtserver.expose
    def echo_request(self, *args, **kwargs):
        req = rtserver.request
        return json.dumps(
            {
                "method": req.method,
                "path_info": req.path_info,
                "query_string": req.query_string,
                "params": {k: v for k, v in req.params.items() if isinstance(v, (str, list))},
                "args": list(args),
                "header": req.headers.get("X-Test"),
                "cookie": req.cookie["c"].value if "c" in req.cookie else None,
                "remote": req.remote.ip,
                "scheme": req.scheme,
                "base": req.base,
                "is_app": req.app is not None,
                "config_timeout": req.config.get("response.timeout"),
            }
        )

    @rtserver.expose
    def set_cookie(self):
        rtserver.response.cookie["flavour"] = "oat"
        rtserver.response.cookie["flavour"]["path"] = "/"
        rtserver.response.status = "201 Created"
        return "ok"

    @rtserver.expose
    def upload(self, name, doc):
        return f"{name}:{doc.filename}:{doc.content_type}:{doc.fullvalue().decode()}"

    @rtserver.expose
    def body(self):
        return rtserver.request.body.read()


CONFIG = {"/": {"response.timeout": 300}, "/sub": {"error_page.404": None}}


@pytest.fixture
def srv():
    with serve(Root(), CONFIG) as s:
        yield s


def test_index(srv):
    status, headers, body = srv.get("/")
    assert (status, body) == (200, b"Hello world!")
    assert headers["Content-Type"] == "text/html;charset=utf-8"
    assert headers["Content-Length"] == "12"


@pytest.mark.parametrize("path", ["/generate?length=4", "/generer?length=4", "/generar?length=4"])
def test_each_alias_answers_at_its_own_path(srv, path):
    assert srv.get(path)[2] == b"xxxx"


def test_single_alias_and_original_name(srv):
    assert srv.get("/alias")[2] == b"single"
    assert srv.get("/single")[2] == b"single"


def test_exposed_class_exposes_public_methods_only(srv):
    assert srv.get("/exposed/")[2] == b"class index"
    assert srv.get("/exposed/other")[2] == b"class other"
    assert srv.get("/exposed/_private")[0] == 404


def test_positional_and_keyword_arguments(srv):
    assert srv.get("/page?a=1")[2] == b"page a=1 b=2"
    assert srv.get("/page/5")[2] == b"page a=5 b=2"
    assert srv.get("/page/5/6")[2] == b"page a=5 b=6"
    assert srv.post("/page", {"a": "x", "b": "y"})[2] == b"page a=x b=y"


@pytest.mark.parametrize(
    ("path", "method", "form", "status"),
    [
        ("/page", "GET", None, 404),  # missing argument
        ("/page/1/2/3", "GET", None, 404),  # extra path segment
        ("/page?a=1&zzz=2", "GET", None, 404),  # unknown query-string parameter
        ("/page", "POST", {"a": "1", "zzz": "2"}, 400),  # unknown body parameter
        ("/page/1", "POST", {"a": "2"}, 400),  # a given twice (path and body)
    ],
)
def test_argument_mismatch_by_cherrypys_rule(srv, path, method, form, status):
    if method == "GET":
        got = srv.get(path)
    else:
        got = srv.post(path, form)
    assert got[0] == status


def test_mismatch_message_names_parameters(srv):
    status, _, body = srv.get("/page?a=1&zzz=2")
    assert status == 404 and b"zzz" in body


def test_dots_map_to_underscores(srv):
    assert srv.get("/feed.xml")[2] == b"<feed/>"


def test_default_handler_takes_the_rest_of_the_path(srv):
    status, _, body = srv.get("/sub/a/b?x=1")
    assert status == 200 and body == b"default ['a', 'b'] [('x', '1')]"


def test_trailing_slash_redirect_for_index(srv):
    status, headers, _ = srv.get("/sub?q=1")
    assert status == 301
    assert headers["Location"] == f"{srv.url}/sub/?q=1"
    assert srv.get("/sub/")[2] == b"sub index"


def test_unknown_path_is_404(srv):
    status, headers, body = srv.get("/no/such/page")
    assert status == 404
    assert b"404 Not Found" in body
    assert headers["Content-Type"].startswith("text/html")


def test_http_error_status_and_escaped_message(srv):
    status, _, body = srv.get("/error?code=418&msg=%3Cb%3Eteapot%3C/b%3E")
    assert status == 418
    assert b"&lt;b&gt;teapot&lt;/b&gt;" in body and b"<b>teapot" not in body
    assert srv.get("/missing")[0] == 404


def test_unexpected_error_is_500_without_details(srv):
    status, _, body = srv.get("/boom")
    assert status == 500
    assert b"hunter2" not in body and b"Traceback" not in body
    assert b"500 Internal Server Error" in body


def test_tracebacks_only_when_configured():
    with serve(Root(), {"/": {"request.show_tracebacks": True}}) as s:
        status, _, body = s.get("/boom")
    assert status == 500 and b"RuntimeError" in body


def test_configurable_error_pages(tmp_path):
    page = tmp_path / "404.html"
    page.write_text("<h1>Lost: %(status)s</h1><p>%(message)s</p>")

    def teapot_page(status, message, traceback, version):
        return f"custom {status}"

    with serve(Root(), {"/": {"error_page.404": str(page), "error_page.default": teapot_page}}) as s:
        status, _, body = s.get("/nowhere")
        assert status == 404 and body.startswith(b"<h1>Lost: 404 Not Found</h1>")
        status, _, body = s.get("/error?code=402")
        assert (status, body) == (402, b"custom 402 Payment Required")


def test_redirects(srv):
    status, headers, _ = srv.get("/redirect")
    assert status == 303 and headers["Location"] == f"{srv.url}/page?a=1"
    status, headers, _ = srv.get("/redirect?to=http://example.org/x&status=301")
    assert status == 301 and headers["Location"] == "http://example.org/x"


def test_result_types(srv):
    assert srv.get("/raw")[2] == b"\x00\x01\x02"
    status, headers, body = srv.get("/nothing")
    assert (status, body, headers["Content-Length"]) == (200, b"", "0")
    assert srv.get("/unicode")[2] == "héllo ☃".encode()
    assert srv.get("/listed")[2] == b"abc"


def test_generator_is_streamed_chunk_by_chunk(srv):
    conn = srv.connection()
    try:
        t0 = time.monotonic()
        conn.request("GET", "/stream?n=3&delay=0.3")
        resp = conn.getresponse()
        assert resp.getheader("Transfer-Encoding") == "chunked"
        first = resp.read1(64)
        first_at = time.monotonic() - t0
        rest = resp.read()
    finally:
        conn.close()
    assert first.startswith(b"chunk0;")
    assert first_at < 0.25  # before the generator finished (0.9 s)
    assert first + rest == b"chunk0;chunk1;chunk2;"


def test_request_attributes(srv):
    status, _, body = srv.get("/echo_request/p1/p2?x=1&x=2&y=3", headers={"X-Test": "yes", "Cookie": "c=choc"})
    data = json.loads(body)
    assert status == 200
    assert data["method"] == "GET"
    assert data["path_info"] == "/echo_request/p1/p2"
    assert data["query_string"] == "x=1&x=2&y=3"
    assert data["params"] == {"x": ["1", "2"], "y": "3"}
    assert data["args"] == ["p1", "p2"]
    assert data["header"] == "yes"
    assert data["cookie"] == "choc"
    assert data["remote"] == "127.0.0.1"
    assert data["scheme"] == "http"
    assert data["base"] == srv.url
    assert data["is_app"] is True
    assert data["config_timeout"] == 300


def test_response_status_and_cookies(srv):
    status, headers, _ = srv.get("/set_cookie")
    assert status == 201
    assert "flavour=oat; Path=/" in headers["Set-Cookie"]


def test_multipart_upload_as_keyword_arguments(srv):
    boundary = "xYzZY"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nann\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="doc"; filename="a.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\nfile body\r\n--{boundary}--\r\n"
    ).encode()
    status, _, out = srv.request("POST", "/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert (status, out) == (200, b"ann:a.txt:text/plain:file body")


def test_malformed_bodies_are_400(srv):
    status, _, _ = srv.request("POST", "/upload", b"garbage", {"Content-Type": "multipart/form-data; boundary=zz"})
    assert status == 400
    status, _, _ = srv.request("POST", "/page", b"a=%ff%fe", {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400


def test_raw_body_read(srv):
    status, _, body = srv.request("POST", "/body", b"\x01raw", {"Content-Type": "application/octet-stream"})
    assert (status, body) == (200, b"\x01raw")


def test_head_has_headers_and_no_body(srv):
    status, headers, body = srv.request("HEAD", "/")
    assert status == 200 and body == b"" and headers["Content-Length"] == "12"


def test_requests_are_isolated_between_greenlets(srv):
    results = []

    def one(i):
        results.append(srv.get(f"/page?a={i}")[2])

    gevent.joinall([gevent.spawn(one, i) for i in range(30)], timeout=20)
    assert sorted(results) == sorted(f"page a={i} b=2".encode() for i in range(30))


class Redirecting:
    @rtserver.expose
    def index(self):
        raise rtserver.InternalRedirect("/target?x=5")

    @rtserver.expose
    def target(self, x):
        return f"target {x} {rtserver.request.path_info}"

    @rtserver.expose
    def loop(self):
        raise rtserver.InternalRedirect("/loop")


def test_internal_redirect_serves_another_handler_in_the_same_request():
    with serve(Redirecting()) as s:
        assert s.get("/")[2] == b"target 5 /target"
        assert s.get("/loop")[0] == 500


def test_access_and_error_logs_to_files(tmp_path):
    access, error = tmp_path / "access.log", tmp_path / "error.log"
    gconf = {"log.access_file": str(access), "log.error_file": str(error)}
    with serve(Root(), global_config=gconf) as s:
        s.get("/page?a=1", headers={"User-Agent": "pytest-agent", "Referer": "http://r/"})
        s.get("/boom")
    rtserver.config.update({"log.access_file": "", "log.error_file": ""})
    lines = access.read_text().splitlines()
    assert len(lines) == 2
    # Combined Log Format: host ident user [date] "request line" status bytes "referer" "agent"
    assert lines[0].startswith("127.0.0.1 - - [")
    assert '"GET /page?a=1 HTTP/1.1" 200 12 "http://r/" "pytest-agent"' in lines[0]
    assert '"GET /boom HTTP/1.1" 500' in lines[1]
    assert "RuntimeError: database password is hunter2" in error.read_text()
