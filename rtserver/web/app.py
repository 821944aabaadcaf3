"""Applications and the tree: the request pipeline, and WSGI in and out.

:class:`Application` is a PEP 3333 WSGI callable serving a tree of exposed page handlers.
:class:`Tree` mounts applications at script names and grafts foreign WSGI apps; it is a
WSGI application itself, dispatching on the script name.

The pipeline, in CherryPy's order::

    on_start_resource → query string → before_request_body → body → before_handler
    → handler → before_finalize → finalize → on_end_resource ... on_end_request

``response.timed_out`` is checked after every hook point and after the handler; a
timed-out request is answered 503. What does not change between requests to the same
path (dispatch, merged config, tool set-up) is computed once and cached.
"""

from __future__ import annotations

import html
import logging
import os
import sys
import time
import traceback as _traceback
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .. import errors
from ..config import as_bool, check_key, declare, declare_pattern, normalize, positive
from ..config import global_config as _global_config
from .context import serving
from .dispatch import call_handler, find_handler, is_socket_class
from .hooks import HookMap
from .httputil import error_page_html, host_allowed, split_host
from .request import Request, parse_query_string
from .response import Response

__all__ = ["Application", "ForeignApp", "Tree"]

access_log = logging.getLogger("rtserver.access")
error_log = logging.getLogger("rtserver.error")

#: Process-wide request counters read by ``rtserver.stats``: ``timeouts`` counts
#: requests answered 503 because they ran past ``response.timeout``.
counters: dict[str, int] = {"timeouts": 0}

declare(
    "request.show_tracebacks",
    False,
    "Show Python tracebacks on 500 error pages (development only: never in production).",
    as_bool,
)
declare(
    "request.show_mismatched_params",
    True,
    "Name the missing or unexpected parameters on the 404/400 page of a handler argument mismatch.",
    as_bool,
)
declare(
    "request.process_request_body",
    True,
    "Decode urlencoded and multipart bodies into handler keyword arguments.",
    as_bool,
)
declare("request.methods_with_bodies", ("POST", "PUT", "PATCH", "DELETE"), "Methods whose body is read and decoded.")
declare("response.timeout", 300, "Seconds a response may run before it counts as timed out (503).", positive)
declare(
    "response.stream",
    False,
    "Send a generator's chunks as they come (chunked encoding) instead of buffering them.",
    as_bool,
)
declare_pattern(
    r"error_page\.(\d{3}|default)",
    "A file name (or a callable `f(status, message, traceback, version)` returning the page) used as the "
    "error page for that status; `default` for any status. A file is a template filled with `%(status)s`, "
    "`%(message)s`, `%(traceback)s`, `%(version)s`, HTML-escaped (the message may quote the request path); "
    "a callable gets them unescaped and escapes what it puts in HTML.",
)


