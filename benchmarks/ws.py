"""WebSocket figures: rtserver beside plain ws4py 0.6 on gevent and the ``websockets`` library.

What it measures (each server in its own subprocess, pinned to CPU 0 when there are two)
    echo       throughput of 64-byte text messages: 100 connections, 16 messages in
               flight per connection (msg/s echoed)
    latency    round trip of one 64-byte text message, one in flight (p50/p99 µs)
    1 MiB      binary echo, one connection, one message at a time (MB/s of message
               payload echoed, 10^6 bytes)
    16 MiB     text echo, likewise
    fan-out    one message broadcast to 1,000 and 5,000 sockets: time from sending the
               trigger until every socket has it, and deliveries/s (sockets / time);
               median of the rounds after the first
    memory     server RSS growth per idle WebSocket at 10,000 open sockets
               (VmRSS delta / count), fresh server processes; a bare gevent
               StreamServer whose greenlets block in recv is the reference

Servers
    rtserver    benchmarks/apps/ws_rtserver.py: ws4py's ``EchoWebSocket`` on the page tree
                (``class Root: echo = EchoWebSocket``) or, until the tree mount of a
                handler class lands, grafted with ``websocket_app``; fan-out through
                the hub (``hub.subscribe(ws, 'fan')`` / ``hub.publish('fan', text)``)
    ws4py       ws4py.server.geventserver.WSGIServer + WebSocketWSGIApplication; fan-out
                walks the server's pool and ``send``s to each socket
    websockets  websockets' asyncio server; fan-out with ``websockets.broadcast``
    Limits raised for all: 32 MiB messages (16 MiB echo), backlog 1024.

Load generator (benchmarks/_wsclient.py) and why
    Python client processes on raw sockets (4 by default, pinned to CPU 1): frames are
    built and masked once before the clock starts, sent in batches with one ``send``,
    and replies are counted by bytes (echo: the reply size is known) or by frame
    headers only (fan-out). That keeps the per-message client cost to a few
    arithmetic operations per *batch*, well below any server's per-message cost; the
    client CPU% column shows the headroom. A C client would be faster still, but the
    Python one is short, needs no compiler at run time and is easy to check.

Targets (never asserted, only reported)
    echo msg/s rtserver / websockets      >= 1.0
    1 MiB echo rtserver                   >= 500 MB/s
    fan-out 5,000 rtserver / ws4py        >= 1.5  (deliveries/s)
    memory per idle rtserver socket       <= 12 KiB

Usage
    python benchmarks/ws.py [--only echo,latency,big,fanout,memory] [--servers rtserver,ws4py]
                            [--duration 4] [--rounds 2] [--clients 4] [--json FILE] [--quick]
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks import _wsclient as wc  # noqa: E402
from benchmarks._common import (  # noqa: E402
    PYTHON,
    Proc,
    can_pin,
    cpu_seconds,
    fmt,
    free_port,
    median,
    pinned,
    raise_nofile,
    ratio,
    rss_kib,
    table,
    verdict,
    wait_port,
    write_json,
)

APPS = {
    "rtserver": "benchmarks.apps.ws_rtserver",
    "ws4py": "benchmarks.apps.ws_ws4py",
    "websockets": "benchmarks.apps.ws_websockets",
    "streamserver": "benchmarks.apps.idle_streamserver",  # memory reference only
}
PHASES = ["echo", "latency", "big", "fanout", "memory"]
MSG = 64


class Server:
    def __init__(self, name: str, cpu: int | None) -> None:
        self.name = name
        self.port = free_port()
        self.proc = Proc(name, pinned([PYTHON, "-m", APPS[name], str(self.port)], cpu))
        self.ok = False
        self.note = ""

    def start(self, check_echo: bool = True) -> bool:
        if not wait_port(self.port, self.proc, 20):
            self.note = "did not start: " + self.proc.log_tail(4).replace("\n", " | ")[-300:]
            return False
        if check_echo:
            try:
                sock, left = wc.connect(self.port, "/echo")
                sock.sendall(wc.frame(b"ping", 1))
                data = left
                while len(data) < 6:
                    chunk = sock.recv(100)
                    if not chunk:
                        break
                    data += chunk
                sock.close()
                if data[2:6] != b"ping":
                    raise ConnectionError(f"bad echo {data!r}")
            except Exception as exc:
                self.note = f"echo check failed: {exc}; " + self.proc.log_tail(4).replace("\n", " | ")[-300:]
                return False
        self.ok = True
        return True

    def stop(self) -> None:
        self.proc.stop()


# -- client process plumbing ---------------------------------------------------------------


def spawn(target: Any, argss: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    ctx = mp.get_context("fork")
    out = []
    for args in argss:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=target, args=(args, child), daemon=True)
        p.start()
        out.append((p, parent))
    return out


def recv(conn: Any, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError("client process did not answer in time")
    return conn.recv()


def reap(workers: list[tuple[Any, Any]]) -> None:
    for p, conn in workers:
        p.join(5)
        if p.is_alive():
            p.terminate()
            p.join(2)
        conn.close()


def split(n: int, k: int) -> list[int]:
    k = max(1, min(k, n))
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


# -- phases -------------------------------------------------------------------------------


def echo_run(srv: Server, a: argparse.Namespace) -> dict[str, Any]:
    argss = [
        {
            "port": srv.port,
            "path": "/echo",
            "conns": n,
            "size": MSG,
            "inflight": a.inflight,
            "duration": a.duration,
            "ramp": min(0.5, a.duration / 4),
            "cpu": a.client_cpu,
        }
        for n in split(a.connections, a.clients)
    ]
    workers = spawn(wc.echo_worker, argss)
    try:
        for _p, c in workers:
            if recv(c, 60) != "ready":
                raise RuntimeError("client not ready")
        start_at = time.monotonic() + 0.2
        s0 = cpu_seconds(srv.proc.pid)
        for _p, c in workers:
            c.send(start_at)
        res = [recv(c, a.duration + 30) for _p, c in workers]
        s1 = cpu_seconds(srv.proc.pid)
    finally:
        reap(workers)
    count = sum(r[0] for r in res)
    window = max(r[1] for r in res)
    return {
        "msgs": count / window,
        "client_cpu": sum(r[2] for r in res) / a.duration * 100,
        "server_cpu": (s1 - s0) / a.duration * 100,
        "errors": sum(r[3] for r in res),
    }


def latency_run(srv: Server, a: argparse.Namespace) -> dict[str, Any]:
    sock, left = wc.connect(srv.port, "/echo")
    one = wc.frame(b"x" * MSG, 1)
    want = wc.server_frame_len(MSG)
    times = []
    deadline = time.monotonic() + a.latency_time
    buf = bytearray(4096)
    try:
        for _ in range(a.latency_count):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            sock.sendall(one)
            got = 0
            while got < want:
                n = sock.recv_into(buf)
                if not n:
                    raise ConnectionError("closed")
                got += n
            times.append(time.perf_counter() - t0)
    finally:
        sock.close()
    times.sort()
    return {
        "p50_us": times[len(times) // 2] * 1e6,
        "p99_us": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e6,
        "count": len(times),
    }


def big_run(srv: Server, size: int, opcode: int, max_iter: int, max_time: float) -> dict[str, Any]:
    payload = (b"\x00\x01\x02\x03\xfe\xff" * (size // 6 + 1))[:size] if opcode == 2 else b"a" * size
    data = wc.frame(payload, opcode)
    want = wc.server_frame_len(size)
    sock, left = wc.connect(srv.port, "/echo", timeout=60)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    buf = bytearray(1 << 20)
    done = 0
    t0 = time.perf_counter()
    deadline = time.monotonic() + max_time
    try:
        while done < max_iter and (done == 0 or time.monotonic() < deadline):
            import threading

            # Send from a thread so the server may start echoing before the whole
            # message is written (and neither side's buffers can deadlock).
            th = threading.Thread(target=sock.sendall, args=(data,))
            th.start()
            got = 0
            while got < want:
                n = sock.recv_into(buf)
                if not n:
                    raise ConnectionError("closed by server")
                got += n
            th.join()
            done += 1
    except Exception as exc:
        return {"mbps": float("nan"), "error": repr(exc)}
    finally:
        sock.close()
    elapsed = time.perf_counter() - t0
    return {"mbps": size * done / elapsed / 1e6, "count": done}


def fan_run(srv: Server, n: int, a: argparse.Namespace) -> dict[str, Any]:
    argss = [
        {"port": srv.port, "path": "/fan", "conns": k, "cpu": a.client_cpu, "timeout": 30} for k in split(n, a.clients)
    ]
    workers = spawn(wc.fan_worker, argss)
    control = None
    times: list[float] = []
    client_cpu: list[float] = []
    try:
        for _p, c in workers:
            if recv(c, 120) != "ready":
                raise RuntimeError("client not ready")
        control, _left = wc.connect(srv.port, "/fan")
        control.setblocking(False)
        trigger = wc.frame(b"f" * MSG, 1)
        time.sleep(0.3)
        for r in range(1, a.fan_rounds + 1):
            for _p, c in workers:
                c.send(("round", r))
            time.sleep(0.05)  # the workers are polling
            t0 = time.monotonic()
            control.sendall(trigger)
            got = [recv(c, 60) for _p, c in workers]
            ends = [g[0] for g in got]
            try:
                while control.recv(1 << 16):
                    pass
            except BlockingIOError:
                pass
            if any(e is None for e in ends):
                return {"ms": float("nan"), "error": f"round {r}: not every socket got the message in 30 s"}
            times.append(max(ends) - t0)
            client_cpu.append(sum(g[1] for g in got) / times[-1] * 100)
            time.sleep(0.1)
        for _p, c in workers:
            c.send(("stop",))
    except Exception as exc:
        return {"ms": float("nan"), "error": repr(exc)}
    finally:
        if control is not None:
            control.close()
        reap(workers)
    use = times[1:] if len(times) > 1 else times
    t = median(use)
    return {
        "ms": t * 1e3,
        "per_s": n / t,
        "rounds_ms": [round(x * 1e3, 1) for x in times],
        "client_cpu": median(client_cpu[1:] if len(client_cpu) > 1 else client_cpu),
    }


def memory_run(name: str, a: argparse.Namespace, server_cpu: int | None) -> dict[str, Any]:
    srv = Server(name, server_cpu)
    try:
        if not srv.start(check_echo=name != "streamserver"):
            return {"kib": float("nan"), "error": srv.note}
        if name == "streamserver":
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.close()
        time.sleep(0.5)
        before = rss_kib(srv.proc.pid)
        argss = [
            {"port": srv.port, "path": "/echo", "conns": k, "cpu": a.client_cpu, "raw": name == "streamserver"}
            for k in split(a.idle, a.clients)
        ]
        workers = spawn(wc.idle_worker, argss)
        try:
            opened = 0
            for _p, c in workers:
                r = recv(c, 180)
                if r[0] != "ready":
                    return {"kib": float("nan"), "error": r[1]}
                opened += r[1]
            time.sleep(1.0)
            after = rss_kib(srv.proc.pid)
            for _p, c in workers:
                c.send("close")
        finally:
            reap(workers)
        return {
            "kib": (after - before) / opened,
            "before_mib": before / 1024,
            "after_mib": after / 1024,
            "sockets": opened,
        }
    finally:
        srv.stop()


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(PHASES), help="phases: " + ",".join(PHASES))
    ap.add_argument("--servers", default="rtserver,ws4py,websockets")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per echo run")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved echo rounds (median)")
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--inflight", type=int, default=16)
    ap.add_argument("--clients", type=int, default=4, help="client processes")
    ap.add_argument("--latency-count", type=int, default=3000)
    ap.add_argument("--latency-time", type=float, default=3.0)
    ap.add_argument("--fan", default="1000,5000", help="fan-out socket counts")
    ap.add_argument("--fan-rounds", type=int, default=5)
    ap.add_argument("--idle", type=int, default=10000, help="idle sockets of the memory test")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--quick", action="store_true", help="smoke run of a few seconds")
    a = ap.parse_args(argv)
    if a.quick:
        a.duration, a.rounds, a.connections, a.inflight = 1.0, 1, 20, 4
        a.latency_count, a.latency_time, a.fan, a.fan_rounds, a.idle = 200, 1.0, "200", 2, 400
    phases = [p for p in a.only.split(",") if p]
    names = [n for n in a.servers.split(",") if n in APPS and n != "streamserver"]
    server_cpu, a.client_cpu = (0, 1) if can_pin() and not a.no_pin else (None, None)
    nofile = raise_nofile()
    fans = [int(x) for x in a.fan.split(",") if x]
    big_iters = (2, 1) if a.quick else (30, 3)
    big_time = (0.5, 1.0) if a.quick else (2.0, 4.0)

    res: dict[str, dict[str, Any]] = {n: {} for n in names}
    notes: list[str] = []
    servers: list[Server] = []
    t_start = time.monotonic()
    try:
        if any(p in phases for p in ("echo", "latency", "big", "fanout")):
            for n in names:
                srv = Server(n, server_cpu)
                servers.append(srv)
            for srv in servers:
                srv.start()
                print(
                    f"started {srv.name:<11} port {srv.port:<6} {'ok' if srv.ok else 'NOT RUNNING'} {srv.note}",
                    flush=True,
                )
                if srv.note:
                    notes.append(f"{srv.name}: {srv.note}")
                if srv.name == "rtserver":
                    try:
                        with open(srv.proc.log.name) as f:
                            mode = f.read().strip().splitlines()[:1]
                        notes.append(f"rtserver endpoints {mode[0] if mode else '?'}")
                    except OSError:
                        pass
        live = [s for s in servers if s.ok]
        if "echo" in phases:
            for rnd in range(a.rounds):
                for srv in live:
                    r = echo_run(srv, a)
                    res[srv.name].setdefault("echo_runs", []).append(r)
                    print(
                        f"echo  round {rnd + 1} {srv.name:<11} {fmt(r['msgs']):>9} msg/s  server CPU {fmt(r['server_cpu'])}%"
                        f"  clients CPU {fmt(r['client_cpu'])}%  errors {r['errors']}",
                        flush=True,
                    )
            for srv in live:
                runs = res[srv.name]["echo_runs"]
                res[srv.name]["echo"] = {k: median([r[k] for r in runs]) for k in ("msgs", "server_cpu", "client_cpu")}
        if "latency" in phases:
            for srv in live:
                r = latency_run(srv, a)
                res[srv.name]["latency"] = r
                print(
                    f"latency {srv.name:<11} p50 {fmt(r['p50_us'])} µs  p99 {fmt(r['p99_us'])} µs ({r['count']} round trips)",
                    flush=True,
                )
        if "big" in phases:
            for srv in live:
                r1 = big_run(srv, 2**20, 2, big_iters[0], big_time[0])
                r16 = big_run(srv, 16 * 2**20, 1, big_iters[1], big_time[1])
                res[srv.name]["big"] = {"1MiB_binary": r1, "16MiB_text": r16}
                print(
                    f"big   {srv.name:<11} 1 MiB binary {fmt(r1['mbps'])} MB/s  16 MiB text {fmt(r16['mbps'])} MB/s "
                    f"{r1.get('error', '')} {r16.get('error', '')}",
                    flush=True,
                )
        if "fanout" in phases:
            for n in fans:
                if n + 100 > nofile // 2:
                    notes.append(f"fan-out {n}: RLIMIT_NOFILE {nofile} may be too low")
                for srv in live:
                    r = fan_run(srv, n, a)
                    res[srv.name].setdefault("fanout", {})[str(n)] = r
                    print(
                        f"fan   {n:>6} {srv.name:<11} {fmt(r['ms'], 1)} ms  {fmt(r.get('per_s'))} deliveries/s  "
                        f"clients CPU {fmt(r.get('client_cpu'))}%  rounds {r.get('rounds_ms', '')} {r.get('error', '')}",
                        flush=True,
                    )
    finally:
        for srv in servers:
            srv.stop()
    if "memory" in phases:
        for n in names + ["streamserver"]:
            r = memory_run(n, a, server_cpu)
            res.setdefault(n, {})["memory"] = r
            print(
                f"memory {n:<12} {fmt(r['kib'], 1)} KiB/socket  "
                f"RSS {fmt(r.get('before_mib'), 1)} -> {fmt(r.get('after_mib'), 1)} MiB ({r.get('sockets', 0)} sockets) {r.get('error', '')}",
                flush=True,
            )

    # -- report -----------------------------------------------------------------------------
    pin = (
        f"servers on CPU {server_cpu}, {a.clients} client processes on CPU {a.client_cpu}"
        if server_cpu is not None
        else "not pinned"
    )
    print(f"\nWebSocket benchmarks ({pin}; {time.monotonic() - t_start:.0f} s)\n")
    rows = []
    for n in names:
        r = res[n]
        e = r.get("echo", {})
        lat = r.get("latency", {})
        big = r.get("big", {})
        rows.append(
            [
                n,
                fmt(e.get("msgs")),
                fmt(e.get("server_cpu")),
                fmt(e.get("client_cpu")),
                fmt(lat.get("p50_us")),
                fmt(lat.get("p99_us")),
                fmt(big.get("1MiB_binary", {}).get("mbps")),
                fmt(big.get("16MiB_text", {}).get("mbps")),
            ]
        )
    print(
        table(
            ["server", "echo msg/s", "srv CPU%", "cli CPU%", "rtt p50 µs", "rtt p99 µs", "1MiB MB/s", "16MiB MB/s"],
            rows,
        )
    )
    print(
        f"(echo: {a.connections} connections x {a.inflight} in flight, {MSG}-byte text, {a.duration:g} s x {a.rounds} round(s), median)"
    )
    if "fanout" in phases:
        rows = []
        for size in fans:
            for n in names:
                f = res[n].get("fanout", {}).get(str(size), {})
                rows.append(
                    [
                        f"{n} -> {size}",
                        fmt(f.get("ms"), 1),
                        fmt(f.get("per_s")),
                        fmt(f.get("client_cpu")),
                        f.get("error", ""),
                    ]
                )
        print()
        print(table(["fan-out", "ms to all", "deliveries/s", "cli CPU%", ""], rows))
        print(
            "(cli CPU%: client CPU time during a round / its duration; near 100 the one client core limits the figure)"
        )
    if "memory" in phases:
        rows = []
        for n in names + ["streamserver"]:
            m = res.get(n, {}).get("memory", {})
            rows.append(
                [
                    n,
                    fmt(m.get("sockets", 0)),
                    fmt(m.get("before_mib"), 1),
                    fmt(m.get("after_mib"), 1),
                    fmt(m.get("kib"), 1),
                    m.get("error", ""),
                ]
            )
        print()
        print(table(["idle sockets", "count", "RSS before MiB", "after MiB", "KiB/socket", ""], rows))

    def g(name: str, *path: str) -> float:
        cur: Any = res.get(name, {})
        for p in path:
            cur = cur.get(p, {}) if isinstance(cur, dict) else {}
        return cur if isinstance(cur, (int, float)) else float("nan")

    big_fan = str(max(fans)) if fans else "5000"
    ratios = [
        (
            "echo rtserver / websockets",
            ratio(g("rtserver", "echo", "msgs"), g("websockets", "echo", "msgs")),
            ">= 1.0",
            1.0,
        ),
        ("echo rtserver / ws4py (info)", ratio(g("rtserver", "echo", "msgs"), g("ws4py", "echo", "msgs")), "", None),
        ("1 MiB rtserver MB/s", g("rtserver", "big", "1MiB_binary", "mbps"), ">= 500", 500.0),
        (
            "1 MiB rtserver / websockets (info)",
            ratio(g("rtserver", "big", "1MiB_binary", "mbps"), g("websockets", "big", "1MiB_binary", "mbps")),
            "",
            None,
        ),
        (
            "16 MiB rtserver / websockets (info)",
            ratio(g("rtserver", "big", "16MiB_text", "mbps"), g("websockets", "big", "16MiB_text", "mbps")),
            "",
            None,
        ),
        (
            f"fan-out {big_fan} rtserver / ws4py",
            ratio(g("rtserver", "fanout", big_fan, "per_s"), g("ws4py", "fanout", big_fan, "per_s")),
            ">= 1.5",
            1.5,
        ),
        (
            f"fan-out {big_fan} rtserver / websockets (info)",
            ratio(g("rtserver", "fanout", big_fan, "per_s"), g("websockets", "fanout", big_fan, "per_s")),
            "",
            None,
        ),
        ("rtserver KiB per idle socket", g("rtserver", "memory", "kib"), "<= 12", None),
    ]
    rows = []
    for label, val, target, thr in ratios:
        if "KiB" in label:
            v = "n/a" if val != val else ("meets" if val <= 12 else "above")
        else:
            v = verdict(val, thr) if thr else ""
        rows.append([label, fmt(val, 2), target, v])
    print()
    print(table(["ratio / target", "value", "target", ""], rows))
    if notes:
        print("\nnotes:\n" + "\n".join("  " + x for x in notes))
    write_json(
        a.json,
        {
            "benchmark": "ws",
            "params": {k: v for k, v in vars(a).items() if k != "json"},
            "pinning": pin,
            "results": res,
            "ratios": {label: val for label, val, _t, _x in ratios},
            "notes": notes,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
