"""Response timeouts and the timeout monitor, including interrupting a hung handler."""

import time

import gevent

import rtserver
from rtserver.testing import serve

state = {"finished": 0, "interrupted": 0}


class Root:
    @rtserver.expose
    def hang(self):
        try:
            gevent.sleep(3600)
        except rtserver.TimeoutError:
            state["interrupted"] += 1
            raise
        state["finished"] += 1
        return "never"

    @rtserver.expose
    def slow_then_check(self):
        rtserver.response.time -= 10  # pretend we started 10 s ago
        rtserver.response.check_timeout()
        return "too late"

    @rtserver.expose
    def attrs(self):
        r = rtserver.response
        return f"{r.timeout} {r.timed_out} {abs(r.time - time.time()) < 5}"


def test_response_timing_attributes_default():
    with serve(Root()) as s:
        assert s.get("/attrs")[2] == b"300.0 False True"


def test_pipeline_checks_timed_out_after_the_handler():
    with serve(Root(), {"/": {"response.timeout": 1}}) as s:
        status, _, body = s.get("/slow_then_check")
    assert status == 503
    assert b"too late" not in body


def test_monitor_interrupts_a_handler_blocked_in_sleep():
    state.update(finished=0, interrupted=0)
    glets_before = len([g for g in _greenlets()])
    conf = {"/hang": {"response.timeout": 0.3}}
    gconf = {"engine.timeout_monitor.frequency": 0.1}
    with serve(Root(), conf, global_config=gconf) as s:
        t0 = time.monotonic()
        status, _, _ = s.get("/hang", timeout=10)
        elapsed = time.monotonic() - t0
        assert status == 503
        assert elapsed < 3
        assert state == {"finished": 0, "interrupted": 1}
        gevent.sleep(0.1)
    assert len(_greenlets()) <= glets_before + 2


def test_monitor_without_interrupt_only_flags():
    state.update(finished=0, interrupted=0)
    gconf = {
        "engine.timeout_monitor.frequency": 0.1,
        "engine.timeout_monitor.interrupt": False,
        "server.shutdown_timeout": 0.5,
    }
    with serve(Root(), {"/hang": {"response.timeout": 0.2}}, global_config=gconf) as s:
        ok = []
        g = gevent.spawn(lambda: ok.append(s.get("/hang", timeout=1)))
        gevent.sleep(0.8)
        assert state["interrupted"] == 0
        g.kill()
    assert rtserver.engine.timeout_monitor.interrupt is True
    assert rtserver.engine.timeout_monitor.frequency == 60


def test_monitor_can_be_turned_off_by_config():
    with serve(Root(), global_config={"engine.timeout_monitor.on": False}):
        assert rtserver.engine.timeout_monitor._thread is None
    with serve(Root()):
        assert rtserver.engine.timeout_monitor._thread is not None


def _greenlets():
    import gc

    from greenlet import greenlet

    live = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, greenlet) and not obj.dead:
                live.append(obj)
        except ReferenceError:  # a weak proxy whose referent is gone
            continue
    return live
