"""Test set-up: gevent monkey patching first, then shared fixtures.

Components that may be missing on a developer machine (redis-server, chromium, wrk)
make their tests skip with the reason; under ``RTSERVER_REQUIRE_ALL=1`` (CI) such a
skip is a failure instead.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

REQUIRE_ALL = os.environ.get("RTSERVER_REQUIRE_ALL") == "1"


def need(available: bool, reason: str) -> None:
    """Skip (or, under RTSERVER_REQUIRE_ALL=1, fail) when a component is missing."""
    if not available:
        if REQUIRE_ALL:
            pytest.fail(f"required component missing (RTSERVER_REQUIRE_ALL=1): {reason}")
        pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def signal_script(script: str, ready: pathlib.Path, signals: list[int], pause: float = 0.5) -> tuple[int, str, str]:
    """Run ``script`` in a fresh interpreter; once it creates ``ready``, send it each of
    ``signals`` (``pause`` seconds apart) and return ``(exit status, stdout, stderr)``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdin=subprocess.DEVNULL,  # no terminal: SIGHUP is graceful (daemonised)
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the script never became ready"
            time.sleep(0.05)
        for i, signum in enumerate(signals):
            if i:
                time.sleep(pause)
            os.kill(proc.pid, signum)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


class RedisServer:
    """A private redis-server on a free loopback port (no persistence)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rtserver-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh private redis-server for one test."""
    need(shutil.which("redis-server") is not None, "redis-server is not installed (Debian package redis-server)")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