def _check_hosts(value: Any) -> tuple[str, ...]:
    """A host name, or a list of them: ``'example.com'``, ``'.example.com'``, ``'*'``."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple, set, frozenset)) or not all(isinstance(h, str) for h in items):
        raise ValueError("expected a list of host names, like ['example.com', '.example.org']")
    hosts: list[str] = []
    for item in items:
        name = item.strip().lower()
        if name == "*":
            hosts.append(name)
            continue
        parts = split_host(name[1:] if name.startswith(".") else name)
        if parts is None or parts[1] or (name.startswith(".") and name[1:2] == "."):
            raise ValueError(
                f"{item!r} is not a host name (write 'example.com' or '.example.com': no scheme, port or path)"
            )
        hosts.append(name)
    return tuple(hosts)


declare(
    "request.allowed_hosts",
    (),
    "Host names this path answers, as Django's ALLOWED_HOSTS: `['example.com', '.example.org']` "
    "('.example.org': it and its subdomains; '*': any; ports are not compared). A request for another Host "
    "(or X-Forwarded-Host under tools.proxy) is answered 400 and logged, so no URL or redirect is built from "
    "it, and redirects to unlisted hosts are refused (400) unless raised with `HTTPRedirect(url, offsite=True)`. "
    "Empty (the default, for compatibility): any host; set it in production, e.g. "
    "`request.allowed_hosts = ['example.com']` in [global].",
    _check_hosts,
)
declare_pattern(r"response\.headers\.[A-Za-z0-9-]+", "A response header set on every response of that path.")

_CACHE_SIZE = 2048
_MAX_INTERNAL_REDIRECTS = 10
_VERSION = "0.1.0"


class _Resolved:
    """What dispatch and config give for one path: cached between requests."""

    __slots__ = (
        "config",
        "extra_headers",
        "handler",
        "has_end_hooks",
        "hooks",
        "is_index",
        "request_attrs",
        "response_attrs",
        "toolmaps",
        "vpath",
    )

    def __init__(self) -> None:
        self.handler: Any = None
        self.vpath: list[str] = []
        self.is_index: bool | None = None
        self.config: dict[str, Any] = {}
        self.hooks = HookMap()
        self.toolmaps: dict[str, dict[str, Any]] = {}
        self.request_attrs: list[tuple[str, Any]] = []
        self.response_attrs: list[tuple[str, Any]] = []
        self.extra_headers: list[tuple[str, str]] = []
        self.has_end_hooks = False


class Application:
    """A WSGI application serving ``root`` (a tree of exposed handlers) with ``config``.

    ``rtserver.Application(Root(), '/', config=conf)`` can be handed to any WSGI server.
    """

    def __init__(
        self, root: Any, script_name: str = "", config: Any = None, toolbox: Any = None, global_config: Any = None
    ) -> None:
        self.root = root
        self.script_name = script_name.rstrip("/")
        self.config: dict[str, dict[str, Any]] = {}
        if toolbox is None:
            from .builtin_tools import tools as default_toolbox

            toolbox = default_toolbox
        self.toolbox = toolbox
        self.global_config = global_config if global_config is not None else _global_config
        self._cache: OrderedDict[str, _Resolved] = OrderedDict()
        if config is not None:
            self.merge(config)
        self.monitor: Any = None  # the engine's timeout monitor, set by the tree

    # -- config ---------------------------------------------------------------

    def merge(self, config: Any) -> None:
        """Merge a dict or INI file (``{'/path': {...}}``) into this app's config."""
        sections = normalize(config)
        for section, values in sections.items():
            where = f"app {self.script_name or '/'!s}, section [{section}]: "
            for key, value in values.items():
                values[key] = check_key(key, value, where)
            self.config.setdefault(section, {}).update(values)
        self.clear_cache()

    def clear_cache(self) -> None:
        """Forget cached dispatch and config (call after changing the tree or config)."""
        self._cache.clear()

    def validate(self) -> None:
        """Check every section's tool keys against the registered tools (start-up)."""
        for section, values in self.config.items():
            self.toolbox.split_config(values, f"app {self.script_name or '/'}, section [{section}]: ")
        self._walk_rt_config(self.root, "/", set())

    def _walk_rt_config(self, node: Any, path: str, seen: set[int]) -> None:
        if node is None or id(node) in seen or len(seen) > 10000:
            return
        seen.add(id(node))
        conf = getattr(node, "_rt_config", None)
        if isinstance(conf, dict):
            where = f"_rt_config of {path}: "
            for key, value in conf.items():
                check_key(key, value, where)
            self.toolbox.split_config(conf, where)
        for name in dir(type(node)) if not isinstance(node, type) else ():
            if name.startswith("_"):
                continue
            child = getattr(node, name, None)
            if callable(child) or hasattr(child, "__dict__"):
                if hasattr(child, "_rt_config") or getattr(child, "exposed", False) or hasattr(child, "index"):
                    self._walk_rt_config(child, path.rstrip("/") + "/" + name, seen)

    def global_values(self) -> dict[str, Any]:
        """The global config keys that apply to requests."""
        g = self.global_config
        if not g:
            return {}
        return {k: v for k, v in g.items() if k.split(".", 1)[0] in _REQUEST_NAMESPACES}

    def resolve(self, path: str) -> _Resolved:
        """Dispatch ``path`` and merge its config (cached)."""
        cached = self._cache.get(path)
        if cached is not None:
            self._cache.move_to_end(path)
            return cached
        resolved = self._resolve(path)
        self._cache[path] = resolved
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return resolved

    def _resolve(self, path: str) -> _Resolved:
        r = _Resolved()
        found = find_handler(self.root, path)
        conf: dict[str, Any] = {"tools.trailing_slash.on": True}
        conf.update(self.global_values())
        conf.update(self.config.get("/", {}))
        # Path sections apply by prefix, whether or not an object exists there
        # (a [/static] section with no handler, served by the staticdir tool).
        acc = ""
        node_confs: dict[str, dict[str, Any]] = {}
        if found is not None:
            for p, obj in found.trail:
                c = getattr(obj, "_rt_config", None)
                if isinstance(c, dict):
                    node_confs.setdefault(p or "/", {}).update(c)
        conf.update(node_confs.get("/", {}))
        if "tools.staticdir.dir" in self.config.get("/", {}):
            conf["tools.staticdir.section"] = "/"
        for segment in [s for s in path.split("/") if s]:
            acc += "/" + segment
            section = self.config.get(acc, {})
            conf.update(section)
            conf.update(node_confs.get(acc, {}))
            if "tools.staticdir.dir" in section:
                # staticdir serves paths relative to the section that configured it.
                conf["tools.staticdir.section"] = acc
        if found is not None:
            handler_conf = getattr(found.handler, "_rt_config", None)
            if isinstance(handler_conf, dict):
                conf.update(handler_conf)
            r.handler = found.handler
            r.vpath = found.vpath
            r.is_index = found.is_index
            if is_socket_class(found.handler):
                # A handler class attached to the tree: the WebSocket tool upgrades.
                conf.setdefault("tools.websocket.handler_cls", found.handler)
                conf["tools.websocket.on"] = True
                conf.setdefault("tools.trailing_slash.on", False)
                r.handler = _no_content
        r.config = conf
        toolmaps = self.toolbox.split_config(conf, f"path {path!r}: ")
        r.toolmaps = toolmaps
        for name, args in toolmaps.items():
            on = args.pop("on", False)
            if on:
                tool = self.toolbox.get(name)
                tool.setup(r.hooks, args)
        for key, value in conf.items():
            ns, _, rest = key.partition(".")
            if ns == "request":
                r.request_attrs.append((rest, value))
            elif ns == "response":
                if rest.startswith("headers."):
                    r.extra_headers.append((rest[8:], value))
                else:
                    r.response_attrs.append((rest, value))
        r.has_end_hooks = bool(r.hooks["on_end_request"])
        return r

    # -- WSGI -----------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        status, headers, body = self.handle(environ)
        try:
            start_response(status, headers)
        except Exception:
            error_log.error(
                "start_response failed for %s %s",
                environ.get("REQUEST_METHOD"),
                environ.get("PATH_INFO"),
                exc_info=True,
            )
            raise
        return body

    def handle(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], Iterable[bytes]]:
        """Serve one request without a WSGI call: ``(status, headers, body)`` to send.

        The native server calls this; ``__call__`` wraps it for WSGI. Send the body,
        then call its ``close()`` if it has one (on_end_request hooks, access log).
        """
        request = Request(environ, self)
        response = Response(request)
        serving.set((request, response))
        monitor = self.monitor
        if monitor is not None:
            monitor.track(response)
        try:
            self.respond(request, response)
        finally:
            if monitor is not None:
                monitor.untrack(response)
        status, headers = response.finalize()
        body = response.body
        if request.method == "HEAD" and response.body_is_buffered:
            body = []
        if (request.hooks is not None and request.hooks["on_end_request"]) or access_log.isEnabledFor(logging.INFO):
            return status, headers, _ClosingBody(body, request, response)
        return status, headers, body

    def respond(self, request: Request, response: Response) -> None:
        """Run the pipeline for ``request``, filling ``response`` (never raises).

        As CherryPy: an HTTPError or HTTPRedirect raised by a tool or the handler sets
        its page and ``before_finalize`` still runs (so sessions are saved); an
        unexpected exception runs ``before_error_response``/``after_error_response``.
        """
        hooks: HookMap | None = None
        try:
            try:
                try:
                    r = self.resolve(request.path_info)
                    request.config = r.config
                    request.toolmaps = r.toolmaps
                    request.hooks = hooks = r.hooks.copy()
                    request.is_index = r.is_index
                    request.handler = r.handler if r.handler is not None else _not_found
                    for attr, value in r.request_attrs:
                        setattr(request, attr, value)
                    for attr, value in r.response_attrs:
                        setattr(response, attr, value)
                    for name, value in r.extra_headers:
                        response.headers[name] = value
                    request.check_host()
                    for _ in range(_MAX_INTERNAL_REDIRECTS):
                        try:
                            self._pipeline(request, response, r, hooks)
                            break
                        except errors.InternalRedirect as ir:
                            # Serve another path within this request, as CherryPy does.
                            request.path_info, request.query_string = ir.path, ir.query_string
                            r = self.resolve(ir.path)
                            request.config, request.toolmaps = r.config, r.toolmaps
                            request.hooks = hooks = r.hooks.copy()
                            request.is_index = r.is_index
                            request.handler = r.handler if r.handler is not None else _not_found
                    else:
                        raise RuntimeError(f"more than {_MAX_INTERNAL_REDIRECTS} internal redirects")
                except (errors.HTTPRedirect, errors.HTTPError) as exc:
                    self._set_http_exception(request, response, exc)
                    if hooks is not None:
                        hooks.run("before_finalize")
            finally:
                if hooks is not None:
                    hooks.run("on_end_resource")
        except (errors.HTTPRedirect, errors.HTTPError) as exc:
            # raised by before_finalize or on_end_resource hooks
            self._set_http_exception(request, response, exc)
        except errors.TimeoutError:
            counters["timeouts"] += 1
            self._error_response(request, response, "503 Service Unavailable", "The response timed out.", hooks)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:
            error_log.error("Error in request %s", request.request_line, exc_info=True)
            tb = _traceback.format_exc() if request.show_tracebacks else ""
            self._error_response(
                request,
                response,
                "500 Internal Server Error",
                "The server encountered an unexpected condition.",
                hooks,
                tb,
            )

    def _set_http_exception(
        self, request: Request, response: Response, exc: errors.HTTPRedirect | errors.HTTPError
    ) -> None:
        if isinstance(exc, errors.HTTPRedirect):
            self._redirect(request, response, exc)
        else:
            self._error_response(request, response, exc.status, exc.message, None)

    def _pipeline(self, request: Request, response: Response, r: _Resolved, hooks: HookMap) -> None:
        hooks.run("on_start_resource")
        _check_time(response)
        request.params = params = parse_query_string(request.query_string)
        hooks.run("before_request_body")
        _check_time(response)
        if request.process_request_body and request.method in request.methods_with_bodies:
            body = request.body
            body.process()
            if body.params:
                for key, value in body.params.items():
                    if key in params:
                        old = params[key]
                        params[key] = (old if isinstance(old, list) else [old]) + (
                            value if isinstance(value, list) else [value]
                        )
                    else:
                        params[key] = value
        hooks.run("before_handler")
        _check_time(response)
        handler = request.handler
        if handler is not None:
            body_params = request._body.params if request._body is not None else {}
            response.body = call_handler(handler, r.vpath, params, body_params, request.show_mismatched_params)
            _check_time(response)
        hooks.run("before_finalize")
        _check_time(response)

    def _redirect(self, request: Request, response: Response, redirect: errors.HTTPRedirect) -> None:
        urls = redirect.resolved(request.url())
        if not _redirect_allowed(request, urls[0], redirect.offsite):
            # An open redirect (a target taken from the query string, say) sends users
            # to a phishing page under this site's name: refuse, and tell the operator.
            error_log.error(
                "Refused the redirect of %s to %r: not a host of this site (request.allowed_hosts); "
                "raise HTTPRedirect(url, offsite=True) for a deliberate off-site redirect",
                request.request_line[:200],
                urls[0][:200],
            )
            self._error_response(request, response, "400 Bad Request", "The redirect target is not on this site.", None)
            return
        status = redirect.status or (303 if request.protocol >= (1, 1) else 302)
        response.status = status
        response.headers["Location"] = urls[0]
        if status in (304, 305):
            response.body = None
            return
        response.headers["Content-Type"] = "text/html;charset=utf-8"
        response.body = f'This resource can be found at <a href="{html.escape(urls[0])}">{html.escape(urls[0])}</a>.'

    def _error_response(
        self, request: Request, response: Response, status: str, message: str, hooks: HookMap | None, tb: str = ""
    ) -> None:
        try:
            if hooks is not None:
                hooks.run("before_error_response")
        except Exception:
            error_log.error("Error in before_error_response hook", exc_info=True)
        _close_body(response)
        keep = {
            k: v
            for k, v in response.headers.items()
            if k in ("Allow", "Retry-After", "Www-Authenticate", "Sec-Websocket-Version")
        }
        response.headers.clear()
        response.headers.update(keep)
        response.status = status
        response.stream = False
        response.headers["Content-Type"] = "text/html;charset=utf-8"
        response.body = self._error_page(request, status, message, tb)
        try:
            if hooks is not None:
                hooks.run("after_error_response")
        except Exception:
            error_log.error("Error in after_error_response hook", exc_info=True)

    def _error_page(self, request: Request, status: str, message: str, tb: str) -> str | bytes:
        code = status.split(" ", 1)[0]
        conf = request.config or {}
        page = conf.get(f"error_page.{code}") or conf.get("error_page.default")
        if page:
            try:
                if callable(page):
                    result = page(status=status, message=message, traceback=tb, version=_VERSION)
                    return result if isinstance(result, (str, bytes)) else str(result)
                with open(page, encoding="utf-8") as fh:
                    template = fh.read()
                # Escaped as CherryPy does: the message quotes the request path (a 404),
                # so an unescaped template would be a reflected XSS.
                values = {"status": status, "message": message, "traceback": tb, "version": _VERSION}
                return template % {k: html.escape(v) for k, v in values.items()}
            except Exception:
                error_log.error("Error rendering the error page %r", page, exc_info=True)
        return error_page_html(status, message, tb, _VERSION)


