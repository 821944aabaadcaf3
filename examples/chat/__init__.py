"""The chat example: rooms, nicknames, live messages, history and presence.

Run it with ``python -m examples.chat`` (or ``bash scripts/run-chat.sh``) and open the
URL it prints; ``rtserver run examples.chat.app:application`` serves it too. The pages
and the socket are in :mod:`examples.chat.app`; ``docs/chat.md`` walks through how the
example uses each part of rtserver.

(Nothing is imported here: ``python -m examples.chat`` patches gevent before rtserver
is imported.)
"""
