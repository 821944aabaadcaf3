"""The request body: raw reading and form decoding (urlencoded and multipart).

Form fields become keyword arguments of the page handler, as in CherryPy. Multipart
parsing uses the ``multipart`` package (bounded: part count, header sizes, memory).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from .. import errors

if TYPE_CHECKING:
    from .request import Request

__all__ = ["Part", "RequestBody"]

_MAX_FORM_MEMORY = 8 * 1024 * 1024


class Part:
    """An uploaded multipart field: ``name``, ``filename``, ``content_type``, ``file``."""

    def __init__(self, name: str, filename: str | None, content_type: str, file: Any, size: int) -> None:
        self.name = name
        self.filename = filename
        self.content_type = content_type
        self.file = file
        self.size = size

    def fullvalue(self) -> bytes:
        """The whole content as bytes."""
        self.file.seek(0)
        data: bytes = self.file.read()
        self.file.seek(0)
        return data

    @property
    def value(self) -> bytes:
        """The whole content as bytes (``fullvalue()``)."""
        return self.fullvalue()

    def __repr__(self) -> str:
        return f"<Part {self.name!r} filename={self.filename!r} {self.size} bytes>"


class RequestBody:
    """The body of a request; ``params`` holds decoded form fields once processed."""

    def __init__(self, request: Request) -> None:
        self.request = request
        env = request.wsgi_environ
        self.fp = env.get("wsgi.input") or io.BytesIO()
        self.content_type: str = env.get("CONTENT_TYPE", "") or ""
        length = env.get("CONTENT_LENGTH")
        self.length: int | None = int(length) if length and str(length).isdigit() else None
        self.chunked = "chunked" in env.get("HTTP_TRANSFER_ENCODING", "").lower()
        self.params: dict[str, Any] = {}
        self.processed = False
        self._data: bytes | None = None

    @property
    def has_body(self) -> bool:
        """True when the request announces a body."""
        return bool(self.length) or self.chunked

    def read(self, size: int = -1) -> bytes:
        """Read the raw body (all of it, or up to ``size`` bytes)."""
        if self._data is not None:
            if size is None or size < 0:
                return self._data
            data, self._data = self._data[:size], self._data[size:]
            return data
        if self.length is not None:
            if size is None or size < 0:
                size = self.length
            return bytes(self.fp.read(size))
        if not self.chunked:
            return b""
        return bytes(self.fp.read(size if size is not None and size >= 0 else -1))

    def fullvalue(self) -> bytes:
        """The whole raw body, kept so it can be read again."""
        if self._data is None:
            self._data = self.read()
        return self._data

    def process(self) -> None:
        """Decode urlencoded or multipart forms into ``params`` (once)."""
        if self.processed:
            return
        self.processed = True
        if not self.has_body:
            return
        media, _, options = self.content_type.partition(";")
        media = media.strip().lower()
        if media == "application/x-www-form-urlencoded":
            from .request import parse_query_string

            raw = self.read()
            try:
                text = raw.decode("ascii")
            except UnicodeDecodeError:
                raise errors.HTTPError(400, "A urlencoded body must be ASCII.") from None
            self.params = parse_query_string(text)
        elif media == "multipart/form-data":
            self.params = self._multipart(options)

    def _multipart(self, options: str) -> dict[str, Any]:
        import multipart

        boundary = ""
        for option in options.split(";"):
            key, _, raw = option.strip().partition("=")
            if key.strip().lower() == "boundary":
                boundary = raw.strip().strip('"')
        if not boundary:
            raise errors.HTTPError(400, "multipart/form-data without a boundary")
        params: dict[str, Any] = {}
        try:
            parser = multipart.MultipartParser(
                self.fp,
                boundary,
                content_length=self.length if self.length is not None else -1,
                memory_limit=_MAX_FORM_MEMORY,
                part_limit=1000,
            )
            for part in parser:
                value: Any
                if part.filename is not None:
                    value = Part(part.name, part.filename, part.content_type, part.file, part.size)
                else:
                    value = part.value
                existing = params.get(part.name)
                if existing is None:
                    params[part.name] = value
                elif isinstance(existing, list):
                    existing.append(value)
                else:
                    params[part.name] = [existing, value]
        except multipart.MultipartError as exc:
            raise errors.HTTPError(400, f"Malformed multipart body: {exc}") from None
        return params
