"""Soak: 1,000 chat clients against one server for M minutes; can any client exhaust it?

What it runs
    One server process, the chat example itself (``python -m examples.chat --port N``,
    with ``--broker redis://...`` in ``--broker redis`` mode: the script then starts a
    private ``redis-server`` on a free loopback port, without persistence, and the
    chat's hub *and* sessions live in it). Every client logs in through the chat's
    pages (``GET /login`` for the session cookie and the form's CSRF token, ``POST
    /login`` with a nickname, then the new cookie) and opens ``/ws``, the chat's
    :class:`~rtserver.websocket.channels.ChannelSocket`, speaking its JSON protocol.

    ``--clients`` (1,000) clients in ``--client-procs`` (4) gevent client processes:

    * churners (``--churners`` 100): join a fresh, distinct room (``room:c<id>-<n>``),
      wait for ``joined``, leave it, wait for ``left``, again, at most ``--churn-rate``
      (20) cycles per second each: 2,000 rooms created and abandoned per second;
    * ping flooders (``--flooders`` 10): raw sockets that send WebSocket ping frames
      (125-byte payloads, ``--flood-rate`` 2,000 a second each) and never read. The
      server must close them as slow consumers (their pongs pile up); a flooder sees
      its connection end, counts the close and reconnects, so the flood goes on;
    * normal chat (the rest, 890): they join ``--rooms`` (8) shared rooms before the
      clock starts, publish one message every ``--chat-interval`` seconds (10,
      jittered; the chat allows 5 per 10 s) with a per-sender sequence number, and
      read everything. A sender sends its next message after the ``ok`` of the last.
      Every member must receive every message of its room exactly once: receivers
      count gaps in each sender's sequence (lost) and repeats (duplicated); at the
      end the senders' totals are compared with what each member got last. A member
      whose connection drops reconnects and resumes with ``since`` (counted).

    Every ``--every`` (10) seconds (the last sample 1 s before the clients leave): the
    server's VmRSS (``/proc/PID/status``); with Redis its DBSIZE and the keys without a
    TTL (SCAN + TTL == -1); messages delivered, lost (sequence gaps so far) and
    duplicated; flooder connections the server closed as slow consumers (its log's
    ``slow consumer`` lines, matched to the flooders' ports) and those the flooders
    saw end; churn cycles per second; the longest publish -> ``ok`` and join+leave
    waits; the server's CPU and run-queue wait (``/proc/PID/task/*/schedstat``: how
    long it was runnable but had no CPU -- other work on a shared machine) and the
    clients' CPU.

Verdict (exit status 0 only if every line holds; 1 otherwise; 2 if the run could not
be made: a server or client process that did not start, failed logins)
    * memory "flat after the first minute": every RSS sample after the warm-up is at
      most R + max(10 % of R, 8 MiB), R being the highest sample of the warm-up's
      second half (30-60 s). The warm-up is the first minute (half the run if it is
      shorter than 2 minutes), extended until every flooder was closed once: each
      flooder pins up to ``send_queue_size`` (4 MiB) of pongs plus socket buffers
      until it is closed, ~40 s at 2,000 pings/s, and its next connection fills the
      same memory again, so RSS swings by up to ~60 MiB from sample to sample;
    * with Redis, keys flat the same way (R + max(10 %, 500 keys): the churners' live
      rooms come and go) and no key without a TTL in any sample nor after the run;
    * every normal message delivered to every member: lost == 0 and duplicated == 0;
    * every flooder closed by the server as a slow consumer at least once, none left
      unread-but-open for 20 s;
    * the server responsive throughout: no publish -> ok and no join+leave wait longer
      than ``--max-wait`` (5 s; 0 reports without judging), no churn reply lost (10 s);
    * the server alive to the end.

Usage
    python benchmarks/soak.py [--broker memory|redis] [--minutes 10] [--json FILE]
    python benchmarks/soak.py --minutes 1            # the quick run (~1.5 min; also --quick)
    (--clients --churners --churn-rate --flooders --flood-rate --rooms --chat-interval
     --client-procs --every --max-wait --server-log FILE --no-pin: see --help)

Bounds: 127.0.0.1 only; at most --clients sockets open (a flooder's next connection
opens after its last one ended); each client's rate capped; every wait has a
deadline, the client processes exit by themselves 90 s after the end, and the
coordinator stops sampling at setup + minutes + 3 minutes; the server, redis-server
and the clients are stopped at the end, however it ends. The server runs on CPU 0, redis-server and the client processes
on CPU 1 (``--no-pin``: unpinned). RLIMIT_NOFILE is raised to the hard limit.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and "--worker" in sys.argv:
    # Only the client processes use gevent; the coordinator is plain threads.
    from gevent import monkey

    monkey.patch_all()

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import collections  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks._common import (  # noqa: E402
    PYTHON,
    ROOT,
    Proc,
    can_pin,
    cpu_seconds,
    free_port,
    pinned,
    raise_nofile,
    rss_kib,
    table,
    wait_http,
    wait_port,
    write_json,
)
from benchmarks._wsclient import frame, read_handshake  # noqa: E402

MIB = 2**20
RSS_SLACK = (0.10, 8 * MIB)  # fraction, bytes: the larger of the two
KEYS_SLACK = (0.10, 500)  # fraction, keys
PING_PAYLOAD = 125  # the largest control frame payload (RFC 6455 §5.5)
CHAT_RATE_WINDOW = (5, 10.0)  # examples.chat.app RATE_LIMIT, RATE_WINDOW


# =====================================================================================
# client side (worker processes, gevent)
# =====================================================================================


class Closed(Exception):
    """The server ended the WebSocket (close frame, EOF or reset)."""

    def __init__(self, code: int | None, how: str) -> None:
        super().__init__(f"{how} (close code {code})")
        self.code = code
        self.how = how


class Counters:
    """What one worker process counts; summed over processes by the coordinator."""

    logins: int = 0
    login_errors: int = 0
    open: int = 0
    # churners
    churn_cycles: int = 0
    churn_join_errors: int = 0
    churn_timeouts: int = 0
    churn_disconnects: int = 0
    churn_latency_ms: int = 0
    # normal chat
    delivered: int = 0
    lost: int = 0
    dup: int = 0
    late: int = 0
    gaps: int = 0
    published: int = 0
    refused: int = 0
    uncertain: int = 0
    presence: int = 0
    normal_disconnects: int = 0
    normal_reconnects: int = 0
    # flooders
    flood_conns: int = 0
    flood_pings: int = 0
    flood_closed: int = 0
    flood_close_frames: int = 0
    flood_stalls: int = 0
    flood_connect_errors: int = 0
    errors: int = 0

    FIELDS = tuple(__annotations__)  # the counters above, in order

    def __init__(self) -> None:
        self.last_error = ""
        self.refusals: collections.Counter[str] = collections.Counter()
        self.close_codes: collections.Counter[str] = collections.Counter()
        self.flood_ports: list[tuple[int, int]] = []  # (client id, local port) of each flooder connection
        # Longest waits in ms: publish -> ok, join+leave cycle (since the last snapshot; and ever).
        self.pub_win = self.churn_win = self.pub_max = self.churn_max = 0

    def waited(self, kind: str, seconds: float) -> None:
        ms = round(seconds * 1000)
        if kind == "pub":
            self.pub_win, self.pub_max = max(self.pub_win, ms), max(self.pub_max, ms)
        else:
            self.churn_win, self.churn_max = max(self.churn_win, ms), max(self.churn_max, ms)

    def error(self, where: str, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{where}: {type(exc).__name__}: {exc}"[:300]

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {f: getattr(self, f) for f in self.FIELDS}
        t = os.times()
        out["cpu"] = t.user + t.system
        out["last_error"] = self.last_error
        out["refusals"] = dict(self.refusals)
        out["close_codes"] = dict(self.close_codes)
        out["flood_ports"] = self.flood_ports
        out.update(pub_win=self.pub_win, churn_win=self.churn_win, pub_max=self.pub_max, churn_max=self.churn_max)
        self.pub_win = self.churn_win = 0
        return out


def _cookie_of(resp: http.client.HTTPResponse) -> str | None:
    for line in resp.headers.get_all("Set-Cookie") or []:
        if line.startswith("session_id="):
            return line.split(";", 1)[0]
    return None


def login(port: int, nick: str) -> str:
    """Log ``nick`` in through the chat's pages; return the session cookie."""
    origin = f"http://127.0.0.1:{port}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", "/login")
        resp = conn.getresponse()
        body = resp.read()
        cookie = _cookie_of(resp)
        match = re.search(rb'name="csrf_token" value="([^"]+)"', body)
        if resp.status != 200 or not cookie or not match:
            raise ConnectionError(f"GET /login: {resp.status}, cookie {bool(cookie)}, token {bool(match)}")
        form = urllib.parse.urlencode({"nickname": nick, "csrf_token": match.group(1).decode()})
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie, "Origin": origin}
        conn.request("POST", "/login", form, headers)
        resp = conn.getresponse()
        resp.read()
        new = _cookie_of(resp)
        if resp.status != 303 or not new:
            raise ConnectionError(f"POST /login: {resp.status}")
        return new
    finally:
        conn.close()


