"""Integration tests of the WebSocket runtime on a real socket (test harness server)."""

from __future__ import annotations

import json
import logging
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Subprotocol
from ws4py.websocket import EchoWebSocket
from ws4py.websocket import WebSocket as Ws4pyWebSocket

import rtserver.websocket.connection as connection
from rtserver.websocket.handler import WebSocket
from rtserver.websocket.options import WebSocketOptions
from rtserver.websocket.wsgi import websocket_app

from .harness import Harness, RawClient

TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10


class Record:
    """What a handler saw, shared by the test."""

    def __init__(self) -> None:
        self.opened: list[Any] = []
        self.messages: list[Any] = []
        self.closed: list[tuple[int, Any]] = []
        self.pongs: list[bytes] = []
        self.errors: list[BaseException] = []
        self.done = Event()


class Registry(set):  # type: ignore[type-arg]
    """A set with the registry protocol, for the bus plugin's role."""


@pytest.fixture
def record() -> Record:
    return Record()


def recording(record: Record, base: type = Ws4pyWebSocket) -> type:
    class Recording(base):  # type: ignore[misc,valid-type]
        def opened(self) -> None:
            record.opened.append(self)

        def received_message(self, message: Any) -> None:
            record.messages.append(message)
            if message.is_text and str(message) == "boom":
                raise RuntimeError("boom")
            self.send(message.data, message.is_binary)

        def ponged(self, pong: Any) -> None:
            record.pongs.append(pong.data)

        def unhandled_error(self, error: BaseException) -> None:
            record.errors.append(error)

        def closed(self, code: int, reason: Any = None) -> None:
            record.closed.append((code, reason))
            record.done.set()

    return Recording


@pytest.fixture
def serve() -> Iterator[Any]:
    harnesses: list[Harness] = []

    def start(handler_cls: type, registry: Any = None, **options: Any) -> Harness:
        options.setdefault("allowed_origins", ("*",))
        app = websocket_app(handler_cls, WebSocketOptions(**options), registry=registry)
        harness = Harness(app).__enter__()
        harnesses.append(harness)
        return harness

    yield start
    for harness in harnesses:
        harness.__exit__()


# -- echo ---------------------------------------------------------------------


def test_echo_text_and_binary_with_ws4py_echo(serve: Any) -> None:
    h = serve(EchoWebSocket)
    with connect(h.url, compression=None) as ws:
        ws.send("héllo")
        assert ws.recv() == "héllo"
        ws.send(b"\x00\xff" * 1000)
        assert ws.recv() == b"\x00\xff" * 1000
        ws.send(["frag", "mented ", "text"])
        assert ws.recv() == "fragmented text"
        big = bytes(range(256)) * 4096  # 1 MiB, the default limit
        ws.send(big)
        assert ws.recv() == big
    assert ws.close_code == 1000


def test_many_messages_in_one_read_are_all_answered(serve: Any) -> None:
    h = serve(EchoWebSocket)
    with RawClient(h.port) as c:
        frames = b""
        for i in range(50):
            c.send_frame(TEXT, f"m{i}".encode())  # one by one, may coalesce
        for i in range(50):
            assert c.recv_frame() == (True, TEXT, f"m{i}".encode())
        del frames


def test_fragmented_send_from_a_generator(serve: Any) -> None:
    class Fragments(Ws4pyWebSocket):
        def opened(self) -> None:
            self.send(part for part in ["one ", "two ", "three"])
            self.send((part for part in [b"\x01", b"\x02"]), binary=True)

    h = serve(Fragments)
    with RawClient(h.port) as c:
        assert c.recv_frame() == (False, TEXT, b"one ")
        assert c.recv_frame() == (False, CONT, b"two ")
        assert c.recv_frame() == (True, CONT, b"three")
        assert c.recv_frame() == (False, BINARY, b"\x01")
        assert c.recv_frame() == (True, CONT, b"\x02")


