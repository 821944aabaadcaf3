"""Fixtures for the HTTP server tests: a server on 127.0.0.1:0 and raw-socket clients."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from rtserver.servers.gevent import GeventHTTPServer
from rtserver.servers.options import HTTPOptions


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A hello-world WSGI app."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


@contextmanager
def running(
    app: Any = hello, bind: Any = ("127.0.0.1", 0), stop_timeout: float = 1.0, **kwargs: Any
) -> Iterator[GeventHTTPServer]:
    """A started GeventHTTPServer; option names go to HTTPOptions, others to the server."""
    option_names = set(HTTPOptions.__dataclass_fields__)
    options = HTTPOptions(**{k: v for k, v in kwargs.items() if k in option_names})
    rest = {k: v for k, v in kwargs.items() if k not in option_names}
    server = GeventHTTPServer(app, bind, options=options, **rest)
    server.start()
    try:
        yield server
    finally:
        server.stop(stop_timeout)


def connect(server: GeventHTTPServer, timeout: float = 3.0) -> socket.socket:
    """A client socket connected to ``server``."""
    addr = server.bound_address
    if isinstance(addr, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(addr)
        return sock
    return socket.create_connection(addr, timeout=timeout)


def read_all(sock: socket.socket, timeout: float = 3.0) -> bytes:
    """Everything until the server closes (raises TimeoutError if it does not)."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def exchange(server: GeventHTTPServer, data: bytes, timeout: float = 3.0) -> bytes:
    """Send ``data`` on a new connection; return all bytes until the server closes."""
    with connect(server, timeout) as sock:
        sock.sendall(data)
        return read_all(sock, timeout)


class Response:
    """One parsed response."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        """The (first) value of header ``name``."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class Reader:
    """Reads responses one at a time from a client socket (CL, chunked or close)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        return data

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self.buf += self._more()
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self._more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def head(self) -> Response:
        """The next response head (body not read)."""
        lines = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        _version, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
        return Response(int(status), reason, headers, b"")  # type: ignore[arg-type]

    def chunk(self) -> bytes:
        """The next chunk of a chunked body (b'' for the last one)."""
        size = int(self._until(b"\r\n"), 16)
        if size == 0:
            self._until(b"\r\n")
            return b""
        data = self._exactly(size)
        assert self._exactly(2) == b"\r\n"
        return data

    def response(self, method: str = "GET") -> Response:
        """The next whole response."""
        resp = self.head()
        if method == "HEAD" or resp.status in (204, 304) or resp.status < 200:
            return resp
        length = resp.header("Content-Length")
        if resp.header("Transfer-Encoding") == "chunked":
            parts = []
            while chunk := self.chunk():
                parts.append(chunk)
            resp.body = b"".join(parts)
        elif length is not None:
            resp.body = self._exactly(int(length))
        else:
            resp.body = self.buf + read_all(self.sock)
            self.buf = b""
        return resp


def status_lines(data: bytes) -> list[bytes]:
    """The status lines of every response in ``data`` (raw bytes of a connection)."""
    return re.findall(rb"HTTP/1\.1 [0-9]{3}[^\r\n]*", data)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate and key for localhost, made for this test run."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    directory: Path = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def server_tls_context(certificate: tuple[str, str]) -> ssl.SSLContext:
    """A server-side TLS context with the test certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context
