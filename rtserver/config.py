"""Configuration: CherryPy's dicts and INI files, read safely, checked at start-up.

Config comes as a dict or an INI file with ``[global]`` and ``[/path]`` sections. Keys are
namespaced (``engine.``, ``server.``, ``tools.``, ``request.``, ``response.``, ``log.``,
``error_page.``, ``hub.``). Values in files are Python literals plus arithmetic
(``60 * 60``), read by a small evaluator that accepts no names, calls, attributes or
imports.

Every key rtserver reads is declared once with :func:`declare`, next to the code that
reads it; ``docs/config.md`` is generated from those declarations
(``python -m rtserver.configref``) and a test keeps it current.

A wrong key or value raises :class:`~rtserver.errors.ConfigError` whose message is one
line naming the key and where it came from (``app.conf, line 3``, or the dict's
section), with the closest declared key for a misspelt one. Raised by
``rtserver.config.update()`` or ``tree.mount()`` it is an ordinary exception (a
traceback for a programmatic call); ``rtserver run`` prints the line and exits 2.
"""

from __future__ import annotations

import ast
import configparser
import difflib
import operator
import os
import re
import reprlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = [
    "NAMESPACES",
    "Config",
    "Key",
    "check_key",
    "declare",
    "declared",
    "literal",
    "markdown",
    "normalize",
    "read_file",
    "shown",
]

#: Namespaces accepted in config; any other fails at start-up with the key named.
NAMESPACES = (
    "engine",
    "server",
    "tools",
    "request",
    "response",
    "log",
    "error_page",
    "hub",
    "checker",
)


@dataclass(frozen=True)
class Key:
    """A declared config key: its name, default, meaning and optional checker."""

    name: str
    default: Any
    doc: str
    check: Callable[[Any], Any] | None = None
    scope: str = "global"  # "global" ([global] only), "app" (any section), "server"

    def coerce(self, value: Any, where: str = "") -> Any:
        """Return ``value`` checked (and converted) by the key's checker."""
        if self.check is None:
            return value
        try:
            return self.check(value)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}{self.name} = {shown(value)}: {_cut(str(exc))}") from None


_KEYS: dict[str, Key] = {}
# Patterns for families of keys: "server.NAME.*" for extra servers, "tools.NAME.ARG",
# "error_page.CODE". Each maps a regex to a doc line for docs/config.md.
_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {}


def declare(
    name: str,
    default: Any,
    doc: str,
    check: Callable[[Any], Any] | None = None,
    scope: str = "app",
) -> Key:
    """Declare config key ``name`` with its ``default`` and a one-line ``doc``.

    Declaring the same key twice with the same default is allowed (module reloads);
    with another default it is a programming error.
    """
    ns = name.split(".", 1)[0]
    if ns not in NAMESPACES:
        raise ValueError(f"config key {name!r} is outside the known namespaces")
    key = Key(name, default, doc, check, scope)
    old = _KEYS.get(name)
    if old is not None and old.default != default:
        raise ValueError(f"config key {name!r} declared twice with different defaults")
    _KEYS[name] = key
    return key


def declare_pattern(pattern: str, doc: str) -> None:
    """Declare a family of keys by regex (e.g. ``error_page\\.\\d{3}``)."""
    _PATTERNS[pattern] = (re.compile(pattern + r"\Z"), doc)


def declared() -> dict[str, Key]:
    """All declared keys by name (a copy)."""
    return dict(_KEYS)


def default(name: str) -> Any:
    """The declared default of ``name``."""
    return _KEYS[name].default


