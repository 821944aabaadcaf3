"""One hub process for the multi-process Redis tests; driven over stdin/stdout.

``python -m hub.worker URL NAME MODE [ARGS]`` (from ``tests/``, as pytest names it)

* ``fanout SUBS SHARE``: subscribe SUBS fake sockets to channels c0 and c1, print
  ``ready``; on ``go`` publish SHARE messages (alternating channels, retrying on
  BrokerUnavailable), print ``published N``; on ``expect TOTAL`` wait until every
  socket has TOTAL messages, print ``result {json}`` and exit.
* ``presence N``: join N members (announced) to ``room``, print ``ready``, wait to be
  killed.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from rtserver.errors import BrokerUnavailable  # noqa: E402

from .fakes import FakeSocket, running_hub, settle  # noqa: E402

CHANNELS = ("c0", "c1")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def fanout(url: str, name: str, subs: int, share: int) -> None:
    with running_hub(broker=url, presence_ttl=2, reconnect_backoff_max=0.2, broker_timeout=2) as hub:
        socks = [FakeSocket(f"{name}-{i}") for i in range(subs)]
        for ws in socks:
            for channel in CHANNELS:
                hub.subscribe(ws, channel)
        _say("ready")
        assert sys.stdin.readline().strip() == "go"
        retries = 0
        for i in range(share):
            while True:
                try:
                    hub.publish(CHANNELS[i % 2], {"from": name, "i": i})
                    break
                except BrokerUnavailable:
                    retries += 1
                    gevent.sleep(0.02)
            gevent.sleep(0.003)
        _say(f"published {share}")
        total = int(sys.stdin.readline().split()[1])
        started = time.monotonic()
        settle(lambda: all(len(ws.sent) >= total for ws in socks), timeout=20)
        gevent.sleep(0.2)  # anything extra (a duplicate) would arrive now
        problems = []
        for ws in socks:
            texts = ws.texts
            seen = {(m["data"]["from"], m["data"]["i"]) for m in texts if "data" in m}
            if len(texts) != total or len(seen) != total:
                problems.append(f"{ws.name}: {len(texts)} messages, {len(seen)} distinct")
            for channel in CHANNELS:
                ids = ws.ids(channel)
                if ids != sorted(set(ids)):
                    problems.append(f"{ws.name}: {channel} out of order or doubled")
            if any("gap" in m for m in texts):
                problems.append(f"{ws.name}: gap notice")
        result = {
            "name": name,
            "retries": retries,
            "waited": round(time.monotonic() - started, 3),
            "problems": problems[:10],
            "stats": hub.stats(),
        }
        _say("result " + json.dumps(result))


def presence(url: str, name: str, members: int) -> None:
    with running_hub(broker=url, presence_ttl=1) as hub:
        for i in range(members):
            hub.subscribe(FakeSocket(), "room", {"nick": f"{name}-{i}"}, announce=True)
        _say("ready")
        sys.stdin.readline()  # killed before this returns


if __name__ == "__main__":
    url, name, mode, *args = sys.argv[1:]
    if mode == "fanout":
        fanout(url, name, int(args[0]), int(args[1]))
    else:
        presence(url, name, int(args[0]))
