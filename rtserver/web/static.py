"""Static files: ``tools.staticdir`` and ``tools.staticfile``.

Never a byte from outside the configured root, whatever the encoding of the path: the
server percent-decodes the path once; we then refuse ``..`` segments, NUL bytes and
absolute paths, and check the *real* path (symlinks resolved) lies under the real root.
CherryPy 18 only compared string prefixes, so ``/static/../static-secret/`` and symlinks
escaped; we compare path components. Conditional requests (ETag, Last-Modified, 304)
and single byte ranges (206, 416) follow RFC 9110 §13 and §14.

Dotfiles (``.env``, ``.git/config``, ``.htpasswd``) are not served by ``staticdir``:
a path with a segment starting with ``.`` is answered 404, as if it were not there,
unless ``tools.staticdir.dotfiles`` is True. ``.well-known`` (RFC 8615: ACME
challenges, security.txt) is served all the same.
"""

from __future__ import annotations

import mimetypes
import os
import re
import stat
from typing import Any

from ..errors import HTTPError
from .context import current_request, current_response
from .httputil import http_date, parse_http_date

__all__ = ["has_dotfile", "resolve_under", "serve_file", "staticdir", "staticfile"]

_CHUNK = 64 * 1024
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)\Z")


def resolve_under(root: str, relative: str) -> str | None:
    """The real path of ``relative`` under ``root``, or None if it would leave ``root``."""
    if "\x00" in relative:
        return None
    parts = [p for p in relative.replace("\\", "/").split("/") if p]
    if any(p in ("..", ".") for p in parts):
        return None
    real_root = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(real_root, *parts)) if parts else real_root
    try:
        if os.path.commonpath([real_root, candidate]) != real_root:
            return None
    except ValueError:
        return None
    return candidate


#: Dot-directories meant to be served (RFC 8615 well-known URIs).
_PUBLIC_DOT_SEGMENTS = frozenset((".well-known",))


def has_dotfile(relative: str) -> bool:
    """Whether a segment of ``relative`` starts with ``.`` (``.well-known`` aside)."""
    return any(p.startswith(".") and p not in _PUBLIC_DOT_SEGMENTS for p in relative.replace("\\", "/").split("/") if p)


def _abs_dir(directory: str, root: str | None) -> str:
    if os.path.isabs(directory):
        return directory
    if not root:
        raise ValueError(f"static dir {directory!r} is relative and no 'root' is configured")
    return os.path.join(root, directory)


def staticdir(
    section: str,
    dir: str,
    root: str = "",
    match: str = "",
    content_types: dict[str, str] | None = None,
    index: str = "",
    dotfiles: bool = False,
) -> bool:
    """Serve the files under a directory for a URL section (``[/static]``).

    Args:
        section: the URL section served (set automatically from the config section).
        dir: the directory, absolute or relative to ``root``.
        root: the base of a relative ``dir``.
        match: a regular expression the path must match to be served.
        content_types: ``{extension: media type}`` overriding the guessed types.
        index: the file served for a directory (e.g. ``index.html``).
        dotfiles: serve paths with a segment starting with '.' (.env, .git/); off: 404 (.well-known is always served).
    """
    request = current_request()
    if request.method not in ("GET", "HEAD"):
        return False
    if match and not re.search(match, request.path_info):
        return False
    directory = _abs_dir(os.path.expanduser(dir), root)
    section = "" if section == "global" else section.rstrip("/")
    path = request.path_info
    if section and not (path == section or path.startswith(section + "/")):
        return False
    relative = path[len(section) :]
    if not dotfiles and has_dotfile(relative):
        # Secrets live in dotfiles (.env, .git/config): never publish one by accident.
        raise HTTPError(404)
    target = resolve_under(directory, relative)
    if target is None:
        raise HTTPError(404)
    if os.path.isdir(target):
        if not index:
            return False
        target = resolve_under(target, index)
        if target is None:
            return False
    return serve_file(target, content_types=content_types)