def ws_handshake(sock: socket.socket, port: int, cookie: str) -> bytes:
    """Upgrade ``/ws`` as the chat page would (same Origin, the session cookie)."""
    import base64

    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n"
            f"Cookie: {cookie}\r\n\r\n"
        ).encode()
    )
    return read_handshake(sock)


def parse_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete server (unmasked) frames at the start of ``buf``; removed from it."""
    out = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        n = buf[pos + 1] & 0x7F
        head = 2
        if n == 126:
            if end - pos < 4:
                break
            n = struct.unpack_from("!H", buf, pos + 2)[0]
            head = 4
        elif n == 127:
            if end - pos < 10:
                break
            n = struct.unpack_from("!Q", buf, pos + 2)[0]
            head = 10
        if end - pos < head + n:
            break
        out.append((buf[pos] & 0x0F, bytes(buf[pos + head : pos + head + n])))
        pos += head + n
    if pos:
        del buf[:pos]
    return out


class WS:
    """A JSON WebSocket client on a raw socket: answers pings, raises Closed."""

    def __init__(self, port: int, cookie: str, c: Counters) -> None:
        self.c = c
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf = bytearray(ws_handshake(self.sock, port, cookie))
        except BaseException:
            self.sock.close()
            raise
        self.pending: collections.deque[dict[str, Any]] = collections.deque()
        self.close_code: int | None = None  # a close frame came after what is pending
        self.close_seen = False
        c.open += 1
        self.closed = False

    def send(self, obj: dict[str, Any]) -> None:
        self.sock.sendall(frame(json.dumps(obj, separators=(",", ":")).encode()))

    def recv(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON message, or None when nothing came within ``timeout``."""
        while not self.pending:
            if self.close_seen:
                raise Closed(self.close_code, "close frame")
            for op, payload in parse_frames(self.buf):
                if op == 1:
                    try:
                        msg = json.loads(payload)
                    except ValueError:
                        self.c.error("recv", ValueError(f"not JSON: {payload[:60]!r}"))
                        continue
                    if isinstance(msg, dict):
                        self.pending.append(msg)
                elif op == 9:
                    self.sock.sendall(frame(payload, opcode=10))
                elif op == 8:
                    self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    self.close_seen = True
                    break  # what came before it is still delivered
            if self.pending:
                break
            if self.close_seen:
                raise Closed(self.close_code, "close frame")
            if timeout <= 0:
                return None
            self.sock.settimeout(timeout)
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                return None
            except OSError as exc:
                raise Closed(None, f"{type(exc).__name__}") from None
            if not data:
                raise Closed(None, "EOF")
            self.buf += data
            timeout = 0.0  # parse what came; do not wait twice
        return self.pending.popleft()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.c.open -= 1
        try:
            self.sock.settimeout(2)
            self.sock.sendall(frame(struct.pack("!H", 1000), opcode=8))
        except OSError:
            pass
        self.sock.close()


class Clock:
    """The run's times (CLOCK_MONOTONIC is shared by every process of the machine)."""

    go = pub_end = end = 0.0


def churner(cid: int, cfg: dict[str, Any], cookie: str, clock: Clock, c: Counters) -> None:
    """Join a fresh room, leave it, repeat, at most churn_rate cycles a second."""
    import gevent

    port, period = cfg["port"], 1.0 / cfg["churn_rate"]
    rng = random.Random(cid)
    gevent.sleep(rng.uniform(0, period))
    n = ref = 0
    while time.monotonic() < clock.end:
        try:
            ws = WS(port, cookie, c)
        except OSError as exc:
            c.error("churn connect", exc)
            gevent.sleep(1.0)
            continue
        try:
            while time.monotonic() < clock.end:
                t0 = time.monotonic()
                n += 1
                room = f"room:c{cid}-{n}"
                ref += 1
                ws.send({"op": "join", "channel": room, "ref": ref})
                reply = wait_ref(ws, ref, t0 + 10)
                if reply is None:
                    c.churn_timeouts += 1
                    break  # a fresh connection: the old one is in an unknown state
                if reply.get("op") == "joined":
                    ref += 1
                    ws.send({"op": "leave", "channel": room, "ref": ref})
                    reply = wait_ref(ws, ref, time.monotonic() + 10)
                    if reply is None:
                        c.churn_timeouts += 1
                        break
                else:
                    c.churn_join_errors += 1
                    c.refusals[str(reply.get("error"))] += 1
                c.churn_cycles += 1
                c.churn_latency_ms += round((time.monotonic() - t0) * 1000)
                c.waited("churn", time.monotonic() - t0)
                gevent.sleep(max(0.0, t0 + period - time.monotonic()))
        except Closed as exc:
            c.churn_disconnects += 1
            c.close_codes[f"churn {exc.code}"] += 1
            gevent.sleep(0.5)
        except OSError as exc:
            c.churn_disconnects += 1
            c.error("churn", exc)
            gevent.sleep(0.5)
        finally:
            ws.close()


