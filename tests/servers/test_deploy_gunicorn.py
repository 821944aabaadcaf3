"""gunicorn with rtserver's worker class: pages and sockets, engine per worker."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import need

from .deploy_support import fetch, free_port, spawn, stop, wait_http


@pytest.fixture(autouse=True)
def _gunicorn_installed() -> None:
    need(importlib.util.find_spec("gunicorn") is not None, "gunicorn is not installed (the test extra)")


def _gunicorn_args(port: int, *extra: str) -> list[str]:
    import gunicorn.config

    args = ["-m", "gunicorn", "-k", "rtserver.gunicorn.Worker", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5"]
    if any(setting.name == "control_socket_disable" for setting in gunicorn.config.KNOWN_SETTINGS):
        args.append("--no-control-socket")  # gunicorn >= 25 would write one under $HOME
    return [*args, *extra]


@pytest.mark.timeout(60)
def test_gunicorn_worker_serves_pages_and_sockets() -> None:
    assert shutil.which("gunicorn", path=str(Path(sys.executable).parent)) is not None
    port = free_port()
    proc = spawn(_gunicorn_args(port, "-w", "2", "tests.servers.sample_app:app"))
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc)
        assert fetch(f"http://127.0.0.1:{port}/") == (200, "Hello from rtserver")
        # Both workers up (the second may still be booting when the first answers).
        pids: set[str] = set()
        deadline = time.monotonic() + 15
        while len(pids) < 2 and time.monotonic() < deadline:
            pids.add(fetch(f"http://127.0.0.1:{port}/pid")[1])
            time.sleep(0.01)
        assert len(pids) == 2, pids
        assert str(proc.pid) not in pids  # served by the workers, not the arbiter
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
            ws.send("through gunicorn")
            assert ws.recv(timeout=5) == "through gunicorn"
    finally:
        code, out, err = stop(proc)
    assert code == 0, err
    # The engine ran per worker: started with it, stopped and exited with it.
    assert err.count("Bus STARTED") == 2, err
    assert err.count("Bus EXITED") == 2, err


@pytest.mark.timeout(60)
def test_gunicorn_worker_takes_a_root_object() -> None:
    port = free_port()
    proc = spawn(_gunicorn_args(port, "-w", "1", "tests.servers.sample_app:root"))
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc)
        assert fetch(f"http://127.0.0.1:{port}/scheme") == (200, "http")
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
