"""HTTP hello-world throughput: rtserver's server kinds beside CherryPy and bare pywsgi.

What it measures
    Requests/s and p99 latency of ``GET /`` answering "Hello world!" (keep-alive), as
    measured by ``wrk -t1 -c50 -dNs --latency`` (threads, connections and duration are
    options), plus the CPU seconds wrk and the server used during the run.

How
    Every server runs in its own subprocess, all started once on free 127.0.0.1 ports:

    * ``rtserver``          benchmarks/apps/hello_rtserver.py, server.kind 'gevent' (default)
    * ``rtserver-cheroot``  same app, server.kind 'cheroot'
    * ``rtserver-native``   same app, server.kind 'native'
    * ``cherrypy``          CherryPy 18 on its own cheroot server, logs off
    * ``pywsgi+nodelay``    a bare gevent pywsgi WSGI app, TCP_NODELAY set per socket
    * ``pywsgi``            the same without TCP_NODELAY
    * ``rtserver-1proc`` / ``rtserver-2workers``: the CLI (``python -m rtserver run
      benchmarks.apps.hello_rtserver:root --workers N``), not pinned, so that two
      workers can use both cores. ``--workers 2`` needs a shared hub broker, so a
      private redis-server is started for it; if the CLI cannot run two workers, two
      processes sharing the port with ``server.reuse_port`` stand in (and the table
      says so).

    Servers are pinned to CPU 0 and wrk to CPU 1 (taskset) when the machine has two
    CPUs. The runs are interleaved: round 1 runs every server once, then round 2, ...
    (``--rounds``, default 3), each run after a short warm-up; the table shows medians.
    The machine is shared and noisy: compare the ratios of one run, not absolute
    figures across runs.

Targets (ratios of medians; never asserted, only reported)
    rtserver / cherrypy            >= 3.0
    rtserver / pywsgi+nodelay      >= 0.75
    rtserver-native / -cheroot     >= 1.2
    rtserver 2 workers / 1 proc    >= 1.6

Usage
    python benchmarks/http.py [--duration 5] [--rounds 3] [--connections 50]
                              [--only rtserver,cherrypy] [--profile] [--json FILE] [--quick]

``--profile`` runs the rtserver (gevent) hello path once more under cProfile while wrk
loads it, and prints the top functions. ``--quick`` is a smoke run of a few seconds.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# Run as a script, this file's directory would shadow the stdlib ``http`` package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks._common import (  # noqa: E402
    PYTHON,
    Proc,
    can_pin,
    cpu_seconds,
    fmt,
    free_port,
    median,
    pinned,
    ratio,
    table,
    verdict,
    wait_http,
    wait_port,
    write_json,
)

ALL = [
    "rtserver",
    "rtserver-cheroot",
    "rtserver-native",
    "cherrypy",
    "pywsgi+nodelay",
    "pywsgi",
    "rtserver-1proc",
    "rtserver-2workers",
]
CONF = os.path.join(_HERE, "apps", "hello.conf")
UNPINNED = {"rtserver-1proc", "rtserver-2workers"}

TARGETS = [
    ("rtserver / cherrypy", "rtserver", "cherrypy", 3.0),
    ("rtserver / pywsgi+nodelay", "rtserver", "pywsgi+nodelay", 0.75),
    ("native / cheroot kind", "rtserver-native", "rtserver-cheroot", 1.2),
    ("2 workers / 1 process", "rtserver-2workers", "rtserver-1proc", 1.6),
    ("pywsgi+nodelay / pywsgi (info)", "pywsgi+nodelay", "pywsgi", None),
    ("rtserver / rtserver-cheroot (info)", "rtserver", "rtserver-cheroot", None),
]


class Server:
    """One benchmarked server: its processes, port and a note."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self.procs: list[Proc] = []
        self.note = ""
        self.ok = False

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


def _redis(port: int) -> Proc | None:
    exe = shutil.which("redis-server")
    if not exe:
        return None
    proc = Proc(
        "redis",
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    )
    return proc if wait_port(port, proc, 10) else None


