"""The single-hub baseline (``ROOMHUB_HUB_MODE=global``): the "before" design.

One task and one queue serve joins, leaves and broadcasts for every room, and each send to
each recipient is awaited in turn, so one slow client delays every room. It is kept only so
that bottleneck can be reproduced and measured against :mod:`server.rooms.hub`: it takes the
same items behind the same :class:`~server.rooms.items.Hubs` interface, and keeps each room's
state in a :class:`Room` of its own (members, last ``seq``, history ring), where the sharded
hubs leave it to the broker. Nothing outside this module and the app factory names it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from itertools import islice

from ..ops import metrics
from ..transport.connection import Connection
from ..wire.protocol import (
    ChatMessage,
    CloseReason,
    limits_of,
    message_event,
    presence_event,
    text_frame,
    welcome_event,
)
from . import names as member_names
from .items import BotEvent, HubItem, Join, Leave, Say
from .names import free_name, name_key, new_epoch

log = logging.getLogger("roomhub.hub")


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
        conn.rename(free_name(conn.user, self.names))
        self.members[conn] = None
        self.names[name_key(conn.user)] = conn
        reset = item.epoch is not None and item.epoch != self.epoch
        since = None if reset else item.since
        history = [event for seq, event in self.history if since is None or seq > since]
        members = len(self.members)
        online = [member.user for member in islice(self.members, member_names.ONLINE_LIMIT)]
        limits = limits_of(conn.dispatcher.settings)
        welcome = welcome_event(
            self.name, conn.user, self.epoch, self.seq, members, online, reset, limits, history
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


async def send(conn: Connection, wire: bytes) -> None:
    """Write one frame to ``conn``, then wait until its socket takes writes again (one await
    per send). Raises ``ConnectionResetError`` once it is closing."""
    if conn.closing:
        raise ConnectionResetError("connection is closing")
    conn.outbox.write(wire)
    await conn.outbox.wait_writable()


class GlobalHub:
    """One task and one queue for every room; each send is awaited in turn.

    A room's state is dropped when its last member leaves. ``max_rooms`` bounds the rooms
    kept at once (checked, not reserved, by :meth:`admit`).
    """

    def __init__(self, history_size: int, max_rooms: int) -> None:
        self.history_size = history_size
        self.max_rooms = max_rooms
        self._queue: asyncio.Queue[tuple[str, HubItem]] = asyncio.Queue()
        self._rooms: dict[str, Room] = {}
        self._task: asyncio.Task[None] | None = None

    def __contains__(self, room: str) -> bool:
        """Whether ``room`` is open (a join there opens no new room)."""
        return room in self._rooms

    def admit(self, room: str) -> bool:
        """Whether a client may join ``room``: it exists, or one more fits under ``max_rooms``."""
        return room in self._rooms or len(self._rooms) < self.max_rooms

    def hold(self, room: str) -> bool:
        """Never: the server API does not run with the baseline (the config refuses it)."""
        return False

    def post(self, room: str, item: HubItem) -> bool:
        """Queue ``item`` for ``room``; return False for a bot event to a room that is gone."""
        if isinstance(item, BotEvent) and room not in self._rooms:
            return False
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="hub:global")
        self._queue.put_nowait((room, item))
        return True

    async def _run(self) -> None:
        while True:
            name, item = await self._queue.get()
            room = self._rooms.get(name)
            if room is None:
                if not isinstance(item, Join):
                    continue
                room = self._rooms[name] = Room(name, self.history_size)
            try:
                await self._serve(room, item)
            except Exception:
                log.exception("hub_failed", extra={"fields": {"room": name}})
                if isinstance(item, Join):
                    item.conn.close(CloseReason.ERROR)

    async def _serve(self, room: Room, item: HubItem) -> None:
        match item:
            case Join(conn):
                welcome, joined = room.join(item)
                await self._broadcast([conn], welcome)
                await self._broadcast(list(room.members), joined)
            case Say(conn, msg):
                if conn in room.members:
                    await self._broadcast(list(room.members), room.say(conn, msg))
            case BotEvent(event):
                await self._broadcast(list(room.members), event)
            case Leave(conn):
                left = room.leave(conn)
                if not room.members:
                    del self._rooms[room.name]
                elif left is not None:
                    await self._broadcast(list(room.members), left)

    async def _broadcast(self, members: list[Connection], event: bytes) -> None:
        started = time.perf_counter()
        sent = 0
        wire = text_frame(event)
        for conn in members:
            if conn.closing:
                continue
            try:
                await send(conn, wire)
            except ConnectionError:
                continue
            sent += 1
        metrics.BROADCAST_FANOUT.observe(time.perf_counter() - started)
        metrics.BROADCAST_RECIPIENTS.observe(len(members))
        metrics.EVENTS_DELIVERED.inc(sent)
        metrics.FRAMES_SENT.inc(sent)

    async def rooms(self, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` ``(room, members)`` with members, busiest first, then by name."""
        rooms = sorted((-len(r.members), name) for name, r in self._rooms.items() if r.members)
        return [(name, -members) for members, name in rooms[:limit]]

    def room_count(self) -> int:
        return len(self._rooms)

    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
