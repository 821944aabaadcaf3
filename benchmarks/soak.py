"""Soak: a bounded run of churning chat clients against one server; does memory hold?

What it does
    Starts an rtserver process (this file with ``--serve PORT``: a chat socket on
    ``/chat`` and ``tools.stats`` on ``/stats``) and keeps ``--sockets`` WebSocket
    clients (default 2,000) busy against it for ``--minutes`` (default 10). Each
    client connects, joins one of ``--channels`` hub channels, publishes a short
    message every ``--interval`` seconds (jittered), receives the channel's messages,
    answers pings, and after a random lifetime (``--life`` seconds, 30-90 by default)
    closes cleanly and starts over as a new client: connect, chat, leave.

    Every minute it prints the server's RSS, open descriptors and live greenlets (from
    the stats endpoint), its open WebSockets and HTTP connections, and the clients'
    counts (connects, messages sent and received, errors).

Verdict
    After the first minute (warm-up: every socket opened, caches filled) the server's
    RSS must grow by less than 5% to the end of the run: PASS, else FAIL (exit 1).
    Open descriptors and greenlets are printed for the reader to compare.

Usage
    python benchmarks/soak.py [--minutes 10] [--sockets 2000] [--channels 50]
                              [--interval 20] [--life 30 90] [--json FILE]

Everything runs on 127.0.0.1 and every wait is bounded; the server is stopped with
SIGTERM at the end (SIGKILL if it does not go).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from benchmarks._common import PYTHON, Proc, free_port, raise_nofile, rss_kib, wait_http, write_json  # noqa: E402
from benchmarks._wsclient import frame, read_handshake, send_handshake  # noqa: E402

RSS_GROWTH_LIMIT = 0.05


# -- the server ------------------------------------------------------------------------


def serve(port: int) -> None:
    """Run the soak server on 127.0.0.1:port until SIGTERM."""
    import rtserver

    class ChatSocket(rtserver.WebSocket):
        """``join NAME`` joins a channel; any other text is published to it."""

        channel: str | None = None

        def received_message(self, message: Any) -> None:
            text = message.data.decode("utf-8")
            if text.startswith("join "):
                self.channel = text[5:]
                self.join(self.channel)
            elif self.channel is not None:
                self.publish(self.channel, text)

    class Root:
        chat = ChatSocket

        @rtserver.expose
        def index(self) -> str:
            return "ok"

    raise_nofile()
    rtserver.config.update(
        {
            "log.screen": False,
            "server.socket_host": "127.0.0.1",
            "server.socket_port": port,
            "server.max_connections": 50000,
            "hub.history_size": 20,
        }
    )
    rtserver.quickstart(Root(), config={"/stats": {"tools.stats.on": True}})


# -- the clients -----------------------------------------------------------------------


class Totals:
    """Counters shared by every client greenlet."""

    def __init__(self) -> None:
        self.connects = self.leaves = self.sent = self.received = self.errors = self.pongs = 0
        self.open = 0
        self.last_error = ""


def _frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete server frames at the start of ``buf`` (removed from it)."""
    out = []
    while len(buf) >= 2:
        n = buf[1] & 0x7F
        offset = 2
        if n == 126:
            if len(buf) < 4:
                break
            n = struct.unpack_from("!H", buf, 2)[0]
            offset = 4
        elif n == 127:
            if len(buf) < 10:
                break
            n = struct.unpack_from("!Q", buf, 2)[0]
            offset = 10
        if len(buf) < offset + n:
            break
        out.append((buf[0] & 0x0F, bytes(buf[offset : offset + n])))
        del buf[: offset + n]
    return out


def one_client(cid: int, port: int, args: argparse.Namespace, totals: Totals, end: float, rng: random.Random) -> None:
    """One client's life: connect, join, chat, leave (close handshake)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        send_handshake(sock, port, "/chat")
        buf = bytearray(read_handshake(sock))
        totals.connects += 1
        totals.open += 1
        try:
            channel = f"room{rng.randrange(args.channels)}"
            sock.sendall(frame(f"join {channel}".encode()))
            leave_at = min(end, time.monotonic() + rng.uniform(*args.life))
            next_send = time.monotonic() + rng.uniform(0, args.interval)
            count = 0
            while True:
                now = time.monotonic()
                if now >= leave_at:
                    break
                if now >= next_send:
                    count += 1
                    sock.sendall(frame(f"client {cid} says hello #{count} in {channel}".encode()))
                    totals.sent += 1
                    next_send = now + args.interval * rng.uniform(0.8, 1.2)
                sock.settimeout(max(0.01, min(next_send, leave_at) - time.monotonic()))
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    raise ConnectionError("server closed the connection")
                buf += data
                for opcode, payload in _frames(buf):
                    if opcode == 1:
                        totals.received += 1
                    elif opcode == 9:
                        sock.sendall(frame(payload, opcode=10))
                        totals.pongs += 1
                    elif opcode == 8:
                        raise ConnectionError(f"server closed: {payload[:2].hex()}")
            # Leave: close handshake (RFC 6455 §7.1.2), the server closes TCP first.
            sock.sendall(frame(struct.pack("!H", 1000), opcode=8))
            sock.settimeout(10)
            while True:
                data = sock.recv(65536)
                if not data:
                    break
            totals.leaves += 1
        finally:
            totals.open -= 1
    finally:
        sock.close()


def client_loop(cid: int, port: int, args: argparse.Namespace, totals: Totals, end: float) -> None:
    """Clients one after another in this slot until ``end``."""
    rng = random.Random(cid)
    gevent.sleep(rng.uniform(0, args.ramp))  # spread the first connects
    while time.monotonic() < end:
        try:
            one_client(cid, port, args, totals, end, rng)
        except (OSError, ConnectionError) as exc:
            totals.errors += 1
            totals.last_error = f"{type(exc).__name__}: {exc}"
            gevent.sleep(rng.uniform(0.5, 2.0))


def fetch_stats(port: int) -> dict[str, Any] | None:
    """The server's stats (JSON), or None."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/stats")
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        if resp.status == 200:
            data: dict[str, Any] = json.loads(body)
            return data
    except (OSError, ValueError):
        pass
    return None


