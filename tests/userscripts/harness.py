"""Run a user's script the way a user does: ``python app.py``, nothing added.

Each script runs in a fresh interpreter (no gevent patching but its own, no import of
the test process) inside a network namespace of its own, which holds nothing but a
loopback interface. So an example from the README binds the port it names (8080 by
default) exactly as written, without colliding with anything else on the machine, and
the test talks to it over real loopback TCP: the test process enters the namespace
only to create its client sockets (``setns``), which stay in it afterwards.

Namespaces need root (CI runs as root) or user namespaces; without them the tier skips
with the reason, which ``RTSERVER_REQUIRE_ALL=1`` turns into a failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def namespaces_available() -> tuple[bool, str]:
    """Whether this process may make a network namespace and enter it."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False, "unshare(1) and ip(8) are needed (Debian packages util-linux, iproute2)"
    if os.geteuid() != 0:
        return False, "entering a script's network namespace needs root (CI runs as root)"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return False, f"network namespaces are not permitted here: {probe.stderr.strip()}"
    return True, ""


@contextlib.contextmanager
def inside(pid: int) -> Iterator[None]:
    """Create sockets in the network namespace of process ``pid`` while in the block.

    The namespace belongs to the OS thread, which every greenlet of this process
    shares: nothing in the block may yield to another greenlet (create the socket
    here, connect it after; see :func:`connect`)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the script's namespace failed")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back failed")
    finally:
        os.close(own)
        os.close(target)


def connect(pid: int, port: int, timeout: float = 10) -> socket.socket:
    """A TCP socket connected to ``127.0.0.1:port`` in the namespace of ``pid``."""
    with inside(pid):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # binds to the namespace
    try:
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))  # may yield: outside the block
    except BaseException:
        sock.close()
        raise
    return sock


class Script:
    """A script (or ``python -m ...`` command) run as its own process in its own namespace."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "GEVENT"))}
        self.env.update(env or {})
        self.proc: subprocess.Popen[str] | None = None
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers: list[threading.Thread] = []

    @classmethod
    def from_text(cls, code: str, directory: Path, name: str = "app.py", **kw: Any) -> Script:
        """Write ``code`` to ``directory/name`` and prepare ``python name``."""
        (directory / name).write_text(code)
        return cls([sys.executable, name], directory, **kw)

    # -- life cycle ------------------------------------------------------------

    def start(self, stdin: Any = subprocess.DEVNULL) -> Script:
        self.proc = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *self.argv],
            cwd=self.cwd,
            env=self.env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Drain both pipes as the script writes, so a chatty script never blocks on a
        # full pipe and a test can look at what it logged so far.
        for stream, into in ((self.proc.stdout, self._out), (self.proc.stderr, self._err)):
            reader = threading.Thread(target=_drain, args=(stream, into), daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    @property
    def out(self) -> str:
        """What the script wrote to stdout so far."""
        return "".join(self._out)

    @property
    def err(self) -> str:
        """What the script wrote to stderr so far."""
        return "".join(self._err)

    def wait_for_output(self, text: str, timeout: float = 10) -> None:
        """Wait until ``text`` appears on the script's stderr or stdout."""
        deadline = time.monotonic() + timeout
        while text not in self.err and text not in self.out:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared in {timeout} s:\n{self.err}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_port(self, port: int = 8080, timeout: float = 20) -> None:
        """Wait until something listens on ``port`` in the script's namespace."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                self.collect()
                raise AssertionError(f"the script exited with {self.proc.returncode}:\n{self.err}")
            try:
                connect(self.pid, port, timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"nothing listened on port {port} in {timeout} s:\n{self.err}") from None
                time.sleep(0.05)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20) -> int:
        """Wait for the process to exit on its own; its exit status."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"the script was still running after {timeout} s:\n{self.err}") from None
        self.collect()
        return self.proc.returncode

    def collect(self) -> None:
        """Wait for the pipes to be read to their end (the process has exited)."""
        assert self.proc is not None
        self.proc.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=10)

    def stop(self) -> None:
        """Kill the process if it still runs (a test's ``finally``)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.collect()

    def __enter__(self) -> Script:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients -----------------------------------------------------------------

    def connection(self, port: int = 8080, timeout: float = 10, tls: bool = False) -> http.client.HTTPConnection:
        """A connected HTTP(S) connection to the script's port."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        sock = connect(self.pid, port, timeout)
        conn.sock = ctx.wrap_socket(sock) if tls else sock
        return conn

    def request(
        self,
        method: str,
        path: str,
        port: int = 8080,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
        tls: bool = False,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request on a fresh connection: ``(status, headers, body)``."""
        conn = self.connection(port, timeout, tls)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> tuple[int, http.client.HTTPMessage, bytes]:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict[str, str], **kw: Any) -> tuple[int, http.client.HTTPMessage, bytes]:
        from urllib.parse import urlencode

        headers = {"Content-Type": "application/x-www-form-urlencoded", **kw.pop("headers", {})}
        return self.request("POST", path, body=urlencode(form), headers=headers, **kw)

    def websocket(self, path: str, port: int = 8080, headers: dict[str, str] | None = None) -> ClientConnection:
        """A WebSocket client connected to ``path`` (same-origin ``Origin`` header)."""
        sock = connect(self.pid, port)
        return ws_connect(
            f"ws://127.0.0.1:{port}{path}",
            sock=sock,
            origin=f"http://127.0.0.1:{port}",  # type: ignore[arg-type]
            additional_headers=headers or {},
            open_timeout=10,
        )


def _drain(stream: Any, into: list[str]) -> None:
    for line in iter(stream.readline, ""):
        into.append(line)
    stream.close()