# ---------------------------------------------------------------------------
# Safe literal evaluator

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
    ast.Not: operator.not_,
}
_MAX_POWER = 1 << 16  # 2 ** 65536 is plenty for a config file and cannot hang us
# Integers of more bits are refused before they are computed: (9 ** 65536) ** 65536
# or a long product of big powers would otherwise take minutes and gigabytes.
_MAX_INT_BITS = 2 * _MAX_POWER
_MAX_LITERAL_LEN = 64 * 1024
#: The largest value, or intermediate result, a config expression may build: about
#: its printed length (a string's characters, a container's items and theirs). Real
#: values are host names, paths, header values and short lists, a few KiB at most (a
#: long CSP, an origin list); 1 MiB leaves them ample room, for arithmetic too
#: (``'x' * 100000``), while no line of a config file can make the process build
#: more, nor an error message repeat more: ``'%0100000000d' % 0`` (100 MB) and
#: ``[[0] * 4096] * 4096`` (a 50 MB repr) are refused before they are built.
_MAX_VALUE_SIZE = 2**20
# printf-style conversions, for their width and precision (see _format).
_CONVERSION = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?.?", re.S)


def literal(text: str) -> Any:
    """Evaluate ``text`` as a Python literal with arithmetic, never anything else.

    Accepted: numbers, strings, bytes, True/False/None, tuples, lists, dicts, sets,
    unary and binary arithmetic (``60 * 60``), comparisons are not. Names, calls,
    attributes, subscripts, lambdas and comprehensions raise ``ValueError``, as does
    a value (or any step of its arithmetic) larger than ``_MAX_VALUE_SIZE``.
    """
    if len(text) > _MAX_LITERAL_LEN:
        raise ValueError("value is too long")
    try:
        tree = ast.parse(text.strip(), mode="eval")
        return _eval(tree.body)[0]
    except SyntaxError as exc:
        # A bare word or URL (redis://host) is the usual mistake: a string needs quotes.
        bare = any(c.isalpha() for c in text) and not any(q in text for q in "'\"")
        hint = "; a string needs quotes, as in 'text'" if bare else ""
        raise ValueError(f"not a Python literal ({_cut(str(exc.msg))}){hint}") from None
    except (MemoryError, RecursionError):
        # CPython's parser and our evaluator give up on operators nested thousands deep.
        raise ValueError("value is nested too deeply") from None


def _scalar_size(value: Any) -> int:
    """About the printed length of a number, string or constant."""
    if isinstance(value, (str, bytes)):
        return len(value) + 2
    if isinstance(value, int):
        return value.bit_length() * 30103 // 100000 + 2  # decimal digits and a sign
    if isinstance(value, complex):
        return 50
    return 24  # a float's longest repr; None, True, False, ...


def _bounded(value: Any, size: int) -> tuple[Any, int]:
    if size > _MAX_VALUE_SIZE:
        raise ValueError(f"value is too large (over {_MAX_VALUE_SIZE} bytes)")
    return value, size