def test_compression_negotiated_and_working(serve: Any, record: Record) -> None:
    h = serve(recording(record))
    text = "compress me " * 5000
    with connect(h.url) as ws:  # websockets offers permessage-deflate by default
        assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
        for _ in range(3):  # context takeover across messages
            ws.send(text)
            assert ws.recv() == text
        ws.send(["frag", "ments"])
        assert ws.recv() == "fragments"
    assert record.opened[0].extensions == ["permessage-deflate"]
    assert record.done.wait(5)


def test_prepared_frame_reaches_deflate_and_plain_peers(serve: Any) -> None:
    sockets: list[Any] = []

    class Hub(Ws4pyWebSocket):
        def opened(self) -> None:
            sockets.append(self)

    h = serve(Hub)
    frame = connection.prepare_frame("to everyone")
    with connect(h.url) as a, connect(h.url, compression=None) as b:
        deadline = time.monotonic() + 5
        while len(sockets) < 2 and time.monotonic() < deadline:
            gevent.sleep(0.01)
        for s in sockets:
            assert s.send_prepared(frame)
        assert a.recv(timeout=5) == "to everyone"
        assert b.recv(timeout=5) == "to everyone"


# -- liveness -------------------------------------------------------------------


def test_idle_peer_is_pinged_and_stays_when_it_answers(serve: Any, record: Record) -> None:
    h = serve(recording(record), ping_interval=0.2, ping_timeout=0.5)
    with RawClient(h.port) as c:
        for _ in range(3):
            fin, opcode, payload = c.recv_frame()
            assert opcode == PING
            c.send_frame(PONG, payload)
        c.send_frame(TEXT, b"still here")
        while (frame := c.recv_frame())[1] == PING:
            c.send_frame(PONG, frame[2])
        assert frame == (True, TEXT, b"still here")
        assert len(record.pongs) >= 3
        assert not record.closed


def test_dead_peer_is_dropped_after_ping_timeout(serve: Any, record: Record) -> None:
    h = serve(recording(record), ping_interval=0.2, ping_timeout=0.3, close_timeout=5)
    with RawClient(h.port) as c:
        started = time.monotonic()
        assert c.recv_frame()[1] == PING  # ...and never answer
        assert record.done.wait(3)
        assert time.monotonic() - started < 2
        assert record.closed == [(1011, "keepalive ping timeout")]
        assert c.recv_close() == 1011
        assert c.at_eof()


def test_ponged_callback_for_unsolicited_pong(serve: Any, record: Record) -> None:
    h = serve(recording(record))
    with RawClient(h.port) as c:
        c.send_frame(PONG, b"beat")
        c.send_frame(PING, b"are you there")
        assert c.recv_frame() == (True, PONG, b"are you there")
    assert record.pongs == [b"beat"]


# -- limits -------------------------------------------------------------------------


def test_frame_header_announcing_2_to_62_bytes_closes_1009(serve: Any, record: Record) -> None:
    h = serve(recording(record), max_message_size=64 * 1024)
    with RawClient(h.port) as c:
        c.sock.sendall(struct.pack("!BBQ", 0x82, 0xFF, 2**62) + b"\x00\x00\x00\x00" + b"x" * 1000)
        assert c.recv_close() == 1009
        assert c.at_eof()
    assert record.done.wait(3)
    assert record.closed[0][0] == 1009
    assert record.messages == []


def test_endless_fragments_close_1009_after_max_size(serve: Any, record: Record) -> None:
    limit = 64 * 1024
    h = serve(recording(record), max_message_size=limit)
    with RawClient(h.port) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        c.send_frame(BINARY, b"x" * 4096, fin=False)
        sent = 4096
        try:
            while sent < 100 * limit:  # a server buffering it all would hold 6.4 MB
                c.send_frame(CONT, b"x" * 4096, fin=False)
                sent += 4096
                if select.select([c.sock], [], [], 0)[0]:
                    break  # the server answered
        except OSError:
            pass
        # Closed once the limit was crossed, not after everything was buffered: the
        # slack is what was in flight (socket buffers, one read of up to 1 MiB).
        assert sent < limit + 3 * 1024 * 1024
        assert c.recv_close() == 1009
        assert c.at_eof()
    assert record.done.wait(3)
    assert record.closed[0][0] == 1009
    assert record.messages == []


