"""A plain script is cooperative once rtserver serves: a handler's blocking call stalls
only its own request, whatever the script imported before ``import rtserver``; where
that can no longer be arranged, start-up fails with one line saying what to do."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import gevent
import pytest
from conftest import need

from tests.servers.deploy_support import make_certificates

from .harness import Script

APP = """\
import time, threading, ssl, logging, urllib.request
import requests
import redis
from time import sleep  # a name copied before rtserver patched time

import rtserver

store = redis.Redis(port=6390, socket_timeout=5)  # connects lazily, on first use


class Root:
    @rtserver.expose
    def index(self):
        return "fast"

    @rtserver.expose
    def sleep(self):
        time.sleep(1)
        return "slept"

    @rtserver.expose
    def copied(self):
        sleep(1)
        return "slept"

    @rtserver.expose
    def socket(self):
        return urllib.request.urlopen("http://127.0.0.1:8080/sleep", timeout=10).read()

    @rtserver.expose
    def https(self):
        return requests.get("https://127.0.0.1:8443/sleep", verify=False, timeout=10).content

    @rtserver.expose
    def redis(self):
        store.blpop("nothing-comes", timeout=1)
        return "slept"


tls = rtserver.Server()
tls.socket_port = 8443
tls.ssl_certificate = "cert.pem"
tls.ssl_private_key = "key.pem"
tls.subscribe()
rtserver.quickstart(Root())
"""


@pytest.fixture
def app(tmp_path: Path, namespaces: None):
    need(shutil.which("redis-server") is not None, "redis-server is not installed (Debian package redis-server)")
    certs = make_certificates(tmp_path)
    assert Path(certs["cert"]) == tmp_path / "cert.pem" and Path(certs["key"]) == tmp_path / "key.pem"
    with Script.from_text(APP, tmp_path) as s:
        s.start()
        s.wait_port(8080)
        s.wait_port(8443)
        redis_proc = subprocess.Popen(
            ["nsenter", f"--net=/proc/{s.pid}/ns/net", "redis-server", "--port", "6390", "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            s.wait_port(6390)
            yield s
        finally:
            redis_proc.kill()
            redis_proc.wait(10)


@pytest.mark.parametrize("path", ["/sleep", "/copied", "/socket", "/https", "/redis"])
def test_a_blocking_call_stalls_only_its_own_request(app: Script, path: str) -> None:
    """Four requests that each block for 1 s finish together in about 1 s, and a fast
    page answers at once meanwhile. A process that was not cooperative would serve them
    one after another: at least 4 s, the fast page answered after 3.8 s or more (or a
    deadlock on its own port, for /socket and /https). The bounds leave room for a
    loaded machine and still tell the two apart."""
    started = time.monotonic()
    slow = [gevent.spawn(app.get, path, timeout=15) for _ in range(4)]
    gevent.sleep(0.2)
    quick_started = time.monotonic()
    assert app.get("/")[2] == b"fast"
    quick = time.monotonic() - quick_started
    gevent.joinall(slow, timeout=15, raise_error=True)
    elapsed = time.monotonic() - started
    assert [g.value[:3:2] for g in slow] == [(200, b"slept")] * 4
    assert quick < 2.0, f"the fast page took {quick:.2f} s while {path} was blocking"
    assert elapsed < 3.5, f"four {path} requests took {elapsed:.2f} s: they ran one after another"


def _run_to_exit(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "app.py").write_text(code)
    return subprocess.run(
        ["unshare", "-n", sys.executable, "app.py"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )


ROOT = "class Root:\n    @rtserver.expose\n    def index(self):\n        return 'x'\nrtserver.quickstart(Root())\n"


@pytest.mark.parametrize(
    ("before", "fragments"),
    [
        (
            "import threading, time\nimport rtserver\n"
            "threading.Thread(target=time.sleep, args=(60,), name='poller', daemon=True).start()\n",
            ["thread(s) started before rtserver (poller)", "monkey.patch_all()"],
        ),
        (
            "import socket\nimport rtserver\nfeed = socket.socket()\nfeed.bind(('127.0.0.1', 0))\nfeed.listen()\n",
            ["socket(s) opened before rtserver started", "127.0.0.1", "monkey.patch_all()"],
        ),
    ],
    ids=["threads", "sockets"],
)
def test_too_late_to_patch_refuses_to_start_in_one_line(
    tmp_path: Path, namespaces: None, before: str, fragments: list[str]
) -> None:
    """Threads running or plain sockets open before the start would stay blocking."""
    result = _run_to_exit(tmp_path, before + ROOT)
    assert result.returncode == 70
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in result.stderr and "Serving on" not in result.stderr


def test_a_script_that_patched_itself_gets_no_second_patch_and_no_warning(tmp_path: Path, namespaces: None) -> None:
    code = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import warnings; warnings.simplefilter('always')\n"
        "import gevent.monkey\n"
        "calls = []\n"
        "real = gevent.monkey.patch_all\n"
        "gevent.monkey.patch_all = lambda *a, **k: calls.append(1) or real(*a, **k)\n"
        "import rtserver\n"
        "class Root:\n"
        "    @rtserver.expose\n"
        "    def index(self):\n"
        "        return f'patch_all calls after the script: {len(calls)}'\n"
        "rtserver.quickstart(Root())\n"
    )
    with Script.from_text(code, tmp_path) as s:
        s.start()
        s.wait_port(8080)
        assert s.get("/")[2] == b"patch_all calls after the script: 0"
        s.signal(15)
        assert s.wait(10) == 0
        assert "Warning" not in s.err, s.err
