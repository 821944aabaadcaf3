"""The chat application: a login page, the chat page and the chat socket.

* ``GET /login``, ``POST /login``: choose a nickname (CSRF-protected form; the session
  id is regenerated at login), ``POST /logout``.
* ``GET /``: the chat page (HTML shell; ``static/chat.js`` does the rest).
* ``/ws``: :class:`ChatSocket`, a :class:`~rtserver.websocket.channels.ChannelSocket`
  speaking ``rtserver.js``'s protocol. Channels: ``rooms`` (room creations; its history
  is the room list) and ``room:NAME`` (messages, with presence).
* ``/rtserver.js`` (the browser client, shipped with rtserver), ``/static/...``.

Everything lives in the hub: the room list and the last messages are channel history,
who is in a room is channel presence. With the in-memory hub (the default) that is
this process's memory; with ``hub.broker = 'redis://...'`` it is Redis, shared by
every worker, and the sessions go to the same Redis (see :func:`session_config`).
"""

from __future__ import annotations

import html
import os
import re
import secrets
import string
import time
import unicodedata
from typing import Any

import rtserver
from rtserver.web.csrf import csrf_input, csrf_token
from rtserver.websocket.channels import ChannelError, ChannelSocket, client_config

__all__ = [
    "DEFAULT_ROOMS",
    "MAX_MESSAGE",
    "MAX_NICK",
    "ChatSocket",
    "Root",
    "app_config",
    "hub_config",
    "make_application",
    "session_config",
]

HERE = os.path.dirname(os.path.abspath(__file__))

#: Longest nickname, in characters.
MAX_NICK = 24
#: Longest message, in characters.
MAX_MESSAGE = 500
#: Rooms that exist without being created.
DEFAULT_ROOMS = ("lobby", "random")
#: Messages a user may send to rooms in RATE_WINDOW seconds, whatever the number of
#: the user's sockets (room creations have a budget of their own, as large).
RATE_LIMIT = 5
RATE_WINDOW = 10

_ROOM_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}\Z")


def _template(name: str) -> string.Template:
    with open(os.path.join(HERE, "templates", name), encoding="utf-8") as f:
        return string.Template(f.read())


_LOGIN = _template("login.html")
_CHAT = _template("chat.html")


def clean_nick(raw: Any) -> str:
    """The nickname to use for ``raw``, or :class:`ValueError` with a message for people."""
    if not isinstance(raw, str):
        raise ValueError("Choose a nickname.")
    nick = " ".join(unicodedata.normalize("NFC", raw).split())
    if not nick:
        raise ValueError("Choose a nickname.")
    if len(nick) > MAX_NICK:
        raise ValueError(f"Nicknames are at most {MAX_NICK} characters (yours has {len(nick)}).")
    if any(unicodedata.category(c)[0] == "C" for c in nick):
        raise ValueError("Nicknames cannot contain control characters.")
    return nick


class ChatSocket(ChannelSocket):
    """The chat's socket: who may join and say what, and how members show."""

    history_limit = 100  # the room list is the "rooms" channel's history

    @property
    def nick(self) -> str | None:
        """The nickname of the session that opened the socket (None: not logged in)."""
        sess = self.session
        nick = sess.get("nick") if sess is not None else None
        return nick if isinstance(nick, str) else None

    def opened(self) -> None:
        """Refuse sockets of visitors who did not log in (4401: rtserver.js stops retrying)."""
        if self.nick is None:
            self.close(4401, "log in first")

    def can_join(self, channel: str) -> bool:
        """The room list, and rooms with a valid name (the namespaces of
        :func:`hub_config` already require a signed-in user)."""
        if self.nick is None:
            return False
        return channel == "rooms" or (channel.startswith("room:") and bool(_ROOM_RE.match(channel[5:])))

    def member_info(self, channel: str) -> Any:
        """In a room, show the nickname; the room list has no presence."""
        return {"nick": self.nick} if channel.startswith("room:") else None

    def can_publish(self, channel: str, data: Any) -> bool:
        """Messages in rooms and room creations, within the limits (the rate limit
        is the hub policy's ``publish_rate``, per user, see :func:`hub_config`)."""
        if not self.can_join(channel):
            return False
        if channel == "rooms":
            name = data.get("create") if isinstance(data, dict) else None
            if not isinstance(name, str) or not _ROOM_RE.match(name):
                raise ChannelError(
                    "Room names are 1-32 lowercase letters, digits or dashes, starting with a letter or digit.",
                    code="bad-room",
                )
            if name in DEFAULT_ROOMS or any(m["data"].get("room") == name for m in _room_history(self)):
                raise ChannelError(f"The room {name!r} exists already.", code="exists")
        else:
            if not isinstance(data, str) or not data.strip():
                raise ChannelError("Type a message first.", code="empty")
            if len(data) > MAX_MESSAGE:
                raise ChannelError(
                    f"Messages are at most {MAX_MESSAGE} characters (yours has {len(data)}).", code="too-long"
                )
        return True

    def prepare_publish(self, channel: str, data: Any) -> Any:
        """What the others receive: the sender's nickname and the time, with the text."""
        if channel == "rooms":
            return {"room": data["create"], "by": self.nick}
        return {"nick": self.nick, "text": data, "ts": int(time.time() * 1000)}