_REQUEST_NAMESPACES = frozenset(("tools", "request", "response", "error_page"))


def _redirect_allowed(request: Request, target: str, offsite: bool | None) -> bool:
    """Whether a redirect to the absolute URL ``target`` may be answered.

    ``offsite=True``: any target. Otherwise a target is on-site when it is http(s) and
    its host is listed in ``request.allowed_hosts`` or, with no list, is the host the
    request was sent to. ``offsite=None`` (the default) checks only when
    ``request.allowed_hosts`` is set, so existing apps redirect as before;
    ``offsite=False`` always checks.
    """
    if offsite:
        return True
    allowed = request.allowed_hosts
    if offsite is None and not allowed:
        return True
    try:
        parts = urllib.parse.urlsplit(target)
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme.lower() not in ("http", "https") or not host:
        return False
    if ":" in host:
        host = f"[{host}]"  # urlsplit drops the brackets of an IPv6 literal
    if allowed:
        return host_allowed(host, allowed)
    own = split_host(request.host)
    return own is not None and host.lower().removesuffix(".") == own[0]


def _check_time(response: Response) -> None:
    if response.timed_out:
        raise errors.TimeoutError("response timed out")


def _not_found(*args: Any, **kwargs: Any) -> None:
    from .context import current_request

    raise errors.NotFound(current_request().path_info)


