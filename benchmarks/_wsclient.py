"""A raw-socket WebSocket load generator for the benchmarks (client side only).

Why raw sockets and not a WebSocket library: the client must not be the bottleneck.
Every frame a client sends is built (and masked) once, before the clock starts, and a
batch of them goes out in one ``send``. The echo and fan-out servers answer with
frames of a size known in advance, so the client counts bytes (echo) or parses only
frame headers (fan-out): no per-message Python framework work, no UTF-8 decoding, no
unmasking (servers do not mask). Several client processes (``multiprocessing``,
fork) share the load, so the client side can use more CPU than one core's worth of
Python when it is not pinned.

All connections go to 127.0.0.1; every loop is bounded by a deadline.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import struct
import time
from typing import Any

RECV = 1 << 16


def frame(payload: bytes, opcode: int = 1, mask: bytes | None = None) -> bytes:
    """A complete, masked client frame (RFC 6455 §5.2, §5.3)."""
    mask = mask or os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = (mask * (n // 4 + 1))[:n]
    # XOR as one big integer: fast in C, no per-byte Python loop.
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big") if n else b""
    return head + mask + masked


def server_frame_len(payload_len: int) -> int:
    """Bytes of an unmasked server frame carrying ``payload_len`` bytes."""
    if payload_len < 126:
        return 2 + payload_len
    if payload_len < 65536:
        return 4 + payload_len
    return 10 + payload_len


def connect(port: int, path: str, timeout: float = 15.0, handshake: bool = True) -> tuple[socket.socket, bytes]:
    """Connect to 127.0.0.1:port and upgrade ``path``; return (socket, leftover bytes)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not handshake:
        return sock, b""
    send_handshake(sock, port, path)
    return sock, read_handshake(sock)


def send_handshake(sock: socket.socket, port: int, path: str) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )


def read_handshake(sock: socket.socket) -> bytes:
    """Read the upgrade's response head; what came after it (the first frames)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > 16384:
            raise ConnectionError("handshake response too long")
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed during handshake: {buf[:80]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status:
        raise ConnectionError(f"upgrade refused: {status!r}")
    return rest


def connect_many(port: int, path: str, n: int, batch: int = 200, handshake: bool = True) -> list[socket.socket]:
    """``n`` upgraded connections, opened ``batch`` at a time (handshakes overlapped)."""
    socks: list[socket.socket] = []
    while len(socks) < n:
        group = []
        for _ in range(min(batch, n - len(socks))):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if handshake:
                send_handshake(s, port, path)
            group.append(s)
        for s in group:
            if handshake:
                left = read_handshake(s)
                if left:
                    raise ConnectionError("unexpected data after the handshake")
        socks.extend(group)
    return socks


def pin(cpu: int | None) -> None:
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass


def raise_nofile() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_time() -> float:
    t = os.times()
    return t.user + t.system


# -- workers (run in client processes) -------------------------------------------------


def echo_worker(args: dict[str, Any], conn: Any) -> None:
    """Pipelined echo: ``inflight`` frames per connection always outstanding.

    Reports (messages echoed during the window, client CPU seconds, errors).
    """
    pin(args.get("cpu"))
    raise_nofile()
    payload = b"x" * args["size"]
    one = frame(payload, 1)
    reply = server_frame_len(args["size"])
    inflight = args["inflight"]
    socks = connect_many(args["port"], args["path"], args["conns"], handshake=True)
    conn.send("ready")
    start_at = conn.recv()  # a time.monotonic() in the near future
    ep = select.epoll()
    state: dict[int, list[Any]] = {}
    for s in socks:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
        state[s.fileno()] = [s, 0]  # socket, bytes received
    while time.monotonic() < start_at:
        time.sleep(0.001)
    for s in socks:
        s.sendall(one * inflight)  # small; fits the socket buffer
    rbuf = bytearray(RECV)
    t_end = start_at + args["duration"]
    c0 = cpu_time()
    counted_from = None
    base = 0
    errors = 0
    total = 0
    while True:
        now = time.monotonic()
        if now >= t_end:
            break
        if counted_from is None and now >= start_at + args.get("ramp", 0.0):
            counted_from = now
            base = total
        for fd, _ev in ep.poll(min(0.05, t_end - now)):
            st = state[fd]
            s = st[0]
            try:
                n = s.recv_into(rbuf)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            if not n:
                errors += 1
                ep.unregister(fd)
                continue
            before = st[1] // reply
            st[1] += n
            done = st[1] // reply - before
            if done:
                total += done
                try:
                    s.send(one * done)
                except BlockingIOError:
                    errors += 1
    end = time.monotonic()
    cpu = cpu_time() - c0
    conn.send((total - base, end - (counted_from or start_at), cpu, errors))
    for s in socks:
        s.close()


def fan_worker(args: dict[str, Any], conn: Any) -> None:
    """Hold ``conns`` sockets on the fan endpoint; per round, report when all got it.

    The parent sends ``("round", r)`` before each broadcast; this replies with the
    ``time.monotonic()`` at which the last of its sockets had ``r`` data messages
    (CLOCK_MONOTONIC is shared by all processes), or None on timeout, and the CPU
    seconds it used meanwhile.
    """
    pin(args.get("cpu"))
    raise_nofile()
    socks = connect_many(args["port"], args["path"], args["conns"], batch=100)
    ep = select.epoll()
    bufs: dict[int, bytearray] = {}
    counts: dict[int, int] = {}
    sock_of: dict[int, socket.socket] = {}
    for s in socks:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
        bufs[s.fileno()] = bytearray()
        counts[s.fileno()] = 0
        sock_of[s.fileno()] = s
    rbuf = bytearray(RECV)
    rview = memoryview(rbuf)
    conn.send("ready")
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            break
        want = cmd[1]
        c0 = cpu_time()
        deadline = time.monotonic() + args.get("timeout", 30.0)
        missing = sum(1 for c in counts.values() if c < want)
        last = time.monotonic()
        while missing and time.monotonic() < deadline:
            for fd, _ev in ep.poll(0.05):
                try:
                    n = sock_of[fd].recv_into(rbuf)
                except BlockingIOError:
                    continue
                except OSError:
                    n = 0
                if not n:
                    ep.unregister(fd)
                    continue
                # Parse frame headers in place; keep only an incomplete tail.
                tail = bufs[fd]
                if tail:
                    data = tail + rbuf[:n]
                    bufs[fd] = bytearray()
                else:
                    data = rview[:n]
                before = counts[fd]
                pos, end = 0, len(data)
                while end - pos >= 2:
                    op, ln = data[pos] & 0x0F, data[pos + 1] & 0x7F
                    head = 2
                    if ln == 126:
                        if end - pos < 4:
                            break
                        ln, head = (data[pos + 2] << 8) | data[pos + 3], 4
                    elif ln == 127:
                        if end - pos < 10:
                            break
                        ln, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
                    if end - pos < head + ln:
                        break
                    pos += head + ln
                    if op in (1, 2):
                        counts[fd] += 1
                if pos < end:
                    bufs[fd] = bytearray(data[pos:end])
                if before < want <= counts[fd]:
                    missing -= 1
                    last = time.monotonic()
        conn.send((last if not missing else None, cpu_time() - c0))
    for s in socks:
        s.close()


def idle_worker(args: dict[str, Any], conn: Any) -> None:
    """Open ``conns`` connections (upgraded unless ``raw``) and hold them until told."""
    pin(args.get("cpu"))
    raise_nofile()
    try:
        socks = connect_many(args["port"], args["path"], args["conns"], batch=200, handshake=not args.get("raw"))
    except Exception as exc:
        conn.send(("error", repr(exc)))
        return
    conn.send(("ready", len(socks)))
    conn.recv()
    for s in socks:
        s.close()