def wait_ref(ws: WS, ref: int, deadline: float) -> dict[str, Any] | None:
    """The reply carrying ``ref`` (other traffic dropped), or None at ``deadline``."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        msg = ws.recv(left)
        if msg is not None and msg.get("ref") == ref:
            return msg


class Member:
    """A normal chat client: its room, what it published, what it received."""

    def __init__(self, cid: int, room: str) -> None:
        self.cid = cid
        self.nick = f"n{cid}"
        self.room = room
        self.published = 0  # messages acknowledged with ``ok`` (seqs 1..published)
        self.uncertain = 0
        self.last_id = 0  # newest hub id seen in the room
        self.joined = False
        # sender nick -> [last seq seen, set of missing seqs, duplicates]
        self.seen: dict[str, list[Any]] = {}


def handle(m: Member, msg: dict[str, Any], c: Counters) -> None:
    """Account for one message a member received (room traffic only)."""
    if msg.get("channel") != m.room:
        return
    mid = msg.get("id")
    if isinstance(mid, int) and mid > m.last_id:
        m.last_id = mid
    if "data" in msg:
        data = msg["data"]
        try:
            sender = data["nick"]
            seq = int(data["text"].split(" ", 1)[0])
        except (TypeError, KeyError, ValueError, AttributeError):
            c.error("message", ValueError(f"unexpected: {str(msg)[:80]}"))
            return
        c.delivered += 1
        st = m.seen.get(sender)
        if st is None:
            st = m.seen[sender] = [0, set(), 0]
        last = st[0]
        if seq == last + 1:
            st[0] = seq
        elif seq > last + 1:
            gap = range(last + 1, seq)
            if len(st[1]) < 10_000:
                st[1].update(gap)
            c.lost += len(gap)
            st[0] = seq
        elif seq in st[1]:
            st[1].discard(seq)  # late, out of order: not lost after all
            c.lost -= 1
            c.late += 1
        else:
            st[2] += 1
            c.dup += 1
    elif "presence" in msg:
        c.presence += 1
    elif "gap" in msg:
        c.gaps += 1


def member_join(ws: WS, m: Member, c: Counters) -> None:
    """Join (or rejoin with ``since``) the member's room; raise if refused."""
    req: dict[str, Any] = {"op": "join", "channel": m.room, "ref": "join"}
    if m.joined:
        req["since"] = m.last_id
    ws.send(req)
    deadline = time.monotonic() + 20
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no joined reply for {m.room}")
        msg = ws.recv(left)
        if msg is None:
            continue
        if msg.get("ref") == "join":
            if msg.get("op") != "joined":
                raise ConnectionError(f"join refused: {msg.get('error')} {msg.get('message')}")
            if not m.joined and isinstance(msg.get("last"), int):
                m.last_id = max(m.last_id, msg["last"])
            m.joined = True
            return
        handle(m, msg, c)


def member(m: Member, cfg: dict[str, Any], cookie: str, clock: Clock, c: Counters, ready: Any) -> None:
    """Join before the clock starts; then publish now and then and read everything."""
    import gevent

    port = cfg["port"]
    rng = random.Random(m.cid)
    interval = cfg["chat_interval"]
    ws: WS | None = None
    deadline = time.monotonic() + cfg["setup_timeout"]
    while ws is None:
        try:
            ws = WS(port, cookie, c)
            member_join(ws, m, c)
        except (OSError, Closed) as exc:
            c.error("member setup", exc)
            if ws is not None:
                ws.close()
                ws = None
            if time.monotonic() > deadline:
                ready.put(False)
                return
            gevent.sleep(1.0)
    ready.put(True)
    while clock.go == 0.0:
        try:
            msg = ws.recv(0.5)
            if msg is not None:
                handle(m, msg, c)
        except (OSError, Closed) as exc:
            c.error("member before go", exc)
            ws.close()
            ws = None  # reconnects (with since) once the clock runs
            break
    next_pub = clock.go + rng.uniform(0, interval)
    awaiting: float | None = None  # when the publish in flight was sent
    while time.monotonic() < clock.end:
        try:
            if ws is None:
                c.normal_reconnects += 1
                ws = WS(port, cookie, c)
                member_join(ws, m, c)
            while True:
                now = time.monotonic()
                if now >= clock.end:
                    break
                if awaiting is None and now >= next_pub and now < clock.pub_end:
                    ws.send(
                        {"op": "publish", "channel": m.room, "data": f"{m.published + 1} from {m.nick}", "ref": "p"}
                    )
                    awaiting = now
                    next_pub = now + interval * rng.uniform(0.8, 1.2)
                elif awaiting is not None and now - awaiting > 30:
                    c.error("publish", TimeoutError("no ok in 30 s"))
                    raise Closed(None, "publish timeout")
                wake = clock.end if awaiting is not None or now >= clock.pub_end else min(next_pub, clock.end)
                msg = ws.recv(max(0.0, min(wake, now + 5.0) - now))
                if msg is None:
                    continue
                if msg.get("ref") == "p":
                    if awaiting is not None:
                        c.waited("pub", time.monotonic() - awaiting)
                    awaiting = None
                    if msg.get("op") == "ok":
                        m.published += 1
                        c.published += 1
                    else:
                        c.refused += 1
                        c.refusals[str(msg.get("error"))] += 1
                else:
                    handle(m, msg, c)
        except (Closed, OSError) as exc:
            c.normal_disconnects += 1
            c.close_codes[f"normal {getattr(exc, 'code', type(exc).__name__)}"] += 1
            if awaiting is not None:  # it may have gone out: count it as published
                awaiting = None
                m.published += 1
                m.uncertain += 1
                c.published += 1
                c.uncertain += 1
            if ws is not None:
                ws.close()
                ws = None
            gevent.sleep(rng.uniform(0.5, 1.0))
    if ws is not None:
        ws.close()


