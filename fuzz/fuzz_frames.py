"""Coverage-guided fuzzing of the WebSocket runtime's frame path with atheris.

Arbitrary bytes are fed to a server connection exactly as its reader loop feeds
what it receives (``_Connection.feed``: websockets' sans-IO protocol, then our
dispatch, fragment assembly and fail-fast UTF-8 checks, with an echoing handler),
split at a point the input chooses, with or without permessage-deflate. Anything
but a normal return is a crash; a protocol error must end in a close frame::

    pip install atheris
    python fuzz/fuzz_frames.py -atheris_runs=100000

atheris is imported here only: rtserver never needs it.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gevent import monkey

monkey.patch_all()

import atheris  # noqa: E402

with atheris.instrument_imports():
    from typing import Any

    import gevent
    from websockets.protocol import OPEN
    from ws4py.websocket import WebSocket

    from rtserver.websocket.connection import create_handler
    from rtserver.websocket.handshake import negotiate
    from rtserver.websocket.options import WebSocketOptions

_HEADERS = [
    ("Host", "example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]
_OPTIONS = WebSocketOptions(max_message_size=64 * 1024)
_PLAIN = negotiate("GET", _HEADERS, _OPTIONS)
_DEFLATE = negotiate("GET", [*_HEADERS, ("Sec-WebSocket-Extensions", "permessage-deflate")], _OPTIONS)


class _Socket:
    """A socket that takes every write and never reads (the input is fed directly)."""

    def send(self, data: Any, *_args: Any) -> int:
        return len(data)

    def shutdown(self, how: int) -> None:
        pass

    def settimeout(self, timeout: Any) -> None:
        pass

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 9)


class _Echo(WebSocket):
    def received_message(self, message: Any) -> None:
        self.send(message.data, message.is_binary)


def test_one_input(data: bytes) -> None:
    """One input: byte 0 picks compression and where the stream is split."""
    if not data:
        return
    handshake = _DEFLATE if data[0] & 1 else _PLAIN
    cut = data[0] >> 1
    stream = data[1:]
    handler = create_handler(_Socket(), _Echo, handshake, {}, _OPTIONS)
    conn = handler._rt_conn
    for chunk in (stream[:cut], stream[cut:]):
        if conn.aborted or conn.proto.state is not OPEN:
            break
        conn.feed(chunk)
    proto = conn.proto
    if proto.parser_exc is not None:
        assert proto.close_sent is not None, "a protocol error must send a close frame"
    code, _reason = conn.close_status()
    assert 1000 <= code <= 4999, code
    gevent.sleep(0)  # run the queued flushes (hub callbacks), as the server would
    conn.finish()


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
