"""The Redis broker's Lua scripts: their sources, and one typed builder of KEYS and ARGV each.

Each script lives in ``lua/<name>.lua`` (package data, read with :mod:`importlib.resources`);
the scripts that use the shared functions of ``lua/_common.lua`` get it prepended. A builder
is a frozen dataclass whose :meth:`keys` and :meth:`args` give the lists in the order its
script reads them (the same order is written at the top of each ``.lua`` file). SAY, on the
message path, has its arguments pre-encoded in RESP instead (:class:`SayRoom`,
:func:`say_head`, :func:`say_settings`): a call carries up to ``SAY_BATCH`` messages.

A room's keys share the prefix ``roomhub:{<room>}:`` (:func:`prefix`); the ``{room}`` hash tag
keeps them in one Redis Cluster slot. A script publishes with the command named ``PUBLISH``,
which :func:`source` defines: ``PUBLISH``, or ``SPUBLISH`` (sharded pub/sub) for a Redis
Cluster node. On a cluster node a script may touch the keys of one slot only, so the builders
leave the room list (``ROOMS_KEY``, always the last key) out when not ``ranked``, and the
scripts skip the ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import ClassVar

from . import MESSAGE_PREFIX

ROOMS_KEY = "roomhub:rooms"

COMMON = "_common"
SCRIPTS = {
    "say": False,
    "join": True,
    "leave": True,
    "sync": True,
    "refresh": True,
    "rooms": True,
    "delete": False,
    "presence": True,
}
"""Every script's name (its file is ``lua/<name>.lua``), and whether ``_common.lua`` is
prepended to it."""


@cache
def source(name: str, sharded: bool = False) -> str:
    """The Lua source of script ``name`` (a key of :data:`SCRIPTS`), with ``_common.lua``
    prepended where it uses it, after the line that names its publish command (``SPUBLISH``
    when ``sharded``); raises KeyError for an unknown name and FileNotFoundError when the
    package was installed without its ``lua/`` data."""
    folder = resources.files(__package__).joinpath("lua")
    text = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if SCRIPTS[name]:
        text = folder.joinpath(f"{COMMON}.lua").read_text(encoding="utf-8") + text
    return f"local PUBLISH = '{'SPUBLISH' if sharded else 'PUBLISH'}'\n" + text


def prefix(room: str) -> str:
    """The prefix of ``room``'s keys."""
    return f"roomhub:{{{room}}}:"


def channel(room: str) -> str:
    """The pub/sub channel of ``room``'s events."""
    return f"roomhub:{{{room}}}"


def room_keys(room: str, *names: str) -> list[str]:
    """``room``'s keys named ``names`` (``seq``, ``history``, ``epoch``, ``instances``...)."""
    return [prefix(room) + name for name in names]


def bulk(value: bytes) -> bytes:
    """``value`` as one RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


Arg = bytes | str | int | float


@dataclass(frozen=True, slots=True)
class Say:
    """SAY for one message (a server API publish).

    KEYS: the room's seq and history. ARGV: the room's channel, the event's tail (after
    ``{"type":"message","seq":N``), ``published`` (``time.time()`` as text), the history size,
    the retention (seconds), then ``fresh_epoch`` when given: the epoch the script makes if
    the room has none (a room nobody joined yet); without it such a message is lost. The
    script returns the seq of each message, 0 for a lost one.
    """

    NAME: ClassVar[str] = "say"
    room: str
    tail: bytes
    published: str
    history_size: int
    retention: int
    fresh_epoch: str | None = None

    def keys(self) -> list[str]:
        return room_keys(self.room, "seq", "history")

    def args(self) -> list[Arg]:
        fresh = [] if self.fresh_epoch is None else [self.fresh_epoch]
        return [
            channel(self.room),
            self.tail,
            self.published,
            self.history_size,
            self.retention,
            *fresh,
        ]


@dataclass(frozen=True, slots=True)
class SayRoom:
    """One room's part of every SAY call it is in, pre-encoded in RESP: ``keys``, the room's
    seq and history keys; ``channel``, the first of the message's three arguments."""

    keys: bytes
    channel: bytes

    @classmethod
    def of(cls, room: str) -> SayRoom:
        return cls(
            b"".join([bulk(key.encode()) for key in room_keys(room, "seq", "history")]),
            bulk(channel(room).encode()),
        )

    def message(self, tail: bytes, published: bytes) -> bytes:
        """One message's ARGV in RESP: the channel, the event tail, ``published``."""
        return b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            self.channel,
            len(tail),
            tail,
            len(published),
            published,
        )