def flooder(cid: int, index: int, cfg: dict[str, Any], cookie: str, clock: Clock, c: Counters) -> None:
    """Send pings fast, never read; when the server ends the connection, count it, reconnect."""
    import gevent

    port = cfg["port"]
    batch = max(1, cfg["flood_rate"] // 100)  # one batch every 10 ms
    pings = b"".join(frame(b"p" * PING_PAYLOAD, opcode=9) for _ in range(batch))
    period = batch / cfg["flood_rate"]
    # Staggered starts (1 s apart, 10 s at most) so the flooders' queues do not all fill
    # and empty at once: the server's memory then swings less between samples.
    gevent.sleep(index * min(1.0, 10.0 / max(1, cfg["flooders"])))
    while time.monotonic() < clock.end:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A small receive buffer: the pongs pile up in the server, not in our kernel.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg["flood_rcvbuf"])
        sock.settimeout(20)
        try:
            sock.connect(("127.0.0.1", port))
            ws_handshake(sock, port, cookie)
        except OSError as exc:
            c.flood_connect_errors += 1
            c.error("flood connect", exc)
            sock.close()
            gevent.sleep(1.0)
            continue
        c.flood_conns += 1
        c.flood_ports.append((cid, sock.getsockname()[1]))
        c.open += 1
        try:
            next_at = time.monotonic()
            while time.monotonic() < clock.end:
                sock.sendall(pings)
                c.flood_pings += batch
                next_at = max(next_at + period, time.monotonic() - 0.1)  # no catch-up bursts
                gevent.sleep(max(0.0, next_at - time.monotonic()))
        except TimeoutError:
            # The server stopped reading for 20 s without closing: not what it should do.
            c.flood_stalls += 1
        except OSError:
            c.flood_closed += 1
            if closed_with_1008(sock):
                c.flood_close_frames += 1
        finally:
            c.open -= 1
            sock.close()
        gevent.sleep(0.2)


def closed_with_1008(sock: socket.socket) -> bool:
    """After the server ended it: does what is left to read end with a 1008 close frame?"""
    tail = b""
    try:
        sock.settimeout(0.5)
        for _ in range(1000):  # bounded: a few MiB at most
            data = sock.recv(1 << 16)
            if not data:
                break
            tail = (tail + data)[-512:]
    except OSError:
        pass
    return b"\x88" in tail and struct.pack("!H", 1008) in tail


def worker_main() -> int:
    """A client process: config on stdin, status lines (JSON) on stdout."""
    import gevent
    import gevent.queue
    import gevent.select
    from gevent.pool import Pool

    raise_nofile()
    cfg = json.loads(sys.stdin.readline())
    c = Counters()
    clock = Clock()
    out_lock = threading.Lock()

    def emit(obj: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
            sys.stdout.flush()

    hard_deadline = time.monotonic() + cfg["setup_timeout"] + 60

    def watchdog() -> None:
        while time.monotonic() < hard_deadline:
            gevent.sleep(1.0)
        emit({"type": "error", "message": "worker hard deadline passed"})
        os._exit(3)

    gevent.spawn(watchdog)
    port = cfg["port"]
    cookies: dict[int, str] = {}

    def do_login(cid: int) -> None:
        for attempt in range(3):
            try:
                cookies[cid] = login(port, f"n{cid}")
                c.logins += 1
                return
            except OSError as exc:
                c.login_errors += 1
                c.error("login", exc)
                gevent.sleep(0.5 * (attempt + 1))

    cids = [cid for _role, cid, *_ in cfg["clients"]]
    pool = Pool(25)
    pool.map(do_login, cids)
    if len(cookies) < len(cids):
        emit({"type": "error", "message": f"{len(cids) - len(cookies)} logins failed: {c.last_error}"})
        return 2

    ready: gevent.queue.Queue[bool] = gevent.queue.Queue()
    members: list[Member] = []
    greenlets = []
    n_members = 0
    for role, cid, *rest in cfg["clients"]:
        if role == "normal":
            m = Member(cid, rest[0])
            members.append(m)
            n_members += 1
            greenlets.append(gevent.spawn(member, m, cfg, cookies[cid], clock, c, ready))
    for _ in range(n_members):
        try:
            ok = ready.get(timeout=cfg["setup_timeout"] + 5)
        except gevent.queue.Empty:
            ok = False
        if not ok:
            emit({"type": "error", "message": f"a member could not join: {c.last_error}"})
            return 2
    emit({"type": "ready", **c.snapshot()})

    # Wait for "go GO PUB_END END" (monotonic times) without blocking the members.
    line = b""
    while b"\n" not in line:
        r, _, _ = gevent.select.select([0], [], [], cfg["setup_timeout"])
        if not r:
            emit({"type": "error", "message": "no go"})
            return 2
        chunk = os.read(0, 4096)
        if not chunk:
            return 2
        line += chunk
    words = line.split()
    if words[0] != b"go":
        return 2
    clock.pub_end, clock.end = float(words[2]), float(words[3])
    clock.go = float(words[1])
    hard_deadline = clock.end + 90
    gevent.sleep(max(0.0, clock.go - time.monotonic()))
    for role, cid, *rest in cfg["clients"]:
        if role == "churn":
            greenlets.append(gevent.spawn(churner, cid, cfg, cookies[cid], clock, c))
        elif role == "flood":
            greenlets.append(gevent.spawn(flooder, cid, rest[0], cfg, cookies[cid], clock, c))

    def status() -> None:
        while True:
            emit({"type": "status", "t": time.monotonic(), **c.snapshot()})
            gevent.sleep(1.0)

    reporter = gevent.spawn(status)
    gevent.joinall(greenlets, timeout=max(0.0, clock.end - time.monotonic()) + 30)
    stuck = sum(1 for g in greenlets if not g.dead)
    gevent.killall([g for g in greenlets if not g.dead], timeout=5)
    reporter.kill()
    emit(
        {
            "type": "final",
            "stuck": stuck,
            **c.snapshot(),
            "members": {
                m.nick: {
                    "room": m.room,
                    "published": m.published,
                    "uncertain": m.uncertain,
                    "seen": {s: [st[0], len(st[1]), st[2]] for s, st in m.seen.items()},
                }
                for m in members
            },
        }
    )
    return 0


# =====================================================================================
# coordinator
# =====================================================================================


class Worker:
    """One client process and what it last reported."""

    def __init__(self, index: int, cfg: dict[str, Any], cpu: int | None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.index = index
        self.popen = subprocess.Popen(
            pinned([PYTHON, os.path.abspath(__file__), "--worker"], cpu),
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.ready = threading.Event()
        self.done = threading.Event()
        self.latest: dict[str, Any] = {}
        self.pub_win = self.churn_win = 0  # longest waits (ms) reported since the last sample
        self.final: dict[str, Any] | None = None
        self.error = ""
        self.stderr: collections.deque[str] = collections.deque(maxlen=20)
        assert self.popen.stdin is not None
        self.popen.stdin.write((json.dumps(cfg) + "\n").encode())
        self.popen.stdin.flush()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            kind = msg.get("type")
            if kind == "ready":
                self.latest = msg
                self.ready.set()
            elif kind == "status":
                self.latest = msg
                self.pub_win = max(self.pub_win, msg.get("pub_win", 0))
                self.churn_win = max(self.churn_win, msg.get("churn_win", 0))
            elif kind == "final":
                self.final = msg
                self.latest = msg
            elif kind == "error":
                self.error = msg.get("message", "?")
                self.ready.set()
        self.done.set()
        self.ready.set()

    def _read_err(self) -> None:
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            self.stderr.append(raw.decode(errors="replace").rstrip())

    def go(self, go: float, pub_end: float, end: float) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(f"go {go} {pub_end} {end}\n".encode())
        self.popen.stdin.flush()

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, 15)
                self.popen.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.popen.pid, 9)
                except ProcessLookupError:
                    pass
                self.popen.wait(5)


def start_redis(cpu: int | None) -> Proc | None:
    exe = shutil.which("redis-server")
    if not exe:
        return None
    port = free_port()
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = Proc("redis", pinned(argv, cpu))
    if not wait_port(port, proc, 10):
        proc.stop()
        return None
    proc.port = port  # type: ignore[attr-defined]
    return proc


def redis_keys(client: Any, limit: int = 500_000) -> dict[str, Any]:
    """DBSIZE, and the keys without a TTL (SCAN + TTL, at most ``limit`` keys looked at)."""
    started = time.monotonic()
    size = int(client.dbsize())
    no_ttl = scanned = 0
    prefixes: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor=cursor, count=1000)
        if keys:
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.ttl(k)
            for k, ttl in zip(keys, pipe.execute(), strict=True):
                name = k.decode(errors="replace") if isinstance(k, bytes) else str(k)
                kind = re.sub(r"[0-9a-f]{16,}|\d+", "#", name)  # room:c12-345 -> room:c#-#
                kinds[kind] += 1
                if ttl == -1:
                    no_ttl += 1
                    prefixes[":".join(name.split(":")[:3])] += 1
            scanned += len(keys)
        if cursor == 0 or scanned >= limit:
            break
    return {
        "keys": size,
        "no_ttl": no_ttl,
        "partial": cursor != 0,
        "no_ttl_prefixes": dict(prefixes.most_common(4)),
        "kinds": dict(kinds.most_common(8)),
        "scan_ms": round((time.monotonic() - started) * 1000),
    }


