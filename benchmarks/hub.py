"""Hub fan-out: rtserver's hub to 5,000 sockets, in one process and through Redis, beside ws4py.

What it measures
    A message published to a channel every socket has joined, delivered to N sockets
    (default 5,000; WebSocket clients in 4 processes on raw sockets, see
    benchmarks/_wsclient.py):

    * single    one message: time from the trigger until every socket has it;
                deliveries/s = N / time (median of the rounds after the first)
    * burst     ``--burst`` messages (default 20) sent back to back: time until every
                socket has all of them; deliveries/s = N x burst / time

How
    The trigger is a text frame sent by one more ("control") socket; the server's
    handler publishes what it receives:

    * rtserver memory    one process, ``hub.broker = 'memory'``: ``hub.subscribe(ws,
                         'fan')`` on open, ``hub.publish('fan', text)`` on message
                         (benchmarks/apps/ws_rtserver.py)
    * rtserver redis x1  the same, one process, ``hub.broker`` a private redis-server
                         (started from the binary on a free port, killed at the end):
                         the cost of the broker round trip alone
    * rtserver redis x2  two processes on two ports sharing that Redis; half the
                         sockets on each, the control socket on the first: a message
                         crosses processes through Redis pub/sub
    * ws4py              plain ws4py 0.6 on gevent: the handler walks the server's
                         pool and ``send``s to each socket (blocking)

    Server processes and redis-server are pinned to CPU 0, the clients to CPU 1 (one
    core of server work for every configuration, so ratios compare costs). The
    configurations are interleaved round by round (``--rounds``).

Targets (never asserted, only reported)
    rtserver memory                 >= 100,000 deliveries/s
    rtserver redis / memory         >= 0.7

Usage
    python benchmarks/hub.py [--sockets 5000] [--rounds 5] [--burst 20] [--json FILE] [--quick]
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks import _wsclient as wc  # noqa: E402
from benchmarks._common import (  # noqa: E402
    PYTHON,
    Proc,
    can_pin,
    fmt,
    free_port,
    median,
    pinned,
    raise_nofile,
    ratio,
    table,
    verdict,
    wait_port,
    write_json,
)
from benchmarks.ws import reap, recv, spawn, split  # noqa: E402

CONFIGS = ["rtserver-memory", "rtserver-redis-x1", "rtserver-redis-x2", "ws4py"]
MSG = 64


class Setup:
    """One configuration: its server processes, ports, and the connected clients."""

    def __init__(self, name: str, a: argparse.Namespace, cpu: int | None, redis_url: str | None) -> None:
        self.name = name
        self.procs: list[Proc] = []
        self.ports: list[int] = []
        self.workers: list[tuple[Any, Any]] = []
        self.control: Any = None
        self.sent = 0
        self.note = ""
        self.client_cpu: list[float] = []
        nproc = 2 if name.endswith("x2") else 1
        for _ in range(nproc):
            port = free_port()
            if name == "ws4py":
                argv = [PYTHON, "-m", "benchmarks.apps.ws_ws4py", str(port)]
            else:
                broker = redis_url if "redis" in name else "memory"
                argv = [PYTHON, "-m", "benchmarks.apps.ws_rtserver", str(port), broker or "memory"]
            self.procs.append(Proc(name, pinned(argv, cpu)))
            self.ports.append(port)
        if "redis" in name and not redis_url:
            self.note = "no redis-server"

    def start(self, a: argparse.Namespace) -> bool:
        if self.note:
            return False
        for p, port in zip(self.procs, self.ports, strict=True):
            if not wait_port(port, p, 20):
                self.note = "did not start: " + p.log_tail(3).replace("\n", " | ")[-300:]
                return False
        counts = split(a.sockets, a.clients)
        argss = [
            {"port": self.ports[i % len(self.ports)], "path": "/fan", "conns": k, "cpu": a.client_cpu, "timeout": 30}
            for i, k in enumerate(counts)
        ]
        self.workers = spawn(wc.fan_worker, argss)
        try:
            for _p, c in self.workers:
                if recv(c, 120) != "ready":
                    raise RuntimeError("client not ready")
            self.control, _ = wc.connect(self.ports[0], "/fan")
            self.control.setblocking(False)
        except Exception as exc:
            self.note = f"clients failed: {exc!r}"
            return False
        time.sleep(0.5)  # let subscriptions settle (Redis SUBSCRIBE)
        return True

    def fire(self, count: int, timeout: float = 60) -> float | None:
        """Send ``count`` trigger messages; seconds until every socket had them all."""
        want = self.sent + count
        for _p, c in self.workers:
            c.send(("round", want))
        time.sleep(0.05)
        t0 = time.monotonic()
        self.control.sendall(wc.frame(b"f" * MSG, 1) * count)
        got = [recv(c, timeout) for _p, c in self.workers]
        ends = [g[0] for g in got]
        self.sent = want
        try:
            while self.control.recv(1 << 16):
                pass
        except BlockingIOError:
            pass
        if any(e is None for e in ends):
            return None
        elapsed = max(ends) - t0
        self.client_cpu.append(sum(g[1] for g in got) / elapsed * 100)
        return elapsed

    def stop(self) -> None:
        for _p, c in self.workers:
            try:
                c.send(("stop",))
            except OSError:
                pass
        reap(self.workers)
        if self.control is not None:
            self.control.close()
        for p in self.procs:
            p.stop()


def start_redis() -> Proc | None:
    exe = shutil.which("redis-server")
    if not exe:
        return None
    port = free_port()
    proc = Proc("redis", [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
    if not wait_port(port, proc, 10):
        proc.stop()
        return None
    proc.port = port  # type: ignore[attr-defined]
    return proc


def hub_usable() -> str:
    """'' when rtserver.websocket.hub has subscribe/publish, else what is missing."""
    try:
        from rtserver.websocket import hub as hub_mod
    except Exception as exc:
        return f"rtserver.websocket.hub does not import: {exc!r}"
    h = getattr(hub_mod, "hub", None)
    missing = [m for m in ("subscribe", "publish", "socket_closed") if not hasattr(h, m)]
    return f"hub lacks {', '.join(missing)}" if missing else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sockets", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5, help="single-message rounds per configuration (first is warm-up)")
    ap.add_argument("--burst", type=int, default=20, help="messages per burst round")
    ap.add_argument("--burst-rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--only", default=",".join(CONFIGS), help="configurations: " + ",".join(CONFIGS))
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--quick", action="store_true", help="smoke run of a few seconds")
    a = ap.parse_args(argv)
    if a.quick:
        a.sockets, a.rounds, a.burst, a.burst_rounds = 200, 2, 5, 1
    server_cpu, a.client_cpu = (0, 1) if can_pin() and not a.no_pin else (None, None)
    raise_nofile()
    names = [n for n in a.only.split(",") if n in CONFIGS]
    missing = hub_usable()
    if missing:
        print(f"rtserver hub not usable yet: {missing}; running ws4py only")
        names = [n for n in names if not n.startswith("rtserver")]

    redis = start_redis() if any("redis" in n for n in names) else None
    redis_url = f"redis://127.0.0.1:{redis.port}/0" if redis else None  # type: ignore[attr-defined]
    if redis is not None and server_cpu is not None:
        import subprocess

        subprocess.run(["taskset", "-p", "-c", str(server_cpu), str(redis.pid)], capture_output=True)
    singles: dict[str, list[float]] = {n: [] for n in names}
    bursts: dict[str, list[float]] = {n: [] for n in names}
    notes: dict[str, str] = {}
    t_start = time.monotonic()
    setups: list[Setup] = []
    try:
        # All configurations connected at once would need 4 x N client sockets and
        # server descriptors; N=5,000 x 4 fits the usual 20,000 limit only just, so set
        # them up one at a time, but interleave rounds between two passes.
        passes = 2 if not a.quick else 1
        per_pass = max(1, (a.rounds + passes - 1) // passes)
        burst_per_pass = max(1, (a.burst_rounds + passes - 1) // passes)
        for pas in range(passes):
            for name in names:
                s = Setup(name, a, server_cpu, redis_url)
                setups.append(s)
                try:
                    if not s.start(a):
                        notes[name] = s.note
                        print(f"{name}: {s.note}", flush=True)
                        continue
                    for _ in range(per_pass):
                        t = s.fire(1)
                        singles[name].append(t if t is not None else float("nan"))
                    for _ in range(burst_per_pass):
                        t = s.fire(a.burst)
                        bursts[name].append(t if t is not None else float("nan"))
                    print(
                        f"pass {pas + 1} {name:<18} single {[round(x * 1e3, 1) for x in singles[name]]} ms  "
                        f"burst of {a.burst} {[round(x * 1e3, 1) for x in bursts[name]]} ms  "
                        f"clients CPU {[round(x) for x in s.client_cpu]}%",
                        flush=True,
                    )
                except Exception as exc:
                    notes[name] = repr(exc)
                    print(f"{name}: {exc!r}", flush=True)
                finally:
                    s.stop()
    finally:
        for s in setups:
            for p in s.procs:
                p.stop()
        if redis is not None:
            redis.stop()

    summary: dict[str, dict[str, Any]] = {}
    rows = []
    for name in names:
        sing = singles[name][1:] if len(singles[name]) > 1 else singles[name]
        t1 = median(sing)
        tb = median(bursts[name])
        summary[name] = {
            "single_ms": t1 * 1e3,
            "single_per_s": a.sockets / t1 if t1 == t1 and t1 else float("nan"),
            "burst_ms": tb * 1e3,
            "burst_per_s": a.sockets * a.burst / tb if tb == tb and tb else float("nan"),
            "single_rounds_ms": [round(x * 1e3, 1) for x in singles[name]],
            "burst_rounds_ms": [round(x * 1e3, 1) for x in bursts[name]],
            "note": notes.get(name, ""),
        }
        s = summary[name]
        rows.append(
            [
                name,
                fmt(s["single_ms"], 1),
                fmt(s["single_per_s"]),
                fmt(s["burst_ms"], 1),
                fmt(s["burst_per_s"]),
                s["note"][:60],
            ]
        )
    pin = (
        f"servers and redis on CPU {server_cpu}, {a.clients} client processes on CPU {a.client_cpu}"
        if server_cpu is not None
        else "not pinned"
    )
    print(f"\nHub fan-out to {a.sockets} sockets ({pin}; {time.monotonic() - t_start:.0f} s)\n")
    print(table(["configuration", "1 msg ms", "deliveries/s", f"{a.burst} msgs ms", "deliveries/s (burst)", ""], rows))

    def val(n: str, k: str) -> float:
        return summary.get(n, {}).get(k, float("nan"))

    ratios = [
        ("rtserver memory deliveries/s (burst)", val("rtserver-memory", "burst_per_s"), ">= 100,000", 100000.0),
        ("rtserver memory deliveries/s (1 msg)", val("rtserver-memory", "single_per_s"), ">= 100,000", 100000.0),
        (
            "redis x2 / memory (burst)",
            ratio(val("rtserver-redis-x2", "burst_per_s"), val("rtserver-memory", "burst_per_s")),
            ">= 0.7",
            0.7,
        ),
        (
            "redis x2 / memory (1 msg)",
            ratio(val("rtserver-redis-x2", "single_per_s"), val("rtserver-memory", "single_per_s")),
            ">= 0.7",
            0.7,
        ),
        (
            "redis x1 / memory (burst)",
            ratio(val("rtserver-redis-x1", "burst_per_s"), val("rtserver-memory", "burst_per_s")),
            "(info)",
            None,
        ),
        (
            "rtserver memory / ws4py (burst)",
            ratio(val("rtserver-memory", "burst_per_s"), val("ws4py", "burst_per_s")),
            "(info)",
            None,
        ),
        (
            "rtserver memory / ws4py (1 msg)",
            ratio(val("rtserver-memory", "single_per_s"), val("ws4py", "single_per_s")),
            "(info)",
            None,
        ),
    ]
    print()
    print(
        table(
            ["ratio / target", "value", "target", ""],
            [[label, fmt(v, 2), t, verdict(v, x) if x else ""] for label, v, t, x in ratios],
        )
    )
    write_json(
        a.json,
        {
            "benchmark": "hub",
            "params": {k: v for k, v in vars(a).items() if k != "json"},
            "pinning": pin,
            "results": summary,
            "ratios": {label: v for label, v, _t, _x in ratios},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
