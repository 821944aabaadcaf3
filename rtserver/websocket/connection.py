"""Run one WebSocket connection: ws4py's handler API on websockets' sans-IO engine.

:func:`serve` is called in the connection's greenlet once the server has written the
101 response. It owns the socket until the connection ends:

* one reader loop reads up to 1 MiB at a time into a buffer shared by the thread
  (no per-connection buffer), feeds ``websockets.protocol.Protocol`` and dispatches
  every frame of the read to the handler's callbacks (``opened``,
  ``received_message``, ``ponged``, ``closed``);
* writes never block the caller: frames are queued whole (so they never interleave)
  and flushed as soon as the sender yields, by one hub callback for every
  connection written meanwhile, the replies to one read in one system call; a
  flusher greenlet exists only while the kernel refuses data;
* an idle socket waits with no timer: one greenlet per thread (``_PingWatch``)
  wakes it when a keepalive ping is due; the recv timeout drives the pong
  deadline and the closing handshake timeout;
* once the closing handshake is complete (close sent and received, whoever began
  it) the connection ends at once and the server closes TCP (RFC 6455 §7.1.1),
  with no wait for the peer's FIN; a peer that never answers a close is dropped at
  ``close_timeout``, as is one whose connection was failed (§7.1.7), whose close
  frame would be discarded anyway;
* a queue over ``send_queue_size`` marks a slow consumer, closed with
  ``slow_consumer_close_code``; the protocol's own replies (pongs) count too: a
  read is never larger than the room left in the queue, and a full queue stops
  reading (backpressure) until it drains, or for ``close_timeout`` before the slow
  consumer is closed.

Decision: the architecture prefers the library unless our own core is clearly
faster. websockets' core is Autobahn-clean, masks in C and ships permessage-deflate;
in a profile of 64-byte echo its frame parsing is a small share (~15%) of server CPU,
the rest being system calls, the gevent hub and dispatch, which an own core would
not remove. So websockets it is; ``_ServerProtocol`` only relaxes one rule (a close
frame between fragments, RFC 6455 §5.4) and ``_check_partial_text`` adds fail-fast
UTF-8 checks inside a frame still being received (§8.1).
"""

from __future__ import annotations

import codecs
import logging
import socket
import ssl
import struct
import time
import types
import uuid
from collections.abc import Callable, Iterable
from typing import Any, cast
from typing import Protocol as TypingProtocol

import gevent
from gevent import getcurrent
from gevent.event import Event
from gevent.hub import get_hub
from gevent.lock import Semaphore
from gevent.monkey import get_original
from websockets.exceptions import ProtocolError
from websockets.frames import Frame, Opcode
from websockets.protocol import CLOSED, OPEN, SEND_EOF, Protocol, Side
from ws4py.messaging import (
    BinaryMessage,
    CloseControlMessage,
    Message,
    PingControlMessage,
    PongControlMessage,
    TextMessage,
)
from ws4py.websocket import WebSocket as _Ws4pyWebSocket

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - pure-Python websockets build
    from websockets.utils import apply_mask

from .handshake import Handshake
from .options import WebSocketOptions

__all__ = [
    "Counters",
    "Registry",
    "counters",
    "create_handler",
    "prepare_frame",
    "run_handler",
    "runtime_class",
    "serve",
]

log = logging.getLogger("rtserver.websocket")

_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
_PING, _PONG, _CLOSE = Opcode.PING, Opcode.PONG, Opcode.CLOSE
_RECV_SIZE = 1024 * 1024  # shared per thread: large reads cost no per-connection memory
_COALESCE = 16 * 1024  # below this, header + payload are joined into one write
_EOF = object()  # queue marker: half-close after everything before it is written
_SCHEDULED = object()  # flusher state: a hub callback will flush the queue
_BATCH = 256 * 1024  # small queued frames are joined up to this size per send
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")
_thread_ident = get_original("_thread", "get_ident")
_recv_buffers: dict[int, tuple[bytearray, memoryview]] = {}


class Counters:
    """Process-wide message counters of the runtime, read by :mod:`rtserver.stats`.

    Data messages and their payload bytes, each way, and slow consumers closed.
    Plain integer adds on the hot path: no lock, greenlets of one thread never
    interleave inside one.
    """

    __slots__ = ("bytes_in", "bytes_out", "messages_in", "messages_out", "slow_consumers")

    def __init__(self) -> None:
        self.messages_in = self.bytes_in = self.messages_out = self.bytes_out = 0
        self.slow_consumers = 0


#: The counters of this process.
counters = Counters()

try:  # the code object of Frame.parse, to find a frame being received (fail fast)
    _FRAME_PARSE_CODE: Any = Frame.parse.__func__.__code__  # type: ignore[attr-defined]
except AttributeError:  # pragma: no cover
    _FRAME_PARSE_CODE = None


class Registry(TypingProtocol):
    """What ``serve(registry=...)`` needs: a set-like of open handlers."""

    def add(self, handler: Any) -> None: ...

    def discard(self, handler: Any) -> None: ...


class _Wakeup(Exception):
    """Thrown into the reader's recv to make it look at new deadlines."""


def _shared_buffer() -> tuple[bytearray, memoryview]:
    # Safe to share between greenlets of a thread: recv_into fills it and the
    # protocol copies it out with no greenlet switch in between.
    ident = _thread_ident()
    buf = _recv_buffers.get(ident)
    if buf is None:
        data = bytearray(_RECV_SIZE)
        buf = _recv_buffers[ident] = (data, memoryview(data))
    return buf