def start_server(name: str, cpu: int | None, redis_port: int | None) -> Server:
    """Start ``name`` and wait until it answers GET / with 200."""
    port = free_port()
    srv = Server(name, port)
    py = PYTHON
    hello = [py, "-m", "benchmarks.apps.hello_rtserver", str(port)]
    if name == "rtserver":
        srv.procs.append(Proc(name, pinned(hello + ["gevent"], cpu)))
    elif name in ("rtserver-cheroot", "rtserver-native"):
        try:
            import rtserver.servers.cheroot  # noqa: F401
        except Exception as exc:  # the servers engineer may not have landed it yet
            srv.note = f"skipped: rtserver.servers.cheroot does not import ({exc.__class__.__name__}: {exc})"
            return srv
        srv.procs.append(Proc(name, pinned(hello + [name.split("-")[1]], cpu)))
    elif name == "cherrypy":
        srv.procs.append(Proc(name, pinned([py, "-m", "benchmarks.apps.hello_cherrypy", str(port)], cpu)))
    elif name == "pywsgi+nodelay":
        srv.procs.append(Proc(name, pinned([py, "-m", "benchmarks.apps.hello_pywsgi", str(port), "nodelay"], cpu)))
    elif name == "pywsgi":
        srv.procs.append(Proc(name, pinned([py, "-m", "benchmarks.apps.hello_pywsgi", str(port), "delay"], cpu)))
    elif name == "rtserver-1proc":
        cli = [py, "-m", "rtserver", "run", "benchmarks.apps.hello_rtserver:root", "-c", CONF, "--port", str(port)]
        srv.procs.append(Proc(name, cli))
        srv.note = "CLI, 1 process, not pinned"
    elif name == "rtserver-2workers":
        cli = [py, "-m", "rtserver", "run", "benchmarks.apps.hello_rtserver:root", "-c", CONF]
        cli += ["--port", str(port), "--workers", "2"]
        if redis_port:
            cli += ["--broker", f"redis://127.0.0.1:{redis_port}/0"]
        proc = Proc(name, cli)
        srv.procs.append(proc)
        if wait_http(port, "/", proc, 15) and proc.alive():
            time.sleep(1.0)  # both workers up
            if proc.alive():
                srv.ok = True
                srv.note = "CLI --workers 2, not pinned"
                return srv
        why = proc.log_tail(3).replace("\n", " | ")
        proc.stop()
        # Stand-in: two processes on one port with SO_REUSEPORT.
        srv.port = port = free_port()
        env = {"RTSERVER_BENCH_REUSE_PORT": "1"}
        hello = [py, "-m", "benchmarks.apps.hello_rtserver", str(port)]
        srv.procs = [Proc(name, hello, env=env), Proc(name, hello, env=env)]
        srv.note = f"CLI --workers 2 failed ({why[-160:]}); 2 processes with server.reuse_port instead"
    else:
        raise ValueError(name)
    srv.ok = all(wait_http(port, "/", p, 20) for p in srv.procs[:1]) and all(p.alive() for p in srv.procs)
    if srv.ok and len(srv.procs) > 1:
        time.sleep(1.0)
        srv.ok = all(p.alive() for p in srv.procs)
    if not srv.ok:
        tails = " | ".join(p.log_tail(3).replace("\n", " | ") for p in srv.procs)
        srv.note = (srv.note + "; " if srv.note else "") + f"failed to start: {tails[-300:]}"
        srv.stop()
    return srv


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def run_wrk(port: int, args: argparse.Namespace, cpu: int | None, duration: float) -> dict[str, Any]:
    """One wrk run; returns rps, p50/p99 ms, errors, wrk CPU seconds."""
    argv = pinned(
        [
            "wrk",
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "--timeout",
            "5s",
            f"http://127.0.0.1:{port}/",
        ],
        cpu,
    )
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    # The child has been reaped by communicate(); its CPU is in RUSAGE_CHILDREN.
    wall = time.monotonic() - t0
    res: dict[str, Any] = {"raw": out, "wall": wall}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else float("nan")
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[f"p{pct}"] = _ms(m.group(1)) if m else float("nan")
    errs = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errs += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errs += int(m.group(1))
    res["errors"] = errs
    return res


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(srv: Server, args: argparse.Namespace, server_cpu: int | None, client_cpu: int | None) -> dict[str, Any]:
    pin_client = None if srv.name in UNPINNED else client_cpu
    if args.warmup > 0:
        run_wrk(srv.port, args, pin_client, args.warmup)
    before = sum(cpu_seconds(p.pid) for p in srv.procs)
    c0 = _children_cpu()
    res = run_wrk(srv.port, args, pin_client, args.duration)
    res["wrk_cpu"] = (_children_cpu() - c0) / max(res["wall"], 1e-9) * 100
    res["server_cpu"] = (sum(cpu_seconds(p.pid) for p in srv.procs) - before) / max(res["wall"], 1e-9) * 100
    return res