def _room_history(ws: ChannelSocket) -> list[dict[str, Any]]:
    return [m for m in ws._hub().history("rooms") if isinstance(m.get("data"), dict)]


class Root:
    """The pages: the chat (logged in) and the login form."""

    ws = ChatSocket

    @rtserver.expose
    def index(self) -> str:
        """The chat page; visitors without a nickname go to the login page."""
        nick = rtserver.session.get("nick")
        if not nick:
            raise rtserver.HTTPRedirect("/login")
        return _CHAT.substitute(
            nick=html.escape(nick),
            csrf_input=csrf_input(),
            csrf_token=html.escape(csrf_token()),
            default_rooms=html.escape(",".join(DEFAULT_ROOMS)),
            max_message=MAX_MESSAGE,
        )

    @rtserver.expose
    def login(self, nickname: str | None = None) -> str:
        """``GET``: the form. ``POST``: check the nickname, start a fresh session, go chat."""
        if rtserver.request.method != "POST":
            return self._login_page("", rtserver.session.get("nick") or "")
        try:
            nick = clean_nick(nickname)
        except ValueError as exc:
            rtserver.response.status = 400
            return self._login_page(str(exc), nickname if isinstance(nickname, str) else "")
        # A new id at every change of privilege: an id planted before login is worthless.
        rtserver.session.regenerate()
        rtserver.session["nick"] = nick
        rtserver.session["uid"] = secrets.token_urlsafe(12)
        raise rtserver.HTTPRedirect("/", 303)

    @rtserver.expose
    @rtserver.tools.allow(methods=["POST"])
    def logout(self) -> None:
        """Forget the session and go back to the login page."""
        sessions: Any = rtserver.tools.sessions  # the SessionTool: expire() drops the cookie too
        sessions.expire()
        raise rtserver.HTTPRedirect("/login", 303)

    def _login_page(self, error: str, nick: str) -> str:
        return _LOGIN.substitute(
            csrf_input=csrf_input(),
            error=html.escape(error),
            error_hidden="" if error else "hidden",
            nick=html.escape(nick[: MAX_NICK * 4]),
            max_nick=MAX_NICK,
        )


#: What the page needs and nothing more: its own scripts, styles and socket.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def session_config(broker: str | None) -> dict[str, Any]:
    """Session settings for ``broker``: RAM sessions alone, Redis sessions beside a
    Redis hub (every worker must see every session)."""
    if broker and broker.startswith(("redis://", "rediss://", "unix://")):
        return {"tools.sessions.storage_class": "redis", "tools.sessions.url": broker}
    return {"tools.sessions.storage_class": "ram"}


def hub_config() -> dict[str, Any]:
    """The chat's global hub keys: who may do what on its channels.

    The user is the session's ``uid`` (a fresh one per login). Rooms and the room list
    are for signed-in users, who may publish to them at ``RATE_LIMIT`` messages per
    ``RATE_WINDOW`` seconds per user -- counted across that user's sockets, so more
    tabs or logins do not buy more messages. The room list has no presence. Every
    other channel is refused to clients: nobody may join it.
    """
    rate = f"{RATE_LIMIT}/{RATE_WINDOW}s"
    return {
        "hub.policy.user_key": "uid",
        "hub.namespaces": {
            "rooms": {"join": "signed-in", "publish": True, "presence": False, "publish_rate": rate},
            "room:*": {"join": "signed-in", "publish": True, "publish_rate": rate, "join_rate": "20/s"},
            "*": {"join": "nobody"},
        },
    }


def app_config(broker: str | None = None) -> dict[str, dict[str, Any]]:
    """The application config (``broker``: the hub's broker URL, None for memory)."""
    return {
        "/": {
            "tools.sessions.on": True,
            "tools.sessions.timeout": 12 * 60,
            "tools.csrf.on": True,
            "tools.secureheaders.on": True,
            "tools.secureheaders.csp": CSP,
            **session_config(broker),
        },
        "/static": {
            "tools.staticdir.on": True,
            "tools.staticdir.dir": os.path.join(HERE, "static"),
            "tools.sessions.on": False,
        },
        **client_config("/rtserver.js"),
    }


def make_application() -> rtserver.Application:
    """The chat as an :class:`rtserver.Application` following ``hub.broker`` at start.

    The broker is known only once the config is complete (``rtserver run ... --broker``
    sets it after importing the app), so the session store is chosen on engine start.
    """
    rtserver.config.update(hub_config())
    app = rtserver.Application(Root(), "", app_config(None))

    def follow_broker() -> None:
        app.merge({"/": session_config(str(rtserver.config.get("hub.broker", "memory")))})

    rtserver.engine.subscribe("start", follow_broker, priority=10)
    return app


def __getattr__(name: str) -> Any:
    # ``rtserver run examples.chat.app:application``: built on first use, so that
    # importing this module (tests do) subscribes nothing to the engine.
    if name == "application":
        app = globals().get("_application")
        if app is None:
            app = globals()["_application"] = make_application()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