def _eval(node: ast.AST) -> tuple[Any, int]:
    """``(value, size)`` of ``node``; sizes are carried along, never recomputed by
    walking a value (``[[0] * 4096] * 4096`` shares one list 4096 times)."""
    if isinstance(node, ast.Constant):
        return node.value, _scalar_size(node.value)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [_eval(e) for e in node.elts]
        size = 2 + sum(s + 2 for _v, s in items)
        kind = tuple if isinstance(node, ast.Tuple) else list if isinstance(node, ast.List) else set
        return _bounded(kind(v for v, _s in items), size)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError("'**' is not allowed in config values")
        pairs = [(_eval(k), _eval(v)) for k, v in zip(node.keys, node.values, strict=True)]  # type: ignore[arg-type]
        size = 2 + sum(ks + vs + 4 for (_k, ks), (_v, vs) in pairs)
        return _bounded({k: v for (k, _ks), (v, _vs) in pairs}, size)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value = _UNARY[type(node.op)](_number(_eval(node.operand)[0]))
        return value, _scalar_size(value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _binop(node.op, _eval(node.left), _eval(node.right))
    if isinstance(node, ast.Name):
        name = _cut(repr(node.id))
        if node.id.lower() in ("true", "false", "none"):
            raise ValueError(f"names are not allowed in config values ({name}); write {node.id.capitalize()}")
        raise ValueError(f"names are not allowed in config values ({name}); a string needs quotes: {name}")
    if isinstance(node, ast.Call):
        raise ValueError("calls are not allowed in config values")
    raise ValueError(f"{type(node).__name__} is not allowed in config values")


_SEQUENCES = (str, bytes, list, tuple)


def _binop(op: ast.operator, left_sized: tuple[Any, int], right_sized: tuple[Any, int]) -> tuple[Any, int]:
    """Apply ``op``, refusing a result over the bounds before it is computed."""
    (left, lsize), (right, rsize) = left_sized, right_sized
    size: int | None = None  # known in advance for sequences, else measured after
    if isinstance(op, ast.Pow):
        _number(left)
        if abs(_number(right)) > _MAX_POWER:
            raise ValueError("exponent too large")
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > _MAX_INT_BITS:
            raise ValueError("number too large")
    elif isinstance(op, ast.Mult):
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise ValueError("number too large")
        for seq, seq_size, count in ((left, lsize, right), (right, rsize, left)):
            if isinstance(seq, _SEQUENCES) and isinstance(count, int):
                size = 2 + (seq_size - 2) * max(count, 0)  # 'ab' * 3: the content repeated
                _bounded(None, size)
    elif isinstance(op, ast.Add):
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            size = _bounded(None, lsize + rsize)[1]
    elif isinstance(op, ast.Mod) and isinstance(left, (str, bytes)):
        _format_widths(left)
    try:
        value = _BINOPS[type(op)](left, right)
    except (TypeError, ZeroDivisionError, OverflowError) as exc:
        raise ValueError(_cut(str(exc))) from None
    if size is None:
        # Numbers and % formatting are measured; a set difference is no larger than its left side.
        size = lsize if isinstance(value, (set, frozenset)) else _scalar_size(value)
    return _bounded(value, size)


def _format_widths(template: str | bytes) -> None:
    """Refuse printf-style widths and precisions that would build an oversized result
    (``'%0100000000d' % 0``) before formatting; the result is measured afterwards."""
    text = template.decode("latin-1") if isinstance(template, bytes) else template
    total = len(text)
    for match in _CONVERSION.finditer(text):
        for field in match.groups():
            if field == "*":
                raise ValueError("'*' widths are not allowed in config values")
            if field:
                total += int(field) if len(field) < 10 else _MAX_VALUE_SIZE + 1
        if total > _MAX_VALUE_SIZE:
            raise ValueError(f"value is too large (over {_MAX_VALUE_SIZE} bytes)")


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, complex)):
        raise ValueError(f"arithmetic on a non-number ({shown(value)})")
    return value


#: The longest value an error message quotes (then cut, ending with "...").
_MAX_SHOWN = 200