def test_message_just_under_the_limit_passes(serve: Any) -> None:
    h = serve(EchoWebSocket, max_message_size=1000)
    with connect(h.url, compression=None) as ws:
        ws.send(b"x" * 1000)
        assert ws.recv() == b"x" * 1000
        ws.send(b"x" * 1001)
        with pytest.raises(ConnectionClosed):
            ws.recv()
    assert ws.close_code == 1009


# -- closing -----------------------------------------------------------------------------


def test_client_close_code_reaches_closed(serve: Any, record: Record) -> None:
    h = serve(recording(record))
    with connect(h.url) as ws:
        ws.close(4001, "see you")
    assert record.done.wait(3)
    assert record.closed == [(4001, "see you")]
    assert record.opened[0].terminated


def test_server_close_with_code_and_reason(serve: Any, record: Record) -> None:
    class Closer(Ws4pyWebSocket):
        def received_message(self, message: Any) -> None:
            self.close(4000, "bye")

        def closed(self, code: int, reason: Any = None) -> None:
            record.closed.append((code, reason))
            record.done.set()

    h = serve(Closer)
    with connect(h.url) as ws:
        ws.send("close please")
        with pytest.raises(ConnectionClosed):
            ws.recv()
    assert ws.close_code == 4000 and ws.close_reason == "bye"
    assert record.done.wait(3)
    assert record.closed == [(4000, "bye")]


def test_invalid_utf8_closes_1007(serve: Any, record: Record) -> None:
    h = serve(recording(record))
    with RawClient(h.port) as c:
        c.send_frame(TEXT, b"\xff\xfe")
        assert c.recv_close() == 1007
        assert c.at_eof()
    assert record.messages == []


def test_unmasked_frame_closes_1002(serve: Any, record: Record) -> None:
    h = serve(recording(record))
    with RawClient(h.port) as c:
        c.send_frame(TEXT, b"hi", mask=False)
        assert c.recv_close() == 1002
    assert record.done.wait(3)
    assert record.closed[0][0] == 1002


def test_close_timeout_drops_a_peer_that_never_answers(serve: Any, record: Record) -> None:
    class CloseAtOnce(Ws4pyWebSocket):
        def opened(self) -> None:
            self.close(1000)

        def closed(self, code: int, reason: Any = None) -> None:
            record.closed.append((code, reason))
            record.done.set()

    h = serve(CloseAtOnce, close_timeout=0.3)
    with RawClient(h.port) as c:
        assert c.recv_close() == 1000  # and we never answer
        started = time.monotonic()
        assert record.done.wait(3)
        assert time.monotonic() - started < 2
    assert record.closed == [(1006, "")]


