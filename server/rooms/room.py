"""One room's state and the items a hub applies to it.

A :class:`Room` holds a room's epoch, members, last ``seq`` and history ring. Whoever owns
the room (its hub task) is the only one that touches it. The epoch is a random id made with
the state: a room that is reaped and started again, or whose state was lost elsewhere, has a
new epoch, so a client resuming with ``since`` from another epoch gets the full history and
``reset`` instead of silently missing messages. A room state kept outside the process can
pass its own epoch in.

Hub items are one small dataclass per kind; :data:`HubItem` is their union.
"""

from __future__ import annotations

import secrets
import unicodedata
from collections import deque
from collections.abc import Container
from dataclasses import dataclass
from itertools import islice

from ..transport.connection import Connection
from ..wire.protocol import MAX_USER, ChatMessage, message_event, presence_event, welcome_event

SUFFIX_LIMIT = 100
"""Highest numbered suffix tried for a taken name before a random one (see free_name)."""

ONLINE_LIMIT = 100
"""Most member names a ``welcome`` lists (its ``members`` count covers everyone)."""


def new_epoch() -> str:
    """A fresh room epoch: 11 URL-safe characters (64 random bits)."""
    return secrets.token_urlsafe(8)


@dataclass(slots=True)
class Join:
    """``conn`` joins; ``since``/``epoch``: the last ``seq`` and epoch it saw, if any."""

    conn: Connection
    since: int | None = None
    epoch: str | None = None


@dataclass(slots=True)
class Leave:
    """``conn`` left (its connection ended for any reason)."""

    conn: Connection


@dataclass(slots=True)
class Say:
    """A validated chat message from member ``conn``."""

    conn: Connection
    msg: ChatMessage


@dataclass(slots=True)
class BotEvent:
    """An encoded ``bot`` event to broadcast to the room."""

    event: bytes


HubItem = Join | Leave | Say | BotEvent


def name_key(name: str) -> str:
    """What two names must differ in to be told apart: NFKC-normalized, case-folded."""
    return unicodedata.normalize("NFKC", name).casefold()


def suffixed(wanted: str, n: int) -> str:
    """``wanted-n`` for 2 <= n <= ``SUFFIX_LIMIT``, past it ``wanted-`` and 6 random hex
    digits; ``wanted`` cut so the whole fits ``MAX_USER`` characters."""
    suffix = f"-{n}" if n <= SUFFIX_LIMIT else f"-{secrets.token_hex(3)}"
    return wanted[: MAX_USER - len(suffix)] + suffix


def free_name(wanted: str, taken: Container[str]) -> str:
    """``wanted``, or when ``taken`` holds its :func:`name_key` (a member already has it,
    ignoring case and Unicode compatibility forms) the first free of ``wanted-2`` ...
    ``wanted-{SUFFIX_LIMIT}``, then a random one (see :func:`suffixed`). The cap keeps a join
    cheap however many members asked for one name."""
    name, n = wanted, 1
    while name_key(name) in taken:
        n += 1
        name = suffixed(wanted, n)
    return name


class Room:
    """One room's state: epoch, members (each under a name no other member has, see
    :meth:`join`), the last ``seq`` and up to ``history_size`` messages."""

    __slots__ = ("epoch", "history", "members", "name", "names", "seq")

    def __init__(self, name: str, history_size: int, epoch: str | None = None) -> None:
        self.name = name
        self.epoch = epoch or new_epoch()
        self.members: dict[Connection, None] = {}
        self.names: dict[str, Connection] = {}  # name_key(member's name) -> member
        self.history: deque[tuple[int, bytes]] = deque(maxlen=history_size)
        self.seq = 0

    def join(self, item: Join) -> tuple[bytes, bytes]:
        """Add ``item.conn`` under a free name (``conn.user`` becomes it, see
        :func:`free_name`); return its ``welcome`` and the ``join`` event for everyone.

        The welcome lists the first ``ONLINE_LIMIT`` member names in join order, and holds the
        history newer than ``item.since``, or all of it with ``reset: true`` when
        ``item.epoch`` names another epoch than this room's.
        """
        conn = item.conn
        conn.user = free_name(conn.user, self.names)
        self.members[conn] = None
        self.names[name_key(conn.user)] = conn
        reset = item.epoch is not None and item.epoch != self.epoch
        since = None if reset else item.since
        history = [event for seq, event in self.history if since is None or seq > since]
        members = len(self.members)
        online = [member.user for member in islice(self.members, ONLINE_LIMIT)]
        welcome = welcome_event(
            self.name, conn.user, self.epoch, self.seq, members, online, reset, history
        )
        return welcome, presence_event("join", conn.user, members)

    def leave(self, conn: Connection) -> bytes | None:
        """Remove ``conn``; return the ``leave`` event, or None if it was not a member."""
        if self.members.pop(conn, False) is False:
            return None
        del self.names[name_key(conn.user)]
        return presence_event("leave", conn.user, len(self.members))

    def say(self, conn: Connection, msg: ChatMessage) -> bytes:
        """Sequence a message, keep it in history and return its encoded event."""
        self.seq += 1
        event = message_event(self.seq, self.name, conn.user, msg)
        self.history.append((self.seq, event))
        return event