def say_head(sha: str, count: int) -> bytes:
    """The RESP head of one SAY call carrying ``count`` messages: the array length, EVALSHA,
    the script's ``sha`` and the number of keys (two per message). The keys of each message
    follow, then their arguments, then :func:`say_settings`."""
    return b"*%d\r\n$7\r\nEVALSHA\r\n%s%s" % (
        3 + 5 * count + 2,
        bulk(sha.encode()),
        bulk(b"%d" % (2 * count)),
    )


def say_settings(history_size: int, retention: int) -> bytes:
    """The last two ARGV of every member's SAY call, in RESP: the history size and the
    retention (no fresh epoch: a room with members has one, so a message into a room without
    one is lost)."""
    return bulk(b"%d" % history_size) + bulk(b"%d" % retention)


@dataclass(frozen=True, slots=True)
class Join:
    """JOIN: give joiner ``token`` the first free of ``candidates`` (:func:`candidate_names`),
    count it present, publish its welcome on ``instance_channel`` (on a Redis Cluster node: a
    channel in the room's slot) and the join event on the room's channel; the script returns
    the members counted.

    KEYS: seq, history, instances, this instance's users and tokens, epoch, this instance's
    joined, the room list (when ``ranked``).
    ARGV: prefix, room, instance, token, ttl (seconds), the join event's tail (after
    ``members``), published, channel, since (-1: none), the epoch the joiner saw (``''``:
    none), a fresh epoch, the instance channel, the online limit, the retention (seconds),
    the history size, then the candidates' quadruples.
    """

    NAME: ClassVar[str] = "join"
    room: str
    instance: str
    token: int
    ttl: int
    tail: bytes
    published: str
    since: int | None
    seen_epoch: str | None
    fresh_epoch: str
    instance_channel: str
    online_limit: int
    retention: int
    history_size: int
    candidates: tuple[Arg, ...]
    ranked: bool = True

    def keys(self) -> list[str]:
        here = prefix(self.room)
        return [
            *room_keys(self.room, "seq", "history", "instances"),
            f"{here}users:{self.instance}",
            f"{here}tokens:{self.instance}",
            here + "epoch",
            f"{here}joined:{self.instance}",
            *ranking(self.ranked),
        ]

    def args(self) -> list[Arg]:
        return [
            prefix(self.room),
            self.room,
            self.instance,
            self.token,
            self.ttl,
            self.tail,
            self.published,
            channel(self.room),
            -1 if self.since is None else self.since,
            self.seen_epoch or "",
            self.fresh_epoch,
            self.instance_channel,
            self.online_limit,
            self.retention,
            self.history_size,
            *self.candidates,
        ]


def ranking(ranked: bool) -> list[str]:
    """The room list key, last of a presence script's KEYS, when ``ranked``."""
    return [ROOMS_KEY] if ranked else []


def presence_keys(room: str, instance: str, ranked: bool) -> list[str]:
    """KEYS of LEAVE and REFRESH: instances, ``instance``'s users, tokens and joined, the
    room list (when ``ranked``)."""
    here = prefix(room)
    return [
        f"{here}instances",
        f"{here}users:{instance}",
        f"{here}tokens:{instance}",
        f"{here}joined:{instance}",
        *ranking(ranked),
    ]


@dataclass(frozen=True, slots=True)
class Leave:
    """LEAVE: free joiner ``token``'s name and publish the leave event; the script returns
    the members counted, or -1 when the token was not present.

    KEYS: :func:`presence_keys`. ARGV: prefix, room, token, ttl (seconds), the leave event's
    tail (after ``members``), published, channel, the retention (seconds).
    """

    NAME: ClassVar[str] = "leave"
    room: str
    instance: str
    token: int
    ttl: int
    tail: bytes
    published: str
    retention: int
    ranked: bool = True

    def keys(self) -> list[str]:
        return presence_keys(self.room, self.instance, self.ranked)

    def args(self) -> list[Arg]:
        return [
            prefix(self.room),
            self.room,
            self.token,
            self.ttl,
            self.tail,
            self.published,
            channel(self.room),
            self.retention,
        ]