class _ShortRepr(reprlib.Repr):
    """reprlib's bounded repr, with integers too large for ``repr`` (over 4300 digits
    raise ValueError) and objects whose own repr fails or is long."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 4 * _MAX_SHOWN:
            return f"<int of {x.bit_length()} bits>"
        return _cut(repr(x))

    def repr_instance(self, x: Any, level: int) -> str:
        try:
            return _cut(repr(x))
        except Exception:
            return f"<{type(x).__name__}>"


_SHORT = _ShortRepr()
_SHORT.maxlevel = 3
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = _MAX_SHOWN
_SHORT.maxtuple = _SHORT.maxlist = _SHORT.maxarray = _SHORT.maxdict = 20
_SHORT.maxset = _SHORT.maxfrozenset = _SHORT.maxdeque = 20


def shown(value: Any) -> str:
    """``repr(value)`` for an error message: at most ``_MAX_SHOWN`` characters, ending
    with "..." when cut, and cheap whatever the value (never the whole of a 1 MiB
    list, nor a shared list repeated 4096 times)."""
    try:
        text = _SHORT.repr(value)
    except Exception:  # a value of a type with a broken __repr__ deep inside
        text = f"<{type(value).__name__}>"
    return _cut(text)


def _cut(text: str, limit: int = _MAX_SHOWN) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------
# Files and dicts


#: Every INI file read so far, as absolute paths (the reloader watches them).
files_read: set[str] = set()


def read_file(filename: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read an INI config file into ``{section: {key: value}}``.

    Sections are ``[global]`` and ``[/path]``; ``key = value`` and ``key: value`` both
    work; values are read by :func:`literal`, then every key is checked (:func:`check_key`)
    so that an unknown key or a wrong value raises :class:`ConfigError` naming the file
    and line (``unknown config key 'server.socket_prot' (app.conf, line 3); did you
    mean 'server.socket_port'?``).
    """
    name = os.fspath(filename)
    files_read.add(os.path.realpath(name))
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=", ":"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    try:
        with open(filename, encoding="utf-8") as fh:
            parser.read_file(fh)
        with open(filename, encoding="utf-8") as fh:
            lines = _key_lines(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {name!r}: {exc.strerror or exc}") from None
    except configparser.Error as exc:
        text = " ".join(str(exc).split())  # configparser's messages span lines
        raise ConfigError(f"{name}: {text}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    result: dict[str, dict[str, Any]] = {}
    for section in parser.sections():
        values: dict[str, Any] = {}
        for key, raw in parser.items(section, raw=True):
            line = lines.get((section, key))
            place = f"{name}, line {line}" if line else name
            try:
                value = literal(raw)
            except ValueError as exc:
                raise ConfigError(
                    f"{place}, section [{section}], key {shown(key)}: {shown(raw)} is not a valid value: {exc}"
                ) from None
            values[key] = check_key(key, value, f"{place}: ")
        result[section] = values
    return result


_OPTION_RE = re.compile(r"(?P<key>.*?)\s*[=:]")  # configparser's, with our delimiters


def _key_lines(lines: Iterable[str]) -> dict[tuple[str, str], int]:
    """``{(section, key): line number}`` of an INI file, read as configparser reads it:
    ``#`` and ``;`` lines are comments, a line indented deeper than its key continues
    the value, blank lines do not end it."""
    found: dict[tuple[str, str], int] = {}
    section = None
    key_indent: int | None = None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text[0] in "#;":
            continue
        indent = len(line) - len(line.lstrip())
        if key_indent is not None and indent > key_indent:
            continue
        m = configparser.ConfigParser.SECTCRE.match(text)
        if m:
            section, key_indent = m.group("header"), None
            continue
        m = _OPTION_RE.match(text)
        if m and section is not None:
            found.setdefault((section, m.group("key").rstrip()), number)
            key_indent = indent
    return found


def normalize(config: Any) -> dict[str, dict[str, Any]]:
    """Turn a dict, a filename or None into ``{section: {key: value}}``.

    A flat dict of namespaced keys (``{'server.socket_port': 8090}``) is taken as the
    ``global`` section, as ``rtserver.config.update`` does in CherryPy.
    """
    if config is None:
        return {}
    if isinstance(config, (str, os.PathLike)):
        return read_file(config)
    if not isinstance(config, Mapping):
        raise ConfigError(f"config must be a dict or a filename, not {type(config).__name__}")
    sections: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and (key == "global" or str(key).startswith("/")):
            sections.setdefault(key, {}).update(value)
        elif isinstance(value, Mapping) and "." not in str(key):
            raise ConfigError(f"config section {shown(key)} must be 'global' or start with '/'")
        else:
            flat[key] = value
    if flat:
        sections.setdefault("global", {}).update(flat)
    return sections


_EXTRA_SERVER_RE = re.compile(r"server\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.(?P<sub>[a-z_]+)\Z")


def check_key(name: str, value: Any, where: str = "") -> Any:
    """Check one ``name = value``; return the coerced value or raise ConfigError.

    ``where`` says where the key came from, as a prefix ending in ``": "``
    (``"app.conf, line 3: "``, ``"app /, section [/]: "``). Tool arguments
    (``tools.NAME.ARG``) are checked by the tools layer, which knows the tools; here
    we check the namespace, declared keys and patterns, the extra servers' keys
    (``server.NAME.socket_port``), and that every ``tools.NAME.on`` is a bool. An
    unknown key's message offers the closest declared key.
    """
    ns = name.split(".", 1)[0]
    if "." not in name or ns not in NAMESPACES:
        raise ConfigError(
            f"unknown config namespace in key {shown(name)}{_origin(where)}; known namespaces: {', '.join(NAMESPACES)}"
            + _did_you_mean(name, _KEYS)
        )
    key = _KEYS.get(name)
    if key is not None:
        return key.coerce(value, where)
    if ns == "tools":
        if name.endswith(".on"):  # a string such as "False" would turn the tool on
            return Key(name, False, "", as_bool).coerce(value, where)
        return value
    extra = _EXTRA_SERVER_RE.match(name)
    if extra and f"server.{extra.group('name')}" not in _KEYS:
        # server.NAME.SUB configures the extra server NAME: SUB is one of the server keys.
        sub = _KEYS.get(f"server.{extra.group('sub')}")
        if sub is not None and sub.scope == "server":
            return Key(name, sub.default, sub.doc, sub.check, sub.scope).coerce(value, where)
        prefix = f"server.{extra.group('name')}."
        server_keys = [prefix + k.name[len("server.") :] for k in _KEYS.values() if k.scope == "server"]
        raise ConfigError(
            f"unknown config key {shown(name)}{_origin(where)}: {extra.group('sub')} is not a server key"
            + _did_you_mean(name, server_keys)
        )
    for regex, _doc in _PATTERNS.values():
        if regex.match(name):
            return value
    raise ConfigError(f"unknown config key {shown(name)}{_origin(where)}" + _did_you_mean(name, _KEYS))


def _origin(where: str) -> str:
    """``" (app.conf, line 3)"`` from the prefix ``"app.conf, line 3: "``."""
    place = where.strip().rstrip(":").strip()
    return f" ({place})" if place else ""


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.8)
    return f"; did you mean {close[0]!r}?" if close else ""


class Config(dict[str, Any]):
    """The global config: ``rtserver.config.update({...})`` or ``.update('file.conf')``.

    Holds the ``[global]`` keys (flat). Listeners (the engine, servers) are told of
    changes through :meth:`on_update`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []

    def update(self, config: Any = None, **kwargs: Any) -> None:  # type: ignore[override]
        """Merge a dict, a filename, or keyword keys into the global config.

        Raises :class:`ConfigError` (one line naming the key and its file and line, or
        ``global config``) before anything changes. Called from a script this is an
        ordinary exception with its traceback; ``rtserver run -c FILE`` prints the line
        and exits 2.
        """
        sections = normalize(config)
        values = dict(sections.pop("global", {}))
        values.update(kwargs)
        for section in sections:
            # Path sections given to the global config apply to the root app in
            # CherryPy; we refuse them rather than guess.
            raise ConfigError(
                f"section [{section}] belongs in an application config "
                "(tree.mount(root, '/', config)), not rtserver.config"
            )
        checked = {k: check_key(k, v, "global config: ") for k, v in values.items()}
        super().update(checked)
        for listener in list(self._listeners):
            listener(checked)

    def on_update(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener(changed_keys)`` after every update."""
        self._listeners.append(listener)

    def get_key(self, name: str) -> Any:
        """The configured value of ``name``, or its declared default."""
        if name in self:
            return self[name]
        return _KEYS[name].default

    def reset(self) -> None:
        """Forget every configured value (tests)."""
        self.clear()

    def namespace(self, ns: str) -> Iterator[tuple[str, Any]]:
        """``(rest, value)`` for every configured key in namespace ``ns``."""
        prefix = ns + "."
        for key, value in self.items():
            if key.startswith(prefix):
                yield key[len(prefix) :], value


# ---------------------------------------------------------------------------
# Checkers used by declarations


def as_bool(value: Any) -> bool:
    """True or False (0 and 1 pass as well).

    A string is refused, even ``"False"``: used as a switch it would be true. In an INI
    file write ``False`` without quotes (values are Python literals).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        meant = "True" if word in _TRUE_WORDS else "False" if word in _FALSE_WORDS else "True or False"
        raise ValueError(f"expected True or False, not a string: write {meant} without quotes")
    raise ValueError("expected True or False")


_TRUE_WORDS = ("true", "on", "yes", "1")
_FALSE_WORDS = ("false", "off", "no", "0", "")


def positive(value: Any) -> float:
    """A number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("expected a number greater than 0")
    return value


def non_negative(value: Any) -> float:
    """A number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError("expected a number of 0 or more")
    return value


def positive_int(value: Any) -> int:
    """A whole number > 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("expected a whole number greater than 0")
    return value


def non_negative_int(value: Any) -> int:
    """A whole number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected a whole number of 0 or more")
    return value


def optional_positive(value: Any) -> float | None:
    """None, or a number > 0."""
    return None if value is None else positive(value)


def port(value: Any) -> int:
    """A TCP port number (0 picks a free one)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError("expected a port number from 0 to 65535")
    return value


def string(value: Any) -> str:
    """A str."""
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def optional_string(value: Any) -> str | None:
    """None or a str."""
    return None if value is None else string(value)


def markdown() -> str:
    """The config reference (docs/config.md) as Markdown, from the declarations."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the declarations in the code by `python -m rtserver.configref`;",
        "a test fails when this file is out of date. Values in INI files are Python",
        "literals with arithmetic (`60 * 60`). `[global]` keys apply to the process;",
        "keys marked *app* may also be set per path (`[/path]`) or on a handler",
        "(`_rt_config`). Unknown keys fail at start-up with the key named.",
        "",
    ]
    by_ns: dict[str, list[Key]] = {}
    for key in _KEYS.values():
        by_ns.setdefault(key.name.split(".", 1)[0], []).append(key)
    for ns in NAMESPACES:
        if ns == "tools" and _DOC_SECTIONS:
            continue  # the toolbox's section lists every tool with its declared keys
        keys = sorted(by_ns.get(ns, []), key=lambda k: k.name)
        patterns = [(p, d) for p, (_r, d) in _PATTERNS.items() if p.startswith(ns)]
        if not keys and not patterns:
            continue
        lines += [f"## `{ns}`", "", "| key | default | scope | meaning |", "| --- | --- | --- | --- |"]
        for key in keys:
            dflt = _format_default(key.default)
            doc = key.doc.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{key.name}` | {dflt} | {key.scope} | {doc} |")
        for pattern, doc in sorted(patterns):
            shown = pattern.replace("\\.", ".").replace("\\d{3}", "NNN")
            shown = shown.replace("[A-Za-z_][A-Za-z0-9_]*", "NAME").replace("\\|", "|")
            lines.append(f"| `{shown}` | | | {doc.replace('|', chr(92) + '|')} |")
        lines.append("")
    for section in _DOC_SECTIONS:
        lines.append(section())
    return "\n".join(lines)


#: Extra generated sections of docs/config.md (the tools register theirs).
_DOC_SECTIONS: list[Callable[[], str]] = []


def _format_default(value: Any) -> str:
    if isinstance(value, type):
        return f"`{value.__module__}.{value.__qualname__}`"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return "`" + text.replace("|", "\\|") + "`"


#: The process-wide config (``rtserver.config``): the ``[global]`` keys.
global_config = Config()


def load_all() -> None:
    """Import every module that declares keys, so the registry is complete."""
    import importlib

    for module in _DECLARING_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # an optional extra (redis) is missing
            if "redis" not in str(exc):
                raise


_DECLARING_MODULES: list[str] = ["rtserver"]
