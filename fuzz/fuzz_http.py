"""Coverage-guided fuzzing of the HTTP request parser with atheris (libFuzzer).

Feeds arbitrary bytes to :class:`rtserver.servers.http.HeadParser` as the server does
(skip empty lines, find the end of the head, parse it), then any bytes after the head
to a :class:`ChunkedDecoder`. Anything but a parsed head or ``RequestError`` is a
crash, which libFuzzer reports with the input that caused it::

    pip install atheris
    python fuzz/fuzz_http.py -atheris_runs=100000
    python fuzz/fuzz_http.py fuzz/corpus/http -max_total_time=600   # grow a corpus

atheris is imported here only: rtserver never needs it.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import atheris

with atheris.instrument_imports():
    from rtserver.servers.http import ChunkedDecoder, HeadParser, RequestError
    from rtserver.servers.options import HTTPOptions

OPTIONS = HTTPOptions(max_request_line=1024, max_header_size=4096, max_header_count=30)


def test_one_input(data: bytes) -> None:
    """One input: a request head, maybe followed by a chunked body."""
    parser = HeadParser(OPTIONS)
    try:
        start = parser.empty_lines(data) if data[:2] == b"\r\n" else 0
        end = parser.find_head_end(data, start)
        if end < 0:
            return
        head = parser.parse(data[start:end])
        assert head.method and head.version in ("HTTP/1.1", "HTTP/1.0")
        assert not (head.chunked and head.content_length is not None)
        if head.chunked:
            decoder = ChunkedDecoder(max_size=1 << 20, max_trailer=4096, max_fields=30)
            out = decoder.feed(data[end:])
            assert isinstance(out, bytes)
    except RequestError as exc:
        assert 400 <= exc.code <= 505, exc.code


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