def profile_rtserver(args: argparse.Namespace, server_cpu: int | None, client_cpu: int | None) -> str:
    """Run the gevent kind under cProfile while wrk loads it; the top functions."""
    import pstats

    port = free_port()
    fd, path = tempfile.mkstemp(prefix="rtbench-", suffix=".prof")
    os.close(fd)
    proc = Proc(
        "profile",
        pinned([PYTHON, "-m", "benchmarks.apps.hello_rtserver", str(port)], server_cpu),
        env={"RTSERVER_BENCH_PROFILE": path},
    )
    try:
        if not wait_http(port, "/", proc, 20):
            return "profile: server did not start: " + proc.log_tail()
        res = run_wrk(port, args, client_cpu, args.duration)
    finally:
        proc.stop(15)
    try:
        import io

        buf = io.StringIO()
        st = pstats.Stats(path, stream=buf)
        st.strip_dirs().sort_stats("tottime").print_stats(25)
        text = buf.getvalue()
        body = text[text.find("ncalls") :]
        return f"(under cProfile: {fmt(res['rps'])} req/s)\n" + body
    except Exception as exc:
        return f"profile: could not read stats: {exc}"
    finally:
        os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ",".join(ALL))
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and wrk to CPUs")
    ap.add_argument("--profile", action="store_true", help="also profile rtserver's hello path with cProfile")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 s, no warm-up")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 1.0, 0.0, 1
    if not shutil.which("wrk"):
        print("wrk not found: install wrk (apt-get install wrk)")
        return 1
    names = [n for n in ALL if not args.only or n in args.only.split(",")]
    server_cpu, client_cpu = (0, 1) if can_pin() and not args.no_pin else (None, None)

    redis = None
    servers: list[Server] = []
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        if "rtserver-2workers" in names:
            redis = _redis(free_port())
        for name in names:
            srv = start_server(name, None if name in UNPINNED else server_cpu, redis and int(redis.argv[2]))
            servers.append(srv)
            status = "ok" if srv.ok else "NOT RUNNING"
            print(f"started {name:<18} port {srv.port:<6} {status} {srv.note}", flush=True)
        live = [s for s in servers if s.ok]
        for rnd in range(args.rounds):
            for srv in live:
                r = measure(srv, args, server_cpu, client_cpu)
                results.setdefault(srv.name, []).append(r)
                print(
                    f"round {rnd + 1}/{args.rounds} {srv.name:<18} {fmt(r['rps']):>8} req/s  "
                    f"p99 {fmt(r['p99'], 2)} ms  errors {r['errors']}  wrk {fmt(r['wrk_cpu'])}% "
                    f"server {fmt(r['server_cpu'])}%",
                    flush=True,
                )
        prof = profile_rtserver(args, server_cpu, client_cpu) if args.profile else None
    finally:
        for srv in servers:
            srv.stop()
        if redis:
            redis.stop()

    summary: dict[str, dict[str, Any]] = {}
    rows = []
    for srv in servers:
        rs = results.get(srv.name, [])
        s = {
            "rps": median([r["rps"] for r in rs]) if rs else float("nan"),
            "p50_ms": median([r["p50"] for r in rs]) if rs else float("nan"),
            "p99_ms": median([r["p99"] for r in rs]) if rs else float("nan"),
            "errors": sum(r["errors"] for r in rs),
            "wrk_cpu_pct": median([r["wrk_cpu"] for r in rs]) if rs else float("nan"),
            "server_cpu_pct": median([r["server_cpu"] for r in rs]) if rs else float("nan"),
            "runs_rps": [round(r["rps"]) for r in rs],
            "note": srv.note,
        }
        summary[srv.name] = s
        rows.append(
            [
                srv.name,
                fmt(s["rps"]),
                fmt(s["p50_ms"], 2),
                fmt(s["p99_ms"], 2),
                s["errors"],
                fmt(s["wrk_cpu_pct"]),
                fmt(s["server_cpu_pct"]),
                " ".join(str(x) for x in s["runs_rps"]) or "-",
            ]
        )
    pin = f"server on CPU {server_cpu}, wrk on CPU {client_cpu}" if server_cpu is not None else "not pinned"
    print(
        f"\nHTTP hello world: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
        f"{args.rounds} interleaved round(s), medians; {pin}\n"
    )
    print(table(["server", "req/s", "p50 ms", "p99 ms", "errors", "wrk CPU%", "srv CPU%", "runs req/s"], rows))
    notes = [f"  {s.name}: {s.note}" for s in servers if s.note]
    if notes:
        print("\nnotes:\n" + "\n".join(notes))

    ratio_rows = []
    ratios = {}
    for label, a, b, target in TARGETS:
        if a not in summary or b not in summary:
            continue
        r = ratio(summary[a]["rps"], summary[b]["rps"])
        ratios[label] = {"ratio": r, "target": target}
        ratio_rows.append([label, fmt(r, 2), f">= {target}" if target else "", verdict(r, target) if target else ""])
    if ratio_rows:
        print()
        print(table(["ratio (req/s)", "value", "target", ""], ratio_rows))
    if prof:
        print("\ncProfile of rtserver (gevent kind) under wrk, top 25 by own time:\n")
        print(prof)
    write_json(
        args.json,
        {
            "benchmark": "http",
            "params": {k: v for k, v in vars(args).items() if k != "json"},
            "pinning": pin,
            "servers": summary,
            "ratios": ratios,
            "profile": prof,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