def test_abrupt_reset_ends_quietly(serve: Any, record: Record, caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry()
    h = serve(recording(record), registry=registry)
    caplog.set_level(logging.DEBUG, logger="rtserver.websocket")
    c = RawClient(h.port)
    c.send_frame(TEXT, b"hello")
    assert c.recv_frame() == (True, TEXT, b"hello")
    assert len(registry) == 1
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST
    assert record.done.wait(3)
    assert record.closed == [(1006, "")]
    assert len(registry) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_eof_without_close_frame(serve: Any, record: Record) -> None:
    h = serve(recording(record))
    c = RawClient(h.port)
    c.sock.shutdown(socket.SHUT_WR)
    assert c.at_eof()
    c.close()
    assert record.done.wait(3)
    assert record.closed == [(1006, "")]


# -- errors in callbacks ------------------------------------------------------------


def test_callback_exception_closes_1011_others_unaffected(serve: Any, record: Record) -> None:
    h = serve(recording(record))
    with connect(h.url) as bad, connect(h.url) as good:
        good.send("before")
        assert good.recv() == "before"
        bad.send("boom")
        with pytest.raises(ConnectionClosed):
            bad.recv(timeout=5)
        assert bad.close_code == 1011
        good.send("after")
        assert good.recv() == "after"
    assert [type(e) for e in record.errors] == [RuntimeError]


def test_exception_in_opened_closes_1011(serve: Any) -> None:
    class Broken(Ws4pyWebSocket):
        def opened(self) -> None:
            raise ValueError("not today")

    h = serve(Broken)
    with connect(h.url) as ws, pytest.raises(ConnectionClosed):
        ws.recv(timeout=5)
    assert ws.close_code == 1011


# -- sending from other greenlets -----------------------------------------------------------


def test_concurrent_senders_never_interleave_frames(serve: Any) -> None:
    sockets: list[Any] = []
    ready = Event()

    class Target(Ws4pyWebSocket):
        def opened(self) -> None:
            sockets.append(self)
            ready.set()

    h = serve(Target, compression=False, send_queue_size=2**26)
    with connect(h.url, max_size=None) as ws:
        assert ready.wait(5)
        target = sockets[0]
        sizes = [10, 1000, 70000, 300000]

        def sender(n: int) -> None:
            for i in range(40):
                size = sizes[(n + i) % len(sizes)]
                if i % 7 == 0:
                    target.send(iter_chunks(f"{n}:{i}:", size))
                else:
                    target.send(f"{n}:{i}:" + "x" * size)
                gevent.sleep(0)

        workers = [gevent.spawn(sender, n) for n in range(8)]
        seen: dict[int, int] = {}
        for _ in range(8 * 40):
            message = ws.recv(timeout=10)
            assert isinstance(message, str)
            n, i, body = message.split(":", 2)
            assert set(body) <= {"x"} and len(body) in sizes
            assert int(i) == seen.get(int(n), -1) + 1  # per-sender order kept
            seen[int(n)] = int(i)
        gevent.joinall(workers, raise_error=True)


def iter_chunks(prefix: str, size: int) -> Any:
    yield prefix
    for _ in range(size // 1000):
        yield "x" * 1000
        gevent.sleep(0)  # let the other senders try to cut in
    yield "x" * (size % 1000)


def test_slow_consumer_is_closed_and_never_blocks_the_broadcaster(
    serve: Any, record: Record, caplog: pytest.LogCaptureFixture
) -> None:
    sockets: list[Any] = []
    ready = Event()

    class Target(Ws4pyWebSocket):
        def opened(self) -> None:
            sockets.append(self)
            ready.set()

        def closed(self, code: int, reason: Any = None) -> None:
            record.closed.append((code, reason))
            record.done.set()

    h = serve(Target, send_queue_size=256 * 1024, slow_consumer_close_code=1013, close_timeout=0.5)
    with RawClient(h.port) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert ready.wait(5)
        target = sockets[0]
        chunk = b"y" * 65536
        slowest = 0.0
        sent = 0
        for _ in range(2000):  # 128 MB if nothing stopped us
            started = time.monotonic()
            ok = target.send(chunk, binary=True)
            slowest = max(slowest, time.monotonic() - started)
            gevent.sleep(0)
            if not ok:
                break
            sent += 1
        assert slowest < 0.1  # never blocked the sender
        assert sent < 500
        assert record.done.wait(3)
        assert record.closed[0][0] == 1013
        assert any("slow consumer" in r.getMessage() for r in caplog.records)
        assert target.send(b"late") is False


def test_own_greenlet_gets_backpressure_not_a_close(serve: Any) -> None:
    class Streamer(Ws4pyWebSocket):
        def received_message(self, message: Any) -> None:
            for i in range(64):  # 8 MB through a 256 KiB queue
                self.send(bytes([i]) * 131072, binary=True)

    h = serve(Streamer, send_queue_size=256 * 1024, max_message_size=2**20)
    with connect(h.url, max_size=None) as ws:
        ws.send("go")
        for i in range(64):
            assert ws.recv(timeout=10) == bytes([i]) * 131072


# -- registry and shutdown -------------------------------------------------------------------


def test_registry_and_shutdown_from_another_greenlet(serve: Any, record: Record) -> None:
    registry = Registry()
    h = serve(recording(record), registry=registry)
    with connect(h.url) as ws:
        ws.send("hi")
        assert ws.recv() == "hi"
        assert len(registry) == 1
        gevent.spawn(next(iter(registry)).shutdown).join()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    assert ws.close_code == 1001
    assert record.done.wait(3)
    assert record.closed == [(1001, "server shutting down")]
    assert len(registry) == 0


def test_shutdown_of_unresponsive_peer_takes_close_timeout(serve: Any, record: Record) -> None:
    registry = Registry()
    h = serve(recording(record), registry=registry, close_timeout=0.3, ping_interval=None)
    with RawClient(h.port) as c:
        c.send_frame(TEXT, b"x")
        c.recv_frame()
        started = time.monotonic()
        for handler in list(registry):
            handler.shutdown()
        assert record.done.wait(3)
        assert 0.25 < time.monotonic() - started < 2
        assert c.recv_close() == 1001
    assert len(registry) == 0


# -- rtserver.WebSocket -----------------------------------------------------------------------


def test_rtserver_websocket_conveniences(serve: Any) -> None:
    seen: dict[str, Any] = {}

    class App(WebSocket):
        def opened(self) -> None:
            seen.update(
                agent=self.request_headers["user-agent"],
                cookie=self.cookies["sid"].value,
                path=self.path,
                query=self.query_params,
                remote=self.remote,
                subprotocol=self.subprotocol,
                session=self.session,
            )
            self.send_json({"a": [1, 2], "é": None})

    h = serve(App, protocols=("chat",))
    url = f"ws://127.0.0.1:{h.port}/room?id=7&tag=a&tag=b"
    with connect(
        url,
        subprotocols=[Subprotocol("other"), Subprotocol("chat")],
        additional_headers={"Cookie": "sid=abc; x=1"},
        user_agent_header="t/1",
    ) as ws:
        assert json.loads(ws.recv()) == {"a": [1, 2], "é": None}
        assert ws.subprotocol == "chat"
    assert seen["agent"] == "t/1"
    assert seen["cookie"] == "abc"
    assert seen["path"] == "/room"
    assert seen["query"] == {"id": "7", "tag": ["a", "b"]}
    assert seen["remote"][0] == "127.0.0.1" and seen["remote"][1] > 0
    assert seen["subprotocol"] == "chat"
    assert seen["session"] is None


def test_runtime_class_keeps_user_overrides() -> None:
    class Custom(Ws4pyWebSocket):
        def send(self, payload: Any, binary: bool = False) -> Any:
            return ("custom", super().send(payload, binary))

    runtime = connection.runtime_class(Custom)
    assert runtime is connection.runtime_class(Custom)  # cached
    assert runtime.__mro__.index(Custom) < runtime.__mro__.index(connection._EngineMixin)
    assert issubclass(runtime, Custom)
    with pytest.raises(TypeError):
        connection.runtime_class(object)


# -- the WSGI side ----------------------------------------------------------------------------


def http_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data


def test_bad_handshake_answers_its_status_never_500(serve: Any) -> None:
    h = serve(EchoWebSocket, allowed_origins=())
    base = (
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    reply = http_exchange(h.port, (base + "Sec-WebSocket-Version: 8\r\n\r\n").encode())
    assert reply.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"Sec-WebSocket-Version: 13\r\n" in reply
    assert b"Content-Type: text/plain" in reply
    reply = http_exchange(h.port, (base + "Sec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n\r\n").encode())
    assert reply.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    reply = http_exchange(h.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_server_without_takeover_answers_501(caplog: pytest.LogCaptureFixture) -> None:
    app = websocket_app(EchoWebSocket)
    environ = {
        "REQUEST_METHOD": "GET",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "h",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }
    statuses: list[str] = []
    body = b"".join(app(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["501 Not Implemented"]
    assert b"not supported" in body
    assert "rtserver.upgrade" not in environ
    assert any("cannot take connections over" in r.getMessage() for r in caplog.records)
