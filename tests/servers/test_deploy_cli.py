"""``rtserver run`` / ``python -m rtserver``: one process, several workers, refusals."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .deploy_support import ROOT, fetch, free_port, pid_alive, spawn, stop, wait_http

pytestmark = pytest.mark.timeout(60)

APP = "tests.servers.sample_app"


@pytest.fixture
def broker_url(request: pytest.FixtureRequest) -> str:
    """A Redis URL for the shared hub (a private redis-server when installed)."""
    if shutil.which("redis-server"):
        return str(request.getfixturevalue("redis_server").url)
    return "redis://127.0.0.1:6379/0"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "rtserver", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )


def test_version() -> None:
    import rtserver

    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"rtserver {rtserver.__version__}"


def test_run_serves_until_sigterm() -> None:
    port = free_port()
    proc = spawn(["-m", "rtserver", "run", f"{APP}:root", "--port", str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc)
        assert fetch(f"http://127.0.0.1:{port}/") == (200, "Hello from rtserver")
        assert fetch(f"http://127.0.0.1:{port}/pid") == (200, str(proc.pid))
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    assert "Bus EXITED" in err


def test_run_with_config_file_root_class_and_native_kind(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "app.conf"
    conf.write_text(
        "[global]\n"
        f"server.socket_port = {port}\n"
        "server.socket_host = '127.0.0.1'\n"
        "\n[/]\n"
        "tools.response_headers.on = True\n"
        "tools.response_headers.headers = [('X-From-Conf', 'yes')]\n"
    )
    proc = spawn(["-m", "rtserver", "run", f"{APP}:Root", "-c", str(conf), "--kind", "native"])
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            assert resp.headers["X-From-Conf"] == "yes"
            assert resp.read() == b"Hello from rtserver"
        assert fetch(f"http://127.0.0.1:{port}/kind") == (200, "NativeServer")
    finally:
        code, _, err = stop(proc)
    assert code == 0, err


@pytest.mark.parametrize("kind", ["gevent", "cheroot"])
def test_run_an_application_on_a_unix_socket(tmp_path: Path, kind: str) -> None:
    path = str(tmp_path / "rt.sock")
    proc = spawn(["-m", "rtserver", "run", f"{APP}:app", "--socket-file", path, "--kind", kind])
    try:
        deadline = time.monotonic() + 15
        reply = b""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(5)
                    sock.connect(path)
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    while data := sock.recv(65536):
                        reply += data
                break
            except OSError:
                time.sleep(0.05)
        assert reply.startswith(b"HTTP/1.1 200 "), reply
        assert reply.endswith(b"Hello from rtserver")
    finally:
        code, _, err = stop(proc)
    assert code == 0, err


def test_bad_target_is_a_usage_error() -> None:
    result = _run("run", "tests.servers.sample_app:nothing_here")
    assert result.returncode == 2
    assert "has no object 'nothing_here'" in result.stderr
    result = _run("run", "no_such_module_xyz:root")
    assert result.returncode == 2
    assert "cannot import module" in result.stderr


def test_workers_need_a_shared_hub() -> None:
    result = _run("run", f"{APP}:root", "--workers", "2", "--port", str(free_port()))
    assert result.returncode == 2
    assert "--workers 2 needs a shared hub: set hub.broker = 'redis://" in result.stderr
    assert "--broker" in result.stderr
    result = _run("run", f"{APP}:root", "--workers", "2", "--broker", "memory", "--port", str(free_port()))
    assert result.returncode == 2
    assert "hub.broker" in result.stderr
    result = _run("run", f"{APP}:root", "--workers", "0")
    assert result.returncode == 2
    assert "--workers must be at least 1" in result.stderr


def _pids(port: int, want: int, seconds: float = 15) -> set[str]:
    """The worker pids that answer within ``seconds`` (stops once ``want`` are seen).

    A worker that is still starting answers nothing; one that is busy lets the other
    accept: keep asking for a while rather than a fixed number of times.
    """
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.add(fetch(f"http://127.0.0.1:{port}/pid")[1])
        if len(seen) >= want:
            break
        time.sleep(0.01)
    return seen


def test_workers_share_the_socket_are_replaced_and_stop(broker_url: str, tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "app.conf"
    # The parent binds what the config file says, and finds the shared broker there.
    conf.write_text(f"[global]\nserver.socket_port = {port}\nhub.broker = {broker_url!r}\n")
    proc = spawn(["-m", "rtserver", "run", f"{APP}:root", "-c", str(conf), "--workers", "2"])
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc)
        pids = _pids(port, 2)
        assert len(pids) == 2, pids
        assert str(proc.pid) not in pids
        # A worker that dies is replaced.
        victim = int(sorted(pids)[0])
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        now: set[str] = set()
        while time.monotonic() < deadline:
            try:
                now = _pids(port, 2, seconds=1)
            except OSError:
                continue
            if len(now) == 2 and str(victim) not in now:
                break
        assert len(now) == 2 and str(victim) not in now, now
        workers = {int(p) for p in now}
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    assert f"Worker {victim} died (signal 9); starting a replacement" in err
    assert not any(pid_alive(pid) for pid in workers)