def runq_wait(pid: int) -> float:
    """Seconds ``pid``'s threads have waited for a CPU while runnable (schedstat)."""
    total = 0.0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        pass
    return total


class SlowLog:
    """The server log's slow-consumer lines: which client ports the server closed as slow.

    rtserver logs ``WebSocket 127.0.0.1:PORT: slow consumer, N bytes queued ...; closing
    1008`` when it decides; the flooders report their local ports, so the closes can be
    told apart: flooders' (expected) and anybody else's (a reader that kept up should
    never be one).
    """

    LINE = re.compile(rb"WebSocket 127\.0\.0\.1:(\d+): slow consumer")

    def __init__(self, path: str) -> None:
        self.path = path
        self.pos = 0
        self.ports: list[int] = []

    def update(self) -> list[int]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read(64 * MIB)
        except OSError:
            return self.ports
        cut = data.rfind(b"\n") + 1
        self.pos += cut
        self.ports.extend(int(m.group(1)) for m in self.LINE.finditer(data[:cut]))
        return self.ports

    def split(self, workers: list[Worker]) -> tuple[list[int], int]:
        """(client ids of the flooder connections closed as slow, other slow closes)."""
        flooders = {int(port): int(cid) for w in workers for cid, port in w.latest.get("flood_ports", [])}
        ports = self.update()
        flagged = [flooders[p] for p in ports if p in flooders]
        return flagged, len(ports) - len(flagged)


def assign(args: argparse.Namespace) -> list[list[Any]]:
    """Roles by client id: churners, then flooders, then normal members in rooms."""
    clients: list[list[Any]] = []
    for cid in range(args.clients):
        if cid < args.churners:
            clients.append(["churn", cid])
        elif cid < args.churners + args.flooders:
            clients.append(["flood", cid, cid - args.churners])
        else:
            clients.append(["normal", cid, f"room:soak-{(cid - args.churners - args.flooders) % args.rooms}"])
    return clients


def total(workers: list[Worker], field: str) -> int:
    return sum(int(w.latest.get(field, 0) or 0) for w in workers)


def final_losses(workers: list[Worker], clients: list[list[Any]]) -> dict[str, int]:
    """Lost, duplicated and unexpected messages over every (member, sender) pair."""
    members: dict[str, dict[str, Any]] = {}
    for w in workers:
        members.update((w.final or {}).get("members", {}))
    rooms: dict[str, list[str]] = collections.defaultdict(list)
    for role, cid, *rest in clients:
        if role == "normal":
            rooms[rest[0]].append(f"n{cid}")
    lost = dup = extra = expected = 0
    for nicks in rooms.values():
        for r in nicks:
            seen = members.get(r, {}).get("seen", {})
            for s in nicks:
                pub = members.get(s, {}).get("published", 0)
                last, missing, dups = seen.get(s, (0, 0, 0))
                expected += pub
                lost += missing + max(0, pub - last)
                extra += max(0, last - pub)
                dup += dups
    return {"expected": expected, "lost": lost, "dup": dup, "extra": extra, "members": len(members)}


