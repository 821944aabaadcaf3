"""Start-up errors a user can act on: one line, the exit status, no traceback.

Every test runs a plain script as a user does: ``python app.py`` (a script calling
``rtserver.quickstart``, with no gevent patching of its own) or ``python -m rtserver run
module:root``, in a fresh interpreter in a temporary directory. What is asserted is what
the user sees: the exit status (70: the process cannot start serving; 2: the command
line or config is wrong), one error line naming the address or config key and saying
what to do, no ``Traceback`` on stderr, and no ``Serving on`` before the error.

Nothing leaves the machine: addresses are 127.0.0.1 or one that this machine does not
have (binding it fails locally with EADDRNOTAVAIL); no host name is resolved.
"""

from __future__ import annotations

import dataclasses
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)

ROOT = pathlib.Path(__file__).resolve().parent.parent
KINDS = ("gevent", "cheroot", "native")
#: An address of no interface here (checked by ``foreign_host``): bind fails locally.
FOREIGN_HOST = "10.255.255.1"

APP = """\
import rtserver


class Root:
    @rtserver.expose
    def index(self):
        return "hello"


root = Root()
"""

#: Runs a script with redis-py made unimportable, for the one case of redis-py missing.
#: The test interpreter has the redis extra installed and it cannot be uninstalled for
#: one test; ``sys.modules['redis'] = None`` makes every ``import redis`` in that
#: process raise ModuleNotFoundError, exactly what a missing package raises, and the
#: script then runs unchanged through runpy (as ``python app.py`` or ``python -m``).
WITHOUT_REDIS = "import runpy, sys; sys.modules['redis'] = None; sys.argv = {argv!r}; runpy.{run}"


@dataclasses.dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def errors(self) -> list[str]:
        """The error lines: logged at ERROR, or printed by the command line."""
        return [line for line in self.err.splitlines() if " ERROR " in line or line.startswith("rtserver:")]


def run(tmp_path: pathlib.Path, args: list[str], *, cwd: pathlib.Path | None = None) -> Run:
    """Run ``python ARGS`` in ``tmp_path`` (bounded), as a user would from a shell."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, *args], cwd=cwd or tmp_path, capture_output=True, text=True, timeout=20)
    return Run(result.returncode, result.stdout, result.stderr, time.monotonic() - started)


def quickstart(tmp_path: pathlib.Path, config: object) -> list[str]:
    """Write ``app.py``: the app, then ``rtserver.quickstart(root, '/', config)``."""
    (tmp_path / "app.py").write_text(APP + f"\nrtserver.quickstart(root, '/', {config!r})\n")
    return ["app.py"]


def rtserver_run(tmp_path: pathlib.Path, *options: str, target: str = "myapp:root") -> list[str]:
    """Write ``myapp.py`` and return the arguments of ``python -m rtserver run``."""
    (tmp_path / "myapp.py").write_text(APP)
    return ["-m", "rtserver", "run", target, *options]


def assert_one_line(result: Run, code: int, *fragments: str, serving: bool = False) -> str:
    """Exit ``code``, exactly one error line holding every fragment, no traceback,
    and (unless ``serving``) no server said it was serving."""
    report = f"exit {result.code}\n--- stdout\n{result.out}\n--- stderr\n{result.err}"
    assert result.code == code, report
    assert "Traceback" not in result.err, report
    assert len(result.errors) == 1, report
    line = result.errors[0]
    for fragment in fragments:
        assert fragment in line, report
    if not serving:
        assert "Serving on" not in result.out + result.err, report
    return line


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 on which another socket listens for the test's length."""
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield port


@pytest.fixture
def foreign_host() -> str:
    """FOREIGN_HOST, skipping where this machine happens to have that address."""
    with socket.socket() as sock:
        try:
            sock.bind((FOREIGN_HOST, 0))
        except OSError:
            return FOREIGN_HOST
    pytest.skip(f"{FOREIGN_HOST} is an address of this machine")


