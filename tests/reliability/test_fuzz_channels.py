"""Property-based fuzzing of the channel protocol (``ChannelSocket``) on a real server.

Whatever a client sends, the socket answers with a protocol reply (an ``op`` the
protocol defines; errors as ``op: error`` with a code) and stays open: never a 1011
close, never a traceback in the server's log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtserver.testing import TestServer, serve
from rtserver.websocket.channels import ChannelSocket

pytestmark = pytest.mark.timeout(120)

OPS = ["join", "leave", "publish", "presence", "ping", "nope", None, 1, [], {}]
REPLIES = {"joined", "left", "ok", "presence", "pong", "error"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
requests = st.fixed_dictionaries(
    {"op": st.sampled_from(OPS)},
    optional={
        "channel": st.one_of(st.text(max_size=30), st.sampled_from(["room:a", "__x", ""]), json_values),
        "ref": json_values,
        "since": st.one_of(st.integers(min_value=-(2**70), max_value=2**70), json_values),
        "history": st.one_of(st.integers(min_value=-5, max_value=2**40), json_values),
        "data": json_values,
    },
)
texts = st.one_of(
    requests.map(json.dumps),
    st.text(max_size=300),
    # Raw JSON text with escapes and nesting json.dumps would never write.
    st.builds(
        lambda depth, esc: (
            '{"op": "publish", "channel": "a", "data": ' + "[" * depth + f'"\\u{esc:04x}"' + "]" * depth + "}"
        ),
        st.integers(0, 200),
        st.integers(0xD700, 0xE000),
    ),
)


class Root:
    ws = ChannelSocket


@pytest.fixture(scope="module")
def server() -> Iterator[TestServer]:
    with serve(Root()) as s:
        yield s


class LogCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(batch=st.lists(texts, min_size=1, max_size=5))
def test_every_request_gets_a_protocol_reply(server: TestServer, batch: list[str]) -> None:
    catcher = LogCatcher()
    logging.getLogger("rtserver").addHandler(catcher)
    try:
        with server.websocket_connect("/ws") as ws:
            for text in batch:
                ws.send(text)
                reply = _next_reply(ws)
                assert reply.get("op") in REPLIES, reply
                if reply["op"] == "error":
                    assert isinstance(reply.get("error"), str) and isinstance(reply.get("message"), str)
            ws.send('{"op": "ping", "ref": "last"}')  # still open and answering
            assert _next_reply(ws) == {"op": "pong", "ref": "last"}
    finally:
        logging.getLogger("rtserver").removeHandler(catcher)
    assert not [r for r in catcher.records if r.exc_info], [r.getMessage() for r in catcher.records]


def _next_reply(ws: Any) -> dict[str, Any]:
    """The next protocol reply (channel traffic, which has no ``op``, is skipped)."""
    for _ in range(50):
        msg = json.loads(ws.recv(timeout=5))
        if "op" in msg:
            return msg
    raise AssertionError("no reply among 50 messages")
