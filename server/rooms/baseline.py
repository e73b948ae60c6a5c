"""The single-hub baseline (``ROOMHUB_HUB_MODE=global``): the "before" design.

One task and one queue serve joins, leaves and broadcasts for every room, and each send to
each recipient is awaited in turn, so one slow client delays every room. It is kept only so
that bottleneck can be reproduced and measured against :mod:`server.hub`; it takes the same
items and keeps the same :class:`~server.room.Room` state.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..ops import metrics
from ..transport.connection import Connection
from ..wire.protocol import CloseReason, text_frame
from .room import BotEvent, HubItem, Join, Leave, Room, Say

log = logging.getLogger("roomhub.hub")


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

    def admit(self, room: str) -> bool:
        """Whether a client may join ``room``: it exists, or one more fits under ``max_rooms``."""
        return room in self._rooms or len(self._rooms) < self.max_rooms

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
                await conn.send(wire)
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
