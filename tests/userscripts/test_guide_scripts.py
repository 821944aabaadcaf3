"""The reference guide's examples, written with ``rtserver`` for ``cherrypy``, run as
plain scripts (``tests/userscripts/guide/``, kept as the guide writes them)."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.servers.deploy_support import make_certificates

from .harness import Script


def run(workdir: Path, name: str, *args: str, stdin: object = subprocess.DEVNULL) -> Script:
    """Start ``python NAME ARGS`` in ``workdir`` (stdin: no terminal unless given one)."""
    return Script([sys.executable, name, *args], workdir).start(stdin=stdin)


def test_aliases(workdir: Path) -> None:
    with run(workdir, "aliases.py") as s:
        s.wait_port(8080)
        for path in ("/generate", "/generer", "/generar"):
            status, _, body = s.get(f"{path}?length=6")
            assert status == 200 and len(body) == 6, (path, status, body)
        assert s.get("/nothing")[0] == 404


def test_response_timeouts_and_the_monitor_from_an_ini_file(workdir: Path) -> None:
    with run(workdir, "timeouts.py") as s:
        s.wait_port(8080)
        assert s.get("/")[2] == b"3600"  # engine.timeout_monitor.frequency: 60 * 60
        assert s.get("/attributes")[2] == b"600 False True"  # response.timeout: 600


def test_the_monitor_interrupts_a_request_past_its_timeout(workdir: Path) -> None:
    with run(workdir, "timeouts.py", "--fast-monitor") as s:
        s.wait_port(8080)
        started = time.monotonic()
        status, _, _ = s.get("/slow")
        assert status == 503 and time.monotonic() - started < 5
        assert s.get("/")[2] == b"0.5"


def test_timeout_monitor_off(workdir: Path) -> None:
    with run(workdir, "monitor_off.py") as s:
        s.wait_port(8080)
        assert s.get("/slow")[:3:2] == (200, b"finished")


def test_signals_with_quickstart_exit_zero(workdir: Path) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        with run(workdir, "signals_quickstart.py") as s:
            s.wait_port(8080)
            assert s.get("/")[2] == b"Hello world!"
            s.signal(signum)
            assert s.wait(10) == 0, s.err
            assert "Bus EXITED" in s.err


def test_sighup_restarts_a_daemonised_process(workdir: Path) -> None:
    """CherryPy's rule: with no terminal on stdin the process counts as daemonised,
    and SIGHUP is a graceful restart; it goes on serving."""
    with run(workdir, "signals_quickstart.py") as s:
        s.wait_port(8080)
        s.signal(signal.SIGHUP)
        s.wait_for_output("graceful reload")
        assert s.get("/")[2] == b"Hello world!"
        assert s.proc is not None and s.proc.poll() is None
        s.signal(signal.SIGTERM)
        assert s.wait(10) == 0


def test_sighup_stops_a_foreground_process(workdir: Path) -> None:
    """With a terminal on stdin (a foreground run), SIGHUP (the terminal closing) exits."""
    leader, follower = pty.openpty()
    try:
        with run(workdir, "signals_quickstart.py", stdin=follower) as s:
            s.wait_port(8080)
            s.signal(signal.SIGHUP)
            assert s.wait(10) == 0, s.err
            assert "not daemonized" in s.err
    finally:
        os.close(leader)
        os.close(follower)


def test_manual_start_handles_signals_only_once_subscribed(workdir: Path) -> None:
    with run(workdir, "signals_manual.py", "--signals") as s:
        s.wait_port(8080)
        assert s.get("/")[2] == b"Hello world!"
        s.signal(signal.SIGTERM)
        assert s.wait(10) == 0, s.err
    with run(workdir, "signals_manual.py") as s:
        s.wait_port(8080)
        assert s.get("/")[2] == b"Hello world!"
        s.signal(signal.SIGTERM)
        assert s.wait(10) == -signal.SIGTERM  # no handler: the default action
        assert "Caught signal" not in s.err


def test_secureheaders_tool_and_secure_sessions(workdir: Path) -> None:
    with run(workdir, "secureheaders.py") as s:
        s.wait_port(8080)
        status, headers, body = s.get("/")
        assert (status, body) == (200, b"secured")
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-XSS-Protection"] == "1; mode=block"
        assert headers["Content-Security-Policy"] == "default-src='self'"
        assert "Strict-Transport-Security" not in headers  # not over plain HTTP
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "Secure" in cookie


def test_hsts_over_tls(workdir: Path) -> None:
    certs = make_certificates(workdir)
    (workdir / "tls.conf").write_text(
        (workdir / "secureheaders.conf").read_text()
        + f"\n[global]\nserver.ssl_certificate = {certs['cert']!r}\nserver.ssl_private_key = {certs['key']!r}\n"
    )
    with run(workdir, "secureheaders.py", "tls.conf") as s:
        s.wait_port(8080)
        status, headers, body = s.get("/", tls=True)
        assert (status, body) == (200, b"secured")
        assert headers["Strict-Transport-Security"] == "max-age=31536000"


def test_a_second_server(workdir: Path) -> None:
    with run(workdir, "second_server.py") as s:
        s.wait_port(8080)
        s.wait_port(8090)
        assert s.get("/", port=8080)[2] == b"port 8080"
        assert s.get("/", port=8090)[2] == b"port 8090"


def test_graft_a_foreign_wsgi_app(workdir: Path) -> None:
    with run(workdir, "graft.py") as s:
        s.wait_port(8080)
        assert s.get("/")[:3:2] == (200, b"Hello world!")
        s.signal(signal.SIGTERM)
        assert s.wait(10) == 0


def test_the_native_server(workdir: Path) -> None:
    with run(workdir, "native.py") as s:
        s.wait_port(8080)
        assert s.get("/")[:3:2] == (200, b"Hello World!")
        s.signal(signal.SIGTERM)
        assert s.wait(10) == 0


def test_a_ws4py_handler_through_the_websocket_tool(workdir: Path) -> None:
    with run(workdir, "ws4py_tool.py") as s:
        s.wait_port(8080)
        assert s.get("/")[2] == b"pages and sockets on one port"
        with s.websocket("/ws") as ws:
            ws.send("ping")
            assert ws.recv(timeout=5) == "ping"
        s.signal(signal.SIGTERM)
        assert s.wait(10) == 0


def test_application_in_wsgiref_is_not_patched(workdir: Path) -> None:
    with run(workdir, "wsgi_wsgiref.py") as s:
        s.wait_port(8080)
        status, _, body = s.get("/")
        assert (status, body) == (200, b"patched=False thread=MainThread")


def test_application_in_cheroots_threaded_server_keeps_its_threads(workdir: Path) -> None:
    with run(workdir, "wsgi_cheroot.py") as s:
        s.wait_port(8080)
        status, _, body = s.get("/")
        assert (status, body) == (200, b"patched=False thread=WorkerThread")
        s.signal(signal.SIGINT)
        assert s.wait(30) == 0  # cheroot joins its worker threads (up to 5 s each round)