def _header(first_byte: int, length: int) -> bytes:
    # RFC 6455 §5.2: 7-bit, 16-bit or 64-bit payload length; servers never mask.
    if length < 126:
        return bytes((first_byte, length))
    if length < 65536:
        return struct.pack("!BBH", first_byte, 126, length)
    return struct.pack("!BBQ", first_byte, 127, length)


def prepare_frame(payload: str | bytes | bytearray | memoryview, binary: bool = False) -> bytes:
    """Encode ``payload`` once as a complete unmasked frame for ``send_prepared``.

    The frame is never compressed (RSV1 clear), which RFC 7692 §6 allows on a
    connection that negotiated permessage-deflate, so one encoding serves every
    connection of a broadcast. The price: no compression for prepared messages.
    """
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return _header(0x80 | (_BINARY if binary else _TEXT), len(payload)) + bytes(payload)


class _ServerProtocol(Protocol):
    """websockets' protocol, accepting a close frame between fragments."""

    # websockets gives each connection a uuid4 for its logs (~180 bytes kept per
    # idle socket); the one set by __init__ is dropped, one is made if ever read.
    @property
    def id(self) -> uuid.UUID:  # type: ignore[override]
        """A unique identifier for logs (made on first use)."""
        value: uuid.UUID | None = self.__dict__.get("_rt_id")
        if value is None:
            value = self.__dict__["_rt_id"] = uuid.uuid4()
        return value

    @id.setter
    def id(self, value: uuid.UUID) -> None:
        pass

    def recv_frame(self, frame: Frame) -> None:
        """RFC 6455 §5.4: control frames, close included, may come between fragments."""
        if frame.opcode is _CLOSE:
            self.current_size = None  # the partial message is abandoned
        super().recv_frame(frame)


