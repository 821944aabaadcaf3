"""The engine bus: priorities, collected failures, states, exit status, signals, PID file."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import gevent
import pytest
from conftest import signal_script

from rtserver.bus.bus import Bus, ChannelFailures, States
from rtserver.bus.plugins import PIDFile


def test_listeners_run_in_priority_order_and_return_results():
    bus = Bus()
    calls = []
    bus.subscribe("main", lambda: calls.append("b") or "b", priority=60)
    bus.subscribe("main", lambda: calls.append("a") or "a", priority=10)
    bus.subscribe("main", lambda: calls.append("c") or "c")
    assert bus.publish("main") == ["a", "c", "b"]
    assert calls == ["a", "c", "b"]


def test_listener_failures_are_collected_after_all_listeners_ran():
    bus = Bus()
    ran = []

    def bad1():
        raise ValueError("one")

    def bad2():
        raise KeyError("two")

    bus.subscribe("graceful", bad1, 10)
    bus.subscribe("graceful", lambda: ran.append(1), 20)
    bus.subscribe("graceful", bad2, 30)
    with pytest.raises(ChannelFailures) as info:
        bus.publish("graceful")
    assert ran == [1]
    assert [type(e) for e in info.value.exceptions] == [ValueError, KeyError]


def test_unsubscribe():
    bus = Bus()
    calls = []

    def cb():
        calls.append(1)

    bus.subscribe("main", cb)
    bus.unsubscribe("main", cb)
    bus.unsubscribe("main", cb)  # twice is fine
    bus.publish("main")
    assert calls == []


def test_states_through_start_stop_exit():
    bus = Bus()
    seen = []
    bus.subscribe("start", lambda: seen.append(bus.state))
    bus.subscribe("stop", lambda: seen.append(bus.state))
    bus.subscribe("exit", lambda: seen.append(bus.state))
    assert bus.state is States.STOPPED
    bus.start()
    assert bus.state is States.STARTED
    bus.exit()
    assert bus.state is States.EXITING
    assert seen == [States.STARTING, States.STOPPING, States.EXITING]


def test_block_returns_when_another_greenlet_exits_the_bus():
    bus = Bus()
    mains = []
    bus.subscribe("main", lambda: mains.append(1))
    bus.start()
    gevent.spawn_later(0.3, bus.exit)
    t0 = time.monotonic()
    bus.block(interval=0.05)
    assert bus.state is States.EXITING
    assert time.monotonic() - t0 < 3
    assert len(mains) >= 2


def test_wait_for_state():
    bus = Bus()
    gevent.spawn_later(0.1, bus.start)
    bus.wait(States.STARTED, interval=0.05)
    assert bus.state is States.STARTED
    bus.exit()


def _run(code: str, **kwargs):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=30, **kwargs
    )


def test_start_failure_is_reported_and_exits_with_status_70():
    result = _run(
        """
        from gevent import monkey; monkey.patch_all()
        import logging; logging.basicConfig()
        import rtserver
        def broken():
            raise RuntimeError("cannot open the database")
        rtserver.engine.subscribe("start", broken)
        rtserver.engine.start()
        print("not reached")
        """
    )
    assert result.returncode == 70, result.stderr
    assert "cannot open the database" in result.stderr
    assert "not reached" not in result.stdout


def test_quickstart_subscribes_signals_sigterm_exits_cleanly_and_sighup_is_graceful(tmp_path):
    port_file = tmp_path / "port"
    script = f"""
        from gevent import monkey; monkey.patch_all()
        import rtserver
        class Root:
            @rtserver.expose
            def index(self):
                return "hi"
        def announce():
            open({str(port_file)!r}, "w").write(str(rtserver.server.bound_address[1]))
        rtserver.engine.subscribe("start", announce, priority=90)
        rtserver.engine.subscribe("graceful", lambda: print("GRACEFUL", flush=True))
        rtserver.engine.subscribe("exit", lambda: print("EXITED", flush=True))
        rtserver.quickstart(Root(), config={{"global": {{"server.socket_port": 0, "log.screen": False}}}})
        """
    code, out, err = signal_script(script, port_file, [signal.SIGHUP, signal.SIGTERM])
    assert code == 0, err
    assert "GRACEFUL" in out
    assert "EXITED" in out


def test_pidfile_written_at_start_and_removed_at_exit(tmp_path):
    bus = Bus()
    path = tmp_path / "app.pid"
    PIDFile(bus, str(path)).subscribe()
    bus.start()
    assert path.read_text().strip() == str(os.getpid())
    bus.exit()
    assert not path.exists()


def test_exit_during_a_slow_start_does_not_leave_the_bus_started():
    bus = Bus()
    stops = []
    bus.subscribe("start", lambda: gevent.sleep(0.3))
    bus.subscribe("stop", lambda: stops.append(1))
    gevent.spawn_later(0.1, bus.exit)
    bus.start()
    assert bus.state is States.EXITING
    assert stops == [1]