def staticfile(
    filename: str, root: str | None = None, match: str = "", content_types: dict[str, str] | None = None
) -> bool:
    """Serve one file for the path.

    Args:
        filename: the file, absolute or relative to ``root``.
        root: the base of a relative ``filename``.
        match: a regular expression the path must match to be served.
        content_types: ``{extension: media type}`` overriding the guessed types.
    """
    request = current_request()
    if request.method not in ("GET", "HEAD"):
        return False
    if match and not re.search(match, request.path_info):
        return False
    path = filename if os.path.isabs(filename) else _abs_dir(filename, root)
    return serve_file(path, content_types=content_types)


def serve_file(path: str, content_type: str | None = None, content_types: dict[str, str] | None = None) -> bool:
    """Answer with the file at ``path`` (conditional requests and ranges honoured).

    Returns False when there is no regular file there (the caller may 404).
    """
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    request = current_request()
    response = current_response()
    if content_type is None:
        ext = os.path.splitext(path)[1].lower()
        if content_types and ext.lstrip(".") in content_types:
            content_type = content_types[ext.lstrip(".")]
        else:
            guessed, _ = mimetypes.guess_type(path)
            content_type = guessed or "application/octet-stream"
            if content_type.startswith("text/") or content_type in ("application/javascript", "application/json"):
                content_type += ";charset=utf-8"
    etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    headers = response.headers
    headers["Content-Type"] = content_type
    headers["Last-Modified"] = http_date(st.st_mtime)
    headers["ETag"] = etag
    headers["Accept-Ranges"] = "bytes"
    if _not_modified(request.headers, etag, st.st_mtime):
        response.status = 304
        response.body = None
        return True
    size = st.st_size
    start, end = 0, size - 1
    range_header = request.headers.get("Range")
    if range_header and _if_range_ok(request.headers.get("If-Range"), etag, st.st_mtime):
        parsed = _parse_range(range_header, size)
        if parsed is None:
            response.status = 416
            headers["Content-Range"] = f"bytes */{size}"
            response.body = None
            return True
        if parsed != (0, size - 1) or size == 0:
            start, end = parsed
            response.status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    length = max(0, end - start + 1)
    fh = open(path, "rb")  # noqa: SIM115 - closed by the generator below
    if start:
        fh.seek(start)
    headers["Content-Length"] = str(length)
    response.stream = True
    response.body = _file_range(fh, length)
    return True


def _file_range(fh: Any, length: int) -> Any:
    try:
        while length > 0:
            chunk = fh.read(min(_CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk
    finally:
        fh.close()


def _not_modified(headers: Any, etag: str, mtime: float) -> bool:
    inm = headers.get("If-None-Match")
    if inm is not None:
        # RFC 9110 §13.1.2: weak comparison; If-Modified-Since is ignored when present.
        tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
        return "*" in tags or etag in tags
    ims = parse_http_date(headers.get("If-Modified-Since"))
    return ims is not None and int(mtime) <= ims


def _if_range_ok(if_range: str | None, etag: str, mtime: float) -> bool:
    if if_range is None:
        return True
    if if_range.startswith('"') or if_range.startswith("W/"):
        return if_range == etag
    date = parse_http_date(if_range)
    return date is not None and int(mtime) <= date


#: Digits of the largest position read exactly; longer numbers are past any file, and
#: int() of more than 4,300 digits would raise (CPython's limit) rather than answer.
_MAX_POSITION_DIGITS = 19


def _position(digits: str) -> int:
    """A byte position from a Range header: beyond 19 digits, past the end of any file."""
    digits = digits.lstrip("0") or "0"
    return 2**63 if len(digits) > _MAX_POSITION_DIGITS else int(digits)


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=a-b`` range → (start, end) inclusive, or None when unsatisfiable.

    Several ranges are answered with the whole file (RFC 9110 §14.2 allows ignoring Range).
    """
    value = value.strip()
    if "," in value:
        return (0, size - 1)
    m = _RANGE_RE.match(value)
    if not m:
        return (0, size - 1)  # a malformed Range is ignored (RFC 9110 §14.2)
    first, last = m.groups()
    if not first and not last:
        return (0, size - 1)
    if not first:
        n = _position(last)
        if n == 0 or size == 0:
            return None
        return (max(0, size - n), size - 1)
    start = _position(first)
    end = _position(last) if last else size - 1
    if start >= size or end < start:
        return None
    return (start, min(end, size - 1))