class _Connection:
    """The engine state of one connection (the handler holds it as ``_rt_conn``)."""

    __slots__ = (
        "aborted",
        "close_deadline",
        "decoder",
        "drained",
        "fast",
        "flusher",
        "handler",
        "handshake",
        "idle_since",
        "local_close",
        "msg_lock",
        "options",
        "out",
        "out_bytes",
        "out_closed",
        "partial",
        "parts",
        "parts_text",
        "ping_count",
        "pong_deadline",
        "proto",
        "raw",
        "reader",
        "sock",
        "ssl",
        "stop_delivery",
    )

    def __init__(self, sock: Any, handshake: Handshake, options: WebSocketOptions) -> None:
        self.sock = sock
        proto = _ServerProtocol(Side.SERVER, state=OPEN, max_size=options.max_message_size, logger=_PROTO_LOG)
        proto.extensions = list(handshake.extensions)
        self.proto = proto
        self.handler: Any = None
        self.options = options
        self.handshake = handshake
        self.reader: Any = None
        self.fast = not proto.extensions  # no extension: frames are built here
        self.ssl = hasattr(sock, "_sslobj")
        # gevent's non-blocking OS socket under ``sock``: sends skip gevent's wrapper.
        self.raw = None if self.ssl else getattr(sock, "_sock", None)
        self.out: list[Any] = []  # a list: 56 bytes idle where a deque costs ~600
        self.out_bytes = 0
        self.flusher: Any = None
        self.drained: Event | None = None
        self.msg_lock: Semaphore | None = None
        self.parts: list[bytes] | None = None  # fragments of the message being received
        self.parts_text = False
        self.decoder: Any = None
        self.partial: list[Any] | None = None  # [parse generator, validated, decoder]
        self.pong_deadline: float | None = None
        self.close_deadline: float | None = None
        self.local_close: tuple[int, str] | None = None
        self.aborted = False
        self.stop_delivery = False
        self.ping_count = 0
        self.out_closed = False
        self.idle_since = 0.0  # monotonic time of the last read (or keepalive ping)

    # -- writing -----------------------------------------------------------------

    def _try_send(self, data: Any) -> int:
        """Write what the kernel takes now, without blocking; return the count."""
        sock = self.sock
        try:
            raw = self.raw
            if raw is not None:  # gevent's OS socket: non-blocking, no wrapper
                return int(raw.send(data))
            if not self.ssl:
                return int(sock.send(data, 0, 0.0))
            timeout = sock.gettimeout()
            sock.settimeout(0.0)
            try:
                return int(sock.send(data))
            finally:
                sock.settimeout(timeout)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
            return 0

    def write(self, data: Any) -> None:
        """Queue one complete unit of bytes (a frame, or ``SEND_EOF``) in order.

        The queue is flushed when the calling greenlet next yields (a hub callback),
        so the replies to every message of one read go out in one system call.
        """
        if self.aborted:
            return
        if data is SEND_EOF or (not data and isinstance(data, bytes)):
            self.out.append(_EOF)
        else:
            self.out.append(data)
            self.out_bytes += len(data)
        if self.flusher is None:
            self.flusher = _SCHEDULED
            _flush_later(self)

    def _flush_soon(self) -> None:
        # Runs in the hub: must not block.
        if self.flusher is _SCHEDULED:
            self.flusher = None
        if self.flusher is not None or self.aborted:
            return
        try:
            done = self._drain()
        except OSError as exc:
            self._lost(exc)
            return
        if not done:
            self.flusher = gevent.spawn(self._flush)

    def _drain(self) -> bool:
        """Write queued data without blocking; True when the queue is empty."""
        out = self.out
        while out:
            item = out[0]
            if item is _EOF:
                del out[0]
                self._half_close()
                continue
            if len(out) > 1 and len(item) < _BATCH:
                count, total = 0, 0
                for part in out:
                    if part is _EOF or (total and total + len(part) > _BATCH):
                        break
                    count += 1
                    total += len(part)
                if count > 1:
                    item = b"".join(out[:count])
                    out[:count] = [item]
            sent = self._try_send(item)
            self.out_bytes -= sent
            if sent < len(item):
                if sent:
                    out[0] = memoryview(item)[sent:]
                return False
            del out[0]
        return True

    def write_all(self, chunks: Iterable[Any]) -> None:
        """:meth:`write` each chunk (what ``Protocol.data_to_send()`` returned)."""
        for chunk in chunks:
            self.write(chunk)

    def flush_protocol(self) -> None:
        """Send what the protocol produced and start the close timer when closing."""
        proto = self.proto
        writes = proto.data_to_send()
        if writes:
            if self.out_closed:
                writes = self._closing_replies(writes)
            self.write_all(writes)
        if proto.state is not OPEN:
            # Data may be sent until the close frame is on its way (RFC 6455 §5.5.1).
            self.out_closed = True
            if self.close_deadline is None:
                self.close_deadline = time.monotonic() + self.options.close_timeout

    def _closing_replies(self, writes: list[Any]) -> list[Any]:
        """What to queue of the protocol's output after our close frame: its pongs
        (websockets still answers pings while CLOSING) while the queue has room, and
        the EOF. Past ``send_queue_size`` a pong is dropped: the connection ends
        within ``close_timeout`` anyway, and a peer flooding pings at a slow-consumer
        close must not grow the queue it was closed for.
        """
        room = self.options.send_queue_size - self.out_bytes
        kept = []
        for item in writes:
            if item is SEND_EOF:
                kept.append(item)
            elif len(item) <= room:
                kept.append(item)
                room -= len(item)
        return kept

    def _half_close(self) -> None:
        # RFC 6455 §7.1.1: the server closes the TCP connection first.
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _flush(self) -> None:
        # The socket is backed up: wait for it in this greenlet, never in a sender's.
        out, sock = self.out, self.sock
        try:
            while not self.aborted and not self._drain():
                item = out[0]
                try:
                    sent = sock.send(item)  # blocks until writable
                except (TimeoutError, _Wakeup):
                    continue
                if sent >= len(item):
                    del out[0]
                else:
                    out[0] = memoryview(item)[sent:]
                self.out_bytes -= sent
                if self.drained is not None and self.out_bytes <= self.options.send_queue_size:
                    self.drained.set()
        except OSError as exc:
            self._lost(exc)
        finally:
            self.flusher = None
            if self.drained is not None:
                self.drained.set()

    def _lost(self, exc: BaseException) -> None:
        log.debug("WebSocket %s: connection lost (%s)", self._peer(), exc)
        self.abort()

    def abort(self) -> None:
        """Drop the connection now (no closing handshake); the reader then ends.

        Whatever the kernel takes at once (a last close frame) is still sent.
        """
        if not self.aborted:
            self._drop_output(drain=self.flusher is None or self.flusher is _SCHEDULED)
            self.wake()

    def wake(self) -> None:
        """Make the reader re-check deadlines if another greenlet changed them."""
        reader = self.reader
        if reader is not None and getcurrent() is not reader:
            watcher = getattr(self.sock, "_read_event", None)
            if watcher is not None:
                get_hub().cancel_wait(watcher, _Wakeup)

    def admit(self) -> bool:
        """Whether one more message may be queued; closes a slow consumer if not.

        A send from the connection's own greenlet waits (up to ``close_timeout``)
        for the queue to drain, giving a handler that streams backpressure; a send
        from any other greenlet (a broadcast) never blocks.
        """
        limit = self.options.send_queue_size
        flusher = self.flusher
        if self.out_bytes <= limit or flusher is None or flusher is _SCHEDULED:
            return True  # only a socket the kernel refused to take counts as slow
        if getcurrent() is self.reader:
            if self.drained is None:
                self.drained = Event()
            deadline = time.monotonic() + self.options.close_timeout
            while self.out_bytes > limit and self.flusher is flusher and not self.aborted:
                self.drained.clear()
                if not self.drained.wait(max(0.0, deadline - time.monotonic())):
                    break
            if self.out_bytes <= limit and not self.aborted:
                return True
        self.slow_consumer()
        return False

    def await_room(self) -> None:
        """Stop reading until the send queue is back under ``send_queue_size``.

        The reader calls this when its queue is full. Not reading is what bounds
        the replies the protocol makes by itself (a pong for every ping, queued
        while parsing, before any handler could be asked): the peer's pings then
        wait in the kernel and TCP holds the peer back. A peer that reads again
        within ``close_timeout`` gets every pong (RFC 6455 §5.5.2 asks for one per
        ping); one that does not is closed as a slow consumer, as for data
        (:meth:`admit`): not reading at all would keep the socket forever.
        """
        limit = self.options.send_queue_size
        flusher = self._writing()
        if flusher is None:
            return
        if self.drained is None:
            self.drained = Event()
        deadline = time.monotonic() + self.options.close_timeout
        while self.out_bytes >= limit and self.flusher is flusher and not self.aborted:
            self.drained.clear()
            if not self.drained.wait(max(0.0, deadline - time.monotonic())):
                break
        if self.out_bytes >= limit and not self.aborted:
            self.slow_consumer()
            if self.proto.state is OPEN:  # pragma: no cover - a close already under way
                self.abort()  # the reader must not spin on a queue it cannot empty

    def _writing(self) -> Any:
        """The greenlet writing the queue out, or None when it was written at once.

        Nothing tried to write yet (no flusher, or only a hub callback scheduled):
        try now, and start a flusher to wait for the kernel when it refuses (the
        pending hub callback then finds one and returns). None too when the
        connection was lost trying.
        """
        flusher = self.flusher
        if flusher is None or flusher is _SCHEDULED:
            self.flusher = None
            try:
                if self._drain():
                    return None
            except OSError as exc:
                self._lost(exc)
                return None
            flusher = self.flusher = gevent.spawn(self._flush)
        return flusher

    def slow_consumer(self) -> None:
        """Close a peer that does not read fast enough, keeping memory bounded."""
        if self.aborted or self.local_close is not None:
            return
        counters.slow_consumers += 1
        code = self.options.slow_consumer_close_code
        log.warning(
            "WebSocket %s: slow consumer, %d bytes queued (send_queue_size %d); closing %d",
            self._peer(),
            self.out_bytes,
            self.options.send_queue_size,
            code,
        )
        self.local_close = (code, "slow consumer")
        if self.out:  # keep the frame being written, drop what has not started
            del self.out[1:]
            head = self.out[0]
            self.out_bytes = len(head) if head is not _EOF else 0
        if self.proto.state is OPEN:
            self.proto.send_close(code, "slow consumer")
        self.flush_protocol()
        self.wake()

    # -- sending messages ------------------------------------------------------------

    def _wait_message_lock(self) -> None:
        lock = self.msg_lock
        if lock is not None and lock.locked():
            # A fragmented message is being sent (RFC 6455 §5.4: no interleaving).
            with lock:
                pass

    def send_data(self, opcode: int, data: Any) -> bool:
        """Send one complete data message; False if the connection is closing."""
        self._wait_message_lock()
        if self.out_closed or not self.admit():
            return False
        counters.messages_out += 1
        counters.bytes_out += len(data)
        if self.fast:
            header = _header(0x80 | opcode, len(data))
            if len(data) < _COALESCE:
                self.write(header + data)
            else:
                self.write(header)
                self.write(data)
        else:
            self.write(Frame(Opcode(opcode), data).serialize(mask=False, extensions=self.proto.extensions))
        return True

    def send_fragments(self, opcode: int, chunks: Iterable[Any]) -> bool:
        """Send a message as one frame per chunk (ws4py's generator ``send``)."""
        if self.msg_lock is None:
            self.msg_lock = Semaphore()
        with self.msg_lock:
            counters.messages_out += 1
            first, pending = True, None
            for chunk in chunks:
                if pending is not None:
                    if not self._fragment(opcode, pending, first, False):
                        return False
                    first = False
                pending = chunk.encode("utf-8") if isinstance(chunk, str) else chunk
            return self._fragment(opcode, pending if pending is not None else b"", first, True)

    def _fragment(self, opcode: int, data: Any, first: bool, fin: bool) -> bool:
        if self.out_closed or not self.admit():
            return False
        counters.bytes_out += len(data)
        if self.fast:
            op = opcode if first else _CONT
            self.write(_header((0x80 if fin else 0) | op, len(data)) + bytes(data))
        else:
            frame = Frame(Opcode(opcode) if first else _CONT, data, fin)
            self.write(frame.serialize(mask=False, extensions=self.proto.extensions))
        return True

    def send_prepared(self, frame: bytes) -> bool:
        """Send a frame from :func:`prepare_frame` as is.

        From another greenlet (a broadcast) with nothing queued, the frame is written
        at once, without blocking: the peer gets it while the broadcast goes on. The
        frames sent to this socket after it, until the broadcaster yields, are
        queued and go out together in one system call (a burst), all sockets'
        queues flushed by one hub callback.
        """
        if self.msg_lock is not None:
            self._wait_message_lock()
        if self.out_closed or not self.admit():
            return False
        counters.messages_out += 1
        n = frame[1] & 0x7F  # payload bytes: the frame less its header (§5.2)
        counters.bytes_out += len(frame) - (2 if n < 126 else 4 if n == 126 else 10)
        raw = self.raw
        if raw is None or self.flusher is not None or self.out or self.aborted or getcurrent() is self.reader:
            self.write(frame)  # behind queued data, or with the replies to a read
            return True
        try:
            sent = raw.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return True
        if sent < len(frame):
            self.write(memoryview(frame)[sent:] if sent else frame)
        else:  # what follows until the sender yields is queued, then sent at once
            self.flusher = _SCHEDULED
            _flush_later(self)
        return True

    def send_control(self, opcode: int, data: bytes) -> bool:
        """Send a ping or pong (control frames may go between fragments, §5.4).

        Counted against ``send_queue_size`` like data: a handler pinging a peer that
        does not read closes it as a slow consumer.
        """
        proto = self.proto
        if self.out_closed or proto.state is not OPEN or not self.admit():
            return False
        if opcode == _PING:
            proto.send_ping(data)
        else:
            proto.send_pong(data)
        self.write_all(proto.data_to_send())
        return True

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (RFC 6455 §7.1.2); safe from any greenlet."""
        proto = self.proto
        if proto.state is OPEN:
            try:
                proto.send_close(code, reason)
            except ProtocolError as exc:
                raise ValueError(str(exc)) from None
            self.flush_protocol()
            self.wake()

    # -- reading -----------------------------------------------------------------

    def run(self) -> None:
        """The reader loop; returns when the connection is over."""
        sock, proto = self.sock, self.proto
        buf, view = _shared_buffer()
        ping_interval = self.options.ping_interval
        queue_size = self.options.send_queue_size
        watch = None
        if ping_interval is not None:
            # An idle socket waits with no timeout (a timer per waiting socket costs
            # ~0.6 KiB); the thread's _PingWatch wakes it when a ping is due.
            self.idle_since = time.monotonic()
            watch = _ping_watch()
            watch.add(self, ping_interval)
        try:
            while not self.aborted and proto.state is not CLOSED:
                if self.handshake_complete():
                    # RFC 6455 §7.1.1: the server closes the TCP connection first, at
                    # once; waiting for the peer's FIN would let a peer that keeps
                    # TCP open hold the socket (and an engine stop) to close_timeout.
                    self._send_last()
                    break
                if self.close_deadline is not None:
                    timeout: float | None = self.close_deadline - time.monotonic()
                elif self.pong_deadline is not None:
                    timeout = self.pong_deadline - time.monotonic()
                elif ping_interval is not None:
                    timeout = None if time.monotonic() - self.idle_since < ping_interval else 0.0
                else:
                    timeout = None
                if timeout is not None and timeout <= 0:
                    self._on_timeout()
                    continue
                # A read never holds more than the queue has room for: its pings'
                # pongs (no longer than the pings) then cannot push the queue past
                # send_queue_size by more than one frame. No room: stop reading.
                room = queue_size - self.out_bytes
                if room <= 0 and proto.state is OPEN:
                    self.await_room()
                    continue
                sock.settimeout(timeout)
                try:
                    n = sock.recv_into(buf, room) if 0 < room < _RECV_SIZE else sock.recv_into(buf)
                except _Wakeup:
                    continue
                except TimeoutError:
                    self._on_timeout()
                    continue
                except OSError as exc:
                    self._lost(exc)
                    break
                if not n:
                    proto.receive_eof()
                    self.flush_protocol()
                    break
                if watch is not None:
                    self.idle_since = time.monotonic()
                proto.receive_data(view[:n])  # type: ignore[arg-type]  # copied at once
                self.process()
        finally:
            if watch is not None:
                watch.conns.discard(self)

    def handshake_complete(self) -> bool:
        """Whether a close frame was both sent and received (RFC 6455 §7.1.2)."""
        proto = self.proto
        return proto.close_rcvd is not None and proto.close_sent is not None

    def _send_last(self) -> None:
        """Hand what is queued (the close frame, the FIN) to the kernel before the
        socket is closed; a backed-up peer is waited for until the close deadline."""
        flusher = self._writing()
        if flusher is None:
            return
        deadline = self.close_deadline
        timeout = self.options.close_timeout if deadline is None else deadline - time.monotonic()
        flusher.join(max(0.0, timeout))  # then finish() drops what is still queued

    def feed(self, data: bytes) -> None:
        """Process bytes read before the takeover (the request's leftover)."""
        self.proto.receive_data(data)
        self.process()

    def _on_timeout(self) -> None:
        now = time.monotonic()
        if self.close_deadline is not None:
            if now >= self.close_deadline:
                log.debug("WebSocket %s: closing handshake timed out", self._peer())
                self.abort()
            return
        if self.pong_deadline is not None:
            if now >= self.pong_deadline:
                # RFC 6455 §5.5.2/§7.1.7: no pong, the peer is gone; fail the connection.
                log.debug("WebSocket %s: no pong in time, dropping", self._peer())
                self.local_close = (1011, "keepalive ping timeout")
                if self.proto.state is OPEN:
                    self.proto.fail(1011, "keepalive ping timeout")
                    self.write_all(self.proto.data_to_send())
                self.abort()
            return
        self.ping_count += 1
        self.idle_since = now  # the next ping after another interval of silence
        self.send_control(_PING, struct.pack("!I", self.ping_count & 0xFFFFFFFF))
        if self.options.ping_timeout is not None:
            self.pong_deadline = now + self.options.ping_timeout

    def process(self) -> None:
        """Dispatch every event parsed so far, then send what the protocol queued."""
        proto = self.proto
        events = proto.events_received()
        if proto.state is OPEN:
            self.flush_protocol()  # pongs first
        for frame in cast(list[Frame], events):  # a server protocol yields frames only
            if self.stop_delivery or self.aborted:
                break
            op = frame.opcode
            if op is _TEXT or op is _BINARY or op is _CONT:
                self._data_frame(frame)
            elif op is _PONG:
                self.pong_deadline = None
                self._callback(self.handler.ponged, PongControlMessage(bytes(frame.data)))
            elif op is _CLOSE:
                self.handler.client_terminated = True
                self.handler.server_terminated = True
        # A close echo or failure goes after the replies to the messages before it.
        self.flush_protocol()
        if proto.state is OPEN and proto.reader.buffer and not self.stop_delivery:
            self._check_partial_text()

    def _data_frame(self, frame: Frame) -> None:
        data = frame.data
        if type(data) is not bytes:
            data = bytes(data)
        op = frame.opcode
        if op is not _CONT:
            if frame.fin:
                if op is _TEXT:
                    try:
                        data.decode("utf-8")
                    except UnicodeDecodeError:
                        return self._invalid_utf8()
                    self._deliver(TextMessage(data))
                else:
                    self._deliver(BinaryMessage(data))
                return
            self.parts, self.parts_text = [data], op is _TEXT
            if self.parts_text:
                self.decoder = _Utf8Decoder()
        elif self.parts is not None:
            self.parts.append(data)
        else:  # pragma: no cover - the protocol rejects a stray continuation
            return
        if self.parts_text:
            # RFC 6455 §8.1: fail as soon as the text is known to be invalid.
            try:
                self.decoder.decode(data, frame.fin)
            except UnicodeDecodeError:
                return self._invalid_utf8()
        if frame.fin:
            whole = b"".join(self.parts)
            text, self.parts, self.decoder = self.parts_text, None, None
            self._deliver(TextMessage(whole) if text else BinaryMessage(whole))

    def _check_partial_text(self) -> None:
        """Validate the received part of an incomplete text frame (fail fast, §8.1).

        websockets parses whole frames; the frame in progress is found on its
        parser's suspended ``Frame.parse`` (header fields are its locals).
        """
        proto = self.proto
        sub = getattr(proto.parser, "gi_yieldfrom", None)
        if sub is None or getattr(sub, "gi_code", None) is not _FRAME_PARSE_CODE:
            return
        local = sub.gi_frame.f_locals
        mask = local.get("mask_bytes")
        if mask is None or local.get("rsv1"):
            return  # header not complete yet, or compressed: checked when complete
        op = local.get("opcode")
        if not (op is _TEXT or (op is _CONT and self.parts is not None and self.parts_text)):
            return
        buffer = proto.reader.buffer
        state = self.partial
        if state is None or state[0] is not sub:
            decoder = _Utf8Decoder()
            if op is _CONT and self.decoder is not None:
                decoder.setstate(self.decoder.getstate())
            state = self.partial = [sub, 0, decoder]
        start = state[1]
        if len(buffer) <= start:
            return
        rot = start % 4
        chunk = apply_mask(bytes(buffer[start:]), mask[rot:] + mask[:rot])
        state[1] = len(buffer)
        try:
            state[2].decode(chunk)
        except UnicodeDecodeError:
            self._invalid_utf8()

    def _invalid_utf8(self) -> None:
        self.stop_delivery = True
        self.parts = self.decoder = self.partial = None
        self.local_close = (1007, "invalid UTF-8")
        if self.proto.state is OPEN:
            self.proto.fail(1007, "invalid UTF-8")  # RFC 6455 §8.1
        self.flush_protocol()

    def _deliver(self, message: Message) -> None:
        c = counters
        c.messages_in += 1
        c.bytes_in += len(message.data)
        self._callback(self.handler.received_message, message)

    def _callback(self, method: Callable[..., Any], *args: Any) -> bool:
        try:
            method(*args)
            return True
        except Exception as exc:
            self.callback_failed(exc, method)
            return False

    def callback_failed(self, exc: Exception, method: Callable[..., Any]) -> None:
        """Log, tell ``unhandled_error``, close 1011 (RFC 6455 §7.4.1).

        An exception that names its own close code (``ws_close_code``: the hub's
        policy refusals, 1008) closes with it, with its message as the reason, and is
        logged at debug: it is the app's rule, not a bug.
        """
        handler = self.handler
        name = getattr(method, "__name__", "callback")
        code = getattr(exc, "ws_close_code", None)
        if code is not None:
            log.debug("WebSocket %s: %s() refused: %s", self._peer(), name, exc)
            self.stop_delivery = True
            self.parts = self.decoder = self.partial = None
            self.close(int(code), str(exc).encode()[:120].decode("utf-8", "ignore"))  # ≤ 123 bytes
            handler.server_terminated = True
            return
        log.error("WebSocket %s: %s() raised", self._peer(), name, exc_info=exc)
        if type(handler).unhandled_error is not _Ws4pyWebSocket.unhandled_error:
            try:
                handler.unhandled_error(exc)
            except Exception:
                log.exception("WebSocket %s: unhandled_error() raised", self._peer())
        self.stop_delivery = True
        self.parts = self.decoder = self.partial = None
        self.close(1011, "")
        handler.server_terminated = True

    def _peer(self) -> str:
        try:
            host, port = self.sock.getpeername()[:2]
            return f"{host}:{port}"
        except (OSError, ValueError, TypeError):
            return "(disconnected)"

    # -- the end -----------------------------------------------------------------

    def close_status(self) -> tuple[int, str]:
        """``(code, reason)`` for ``closed()``: RFC 6455 §7.1.5/§7.1.6."""
        proto = self.proto
        rcvd = proto.close_rcvd
        if rcvd is not None:
            return int(rcvd.code), rcvd.reason
        if self.local_close is not None:
            return self.local_close
        if proto.parser_exc is not None and proto.close_sent is not None:
            sent = proto.close_sent
            return int(sent.code), sent.reason
        return 1006, ""

    def finish(self) -> None:
        """Send what can go without blocking, stop the flusher, forget the rest."""
        flusher = self.flusher
        if flusher is not None and flusher is not _SCHEDULED and flusher is not getcurrent():
            self.aborted = True
            flusher.kill(block=True, timeout=1)
        self._drop_output(drain=not self.aborted)

    def _drop_output(self, drain: bool) -> None:
        """Send what the kernel takes at once (when ``drain``), then forget the rest."""
        if drain:
            try:
                self._drain()
            except OSError:
                pass
        self.aborted = True
        self.out.clear()
        self.out_bytes = 0


_flush_batches: dict[int, list[_Connection]] = {}


def _flush_later(conn: _Connection) -> None:
    """Have ``conn``'s queue flushed when the current greenlet yields.

    One hub callback per thread and loop turn flushes every connection written
    meanwhile (a broadcast to 5,000 sockets: one callback, not 5,000).
    """
    ident = _thread_ident()
    batch = _flush_batches.get(ident)
    if batch is None:
        batch = _flush_batches[ident] = []
    if not batch:
        get_hub().loop.run_callback(_flush_batch, batch)
    batch.append(conn)


def _flush_batch(batch: list[_Connection]) -> None:
    # Runs in the hub: must not block. Writes made meanwhile start a new batch.
    conns = batch[:]
    del batch[:]
    for conn in conns:
        try:
            conn._flush_soon()
        except Exception:  # pragma: no cover - a bug of ours; flush the others
            log.exception("WebSocket: flushing a connection failed")


class _PingWatch:
    """Wakes the idle connections of one thread when a keepalive ping is due.

    One greenlet per thread, alive while some connection has a ``ping_interval``,
    instead of a timer per waiting socket; it looks every ``tick`` seconds (at most
    a quarter of the shortest interval, at most 1 s). Connections waiting for a
    pong or a close use their socket timeout as before.
    """

    __slots__ = ("conns", "glet", "tick")

    def __init__(self) -> None:
        self.conns: set[_Connection] = set()
        self.glet: Any = None
        self.tick = 1.0

    def add(self, conn: _Connection, interval: float) -> None:
        self.conns.add(conn)
        tick = min(1.0, max(0.001, interval / 4))
        if self.glet is None:
            self.tick = tick
            self.glet = gevent.spawn_raw(self._run)
        elif tick < self.tick:
            self.tick = tick

    def _run(self) -> None:
        conns = self.conns
        try:
            while conns:
                gevent.sleep(self.tick)
                now = time.monotonic()
                for conn in list(conns):
                    interval = conn.options.ping_interval
                    if (
                        interval is not None
                        and conn.pong_deadline is None
                        and conn.close_deadline is None
                        and now - conn.idle_since >= interval
                    ):
                        conn.wake()
        finally:
            self.glet = None


_ping_watches: dict[int, _PingWatch] = {}


def _ping_watch() -> _PingWatch:
    ident = _thread_ident()
    watch = _ping_watches.get(ident)
    if watch is None:
        watch = _ping_watches[ident] = _PingWatch()
    return watch


class _EngineLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' protocol logger, with its per-close INFO line turned to DEBUG."""

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)