# -- listening ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_port_in_use_quickstart(tmp_path: pathlib.Path, busy_port: int, kind: str) -> None:
    args = quickstart(tmp_path, {"global": {"server.socket_port": busy_port, "server.kind": kind}})
    assert_one_line(
        run(tmp_path, args),
        70,
        f"cannot listen on 127.0.0.1:{busy_port}: address already in use (server.socket_port)",
        "stop the other process or choose another port",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_port_in_use_rtserver_run(tmp_path: pathlib.Path, busy_port: int, kind: str) -> None:
    args = rtserver_run(tmp_path, "--port", str(busy_port), "--kind", kind)
    assert_one_line(
        run(tmp_path, args),
        70,
        f"cannot listen on 127.0.0.1:{busy_port}: address already in use (server.socket_port)",
        "choose another port",
    )


def test_port_in_use_rtserver_run_workers(tmp_path: pathlib.Path, busy_port: int) -> None:
    """The supervisor binds the workers' socket itself: the same line, before any
    worker starts (the broker is never contacted)."""
    pytest.importorskip("redis")
    args = rtserver_run(tmp_path, "--port", str(busy_port), "--workers", "2", "--broker", "redis://127.0.0.1:9/0")
    result = run(tmp_path, args)
    line = assert_one_line(result, 70, f"cannot listen on 127.0.0.1:{busy_port}: address already in use")
    assert line.startswith("rtserver: ")
    assert "Started worker" not in result.err


@pytest.mark.parametrize("kind", KINDS)
def test_address_not_of_this_machine(tmp_path: pathlib.Path, foreign_host: str, kind: str) -> None:
    args = quickstart(
        tmp_path, {"global": {"server.socket_host": foreign_host, "server.socket_port": 8080, "server.kind": kind}}
    )
    assert_one_line(
        run(tmp_path, args),
        70,
        f"cannot listen on {foreign_host}:8080",
        "(server.socket_host)",
        "use 127.0.0.1, 0.0.0.0",
    )


def test_address_not_of_this_machine_rtserver_run(tmp_path: pathlib.Path, foreign_host: str) -> None:
    args = rtserver_run(tmp_path, "--host", foreign_host, "--port", "8080")
    assert_one_line(run(tmp_path, args), 70, f"cannot listen on {foreign_host}:8080", "(server.socket_host)")


@pytest.mark.parametrize("kind", KINDS)
def test_unix_socket_in_missing_directory(tmp_path: pathlib.Path, kind: str) -> None:
    path = tmp_path / "no-such-dir" / "app.sock"
    args = quickstart(tmp_path, {"global": {"server.socket_file": str(path), "server.kind": kind}})
    assert_one_line(
        run(tmp_path, args),
        70,
        f"cannot listen on {path}: directory {path.parent} does not exist (server.socket_file)",
        "create it or choose another path",
    )
    assert not path.parent.exists()


def test_unix_socket_in_missing_directory_rtserver_run(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "no-such-dir" / "app.sock"
    args = rtserver_run(tmp_path, "--socket-file", str(path))
    assert_one_line(run(tmp_path, args), 70, f"directory {path.parent} does not exist (server.socket_file)")


def test_extra_server_port_in_use(tmp_path: pathlib.Path, busy_port: int) -> None:
    """``server.admin.*`` names its own keys. Whichever of the two servers the engine
    starts first, the process exits 70 at once with the one line, and a server that did
    listen was closed before the exit."""
    args = quickstart(tmp_path, {"global": {"server.socket_port": free_port(), "server.admin.socket_port": busy_port}})
    result = run(tmp_path, args)
    assert_one_line(
        result,
        70,
        f"cannot listen on 127.0.0.1:{busy_port}: address already in use (server.admin.socket_port)",
        serving=True,
    )
    assert result.seconds < 10, result.seconds
    assert result.err.count("Serving on") == result.err.count("Stopped serving on"), result.err


def test_tls_files_missing(tmp_path: pathlib.Path) -> None:
    cert, key = tmp_path / "missing.pem", tmp_path / "missing.key"
    config = {
        "server.socket_port": free_port(),
        "server.ssl_certificate": str(cert),
        "server.ssl_private_key": str(key),
    }
    assert_one_line(
        run(tmp_path, quickstart(tmp_path, {"global": config})),
        70,
        f"cannot load the TLS certificate {cert} with the key {key} (server.ssl_certificate, server.ssl_private_key)",
        f"{cert} does not exist",
        "check the paths",
    )


# -- config ---------------------------------------------------------------------------------

MISSPELT_INI = """\
# the port of the app
[global]
server.socket_prot = 8080

[/]
tools.sessions.on = True
"""


def test_ini_unknown_key_rtserver_run(tmp_path: pathlib.Path) -> None:
    (tmp_path / "app.conf").write_text(MISSPELT_INI)
    line = assert_one_line(
        run(tmp_path, rtserver_run(tmp_path, "-c", "app.conf")),
        2,
        "unknown config key 'server.socket_prot' (app.conf, line 3); did you mean 'server.socket_port'?",
    )
    assert line.startswith("rtserver: config error: ")


def test_ini_string_for_on_rtserver_run(tmp_path: pathlib.Path) -> None:
    """In an INI file values are Python literals: ``False`` is the bool, ``"False"`` a
    string, which would turn the tool on."""
    (tmp_path / "app.conf").write_text('[global]\nserver.socket_port = 0\n\n[/]\ntools.sessions.on = "False"\n')
    assert_one_line(
        run(tmp_path, rtserver_run(tmp_path, "-c", "app.conf")),
        2,
        "app.conf, line 5: tools.sessions.on = 'False'",
        "write False without quotes",
    )


def test_dict_string_for_on_rtserver_run(tmp_path: pathlib.Path) -> None:
    """A dict config names its section; ``"False"`` is refused, not taken as true."""
    (tmp_path / "myapp.py").write_text(
        APP + "\napplication = rtserver.Application(root, '', {'/': {'tools.sessions.on': 'False'}})\n"
    )
    args = ["-m", "rtserver", "run", "myapp:application", "--port", "0"]
    assert_one_line(run(tmp_path, args), 2, "section [/]: tools.sessions.on = 'False'", "write False without quotes")


def test_dict_unknown_key_names_the_section(tmp_path: pathlib.Path) -> None:
    (tmp_path / "myapp.py").write_text(
        APP + "\napplication = rtserver.Application(root, '', {'/api': {'request.show_traceback': True}})\n"
    )
    args = ["-m", "rtserver", "run", "myapp:application", "--port", "0"]
    assert_one_line(
        run(tmp_path, args),
        2,
        "unknown config key 'request.show_traceback' (app /, section [/api]); did you mean 'request.show_tracebacks'?",
    )


def test_ini_unknown_key_quickstart(tmp_path: pathlib.Path) -> None:
    (tmp_path / "app.conf").write_text(MISSPELT_INI)
    assert_one_line(
        run(tmp_path, quickstart(tmp_path, "app.conf")),
        70,
        "unknown config key 'server.socket_prot' (app.conf, line 3); did you mean 'server.socket_port'?",
    )


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"/": {"tools.sessions.on": "False"}}, "tools.sessions.on = 'False'"),
        ({"global": {"engine.timeout_monitor.on": "yes"}}, "engine.timeout_monitor.on = 'yes'"),
    ],
)
def test_dict_string_for_on_quickstart(tmp_path: pathlib.Path, config: dict[str, object], fragment: str) -> None:
    assert_one_line(run(tmp_path, quickstart(tmp_path, config)), 70, fragment, "without quotes")


