"""The application of test_hub_real_sockets: ``python -m rtserver run tests.hub.real_socket_app:root``.

``/ws?channel=a&channel=b`` is a WebSocket that joins the channels named in its query
string when it opens; ``POST /publish`` (``channel``, ``data``: JSON text) publishes
through the process's hub and answers the message id. When the broker is down the
hub's :class:`~rtserver.errors.BrokerUnavailable` is not caught: the page fails with
a 5xx. ``/stats`` answers the hub's counters as JSON.
"""

from __future__ import annotations

import json
from typing import Any

import rtserver


class Listener(rtserver.WebSocket):
    """Joins every ``channel`` of its query string."""

    def opened(self) -> None:
        wanted = self.query_params.get("channel", [])
        for channel in [wanted] if isinstance(wanted, str) else wanted:
            self.join(channel)


class Root:
    """The socket and the publish page."""

    ws = Listener

    @rtserver.expose
    def index(self) -> str:
        return "ok"

    @rtserver.expose
    def publish(self, channel: str, data: str) -> str:
        if rtserver.request.method != "POST":
            raise rtserver.HTTPError(405)
        return str(rtserver.hub.publish(channel, json.loads(data)))

    @rtserver.expose
    def stats(self) -> str:
        counters: dict[str, Any] = rtserver.hub.stats()
        counters["channel_sizes"] = rtserver.hub.channel_sizes()
        return json.dumps(counters)


root = Root()

# The sockets have no session; these processes test delivery, not the channel policy.
rtserver.config.update({"hub.namespaces": {"*": {"join": "anyone", "publish": True}}})
