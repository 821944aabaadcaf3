"""Tools: callables attached to hook points, turned on by config or a decorator.

A tool is turned on for a path with ``tools.NAME.on = True`` in config, or with the
decorator ``@rtserver.tools.NAME(arg=...)`` on a handler; both write the same config.
Its arguments come from ``tools.NAME.ARG`` keys. Example (the reference guide's)::

    def secureheaders():
        headers = rtserver.response.headers
        headers['X-Frame-Options'] = 'DENY'

    rtserver.tools.secureheaders = rtserver.Tool('before_finalize', secureheaders, priority=60)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..config import declared
from ..errors import ConfigError
from .hooks import HOOK_POINTS

__all__ = ["HandlerTool", "Tool", "Toolbox"]

_RESERVED_ARGS = ("on", "priority")


class Tool:
    """A ``callable`` run at hook ``point`` with ``priority`` when turned on."""

    def __init__(self, point: str, callable: Callable[..., Any], name: str | None = None, priority: int = 50) -> None:
        if point not in HOOK_POINTS:
            raise ValueError(f"unknown hook point {point!r} (known: {', '.join(HOOK_POINTS)})")
        self._point = point
        self.callable = callable
        self._name = name
        self._priority = priority
        self.__doc__ = getattr(callable, "__doc__", None)

    @property
    def name(self) -> str | None:
        """The tool's name in the toolbox (``tools.NAME``)."""
        return self._name

    def arguments(self) -> tuple[set[str], bool]:
        """The keyword arguments the callable takes, and whether it takes ``**kwargs``."""
        try:
            sig = inspect.signature(self.callable)
        except (TypeError, ValueError):
            return set(), True
        names = set()
        varkw = False
        for param in sig.parameters.values():
            if param.kind is param.VAR_KEYWORD:
                varkw = True
            elif param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                names.add(param.name)
        return names, varkw

    def arg_docs(self) -> dict[str, str]:
        """``{argument: meaning}`` from the ``Args:`` section of the callable's docstring."""
        docs: dict[str, str] = {}
        text = inspect.getdoc(self.callable) or ""
        in_args = False
        current = None
        for line in text.splitlines():
            if line.strip() == "Args:":
                in_args = True
                continue
            if not in_args:
                continue
            if not line.strip():
                break
            if line.startswith("    ") and not line.startswith("        "):
                name, _, meaning = line.strip().partition(":")
                current = name.strip()
                docs[current] = meaning.strip()
            elif current is not None:
                docs[current] += " " + line.strip()
        return docs

    def defaults(self) -> dict[str, Any]:
        """``{argument: default}`` of the callable."""
        try:
            sig = inspect.signature(self.callable)
        except (TypeError, ValueError):
            return {}
        return {
            p.name: (p.default if p.default is not p.empty else None)
            for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def check_args(self, args: dict[str, Any], where: str = "") -> None:
        """ConfigError naming the key for any argument the tool does not take."""
        names, varkw = self.arguments()
        if varkw:
            return
        for arg in args:
            if arg not in names and arg not in _RESERVED_ARGS:
                raise ConfigError(
                    f"{where}unknown config key 'tools.{self._name}.{arg}' "
                    f"(the {self._name} tool takes: {', '.join(sorted(names)) or 'no arguments'})"
                )

    def __call__(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """``@tools.NAME(arg=...)``: turn the tool on for the decorated handler."""
        if args:
            raise TypeError(
                f"the {self._name!r} tool takes no positional arguments; "
                f"write @tools.{self._name}() to use it as a decorator"
            )

        def decorator(handler: Any) -> Any:
            conf = handler.__dict__.get("_rt_config")
            if conf is None:
                conf = {}
                try:
                    handler._rt_config = conf
                except AttributeError:
                    raise TypeError(f"cannot attach tool config to {handler!r}") from None
            conf[f"tools.{self._name}.on"] = True
            for key, value in kwargs.items():
                conf[f"tools.{self._name}.{key}"] = value
            return handler

        return decorator

    def setup(self, hooks: Any, conf: dict[str, Any]) -> None:
        """Attach this tool's hook with arguments ``conf`` (``on`` already removed)."""
        conf = dict(conf)
        priority = conf.pop("priority", self._priority)
        hooks.attach(self._point, self.callable, priority=priority, **conf)

    def __repr__(self) -> str:
        return f"<Tool {self._name!r} at {self._point}>"


class HandlerTool(Tool):
    """A tool that may answer the request itself (static files).

    Its callable returns True when it produced the response; the page handler is then
    not called. ``tools.NAME.handler(**args)`` makes a page handler of it.
    """

    def __init__(self, callable: Callable[..., Any], name: str | None = None, priority: int = 50) -> None:
        super().__init__("before_handler", callable, name, priority)

    def handler(self, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        """A page handler answering with this tool (404 when it does not handle)."""
        from ..errors import NotFound
        from .context import current_request

        tool_callable = self.callable

        def handle_func(*a: Any, **kw: Any) -> Any:
            from .context import current_response

            handled = tool_callable(*args, **kwargs)
            if not handled:
                raise NotFound(current_request().path_info)
            return current_response().body

        handle_func.exposed = True  # type: ignore[attr-defined]
        return handle_func

    def setup(self, hooks: Any, conf: dict[str, Any]) -> None:
        conf = dict(conf)
        priority = conf.pop("priority", self._priority)
        tool_callable = self.callable

        def wrapper(**kwargs: Any) -> None:
            from .context import current_request

            if tool_callable(**kwargs):
                current_request().handler = None

        wrapper.__name__ = f"{self._name}_handler"
        hooks.attach(self._point, wrapper, priority=priority, **conf)


class Toolbox:
    """The namespace of tools: ``rtserver.tools.NAME``. Setting one names it."""

    _tools: dict[str, Tool]

    def __init__(self) -> None:
        object.__setattr__(self, "_tools", {})

    def __setattr__(self, name: str, tool: Any) -> None:
        if isinstance(tool, Tool):
            if tool._name is None:
                tool._name = name
            self._tools[name] = tool
        object.__setattr__(self, name, tool)

    def __getattr__(self, name: str) -> Tool:
        # Only reached when no tool of that name exists; typed so user code type-checks.
        raise AttributeError(f"no tool named {name!r} (known tools: {', '.join(self.names())})")

    def __delattr__(self, name: str) -> None:
        self._tools.pop(name, None)
        object.__delattr__(self, name)

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, or None."""
        tool: Tool | None = self._tools.get(name)
        return tool

    def names(self) -> list[str]:
        """The names of every registered tool."""
        return sorted(self._tools)

    def markdown(self) -> str:
        """The ``tools`` section of docs/config.md: every tool, every argument."""
        lines = [
            "## `tools`",
            "",
            "Each tool is turned on per path with `tools.NAME.on = True` (default off, except",
            "`trailing_slash`) or with the decorator `@rtserver.tools.NAME(arg=...)`;",
            "`tools.NAME.priority` orders tools on the same hook point.",
            "",
            "| key | default | meaning |",
            "| --- | --- | --- |",
        ]
        for name in self.names():
            tool = self._tools[name]
            summary = (inspect.getdoc(tool.callable) or "").split("\n\n")[0].replace("\n", " ")
            on_default = "`True`" if name == "trailing_slash" else "`False`"
            lines.append(
                f"| `tools.{name}.on` | {on_default} | {_cell(summary) or '(undocumented)'} (hook: {tool._point}) |"
            )
            docs = tool.arg_docs()
            keys = declared()
            prefix = f"tools.{name}."
            args = dict(tool.defaults())
            for key in sorted(k for k in keys if k.startswith(prefix)):
                args[key[len(prefix) :]] = keys[key].default
                docs[key[len(prefix) :]] = keys[key].doc
            for arg, value in args.items():
                if arg == "on":
                    continue
                meaning = docs.get(arg, "(undocumented)")
                lines.append(f"| `tools.{name}.{arg}` | `{_cell(repr(value))}` | {_cell(meaning)} |")
        lines.append("")
        return "\n".join(lines)

    def split_config(self, conf: dict[str, Any], where: str = "") -> dict[str, dict[str, Any]]:
        """``{name: {arg: value}}`` from the ``tools.NAME.ARG`` keys of ``conf``.

        Unknown tools and arguments raise ConfigError naming the key.
        """
        maps: dict[str, dict[str, Any]] = {}
        for key, value in conf.items():
            if not key.startswith("tools."):
                continue
            parts = key.split(".", 2)
            if len(parts) != 3:
                raise ConfigError(f"{where}config key {key!r} must be tools.NAME.ARGUMENT")
            _, name, arg = parts
            if name not in self._tools:
                raise ConfigError(f"{where}unknown tool in config key {key!r} (known tools: {', '.join(self.names())})")
            maps.setdefault(name, {})[arg] = value
        for name, args in maps.items():
            self._tools[name].check_args(args, where)
        return maps


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
