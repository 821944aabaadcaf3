"""Static files: never a byte from outside the root; caching headers, 304, ranges."""

import os
import socket

import pytest

import rtserver
from rtserver.testing import serve


class Root:
    @rtserver.expose
    def index(self):
        return "root"


@pytest.fixture
def site(tmp_path):
    public = tmp_path / "public"
    (public / "css").mkdir(parents=True)
    (public / "css" / "app.css").write_text("body{color:red}")
    (public / "index.html").write_text("<h1>home</h1>")
    (public / "data.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "public-secret").mkdir()
    (tmp_path / "public-secret" / "key.txt").write_text("SECRET")
    (tmp_path / "outside.txt").write_text("SECRET")
    os.symlink(tmp_path / "outside.txt", public / "link.txt")
    os.symlink(tmp_path / "public-secret", public / "linkdir")
    conf = {
        "/static": {
            "tools.staticdir.on": True,
            "tools.staticdir.dir": str(public),
            "tools.staticdir.index": "index.html",
        },
        "/favicon.ico": {"tools.staticfile.on": True, "tools.staticfile.filename": str(public / "css" / "app.css")},
    }
    with serve(Root(), conf) as s:
        yield s


def raw_get(srv, target: str) -> bytes:
    """Send the request target exactly as given (no client-side normalisation)."""
    with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_serves_files_with_type_and_validators(site):
    status, headers, body = site.get("/static/css/app.css")
    assert (status, body) == (200, b"body{color:red}")
    assert headers["Content-Type"] == "text/css;charset=utf-8"
    assert headers["ETag"] and headers["Last-Modified"]
    assert headers["Content-Length"] == "15"


def test_directory_index_and_staticfile(site):
    assert site.get("/static/")[2] == b"<h1>home</h1>"
    assert site.get("/favicon.ico")[2] == b"body{color:red}"


def test_not_modified(site):
    _, headers, _ = site.get("/static/css/app.css")
    status, _, body = site.get("/static/css/app.css", headers={"If-None-Match": headers["ETag"]})
    assert (status, body) == (304, b"")
    status, _, _ = site.get("/static/css/app.css", headers={"If-Modified-Since": headers["Last-Modified"]})
    assert status == 304
    status, _, _ = site.get("/static/css/app.css", headers={"If-None-Match": '"other"'})
    assert status == 200


def test_ranges(site):
    status, headers, body = site.get("/static/data.bin", headers={"Range": "bytes=10-19"})
    assert status == 206 and body == bytes(range(10, 20))
    assert headers["Content-Range"] == "bytes 10-19/1024"
    status, headers, body = site.get("/static/data.bin", headers={"Range": "bytes=-4"})
    assert status == 206 and body == bytes(range(252, 256))
    status, headers, _ = site.get("/static/data.bin", headers={"Range": "bytes=5000-"})
    assert status == 416 and headers["Content-Range"] == "bytes */1024"


@pytest.mark.parametrize(
    ("value", "status", "content_range"),
    [
        ("bytes=" + "9" * 5000 + "-", 416, "bytes */1024"),  # past the end, however long
        ("bytes=0-" + "9" * 5000, 200, None),  # to the end: the whole file, as a 200
        ("bytes=-" + "9" * 5000, 200, None),  # the last 10^5000 bytes: the whole file
        ("bytes=" + "0" * 5000 + "1-1", 206, "bytes 1-1/1024"),  # leading zeros
    ],
)
def test_ranges_with_thousands_of_digits(site, value, status, content_range):
    """int() refuses more than 4,300 digits: such a Range used to answer 500."""
    got, headers, _ = site.get("/static/data.bin", headers={"Range": value})
    assert (got, headers["Content-Range"]) == (status, content_range)


@pytest.mark.parametrize(
    "target",
    [
        "/static/../outside.txt",
        "/static/%2e%2e/outside.txt",
        "/static/%2E%2E%2Foutside.txt",
        "/static/..%2foutside.txt",
        "/static/css/../../outside.txt",
        "/static/%2e%2e/public-secret/key.txt",
        "/static/../public-secret/key.txt",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/link.txt",
        "/static/linkdir/key.txt",
        "/static/%00.css",
        "/static/css/app.css%00.txt",
        "/static/..\\outside.txt",
    ],
)
def test_never_a_byte_from_outside_the_root(site, target):
    reply = raw_get(site, target)
    assert b"SECRET" not in reply
    assert b"root:" not in reply  # /etc/passwd
    status = int(reply.split(b" ", 2)[1])
    assert status in (400, 404)