def sample(minute: float, proc: Proc, port: int, totals: Totals) -> dict[str, Any]:
    """One line of figures, printed and returned."""
    started = time.monotonic()
    stats = fetch_stats(port)
    took = time.monotonic() - started
    row: dict[str, Any] = {"minute": round(minute, 2), "stats_ms": round(took * 1000)}
    if stats is not None:
        p = stats["process"]
        row.update(
            rss_mib=round(p["rss_bytes"] / 2**20, 1),
            fds=p["open_fds"],
            greenlets=p["greenlets"],
            websockets=stats["websocket"]["open"],
            http_conns=stats["http"]["connections"],
            channels=stats["hub"]["channels"],
            server_in=stats["websocket"]["messages_in"],
            server_out=stats["websocket"]["messages_out"],
            slow_consumers=stats["websocket"]["slow_consumers_closed"] + stats["hub"]["dropped_slow_consumers"],
        )
    else:
        row.update(rss_mib=round(rss_kib(proc.pid) / 1024, 1), fds=None, greenlets=None)
    row.update(
        clients_open=totals.open,
        connects=totals.connects,
        leaves=totals.leaves,
        sent=totals.sent,
        received=totals.received,
        errors=totals.errors,
    )
    print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return row


def run(args: argparse.Namespace) -> int:
    raise_nofile()
    port = free_port()
    proc = Proc("rtserver", [PYTHON, os.path.abspath(__file__), "--serve", str(port)])
    rows: list[dict[str, Any]] = []
    try:
        if not wait_http(port, "/", proc):
            print("server did not start:\n" + proc.log_tail(), file=sys.stderr)
            return 2
        print(
            f"soak: {args.sockets} sockets, {args.channels} channels, a message every {args.interval:g} s each, "
            f"lifetimes {args.life[0]:g}-{args.life[1]:g} s, {args.minutes:g} min; server pid {proc.pid}",
            flush=True,
        )
        totals = Totals()
        start = time.monotonic()
        end = start + args.minutes * 60
        clients = [gevent.spawn(client_loop, i, port, args, totals, end) for i in range(args.sockets)]
        rows.append(sample(0.0, proc, port, totals))
        next_sample = start + args.every
        while time.monotonic() < end:
            gevent.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
            if not proc.alive():
                print("server died:\n" + proc.log_tail(), file=sys.stderr)
                return 1
            # Samples under load only: at the end the clients are already leaving.
            if next_sample <= end - 1.0 and time.monotonic() >= next_sample - 0.01:
                rows.append(sample((time.monotonic() - start) / 60, proc, port, totals))
                next_sample += args.every
        gevent.joinall(clients, timeout=30)
        gevent.killall([c for c in clients if not c.dead], timeout=5)
        gevent.sleep(2)  # let the server finish the last closes
        final = sample((time.monotonic() - start) / 60, proc, port, totals)
        rows.append(final)
    finally:
        proc.stop()
    baseline = next((r for r in rows if r["minute"] >= 1.0 - 1e-6), None)
    loaded = [r for r in rows if r is not rows[-1] and r["minute"] >= 1.0 - 1e-6]
    if baseline is None or not loaded:
        print("FAIL: the run was too short for a verdict (less than two minutes)")
        return 1
    last = loaded[-1]
    growth = (last["rss_mib"] - baseline["rss_mib"]) / baseline["rss_mib"]
    peak = max(r["rss_mib"] for r in loaded)
    print(
        f"RSS at minute {baseline['minute']:g}: {baseline['rss_mib']} MiB; at minute {last['minute']:g}: "
        f"{last['rss_mib']} MiB ({growth:+.1%}); peak {peak} MiB; after the clients left: {rows[-1]['rss_mib']} MiB, "
        f"{rows[-1].get('fds')} fds, {rows[-1].get('greenlets')} greenlets"
    )
    ok = growth < RSS_GROWTH_LIMIT and totals.errors <= max(10, totals.connects // 1000)
    if totals.errors:
        print(f"client errors: {totals.errors} (last: {totals.last_error})")
    print(
        f"{'PASS' if ok else 'FAIL'}: RSS growth after the first minute {growth:+.1%} (limit +{RSS_GROWTH_LIMIT:.0%})"
    )
    write_json(args.json, {"args": vars(args), "rows": rows, "growth": growth, "pass": ok})
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    parser.add_argument("--sockets", type=int, default=2000, help="concurrent clients (default 2000)")
    parser.add_argument("--channels", type=int, default=50, help="hub channels the clients spread over (default 50)")
    parser.add_argument("--interval", type=float, default=20.0, help="seconds between a client's messages (default 20)")
    parser.add_argument(
        "--life", type=float, nargs=2, default=(30.0, 90.0), metavar=("MIN", "MAX"), help="client lifetime in seconds"
    )
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds over which the first clients connect")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between two samples (default 60)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
