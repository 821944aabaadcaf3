"""engine.autoreload.on: user scripts run as users run them, edited while they serve.

Each test writes an app into a temporary directory, starts it in a fresh interpreter
(``python app.py``, no monkey patching in the script, or ``rtserver run``), reads its
page over loopback HTTP, edits a file and polls until the page shows the edit. The
supervisor and its child run in a session of their own, killed as a group at the end.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from conftest import free_port

# The reloader reacts within ~0.1 s of a change and a child starts in about a second;
# the bound leaves room for a loaded machine.
WAIT = 15.0

PAGES = """\
import os

import rtserver


class Root:
    @rtserver.expose
    def index(self):
        return {text!r}

    @rtserver.expose
    def pid(self):
        return str(os.getpid())
"""


class App:
    """A started supervisor: its process, its port and its log files."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, tmp: pathlib.Path) -> None:
        self.proc = proc
        self.port = port
        self.tmp = tmp

    def get(self, path: str = "/") -> tuple[str, dict[str, str]] | None:
        """The page's body and headers, or None while nothing serves."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return resp.read().decode(), dict(resp.headers)
        except OSError:
            return None

    def page(self, path: str = "/") -> str | None:
        got = self.get(path)
        return None if got is None else got[0]

    def stderr(self) -> str:
        return (self.tmp / "stderr.log").read_text(errors="replace")

    def wait_page(self, text: str) -> None:
        wait_for(lambda: self.page() == text, f"the page to answer {text!r}", self)

    def child_pid(self) -> int:
        wait_for(lambda: (self.page("/pid") or "").isdigit(), "the child's pid", self)
        return int(self.page("/pid") or 0)


def wait_for(predicate: Callable[[], bool], what: str, app: App) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert app.proc.poll() is None, f"the supervisor exited ({app.proc.returncode}):\n{app.stderr()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}; stderr:\n{app.stderr()}"
        time.sleep(0.05)


@contextmanager
def started(tmp: pathlib.Path, command: list[str], port: int) -> Iterator[App]:
    """Run ``command`` in ``tmp``; kill whatever is left of it afterwards."""
    with open(tmp / "stdout.log", "wb") as out, open(tmp / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            command, cwd=tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
    try:
        yield App(proc, port, tmp)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the supervisor's session: it and its child
        except ProcessLookupError:
            pass
        proc.wait(5)


def write_script(tmp: pathlib.Path, port: int, text: str, config: str) -> None:
    """``app.py`` serving ``pages.Root`` (whose index answers ``text``) with ``config``."""
    (tmp / "pages.py").write_text(PAGES.format(text=text))
    (tmp / "app.py").write_text(
        textwrap.dedent(f"""\
            import rtserver

            import pages

            PORT = {port}
            rtserver.quickstart(pages.Root(), config={config})
        """)
    )


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


DICT_CONFIG = (
    '{"global": {"engine.autoreload.on": True, "server.socket_host": "127.0.0.1", "server.socket_port": PORT}}'
)


def test_an_edited_module_restarts_the_app_and_a_syntax_error_does_not_stop_the_reloader(tmp_path):
    port = free_port()
    write_script(tmp_path, port, "first page", DICT_CONFIG)
    with started(tmp_path, [sys.executable, "app.py"], port) as app:
        app.wait_page("first page")
        (tmp_path / "pages.py").write_text(PAGES.format(text="the edited page"))
        app.wait_page("the edited page")

        (tmp_path / "pages.py").write_text("class Root(:\n")
        wait_for(lambda: app.page() is None, "the page to go away", app)
        wait_for(lambda: "waiting for a change" in app.stderr(), "the child's exit to be logged", app)
        err = app.stderr()
        assert "SyntaxError" in err and "pages.py" in err
        assert "app exited with status 1; waiting for a change" in err
        time.sleep(0.3)
        assert app.proc.poll() is None, "the supervisor died with its child"

        (tmp_path / "pages.py").write_text(PAGES.format(text="fixed again"))
        app.wait_page("fixed again")


def test_sigterm_stops_the_supervisor_and_its_child_with_status_0(tmp_path):
    port = free_port()
    write_script(tmp_path, port, "up", DICT_CONFIG)
    with started(tmp_path, [sys.executable, "app.py"], port) as app:
        app.wait_page("up")
        child = app.child_pid()
        assert child != app.proc.pid, "the page is served by a child, not the supervisor"
        app.proc.send_signal(signal.SIGTERM)
        assert app.proc.wait(WAIT) == 0, app.stderr()
        assert gone(child), "the child outlived its supervisor"
        assert app.page() is None


def test_a_changed_ini_file_restarts_the_app(tmp_path):
    port = free_port()
    conf = tmp_path / "app.conf"

    def write_conf(greeting: str) -> None:
        conf.write_text(
            "[global]\n"
            "engine.autoreload.on = True\n"
            "server.socket_host = '127.0.0.1'\n"
            f"server.socket_port = {port}\n"
            "[/]\n"
            "tools.response_headers.on = True\n"
            f"tools.response_headers.headers = [('X-Greeting', {greeting!r})]\n"
        )

    write_conf("hello")
    write_script(tmp_path, port, "page", "'app.conf'")
    with started(tmp_path, [sys.executable, "app.py"], port) as app:

        def greeting() -> str | None:
            got = app.get()
            return None if got is None else got[1].get("X-Greeting")

        wait_for(lambda: greeting() == "hello", "the first config", app)
        write_conf("bonjour")
        wait_for(lambda: greeting() == "bonjour", "the edited config", app)


def test_rtserver_run_reload_restarts_on_an_edit(tmp_path):
    port = free_port()
    (tmp_path / "pages.py").write_text(PAGES.format(text="cli page"))
    command = [sys.executable, "-m", "rtserver", "run", "--reload", "pages:Root", "--host", "127.0.0.1"]
    with started(tmp_path, [*command, "--port", str(port)], port) as app:
        app.wait_page("cli page")
        (tmp_path / "pages.py").write_text(PAGES.format(text="cli page, edited"))
        app.wait_page("cli page, edited")


def test_rtserver_run_with_the_key_in_a_config_file_restarts_on_an_edit(tmp_path):
    # No --reload: the supervisor is the gevent-patched process `rtserver run` makes,
    # so the watcher's thread must be an OS thread beside gevent's hub.
    port = free_port()
    (tmp_path / "pages.py").write_text(PAGES.format(text="patched"))
    (tmp_path / "dev.conf").write_text(f"[global]\nengine.autoreload.on = True\nserver.socket_port = {port}\n")
    command = [sys.executable, "-m", "rtserver", "run", "pages:Root", "-c", "dev.conf", "--host", "127.0.0.1"]
    with started(tmp_path, command, port) as app:
        app.wait_page("patched")
        (tmp_path / "pages.py").write_text(PAGES.format(text="patched, edited"))
        app.wait_page("patched, edited")


def test_reload_with_workers_is_a_usage_error(tmp_path):
    (tmp_path / "pages.py").write_text(PAGES.format(text="never served"))
    proc = subprocess.run(
        [sys.executable, "-m", "rtserver", "run", "--reload", "--workers", "2", "pages:Root"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--reload" in lines[0] and "--workers" in lines[0], proc.stderr