_PROTO_LOG = _EngineLog(logging.getLogger("rtserver.websocket.protocol"), {})


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if data is None:
        return b""
    raise TypeError(f"cannot send {type(data).__name__}")


class _EngineMixin(_Ws4pyWebSocket):
    """Replaces ws4py's stream-based transport; user callbacks stay in charge."""

    _rt_conn: _Connection

    def __init__(
        self,
        sock: Any,
        protocols: Any = None,
        extensions: Any = None,
        environ: Any = None,
        heartbeat_freq: Any = None,
    ) -> None:
        # ws4py's attributes, without its Stream (the engine replaces it).
        self.stream = None
        self.protocols = protocols
        self.extensions = extensions
        self.sock = sock
        self._is_secure = hasattr(sock, "_sslobj")
        self.client_terminated = False
        self.server_terminated = False
        self.environ = environ
        self.heartbeat_freq = heartbeat_freq
        self._local_address = None
        self._peer_address = None

    def send(self, payload: Any, binary: bool = False) -> Any:
        """Send a message: str, bytes, a ws4py ``Message`` or a generator of chunks.

        Returns False (and sends nothing) once the connection is closing. Never
        blocks a greenlet other than this connection's for long: a full queue
        closes a slow consumer instead.
        """
        conn = self._rt_conn
        opcode = _BINARY if binary else _TEXT
        if isinstance(payload, str):
            return conn.send_data(opcode, payload.encode("utf-8"))
        if isinstance(payload, (bytes, bytearray, memoryview)):
            return conn.send_data(opcode, payload)
        if isinstance(payload, Message):
            if isinstance(payload, PingControlMessage):
                return conn.send_control(_PING, payload.data)
            if isinstance(payload, PongControlMessage):
                return conn.send_control(_PONG, payload.data)
            if isinstance(payload, CloseControlMessage):
                reason = payload.reason
                if isinstance(reason, bytes):
                    reason = reason.decode("utf-8", "replace")
                self.close(payload.code, reason or "")
                return True
            return conn.send_data(payload.opcode, payload.data)
        if isinstance(payload, types.GeneratorType):
            return conn.send_fragments(opcode, payload)
        raise ValueError(f"Unsupported type '{type(payload)}' passed to send()")

    def send_prepared(self, frame: bytes) -> bool:
        """Send a frame made by :func:`prepare_frame` (broadcast: encode once)."""
        return self._rt_conn.send_prepared(frame)

    def close(self, code: int = 1000, reason: Any = "") -> None:
        """Start the closing handshake; ``closed()`` follows once it completes."""
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        self._rt_conn.close(code, reason or "")
        self.server_terminated = True

    def shutdown(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Close from any greenlet (engine stop); ``close_timeout`` bounds it."""
        self.close(code, reason)

    def ping(self, message: Any = b"") -> None:
        """Send a ping; the pong arrives in ``ponged()``."""
        self._rt_conn.send_control(_PING, _as_bytes(message))

    def pong(self, message: Any = b"") -> None:
        """Send an unsolicited pong (RFC 6455 §5.5.3)."""
        self._rt_conn.send_control(_PONG, _as_bytes(message))

    def terminate(self) -> None:
        """Drop the connection without a closing handshake (``closed(1006)`` follows)."""
        self._rt_conn.abort()

    def close_connection(self) -> None:
        """Drop the TCP connection (ws4py API); same as :meth:`terminate`."""
        self._rt_conn.abort()

    def run(self) -> None:
        """Not used: the connection is run by :func:`serve`."""
        raise RuntimeError("rtserver runs WebSocket handlers itself (connection.serve)")


_RUNTIME_CLASSES: dict[type, type] = {}


def runtime_class(handler_cls: type) -> type:
    """``handler_cls`` with the engine mixed in (cached); user overrides still win."""
    if issubclass(handler_cls, _EngineMixin):
        return handler_cls
    runtime = _RUNTIME_CLASSES.get(handler_cls)
    if runtime is None:
        if not issubclass(handler_cls, _Ws4pyWebSocket):
            raise TypeError(f"{handler_cls!r} is not a ws4py.websocket.WebSocket subclass")
        runtime = type(
            handler_cls.__name__,
            (handler_cls, _EngineMixin),
            {"__module__": handler_cls.__module__, "__qualname__": handler_cls.__qualname__},
        )
        _RUNTIME_CLASSES[handler_cls] = runtime
    return runtime


def create_handler(
    sock: Any,
    handler_cls: type,
    handshake: Handshake,
    environ: dict[str, Any] | None,
    options: WebSocketOptions,
) -> Any:
    """Instantiate ``handler_cls`` for an accepted handshake, as ws4py does.

    The handler exists before the 101 is sent (``rtserver.request.ws_handler`` during
    the handshake request) but must not send until ``opened()``: run it with
    :func:`run_handler` once the server has taken the connection over.
    """
    cls = runtime_class(handler_cls)
    conn = _Connection(sock, handshake, options)
    handler: Any = cls.__new__(cls)  # type: ignore[call-overload]
    handler._rt_conn = conn
    conn.handler = handler
    protocols = [handshake.subprotocol] if handshake.subprotocol else []
    handler.__init__(
        sock,
        protocols,
        handshake.extension_names,
        environ if environ is not None else {},  # never reused for HTTP: no copy
        heartbeat_freq=options.ping_interval,
    )
    handler._rt_conn = conn  # in case __init__ replaced attributes
    return handler


def run_handler(handler: Any, leftover: bytes, *, registry: Registry | None = None) -> None:
    """Run a handler made by :func:`create_handler` in the calling greenlet until the
    connection ends: ``opened()``, the reader loop, and always ``closed(code, reason)``
    and ``registry.discard(handler)``. The caller closes the socket afterwards.
    """
    conn = handler._rt_conn
    conn.reader = getcurrent()
    conn.handshake.response_headers.clear()  # sent with the 101: ~300 bytes a socket
    registered = False
    try:
        if conn._callback(handler.opened):
            if registry is not None:
                registry.add(handler)
                registered = True
        if leftover and not conn.aborted:
            conn.feed(leftover)
        conn.run()
    except Exception as exc:  # a bug of ours: never leak the greenlet
        log.error("WebSocket %s: connection failed", conn._peer(), exc_info=exc)
        conn.local_close = conn.local_close or (1011, "")
    finally:
        conn.finish()
        code, reason = conn.close_status()
        handler.client_terminated = handler.server_terminated = True
        if code == 1006:
            log.debug("WebSocket %s: closed abnormally (1006)", conn._peer())
        try:
            handler.closed(code, reason)
        except Exception:
            log.exception("WebSocket %s: closed() raised", conn._peer())
        if registered and registry is not None:
            registry.discard(handler)
        # Break the cycles handler <-> connection and protocol <-> its parser
        # generator: a closed connection is then freed at once by reference
        # counting. Left to the cyclic collector, thousands of closed connections
        # pile up between full collections under churn (benchmarks/soak.py).
        conn.handler = None
        conn.proto.parser.close()


def serve(
    sock: Any,
    leftover: bytes,
    handler_cls: type,
    handshake: Handshake,
    environ: dict[str, Any] | None,
    options: WebSocketOptions,
    *,
    registry: Registry | None = None,
) -> None:
    """Run one accepted WebSocket connection in the calling greenlet until it ends.

    :func:`create_handler` then :func:`run_handler`. A handler whose ``__init__``
    raises is logged and the connection ends (the caller closes ``sock``).
    """
    try:
        handler = create_handler(sock, handler_cls, handshake, environ, options)
    except Exception:
        log.error("WebSocket: creating the %s handler failed", handler_cls.__name__, exc_info=True)
        return
    run_handler(handler, leftover, registry=registry)
