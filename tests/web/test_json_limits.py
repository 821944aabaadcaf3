"""``tools.json_in`` on untrusted bodies, and the bounded decoder under it.

Before: 100,000 nested brackets answered 500 (RecursionError), ``"\\ud800"`` and
``NaN`` were accepted (a lone surrogate then crashes ``json_out``'s encoder), and a
5 MiB body of ``[[],[],...]`` raised server memory by ~130 MiB. Now every such body
is a 413 or a 400 with the reason, and :func:`rtserver.web.jsonlimits.loads` either
returns what ``json.loads`` would or raises ``JSONLimitError``, whatever the bytes.
"""

from __future__ import annotations

import json
import math
import socket
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import rtserver
from rtserver.testing import serve
from rtserver.web.jsonlimits import (
    INVALID,
    LONE_SURROGATE,
    TOO_DEEP,
    TOO_LARGE,
    TOO_MANY_ITEMS,
    JSONLimitError,
    loads,
)

pytestmark = pytest.mark.timeout(120)

JSON = {"Content-Type": "application/json"}
FIVE_MIB_OF_LISTS = b"[" + b"[]," * (5 * 2**20 // 3 - 1) + b"[]]"  # 1.7 million empty lists


class Api:
    @rtserver.expose
    @rtserver.tools.json_in()
    @rtserver.tools.json_out()
    def echo(self) -> Any:
        return {"got": rtserver.request.json}

    @rtserver.expose
    @rtserver.tools.json_in(max_body=8 * 2**20)
    @rtserver.tools.json_out()
    def large(self) -> Any:
        return {"count": len(rtserver.request.json)}

    @rtserver.expose
    @rtserver.tools.json_in(max_depth=200)
    @rtserver.tools.json_out()
    def deep(self) -> Any:
        return {"got": rtserver.request.json}


@pytest.fixture(scope="module")
def api() -> Any:
    with serve(Api(), config={"/": {"request.show_tracebacks": False}}) as srv:
        yield srv


def post(srv: Any, path: str, body: bytes) -> tuple[int, bytes]:
    status, _, data = srv.request("POST", path, body, JSON, timeout=30)
    return status, data


def test_valid_json_is_decoded(api: Any) -> None:
    body = json.dumps({"a": [1, 2.5, None, True], "é": "\U0001f600", "n": {"m": []}}).encode()
    status, data = post(api, "/echo", body)
    assert status == 200
    assert json.loads(data) == {"got": json.loads(body)}
    # a surrogate pair is one character, not a lone surrogate
    assert json.loads(post(api, "/echo", b'"\\ud83d\\ude00"')[1]) == {"got": "\U0001f600"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 50_000 + b"]" * 50_000, b"nested deeper than 64 levels"),  # was a 500
        (b"[" * 65 + b"]" * 65, b"nested deeper than 64 levels"),
        (b'{"a":' * 65 + b"1" + b"}" * 65, b"nested deeper than 64 levels"),
        (b'["\\ud800"]', b"a lone surrogate"),  # was accepted, then json_out's encoder crashed
        (b'{"\\udc00": 1}', b"a lone surrogate"),
        (b'"\\ud83d\\ud83d"', b"a lone surrogate"),  # two high halves are no pair
        (b"[NaN]", b"NaN is not a JSON number"),
        (b"-Infinity", b"-Infinity is not a JSON number"),
        (b"[1e999]", b"a number out of range"),
        (b"{nope", b"Invalid JSON document"),
        (b"\xff\xfe[]", b"not UTF-8"),
        (b"1" * 5000, b"a number with too many digits"),  # over Python's 4300-digit integer limit
    ],
)
def test_bad_documents_are_400_with_the_reason(api: Any, body: bytes, reason: bytes) -> None:
    status, data = post(api, "/echo", body)
    assert status == 400
    assert reason in data


def test_max_depth_is_configurable(api: Any) -> None:
    body = b"[" * 150 + b"]" * 150
    status, data = post(api, "/deep", body)
    assert status == 200
    assert json.loads(data) == {"got": json.loads(body)}
    assert post(api, "/deep", b"[" * 201 + b"]" * 201)[0] == 400


