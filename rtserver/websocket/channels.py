"""``ChannelSocket``: the server side of the browser client ``rtserver.js``.

Mount it like any socket handler and the page's script can join channels, publish to
them, see who is present and resume after a reconnect, with no socket code of yours::

    import rtserver
    from rtserver.websocket.channels import ChannelSocket, client_config

    class Chat(ChannelSocket):
        def can_join(self, channel):              # who may listen where
            return channel.startswith("room:") and "nick" in self.session

        def can_publish(self, channel, data):     # who may say what
            return self.can_join(channel) and isinstance(data, str) and len(data) <= 500

        def member_info(self, channel):           # how this socket shows in presence
            return {"nick": self.session["nick"]}

    class Root:
        ws = Chat

    config = {"/": {"tools.sessions.on": True}, **client_config()}   # serves /rtserver.js

and in the page (an ES module; see the top of ``rtserver.js`` for its API)::

    import { connect } from "/rtserver.js";
    const rt = connect("/ws");
    const room = rt.join("room:lobby", { history: 50 });
    room.on("message", (msg) => show(msg.data));
    room.publish("hello");

The wire protocol (JSON text messages; every request may carry a ``ref`` the reply
repeats, so the client can match them):

client → server

* ``{"op": "join", "channel": c, "since": id}``: subscribe; with ``since`` (the last
  id the client saw) the missed messages come first, in order, none doubled (or a
  ``gap`` notice when the hub no longer keeps them); at most
  :attr:`ChannelSocket.history_limit` of them, the newest, after a gap notice for
  the older ones. Without ``since``, ``"history": n`` asks for the last n messages
  (at most :attr:`ChannelSocket.history_limit`).
* ``{"op": "leave", "channel": c}``
* ``{"op": "publish", "channel": c, "data": ...}`` (the socket must have joined ``c``)
* ``{"op": "presence", "channel": c}``: who is in ``c`` now
* ``{"op": "ping"}``: an application-level keepalive (browsers cannot see WebSocket
  pings, so the client's watchdog needs an answer it can observe)

server → client

* the hub's own messages, unchanged (see :mod:`rtserver.websocket.hub`):
  ``{"channel", "id", "data"}``, ``{"channel", "id", "presence": {...}}`` and
  ``{"channel", "gap": {"from", "to"}}``; history sent on a join has the same shape
* ``{"op": "joined", "channel": c, "presence": {member_id: info}, "last": id}`` after
  the history of a join: live messages follow the message ``last`` (0: the channel
  keeps none), so a client that saw nothing newer resumes with ``since=last``
* ``{"op": "left", "channel": c}``, ``{"op": "ok", "channel": c, "id": id}`` (a publish),
  ``{"op": "presence", "channel": c, "members": {...}}``, ``{"op": "pong"}``
* ``{"op": "error", "error": code, "message": text, "channel": c}``; ``code`` is
  ``bad-request``, ``forbidden`` (the hub's policy or a hook refused), ``rate-limited``
  (the policy's join or publish rate; the reply has ``"retry_after": ms``), ``not-joined``, ``too-many-channels`` (this
  socket's :attr:`ChannelSocket.max_channels`, or the process's ``hub.max_channels``),
  ``unavailable`` (the broker is down: try again) or what a hook raised with
  :class:`ChannelError`. The message is meant for people and never holds exception
  details.

Security: the upgrade's same-origin check (on by default) is what makes
``self.session`` trustworthy here. Every join, leave, publish, presence and history
request passes the hub's channel policy (:mod:`rtserver.websocket.policy`: the
``hub.namespaces`` config, by default signed-in users may join and clients may not
publish), then the hooks :meth:`can_join` (joins, presence and history) and
:meth:`can_publish`, which add the application's own rules.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import BrokerUnavailable, HubError
from ..web import jsonlimits
from .handler import WebSocket
from .hub import TooManyChannels
from .policy import JOIN, ChannelForbidden, RateLimited

__all__ = ["CLIENT_PATH", "ChannelError", "ChannelSocket", "client_config", "client_path"]

log = logging.getLogger("rtserver.channels")

_HERE = os.path.dirname(os.path.abspath(__file__))

#: Where ``rtserver.js`` is shipped inside the package (``rtserver/static/``).
CLIENT_PATH = os.path.join(os.path.dirname(_HERE), "static", "rtserver.js")


def client_path() -> str:
    """The real path of the shipped ``rtserver.js``.

    In a source checkout ``rtserver/static/rtserver.js`` is a symlink to the single
    source, ``static/rtserver.js`` at the repository root; a wheel holds a copy.
    """
    return os.path.realpath(CLIENT_PATH)


def client_config(path: str = "/rtserver.js") -> dict[str, dict[str, Any]]:
    """A config section serving ``rtserver.js`` at ``path``: merge it into the app's.

    ::

        rtserver.quickstart(Root(), config={"/": {...}, **client_config()})
    """
    return {path: {"tools.staticfile.on": True, "tools.staticfile.filename": client_path()}}


#: The largest message id a client may name: ids are signed 64-bit numbers in Redis
#: (stream ids and counters) and far below this in memory.
_MAX_ID = 2**63 - 1


class ChannelError(Exception):
    """Raise from a hook to refuse a request with a message the user may see.

    ``ChannelError("Slow down: 3 messages in 10 s at most.", code="rate-limited")``
    reaches the client as ``{"op": "error", "error": "rate-limited", "message": ...}``.
    """

    def __init__(self, message: str, code: str = "forbidden") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ChannelSocket(WebSocket):
    """A socket speaking ``rtserver.js``'s channel protocol (see the module docstring).

    Hooks to override: :meth:`can_join`, :meth:`can_publish`, :meth:`prepare_publish`,
    :meth:`member_info`; attributes :attr:`history_limit`, :attr:`max_channels`,
    :attr:`max_request_size`, :attr:`announce_presence`. ``self.session`` is the
    session of the page that opened the socket (``tools.sessions`` on for its path).
    """

    #: Most messages a join sends before live ones: those asked for with ``history``,
    #: or replayed for ``since`` (the hub keeps ``hub.history_size`` per channel).
    history_limit = 50
    #: Channels one socket may have joined at once.
    max_channels = 20
    #: Longest request accepted, in bytes (the runtime's own limit is larger).
    max_request_size = 64 * 1024
    #: Nesting a request's JSON may have (``[]`` is 1): the protocol needs 2, a
    #: ``publish``'s data the rest; deeper would only cost the decoder.
    max_request_depth = 32
    #: Values (keys and containers included) in one request: bounds what one
    #: 64 KiB request can make the decoder allocate.
    max_request_items = 10_000
    #: Publish join and leave events of members to the channel (needs member_info).
    announce_presence = True

    # -- hooks ---------------------------------------------------------------------------

    def can_join(self, channel: str) -> bool:
        """Whether this socket may join ``channel`` (and read its presence); raise
        :class:`ChannelError` to say why not.

        Asked in addition to the hub's policy (``hub.namespaces``), which decides
        first; the default adds no restriction.
        """
        return True

    def can_publish(self, channel: str, data: Any) -> bool:
        """Whether this socket may publish ``data`` to ``channel`` (joined already).

        Raise :class:`ChannelError` for a message the user should see (too long).
        Asked before the hub's policy (which must allow client publishes on the
        channel, and counts its ``publish_rate``); the default adds no restriction.
        """
        return True

    def prepare_publish(self, channel: str, data: Any) -> Any:
        """What is published for an accepted ``data``: add the sender, a timestamp,
        normalise. The default publishes ``data`` unchanged."""
        return data

    def member_info(self, channel: str) -> Any:
        """This socket's presence info in ``channel`` (JSON-able, e.g. ``{"nick":
        "ann"}``), or None to join without appearing in presence (the default)."""
        return None

    # -- the protocol --------------------------------------------------------------------

    def received_message(self, message: Any) -> None:
        """Decode one request and answer it (errors go back as ``op: error``)."""
        if message.is_binary:
            self._error(None, None, "bad-request", "Binary messages are not part of this protocol.")
            return
        try:
            request = jsonlimits.loads(
                message.data,
                max_bytes=self.max_request_size,
                max_depth=self.max_request_depth,
                max_items=self.max_request_items,
            )
        except jsonlimits.JSONLimitError as exc:
            self._error(None, None, "bad-request", f"Not a valid request: {exc}.")
            return
        if not isinstance(request, dict):
            self._error(None, None, "bad-request", "Requests are JSON objects with an 'op'.")
            return
        ref = request.get("ref")
        if ref is not None and not isinstance(ref, (int, str)):
            ref = None
        op = request.get("op")
        if op == "ping":
            self._reply(ref, {"op": "pong"})
            return
        channel = request.get("channel")
        if not isinstance(channel, str) or not channel or len(channel) > 200 or channel.startswith("__"):
            self._error(ref, None, "bad-request", "A request needs a channel name (1-200 characters).")
            return
        try:
            if op == "join":
                self._join(ref, channel, request)
            elif op == "leave":
                self.leave(channel)
                self._reply(ref, {"op": "left", "channel": channel})
            elif op == "publish":
                self._publish(ref, channel, request.get("data"))
            elif op == "presence":
                if not self.can_join(channel):
                    raise ChannelError("You may not see who is in this channel.")
                members = self._hub().presence(channel, ws=self)
                self._reply(ref, {"op": "presence", "channel": channel, "members": members})
            else:
                self._error(ref, channel, "bad-request", f"Unknown op {str(op)[:40]!r}.")
        except ChannelError as exc:
            self._error(ref, channel, exc.code, exc.message)
        except RateLimited as exc:
            self._error(ref, channel, exc.reason, str(exc), retry_after=exc.retry_after)
        except ChannelForbidden as exc:
            self._error(ref, channel, exc.reason, str(exc))
        except BrokerUnavailable:
            self._error(ref, channel, "unavailable", "The message service is unavailable; try again shortly.")
        except HubError as exc:
            log.warning("channels: %s refused: %s", op, exc)
            self._error(ref, channel, "bad-request", "Request refused.")

    def _join(self, ref: Any, channel: str, request: dict[str, Any]) -> None:
        if channel in self.channels:
            self._reply(ref, {"op": "joined", "channel": channel, "presence": self._presence(channel)})
            return
        if len(self.channels) >= self.max_channels:
            raise ChannelError(f"At most {self.max_channels} channels at once.", code="too-many-channels")
        since = request.get("since")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int) or not 0 <= since <= _MAX_ID):
            raise ChannelError("'since' is a message id (a whole number from 0 to 2**63-1).", code="bad-request")
        wanted = request.get("history", 0)
        if since is None and (isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 0):
            raise ChannelError("'history' is a number of messages.", code="bad-request")
        if not self.can_join(channel):
            raise ChannelError("You may not join this channel.")
        # The policy decides (and counts the join's rate) before any history goes out.
        self._hub().authorize(self, channel, JOIN)
        self._check_capacity(channel)
        if since is None:
            # Send the newest ``wanted`` data messages, then resume right after the
            # newest kept id: nothing published meanwhile is lost or doubled.
            kept = self._hub().history(channel, ws=self)
            since = int(kept[-1]["id"]) if kept else 0
            count = min(wanted, self.history_limit)
            recent = [m for m in kept if "data" in m and not isinstance(m["data"], bytes)]
            for item in recent[-count:] if count else []:
                self.send_json(item)
        info = self.member_info(channel)
        try:
            self.join(
                channel,
                member=info,
                since=since,
                announce=self.announce_presence and info is not None,
                limit=self.history_limit,
            )
        except TooManyChannels:
            raise self._too_many() from None
        self._reply(
            ref,
            {"op": "joined", "channel": channel, "presence": self._presence(channel), "last": since},
        )

    def _check_capacity(self, channel: str) -> None:
        try:
            self._hub().check_capacity(channel)
        except TooManyChannels:
            raise self._too_many() from None

    @staticmethod
    def _too_many() -> ChannelError:
        return ChannelError("The server has too many channels open; try again later.", code="too-many-channels")

    def _publish(self, ref: Any, channel: str, data: Any) -> None:
        if channel not in self.channels:
            raise ChannelError("Join the channel before publishing to it.", code="not-joined")
        if not self.can_publish(channel, data):
            raise ChannelError("You may not publish to this channel.")
        msg_id = self.publish(channel, self.prepare_publish(channel, data))
        self._reply(ref, {"op": "ok", "channel": channel, "id": msg_id})

    def _presence(self, channel: str) -> dict[str, Any]:
        try:
            return self._hub().presence(channel, ws=self)
        except (BrokerUnavailable, ChannelForbidden):
            return {}  # a namespace without (readable) presence shows none

    def _reply(self, ref: Any, reply: dict[str, Any]) -> None:
        if ref is not None:
            reply["ref"] = ref
        self.send_json(reply)

    def _error(self, ref: Any, channel: str | None, code: str, text: str, **extra: Any) -> None:
        reply: dict[str, Any] = {"op": "error", "error": code, "message": text}
        if channel is not None:
            reply["channel"] = channel
        reply.update(extra)
        self._reply(ref, reply)
