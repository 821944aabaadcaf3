"""The Autobahn TestSuite (via kosoku) against ws4py's own EchoWebSocket, attached to
the page tree of a real rtserver (the default gevent server), as a user would mount it.

Every case must end OK or INFORMATIONAL, for the exchange and the close alike:
NON-STRICT, FAILED, UNIMPLEMENTED, WRONG CODE, UNCLEAN... all fail the test, listed.
The full suite (517 cases, 216 of them permessage-deflate) takes about 2-4 minutes
on a 2-core machine; ``RTSERVER_AUTOBAHN_CASES="1.*,6.*"`` runs a subset.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import need
from ws4py.websocket import EchoWebSocket

from rtserver.testing import serve

# Runs in a fresh interpreter: kosoku drives asyncio, which must not see gevent's patches.
_RUNNER = """
import asyncio, json, sys
from kosoku import FailureError, run_fuzzingclient
url, cases = sys.argv[1], sys.argv[2].split(",") if sys.argv[2] else None
try:
    results = asyncio.run(run_fuzzingclient(url, cases, None, concurrency=2))
except FailureError as failure:
    results = failure.results
for r in results:
    print(json.dumps([r.case_id, r.behavior.value, r.behavior_close.value, r.result, r.result_close]))
sys.stdout.flush()
"""

_ACCEPTED = {"OK", "INFORMATIONAL"}


@pytest.mark.timeout(900)
def test_autobahn_fuzzingclient_all_cases() -> None:
    need(importlib.util.find_spec("kosoku") is not None, "kosoku (PyPI) is not installed")

    class Root:
        echo = EchoWebSocket

    config = {
        "/echo": {
            "tools.websocket.max_message_size": 2**25,  # case 9.x sends 16 MiB messages
            "tools.websocket.allowed_origins": "*",
            # The zlib level does not change conformance; level 1 saves minutes of CPU in 12.x/13.x.
            "tools.websocket.compression_level": 1,
        }
    }
    cases = os.environ.get("RTSERVER_AUTOBAHN_CASES", "")
    with serve(Root(), config) as srv:
        proc = subprocess.run(
            [sys.executable, "-c", _RUNNER, srv.ws_url + "/echo", cases],
            capture_output=True,
            text=True,
            timeout=840,
            check=False,
        )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    assert rows, f"kosoku produced no results (exit {proc.returncode}): {proc.stderr[-2000:]}"
    if not cases:
        assert len(rows) >= 500, f"only {len(rows)} cases ran"
    bad = [row for row in rows if row[1] not in _ACCEPTED or row[2] not in _ACCEPTED]
    assert not bad, f"{len(bad)} of {len(rows)} cases not OK:\n" + "\n".join(
        f"  {case}: {behavior} / {close}: {result} {result_close}"
        for case, behavior, close, result, result_close in bad
    )