def run(args: argparse.Namespace) -> int:
    nofile = raise_nofile()
    if nofile < args.clients + 500:
        print(f"RLIMIT_NOFILE is {nofile}: too low for {args.clients} clients", file=sys.stderr)
        return 2
    server_cpu, client_cpu = (0, 1) if can_pin() and not args.no_pin else (None, None)
    t_start = time.monotonic()
    hard_end = t_start + args.setup_timeout + args.minutes * 60 + 180
    redis = None
    rclient = None
    port = free_port()
    argv = [PYTHON, "-m", "examples.chat", "--host", "127.0.0.1", "--port", str(port)]
    if args.broker == "redis":
        try:
            import redis as redis_py
        except ImportError:
            print("--broker redis needs redis-py in this virtualenv", file=sys.stderr)
            return 2
        redis = start_redis(client_cpu)
        if redis is None:
            print("redis-server did not start (is it installed?)", file=sys.stderr)
            return 2
        url = f"redis://127.0.0.1:{redis.port}/0"  # type: ignore[attr-defined]
        rclient = redis_py.Redis(host="127.0.0.1", port=redis.port, socket_timeout=30)  # type: ignore[attr-defined]
        argv += ["--broker", url]
    server = Proc("chat", pinned(argv, server_cpu))
    slow_log = SlowLog(server.log.name)
    workers: list[Worker] = []
    rows: list[dict[str, Any]] = []
    clients = assign(args)
    result: dict[str, Any] = {}
    try:
        if not wait_http(port, "/login", server, timeout=30):
            print("the chat server did not start:\n" + server.log_tail(20), file=sys.stderr)
            return 2
        n_normal = args.clients - args.churners - args.flooders
        print(
            f"soak ({args.broker}): {args.clients} clients = {args.churners} churners x {args.churn_rate:g} cycles/s, "
            f"{args.flooders} ping flooders x {args.flood_rate} pings/s, {n_normal} members in {args.rooms} rooms "
            f"x 1 msg/{args.chat_interval:g} s; {args.minutes:g} min, samples every {args.every:g} s; "
            f"{args.client_procs} client processes; "
            + (
                f"server on CPU {server_cpu}, clients and redis on CPU {client_cpu}"
                if server_cpu is not None
                else "not pinned"
            ),
            flush=True,
        )
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {load} ({os.cpu_count()} CPUs)", flush=True)
        result["load_before"] = load
        rss0 = rss_kib(server.pid)
        cfg_base = {
            "port": port,
            "churn_rate": args.churn_rate,
            "flood_rate": args.flood_rate,
            "flooders": args.flooders,
            "flood_rcvbuf": args.flood_rcvbuf,
            "chat_interval": args.chat_interval,
            "setup_timeout": args.setup_timeout,
        }
        for i in range(args.client_procs):
            mine = [cl for cl in clients if cl[1] % args.client_procs == i]
            workers.append(Worker(i, {**cfg_base, "clients": mine}, client_cpu))
        deadline = time.monotonic() + args.setup_timeout + 10
        for w in workers:
            w.ready.wait(max(0.0, deadline - time.monotonic()))
        bad = [w for w in workers if w.error or not w.latest or w.done.is_set()]
        if bad:
            for w in bad:
                print(
                    f"client process {w.index} failed: {w.error or 'no ready'}; " + " | ".join(w.stderr),
                    file=sys.stderr,
                )
            return 2
        setup_s = time.monotonic() - t_start
        print(
            f"setup: {total(workers, 'logins')} logins, {n_normal} members joined in {setup_s:.1f} s; "
            f"server RSS {rss0 / 1024:.1f} MiB at start, {rss_kib(server.pid) / 1024:.1f} MiB now",
            flush=True,
        )
        go = time.monotonic() + 1.0
        end = go + args.minutes * 60
        pub_end = end - args.drain
        for w in workers:
            w.go(go, pub_end, end)
        time.sleep(max(0.0, go - time.monotonic()))
        prev = {"t": go, "cpu_srv": cpu_seconds(server.pid), "wait_srv": runq_wait(server.pid), "cpu_cli": 0.0}
        prev["cycles"] = 0
        for w in workers:
            prev["cpu_cli"] += w.latest.get("cpu", 0.0)
        k = 0
        died = False
        while True:
            # Samples under load only: the last one a second before the clients leave.
            at = min(go + k * args.every, end - 1.0)
            if k and at <= go + (k - 1) * args.every + 0.01:
                break
            time.sleep(max(0.0, at - time.monotonic()))
            if not server.alive():
                print("the server died:\n" + server.log_tail(20), file=sys.stderr)
                died = True
                break
            now = time.monotonic()
            row: dict[str, Any] = {"t_s": round(now - go), "rss_mib": round(rss_kib(server.pid) / 1024, 1)}
            if rclient is not None:
                try:
                    info = redis_keys(rclient)
                except Exception as exc:  # the sample is lost, not the run
                    info = {"keys": None, "no_ttl": None, "error": repr(exc)}
                row["redis_keys"] = info["keys"]
                row["no_ttl"] = info["no_ttl"]
                row["no_ttl_prefixes"] = info.get("no_ttl_prefixes")
            cpu_srv = cpu_seconds(server.pid)
            wait_srv = runq_wait(server.pid)
            flagged, others = slow_log.split(workers)
            cpu_cli = sum(w.latest.get("cpu", 0.0) for w in workers)
            cycles = total(workers, "churn_cycles")
            dt = max(1e-6, now - prev["t"])
            row.update(
                delivered=total(workers, "delivered"),
                lost=total(workers, "lost"),
                dup=total(workers, "dup"),
                published=total(workers, "published"),
                slow_flood=len(flagged),
                slow_other=others,
                flooders_hit=len(set(flagged)),
                flood_drops=total(workers, "flood_closed"),
                churn_per_s=round((cycles - prev["cycles"]) / dt) if k else 0,
                pub_ms=max(w.pub_win for w in workers),
                churn_ms=max(w.churn_win for w in workers),
                churn=cycles,
                open=total(workers, "open"),
                discon=total(workers, "normal_disconnects") + total(workers, "churn_disconnects"),
                errors=total(workers, "errors") + total(workers, "churn_timeouts") + total(workers, "refused"),
                srv_cpu=round((cpu_srv - prev["cpu_srv"]) / dt * 100) if k else 0,
                srv_runq=round((wait_srv - prev["wait_srv"]) / dt * 100) if k else 0,
                cli_cpu=round((cpu_cli - prev["cpu_cli"]) / dt * 100) if k else 0,
            )
            prev = {"t": now, "cpu_srv": cpu_srv, "wait_srv": wait_srv, "cpu_cli": cpu_cli, "cycles": cycles}
            for w in workers:
                w.pub_win = w.churn_win = 0
            rows.append(row)
            print("  ".join(f"{key}={v}" for key, v in row.items() if key != "no_ttl_prefixes"), flush=True)
            k += 1
            if time.monotonic() > hard_end:
                print("hard deadline passed", file=sys.stderr)
                break
        for w in workers:
            w.done.wait(max(1.0, min(60.0, hard_end - time.monotonic())))
        after: dict[str, Any] = {"rss_mib": round(rss_kib(server.pid) / 1024, 1)}
        time.sleep(3)  # the server finishes the last closes
        after["rss_mib_3s"] = round(rss_kib(server.pid) / 1024, 1)
        if rclient is not None:
            try:
                after.update(redis_keys(rclient))
            except Exception as exc:
                after["redis_error"] = repr(exc)
        result.update(verdict(args, rows, workers, clients, died, after, slow_log))
        result["setup_s"] = round(setup_s, 1)
        result["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"load average {result['load_before']} before, {result['load_after']} after")
    finally:
        for w in workers:
            w.stop()
        if args.server_log:
            try:
                shutil.copyfile(server.log.name, args.server_log)
            except OSError as exc:
                print(f"could not keep the server log: {exc}", file=sys.stderr)
        server.stop()
        if redis is not None:
            redis.stop()
    write_json(args.json, {"args": vars(args), "rows": rows, **result})
    return 0 if result.get("pass") else 1


def warm_up(minutes: float, rows: list[dict[str, Any]], flooders: int) -> float:
    """Seconds of warm-up: the first minute (half the run when it is under 2 minutes),
    and at least until every flooder was closed as a slow consumer once.

    A flooder legitimately pins up to ``send_queue_size`` (4 MiB) of pongs in the
    server, plus the kernel's socket buffers, until the server closes it: at 2,000
    pings/s that takes ~35-45 s, so the server's high-water mark is only reached then.
    Later connections of the flooders fill and empty the same way (their memory is
    freed: RSS swings by up to flooders x 4 MiB), so the reference is the *highest*
    sample of the second half of the warm-up.
    """
    warm = min(60.0, minutes * 60 / 2)
    hit = next((r["t_s"] for r in rows if r.get("flooders_hit", 0) >= flooders), None)
    if hit is not None and hit > warm and hit < rows[-1]["t_s"]:
        warm = float(hit)
    return warm


def verdict(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    workers: list[Worker],
    clients: list[list[Any]],
    died: bool,
    after: dict[str, Any],
    slow_log: SlowLog,
) -> dict[str, Any]:
    """Print the table and the verdict; return the figures."""
    cols = ["t_s", "rss_mib"]
    if args.broker == "redis":
        cols += ["redis_keys", "no_ttl"]
    cols += [
        "delivered",
        "lost",
        "dup",
        "published",
        "slow_flood",
        "slow_other",
        "flood_drops",
        "churn_per_s",
        "pub_ms",
        "churn_ms",
        "open",
        "discon",
        "errors",
        "srv_cpu",
        "srv_runq",
        "cli_cpu",
    ]
    print()
    print(table(cols, [[r.get(c, "-") for c in cols] for r in rows]))
    finals = [w.final for w in workers]
    if any(f is None for f in finals):
        missing = [w.index for w in workers if w.final is None]
        print(f"\nclient processes {missing} sent no final report: " + " | ".join(s for w in workers for s in w.stderr))
        return {"pass": False, "reason": "no final report"}
    fsum = {f: sum(int(x.get(f, 0)) for x in finals if x) for f in Counters.FIELDS}  # type: ignore[union-attr]
    losses = final_losses(workers, clients)
    refusals: collections.Counter[str] = collections.Counter()
    codes: collections.Counter[str] = collections.Counter()
    for x in finals:
        refusals.update(x.get("refusals", {}))  # type: ignore[union-attr]
        codes.update(x.get("close_codes", {}))  # type: ignore[union-attr]
    minutes = args.minutes
    warm = warm_up(minutes, rows, args.flooders)
    ref_rows = [r for r in rows if warm / 2 - 0.5 <= r["t_s"] <= warm + 0.5]
    later = [r for r in rows if r["t_s"] > warm + 0.5]
    checks: list[tuple[str, bool]] = []
    out: dict[str, Any] = {
        "final": fsum,
        "losses": losses,
        "after": after,
        "refusals": dict(refusals),
        "close_codes": dict(codes),
        "warm_up_s": warm,
    }
    if not ref_rows or not later:
        checks.append(("enough samples after the warm-up", False))
    else:
        span = f"{ref_rows[0]['t_s']}-{ref_rows[-1]['t_s']} s"
        b = max(r["rss_mib"] for r in ref_rows)
        peak = max(r["rss_mib"] for r in later)
        limit = b + max(RSS_SLACK[0] * b, RSS_SLACK[1] / MIB)
        filled = any(r.get("flooders_hit", 0) >= args.flooders for r in ref_rows) or not args.flooders
        checks.append(
            (
                f"server RSS flat after {warm:g} s: max {b} MiB at {span}, max after {peak} MiB "
                f"(limit {limit:.1f}); first {rows[0]['rss_mib']}, last {rows[-1]['rss_mib']} MiB"
                + (
                    ""
                    if filled
                    else " -- not conclusive: the flooders' first queues (up to 4 MiB each, plus socket buffers) "
                    "were still filling during the warm-up; use --minutes 3 or more for a memory verdict"
                ),
                peak <= limit,
            )
        )
        out["rss"] = {"base": b, "peak": peak, "limit": round(limit, 1)}
        if args.broker == "redis":
            known = [r["redis_keys"] for r in ref_rows if r.get("redis_keys") is not None]
            kb = max(known) if known else None
            kpeak = max((r.get("redis_keys") or 0) for r in later)
            klimit = (kb or 0) + max(KEYS_SLACK[0] * (kb or 0), KEYS_SLACK[1])
            checks.append(
                (
                    f"Redis keys flat after {warm:g} s: max {kb} at {span}, max after {kpeak} (limit {klimit:.0f}); "
                    f"last {rows[-1].get('redis_keys')}, after the run {after.get('keys')}",
                    kb is not None and kpeak <= klimit,
                )
            )
            no_ttl = max((r.get("no_ttl") or 0) for r in rows)
            worst = max(rows, key=lambda r: r.get("no_ttl") or 0)
            checks.append(
                (
                    f"Redis keys without a TTL: max {no_ttl} in the samples ({worst.get('no_ttl_prefixes') or {}}), "
                    f"{after.get('no_ttl')} after the run",
                    no_ttl == 0 and not after.get("no_ttl") and all(r.get("no_ttl") is not None for r in rows),
                )
            )
            out["redis"] = {"base": kb, "peak": kpeak, "limit": round(klimit), "no_ttl_max": no_ttl}
    checks.append(
        (
            f"every normal message delivered: {losses['expected']:,} expected deliveries of {fsum['published']:,} "
            f"messages, lost {losses['lost']}, duplicated {losses['dup']}"
            + (f", {losses['extra']} beyond the senders' counts" if losses["extra"] else "")
            + (f" ({fsum['uncertain']} publishes unconfirmed at a disconnect)" if fsum["uncertain"] else ""),
            losses["lost"] == 0 and losses["dup"] == 0 and losses["expected"] > 0 and losses["members"] > 0,
        )
    )
    flagged, others = slow_log.split(workers)
    checks.append(
        (
            f"every ping flooder closed as a slow consumer: {len(flagged)} of {fsum['flood_conns']} flooder connections "
            f"({len(set(flagged))} of {args.flooders} flooders) closed as slow by the server, "
            f"{fsum['flood_closed']} of them dropped before the end; {fsum['flood_pings']:,} pings sent; "
            f"{fsum['flood_stalls']} stalled (not read for 20 s, not closed); {others} other slow-consumer closes",
            len(set(flagged)) >= args.flooders and fsum["flood_stalls"] == 0,
        )
    )
    out["slow_consumers"] = {"flooder_closes": len(flagged), "flooders_closed": len(set(flagged)), "others": others}
    pub_max = max(int(x.get("pub_max", 0)) for x in finals if x)
    churn_max = max(int(x.get("churn_max", 0)) for x in finals if x)
    waits = (
        f"longest publish -> ok {pub_max} ms, longest join+leave {churn_max} ms, "
        f"{fsum['churn_timeouts']} churn timeouts (10 s)"
    )
    if args.max_wait > 0:
        checks.append(
            (
                f"server responsive throughout: {waits} (limit {args.max_wait:g} s)",
                max(pub_max, churn_max) <= args.max_wait * 1000 and fsum["churn_timeouts"] == 0,
            )
        )
    else:
        print(f"waits (not judged, --max-wait 0): {waits}")
    out["waits_ms"] = {"publish_max": pub_max, "churn_max": churn_max}
    checks.append(("server alive to the end", not died))
    cycles = fsum["churn_cycles"]
    print(
        f"\nchurn: {cycles:,} join/leave cycles ({cycles / (minutes * 60):,.0f}/s, mean "
        f"{fsum['churn_latency_ms'] / max(1, cycles):.1f} ms), {fsum['churn_join_errors']} refused "
        f"{dict(refusals) or ''}, {fsum['churn_timeouts']} timeouts, {fsum['churn_disconnects']} disconnects"
    )
    print(
        f"chat: {fsum['published']:,} messages published, {fsum['delivered']:,} delivered, {fsum['presence']:,} "
        f"presence events, {fsum['gaps']} gap notices, {fsum['refused']} publishes refused, "
        f"{fsum['normal_disconnects']} member disconnects ({fsum['normal_reconnects']} reconnects)"
    )
    if codes:
        print(f"server closes seen by clients: {dict(codes)}")
    if fsum["errors"]:
        print(
            f"client errors: {fsum['errors']} (last: {next((x.get('last_error') for x in finals if x and x.get('last_error')), '')})"
        )
    if any(x.get("stuck") for x in finals if x):
        print(f"client greenlets still running at the end: {sum(x.get('stuck', 0) for x in finals if x)}")
    print(f"after the run: {after}")
    busy = max((r.get("cli_cpu", 0) for r in rows), default=0)
    starved = max((r.get("srv_runq", 0) for r in rows), default=0)
    if busy >= 90:
        print(f"note: the clients used up to {busy} % of a core: waits and churn rates are upper bounds")
    if starved >= 30:
        print(f"note: the server waited for a CPU up to {starved} % of the time (srv_runq): the machine is busy")
    ok = all(passed for _, passed in checks)
    print()
    for text, passed in checks:
        print(f"  [{'ok' if passed else 'FAIL'}] {text}")
    print(f"\n{'PASS' if ok else 'FAIL'} ({args.broker} broker, {minutes:g} min)")
    out["checks"] = [{"check": t, "ok": p} for t, p in checks]
    out["pass"] = ok
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--broker", choices=("memory", "redis"), default="memory", help="the chat's hub broker (default memory)"
    )
    p.add_argument("--minutes", type=float, default=10.0, help="length of the run after setup (default 10; 1: quick)")
    p.add_argument("--quick", action="store_true", help="the quick run: --minutes 1")
    p.add_argument("--clients", type=int, default=1000, help="WebSocket clients in all (default 1000)")
    p.add_argument("--churners", type=int, default=100, help="clients joining and leaving fresh rooms (default 100)")
    p.add_argument(
        "--churn-rate", type=float, default=20.0, help="join+leave cycles per second per churner (default 20)"
    )
    p.add_argument("--flooders", type=int, default=10, help="clients flooding pings, never reading (default 10)")
    p.add_argument("--flood-rate", type=int, default=2000, help="pings per second per flooder (default 2000)")
    p.add_argument("--flood-rcvbuf", type=int, default=8192, help="flooders' SO_RCVBUF in bytes (default 8192)")
    p.add_argument("--rooms", type=int, default=8, help="shared rooms of the normal members (default 8)")
    p.add_argument("--chat-interval", type=float, default=10.0, help="seconds between a member's messages (default 10)")
    p.add_argument("--every", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--drain", type=float, default=5.0, help="seconds without publishing at the end (default 5)")
    p.add_argument("--client-procs", type=int, default=4, help="client processes (default 4)")
    p.add_argument(
        "--setup-timeout", type=float, default=180.0, help="seconds allowed for logins and joins (default 180)"
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and the clients to CPUs")
    p.add_argument(
        "--max-wait",
        type=float,
        default=5.0,
        help="longest publish or join+leave wait allowed, s (default 5; 0: report only)",
    )
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--server-log", metavar="FILE", help="keep the server's output (access log, warnings) in FILE")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker_main()
    if args.quick:
        args.minutes = 1.0
    problems = []
    if not 0 < args.minutes <= 120:
        problems.append("--minutes: 0-120")
    if not 1 <= args.clients <= 5000:
        problems.append("--clients: 1-5000")
    if args.churners < 0 or args.flooders < 0 or args.churners + args.flooders >= args.clients:
        problems.append("--churners + --flooders must leave some normal clients")
    if not 0 < args.churn_rate <= 100:
        problems.append("--churn-rate: 0-100 cycles/s")
    if not 100 <= args.flood_rate <= 50_000:
        problems.append("--flood-rate: 100-50000 pings/s")
    if not 1024 <= args.flood_rcvbuf <= 2**24:
        problems.append("--flood-rcvbuf: 1024-16777216 bytes")
    if not 1 <= args.rooms <= 1000:
        problems.append("--rooms: 1-1000")
    limit, window = CHAT_RATE_WINDOW
    if not window / limit * 1.25 <= args.chat_interval <= 600:
        problems.append(
            f"--chat-interval: {window / limit * 1.25:g}-600 s (the chat allows {limit} messages in {window:g} s)"
        )
    if not 1 <= args.every <= 600 or not 0 <= args.drain < args.minutes * 60 / 2:
        problems.append("--every: 1-600 s; --drain: less than half the run")
    if not 0 <= args.max_wait <= 60:
        problems.append("--max-wait: 0-60 s")
    if not 1 <= args.client_procs <= 16:
        problems.append("--client-procs: 1-16")
    if problems:
        p.error("; ".join(problems))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