def _head_only(srv: Any, path: str, length: int) -> bytes:
    """Announce a body of ``length`` bytes, send none of it, read the answer."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n".encode()
        )
        data = b""
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_a_body_over_max_body_is_413_before_it_is_read(api: Any) -> None:
    answer = _head_only(api, "/echo", len(FIVE_MIB_OF_LISTS))
    assert answer.startswith(b"HTTP/1.1 413")


def test_a_chunked_body_over_max_body_is_413(api: Any) -> None:
    conn = api.connection(timeout=30)
    try:
        chunks = (FIVE_MIB_OF_LISTS[i : i + 65536] for i in range(0, 2 * 2**20, 65536))  # 2 MiB
        conn.request("POST", "/echo", body=chunks, headers=JSON, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413
        assert b"at most 1048576 bytes" in resp.read()
    finally:
        conn.close()


def test_five_mib_of_empty_lists_under_a_raised_max_body_is_400_in_bounded_memory(api: Any) -> None:
    body = FIVE_MIB_OF_LISTS
    tracemalloc.start()
    try:
        status, data = post(api, "/large", body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 400
    assert b"more than 100000 values" in data
    # The body, its text and one scan copy (~5 MiB each); json.loads made ~130 MiB.
    assert peak < 32 * 2**20, peak
    # Under the item limit, the same endpoint decodes a large document.
    status, data = post(api, "/large", b"[" + b"1," * 90_000 + b"1]")
    assert (status, json.loads(data)) == (200, {"count": 90_001})


def test_valid_json_still_works_after_the_refusals(api: Any) -> None:
    assert post(api, "/echo", b"[" * 100_000)[0] == 400
    assert post(api, "/echo", b'{"ok": true}') == (200, b'{"got":{"ok":true}}')


# -- the decoder alone ----------------------------------------------------------------------

LIMITS = {"max_bytes": 2**20, "max_depth": 64}


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"[]" * 10, INVALID),
        (b"x" * (2**20 + 1), TOO_LARGE),
        ("x" * (2**20 + 1), TOO_LARGE),
        (b"[" * 65 + b"]" * 65, TOO_DEEP),
        (b"[" + b"0," * 100_000 + b"0]", TOO_MANY_ITEMS),
        (b'"\\ud800"', LONE_SURROGATE),
        ('"\ud800"', LONE_SURROGATE),  # str input holding the surrogate itself
        (b"]]]", INVALID),
        (b'"' + b'\\"' * 100_000, INVALID),  # unterminated: one linear scan, not one per quote
    ],
)
def test_loads_refuses_with_a_kind(data: Any, kind: str) -> None:
    with pytest.raises(JSONLimitError) as info:
        loads(data, **LIMITS)
    assert info.value.kind == kind
    assert isinstance(info.value, ValueError) and str(info.value)


def test_loads_ignores_brackets_and_escapes_inside_strings() -> None:
    text = json.dumps({"a,b:[{": "]]]}}}" * 1000, "q": '\\"[[[', "u": "\\ud800"})
    assert loads(text, max_bytes=2**20, max_depth=1, max_items=7) == json.loads(text)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=40,
)

# JSON-ish text: JSON's own characters, escapes and the constants json.loads allows.
json_tokens = st.sampled_from(
    ["[", "]", "{", "}", ",", ":", '"', "\\", "\\u", "d800", "dc00", "\\ud83d", "\\ude00", "NaN", "-Infinity", "1e999"]
    + ["0", "-1.5e3", "true", "null", " ", "\n", "é", "\x00", "\ud800"]
)
jsonish = st.lists(json_tokens, max_size=60).map("".join)


def _check(data: Any, max_depth: int) -> None:
    try:
        value = loads(data, max_bytes=4096, max_depth=max_depth, max_items=200)
    except JSONLimitError as exc:
        assert exc.kind in (TOO_LARGE, TOO_DEEP, TOO_MANY_ITEMS, INVALID, LONE_SURROGATE)
        return
    # Whatever is accepted is what json.loads returns, and encodes back to UTF-8.
    assert value == json.loads(data)
    json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), jsonish, jsonish.map(lambda t: t.encode("utf-8", "surrogatepass"))))
@example(data=b"[" * 3000)
@example(data='["\\ud800"]')
@example(data=b'"\\\\ud800"')
def test_loads_returns_or_raises_jsonlimiterror(data: Any) -> None:
    _check(data, max_depth=8)


@FUZZ
@given(value=json_values, ascii_only=st.booleans(), indent=st.sampled_from([None, 0, 2]))
def test_valid_json_within_limits_decodes_as_json_loads_does(value: Any, ascii_only: bool, indent: Any) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    for data in (text, text.encode("utf-8")):
        decoded = loads(data, max_bytes=2**20, max_depth=64, max_items=10_000)
        assert decoded == json.loads(data)
        assert not any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(decoded))


def _leaves(value: Any) -> list[Any]:
    stack, leaves = [value], []
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        else:
            leaves.append(item)
    return leaves