# -- the hub's broker -----------------------------------------------------------------------

BAD_BROKER = "amqp://guest:secret@127.0.0.1:5672/"


def test_bad_broker_scheme_quickstart(tmp_path: pathlib.Path) -> None:
    """The hub's start (priority 60) fails before any server binds (75): no "Serving on"."""
    args = quickstart(tmp_path, {"global": {"server.socket_port": free_port(), "hub.broker": BAD_BROKER}})
    result = run(tmp_path, args)
    line = assert_one_line(
        result,
        70,
        "hub.broker = 'amqp://guest:***@127.0.0.1:5672/': unsupported scheme 'amqp'",
        "'redis://",
    )
    assert "secret" not in result.err and "secret" not in line


def test_bad_broker_scheme_rtserver_run(tmp_path: pathlib.Path) -> None:
    line = assert_one_line(
        run(tmp_path, rtserver_run(tmp_path, "--port", "0", "--broker", "amqp://127.0.0.1/")),
        2,
        "hub.broker = 'amqp://127.0.0.1/': unsupported scheme 'amqp'",
        "use 'memory' (this process only) or a Redis URL",
    )
    assert line.startswith("rtserver: config error: ")


def test_bad_broker_in_ini_rtserver_run(tmp_path: pathlib.Path) -> None:
    (tmp_path / "app.conf").write_text("[global]\nhub.broker = 'nats://127.0.0.1:4222'\n")
    assert_one_line(
        run(tmp_path, rtserver_run(tmp_path, "--port", "0", "-c", "app.conf", "--workers", "2")),
        2,
        "hub.broker = 'nats://127.0.0.1:4222': unsupported scheme 'nats'",
    )


REDIS_ADVICE = (
    "needs redis-py, which is not installed",
    "pip install 'rtserver[redis]'",
    "bash scripts/setup.sh redis",
)


def test_redis_missing_quickstart(tmp_path: pathlib.Path) -> None:
    """See WITHOUT_REDIS for how redis-py is made missing. The broker URL points at a
    port nothing listens on: no connection is ever attempted."""
    quickstart(tmp_path, {"global": {"server.socket_port": free_port(), "hub.broker": "redis://127.0.0.1:9/0"}})
    code = WITHOUT_REDIS.format(argv=["app.py"], run="run_path('app.py', run_name='__main__')")
    assert_one_line(run(tmp_path, ["-c", code]), 70, "hub.broker = 'redis://127.0.0.1:9/0'", *REDIS_ADVICE)


def test_redis_missing_rtserver_run(tmp_path: pathlib.Path) -> None:
    argv = rtserver_run(tmp_path, "--port", "0", "--broker", "redis://127.0.0.1:9/0")[1:]
    code = WITHOUT_REDIS.format(argv=argv, run="run_module('rtserver', run_name='__main__', alter_sys=True)")
    line = assert_one_line(run(tmp_path, ["-c", code]), 70, "hub.broker = 'redis://127.0.0.1:9/0'", *REDIS_ADVICE)
    assert line.startswith("rtserver: ")


def test_chat_example_says_how_to_install_redis_from_the_checkout(tmp_path: pathlib.Path) -> None:
    argv = ["examples.chat", "--port", "0", "--broker", "redis://127.0.0.1:9/0"]
    code = WITHOUT_REDIS.format(argv=argv, run="run_module('examples.chat', run_name='__main__', alter_sys=True)")
    result = run(tmp_path, ["-c", code], cwd=ROOT)
    assert result.code == 2, result.err
    assert "Traceback" not in result.err and "Serving on" not in result.err + result.out
    assert "bash scripts/setup.sh redis" in result.err
    assert "pip install" not in result.err