def _no_content(*args: Any, **kwargs: Any) -> None:
    # The page side of a handler class attached to the tree: the WebSocket tool
    # answers; extra path segments and query parameters are the socket's to read.
    return None


_no_content.exposed = True  # type: ignore[attr-defined]


def _close_body(response: Response) -> None:
    close = getattr(response.body, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            error_log.error("Error closing a response body", exc_info=True)


class _ClosingBody:
    """The response body; its ``close()`` runs on_end_request and writes the access log."""

    __slots__ = ("_body", "_request", "_response", "_sent")

    def __init__(self, body: Iterable[bytes], request: Request, response: Response) -> None:
        self._body = body
        self._request = request
        self._response = response
        self._sent = 0

    def __iter__(self) -> Iterator[bytes]:
        token = serving.set((self._request, self._response))
        try:
            for chunk in self._body:
                self._sent += len(chunk)
                yield chunk
        finally:
            serving.reset(token)

    def close(self) -> None:
        request = self._request
        request.closed = True
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            if request.hooks is not None and request.hooks["on_end_request"]:
                try:
                    request.hooks.run("on_end_request")
                except Exception:
                    error_log.error("Error in on_end_request hook", exc_info=True)
            if access_log.isEnabledFor(logging.INFO):
                _log_access(request, self._response, self._sent)


def _log_access(request: Request, response: Response, sent: int) -> None:
    """One line in Common Log Format (plus referer and user agent: the Combined format)."""
    env = request.wsgi_environ
    code = str(response.status).split(" ", 1)[0]
    line = '%s - %s [%s] "%s" %s %s "%s" "%s"' % (
        env.get("REMOTE_ADDR", "-"),
        request.login or "-",
        time.strftime("%d/%b/%Y:%H:%M:%S %z"),
        request.request_line.replace('"', '\\"'),
        code,
        sent or "-",
        env.get("HTTP_REFERER", "").replace('"', '\\"'),
        env.get("HTTP_USER_AGENT", "").replace('"', '\\"'),
    )
    access_log.info(line)


class ForeignApp:
    """A foreign WSGI application grafted on the tree; its errors are contained."""

    def __init__(self, wsgi_app: Callable[..., Any], script_name: str) -> None:
        self.wsgi_app = wsgi_app
        self.script_name = script_name.rstrip("/")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started: list[bool] = []

        def guarded_start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started.append(True)
            return start_response(status, headers, exc_info)

        try:
            result = self.wsgi_app(environ, guarded_start)
            if not started and isinstance(result, (list, tuple)):
                pass
            return _ContainedIter(result, environ, self)
        except Exception:
            error_log.error("Error in grafted WSGI app at %r", self.script_name or "/", exc_info=True)
            if started:
                raise
            body = b"500 Internal Server Error"
            start_response(
                "500 Internal Server Error",
                [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
                sys.exc_info(),
            )
            return [body]


class _ContainedIter:
    def __init__(self, result: Iterable[Any], environ: dict[str, Any], app: ForeignApp) -> None:
        self._result = result
        self._app = app

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._result:
                # PEP 3333 says bytes; be lenient with str from old apps, as CherryPy is.
                yield chunk.encode("latin-1") if isinstance(chunk, str) else chunk
        except Exception:
            error_log.error(
                "Error in grafted WSGI app at %r while streaming", self._app.script_name or "/", exc_info=True
            )
            raise

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            close()


class Tree:
    """Applications by script name: ``tree.mount(root, '/blog', config)``, ``tree.graft(app, '/legacy')``.

    The tree is itself a WSGI application dispatching on the longest matching script name.
    """

    def __init__(self) -> None:
        self.apps: dict[str, Any] = {}
        self._ordered: list[tuple[str, Any]] = []
        self.monitor: Any = None

    def mount(self, root: Any, script_name: str = "", config: Any = None) -> Application:
        """Mount ``root`` (or an :class:`Application`) at ``script_name``; return the app."""
        script_name = _norm_script_name(script_name)
        if isinstance(root, Application):
            app = root
            app.script_name = script_name
            if config is not None:
                app.merge(config)
        else:
            if config is not None and not isinstance(config, (str, os.PathLike)):
                # CherryPy lets a root's own _rt_config hold the app config.
                pass
            app = Application(root, script_name, config)
        app.monitor = self.monitor
        self.apps[script_name] = app
        self._reorder()
        return app

    def graft(self, wsgi_callable: Callable[..., Any], script_name: str = "") -> ForeignApp:
        """Serve a foreign WSGI application at ``script_name``; tools do not apply to it."""
        script_name = _norm_script_name(script_name)
        app = ForeignApp(wsgi_callable, script_name)
        self.apps[script_name] = app
        self._reorder()
        return app

    def _reorder(self) -> None:
        self._ordered = sorted(self.apps.items(), key=lambda item: len(item[0]), reverse=True)

    def set_monitor(self, monitor: Any) -> None:
        """Have every mounted application report its requests to ``monitor``."""
        self.monitor = monitor
        for app in self.apps.values():
            if isinstance(app, Application):
                app.monitor = monitor

    def script_name(self, path: str) -> str | None:
        """The script name of the application serving ``path``, or None."""
        for name, _app in self._ordered:
            if path == name or path.startswith(name + "/") or name == "":
                return name
        return None

    def validate(self) -> None:
        """Check every app's config (engine start)."""
        for app in self.apps.values():
            if isinstance(app, Application):
                app.validate()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        for name, app in self._ordered:
            if name == "" or path == name or path.startswith(name + "/"):
                environ["SCRIPT_NAME"] = name
                environ["PATH_INFO"] = path[len(name) :]
                return app(environ, start_response)
        body = b"Nothing is mounted at this path."
        start_response(
            "404 Not Found", [("Content-Type", "text/plain;charset=utf-8"), ("Content-Length", str(len(body)))]
        )
        return [body]


def _norm_script_name(script_name: str | None) -> str:
    if script_name is None:
        raise ValueError("script_name must be a string ('' or '/path')")
    script_name = script_name.rstrip("/")
    if script_name and not script_name.startswith("/"):
        raise ValueError(f"script_name must start with '/': {script_name!r}")
    return script_name