@dataclass(frozen=True, slots=True)
class Refresh:
    """REFRESH: keep ``instance``'s members of the room present (``whole`` replaces what Redis
    holds for the instance, else entries are only added), and let go of the members of any
    instance that stopped refreshing its own, publishing a leave event for each; a refresh
    that finds the instance's own entries gone (let go after a stall or an outage) publishes a
    join event for each of its members. The script returns the number let go.

    KEYS: :func:`presence_keys`. ARGV: prefix, room, instance, ttl (seconds), whole (1 or 0),
    the retention (seconds), published, the leave and the join event's tails (after
    ``members``), channel, then ``(token, name key, JSON name)`` of each member, flattened.
    """

    NAME: ClassVar[str] = "refresh"
    room: str
    instance: str
    ttl: int
    whole: bool
    retention: int
    members: tuple[tuple[int, str, bytes], ...]
    published: str
    leave_tail: bytes
    join_tail: bytes
    ranked: bool = True

    def keys(self) -> list[str]:
        return presence_keys(self.room, self.instance, self.ranked)

    def args(self) -> list[Arg]:
        head: list[Arg] = [
            prefix(self.room),
            self.room,
            self.instance,
            self.ttl,
            int(self.whole),
            self.retention,
            self.published,
            self.leave_tail,
            self.join_tail,
            channel(self.room),
        ]
        return head + [item for member in self.members for item in member]


@dataclass(frozen=True, slots=True)
class Sync:
    """SYNC: publish a catch-up welcome (token 0) with the whole history on
    ``instance_channel``; the script returns the members counted.

    KEYS: seq, history, instances, epoch, the room list (when ``ranked``). ARGV: prefix,
    room, the instance channel, a fresh epoch, the online limit, the retention (seconds), the
    history size.
    """

    NAME: ClassVar[str] = "sync"
    room: str
    instance_channel: str
    fresh_epoch: str
    online_limit: int
    retention: int
    history_size: int
    ranked: bool = True

    def keys(self) -> list[str]:
        return [
            *room_keys(self.room, "seq", "history", "instances", "epoch"),
            *ranking(self.ranked),
        ]

    def args(self) -> list[Arg]:
        return [
            prefix(self.room),
            self.room,
            self.instance_channel,
            self.fresh_epoch,
            self.online_limit,
            self.retention,
            self.history_size,
        ]


@dataclass(frozen=True, slots=True)
class Rooms:
    """ROOMS: recount the ``limit`` busiest rooms, ties by name; the script returns
    ``room, members`` pairs, flattened, of those with members: up to ``2 * limit - 1`` rooms,
    those ranked above the ``limit``-th room's count and the first ``limit`` by name at it.

    KEYS: the room list. ARGV: limit.
    """

    NAME: ClassVar[str] = "rooms"
    limit: int

    def keys(self) -> list[str]:
        return [ROOMS_KEY]

    def args(self) -> list[Arg]:
        return [self.limit]


@dataclass(frozen=True, slots=True)
class Delete:
    """DELETE: take message ``seq`` out of the room's history and publish ``event`` (the
    ``deleted`` event, as a bot payload); the script returns 1, or 0 when the history does not
    hold the message.

    KEYS: history. ARGV: the message's head up to its seq and comma
    (``{"type":"message","seq":N,``), channel, published, the event, the history size.
    """

    NAME: ClassVar[str] = "delete"
    room: str
    seq: int
    published: str
    event: bytes
    history_size: int

    def keys(self) -> list[str]:
        return room_keys(self.room, "history")

    def args(self) -> list[Arg]:
        head = MESSAGE_PREFIX + b"%d," % self.seq
        return [head, channel(self.room), self.published, self.event, self.history_size]


@dataclass(frozen=True, slots=True)
class Presence:
    """PRESENCE: the JSON names of the room's members on every instance.

    KEYS: instances. ARGV: prefix.
    """

    NAME: ClassVar[str] = "presence"
    room: str

    def keys(self) -> list[str]:
        return room_keys(self.room, "instances")

    def args(self) -> list[Arg]:
        return [prefix(self.room)]


Call = Say | Join | Leave | Refresh | Sync | Rooms | Delete | Presence
