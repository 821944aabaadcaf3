"""A JSON decoder for untrusted input, with bounded time and memory.

``json.loads`` trusts its input: nesting recurses in C until RecursionError, a
5 MiB body of ``[[],[],...]`` builds 1.7 million lists (over 110 MiB), ``"\\ud800"``
decodes to a lone surrogate that crashes the UTF-8 encoder later (when the value is
logged, stored or sent back), and ``NaN``, ``Infinity`` or ``1e999`` are not JSON
(RFC 8259 §6) yet come out as floats. :func:`loads` refuses each with a
:class:`JSONLimitError` before the document is built, or right after for what only
the decoder can tell:

1. size: ``max_bytes`` is checked before anything is decoded;
2. shape: one linear pass over the text outside its strings (regular expressions
   and ``str.count``, in C) counts the values and finds the deepest nesting, so
   ``max_items`` and ``max_depth`` are known before ``json.loads`` allocates or
   recurses;
3. ``json.loads`` (strict UTF-8 input, no NaN/Infinity, finite numbers only);
4. lone surrogates: only when the text has a surrogate escape at all, the decoded
   strings are searched, iteratively.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any

__all__ = [
    "DEFAULT_MAX_ITEMS",
    "INVALID",
    "LONE_SURROGATE",
    "TOO_DEEP",
    "TOO_LARGE",
    "TOO_MANY_ITEMS",
    "JSONLimitError",
    "loads",
]

#: :attr:`JSONLimitError.kind` values.
TOO_LARGE = "too-large"
TOO_DEEP = "too-deep"
TOO_MANY_ITEMS = "too-many-items"
INVALID = "invalid"
LONE_SURROGATE = "lone-surrogate"

#: ``max_items`` by default. About 85 bytes per value at most (one-key objects, the
#: costliest shape: 8.1 MiB for 100,000 values, measured), so 100,000 values hold
#: under ~10 MiB whatever the document, beside the text of its strings and numbers;
#: a 1 MiB body of real records (a few fields each) stays under the count.
DEFAULT_MAX_ITEMS = 100_000


class JSONLimitError(ValueError):
    """A document :func:`loads` refuses; ``kind`` says why (one of the constants
    above), the message says it for a person (safe to show a client)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


# A JSON string (RFC 8259 §7): no quote or backslash but in an escape. An unterminated
# one matches to the end of the text, so every quote starts one match and the whole
# pass stays linear (a failed match per quote would be quadratic on '"\"\"\"...').
_STRING = re.compile(r'"[^"\\]*(?:\\[\s\S][^"\\]*)*(?:"|\\?\Z)')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}.__getitem__
# A \uD800-\uDFFF escape: maybe a lone surrogate (searched fast: a literal prefix).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# In decoded strings (where json.loads joined the pairs) or in str input: lone ones.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _refuse_constant(name: str) -> Any:
    raise JSONLimitError(INVALID, f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: RFC 8259 §6 allows no infinity
        raise JSONLimitError(INVALID, "a number out of range")
    return value


def _scan(text: str, max_depth: int, max_items: int) -> None:
    """Refuse ``text`` when it holds more values or deeper nesting than allowed.

    Outside strings, a value is the first of the document, or follows a comma, a
    colon (the value of a key) or the opening of a container that is not empty:
    counted so, the values and keys ``json.loads`` would make are known exactly for
    compact JSON (``[ ]`` counts as non-empty: the count is then an upper bound). On
    invalid input the counts may be off, but only past where ``json.loads`` stops.
    """
    bare = _STRING.sub('""', text)  # brackets and commas in strings do not count
    openings = bare.count("[") + bare.count("{")
    empty = bare.count("[]") + bare.count("{}")
    if 1 + bare.count(",") + bare.count(":") + openings - empty > max_items:
        raise JSONLimitError(TOO_MANY_ITEMS, f"more than {max_items} values")
    brackets = _NOT_BRACKET.sub("", bare)
    if len(brackets) > 2 * openings:  # so the pass below is bounded by max_items too
        raise JSONLimitError(INVALID, "unbalanced brackets")
    if brackets and max(accumulate(map(_DEPTH_STEP, brackets))) > max_depth:
        raise JSONLimitError(TOO_DEEP, f"nested deeper than {max_depth} levels")


def _lone_surrogate(value: Any) -> bool:
    """Whether a decoded document holds a string with a lone surrogate (no recursion)."""
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, list):
            extend(item)
        elif isinstance(item, dict):
            extend(item)  # the keys
            extend(item.values())
    return False


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
_decode: Callable[[str], Any] = _DECODER.decode


def loads(
    data: bytes | bytearray | memoryview | str,
    *,
    max_bytes: int,
    max_depth: int,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> Any:
    """Decode one JSON document (RFC 8259), UTF-8 bytes or text, within limits.

    Returns what ``json.loads`` returns for a valid document within the limits;
    raises :class:`JSONLimitError` for anything else, never another exception:
    ``too-large`` past ``max_bytes`` (bytes, or characters of a str), ``too-many-items``
    past ``max_items`` values (keys and containers included), ``too-deep`` past
    ``max_depth`` nested arrays and objects (``[]`` is depth 1), ``lone-surrogate`` for
    a ``\\uD800``-``\\uDFFF`` escape that is not half of a pair, ``invalid`` for the
    rest (not UTF-8, a syntax error, NaN, Infinity, a number out of range).
    """
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_bytes:
        raise JSONLimitError(TOO_LARGE, f"larger than {max_bytes} bytes")
    if isinstance(data, str):
        text = data
        maybe_lone = _SURROGATE.search(text) is not None
    else:
        maybe_lone = False  # strict UTF-8 decoding lets no surrogate through
        try:
            text = bytes(data).decode("utf-8")  # RFC 8259 §8.1: UTF-8, no BOM
        except UnicodeDecodeError as exc:
            raise JSONLimitError(INVALID, f"not UTF-8 (byte {exc.start})") from None
    _scan(text, max_depth, max_items)
    try:
        value = _decode(text)
    except JSONLimitError:
        raise
    except json.JSONDecodeError as exc:
        raise JSONLimitError(INVALID, f"{exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except ValueError:  # the only other one: an integer of over 4300 digits
        raise JSONLimitError(INVALID, "a number with too many digits") from None
    except RecursionError:  # max_depth set near the interpreter's recursion limit
        raise JSONLimitError(TOO_DEEP, "nested too deeply") from None
    if (maybe_lone or _SURROGATE_ESCAPE.search(text)) and _lone_surrogate(value):
        raise JSONLimitError(LONE_SURROGATE, "a lone surrogate in a string")
    return value
