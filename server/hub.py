"""Rooms and the hubs that own them.

A :class:`Room` holds one room's members, sequence number and history ring. Only its hub
touches it. Two hub designs share that state:

* :class:`ShardedHubs` (default): one :class:`RoomHub` task per room. Each wake-up drains
  every waiting inbox item, encodes the resulting events once and hands each member the
  whole batch as one frame, never awaiting a client. Fan-outs of one room are at least
  ``fanout_interval`` seconds apart: under load, events that arrive in between leave
  together; a quiet room fans out at once. Joins and leaves alone may wait longer in a big
  room (a join storm would otherwise cost a frame per join per member), and leave with the
  next message at the latest. A room empty for ``room_grace`` seconds is reaped.
* :class:`GlobalHub`: one task and one queue for all rooms that awaits each recipient's
  send in turn: the single-hub design kept to reproduce its bottleneck.

Connections post items with ``post(room, kind, conn, payload)``; kinds are ``JOIN``
(payload: ``since`` or None), ``LEAVE``, ``SAY`` (payload: :class:`ChatMessage`) and ``BOT``
(payload: an encoded bot event).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from aiohttp import WSMsgType

from . import metrics
from .connection import Connection
from .protocol import (
    ChatMessage,
    CloseReason,
    batch,
    message_event,
    presence_event,
    welcome_event,
)

JOIN, LEAVE, SAY, BOT = range(4)

log = logging.getLogger("roomhub.hub")

FRAME_BUDGET = 10_000
"""Frames per second one room may spend on presence (join/leave) events, summed over members."""
MAX_PRESENCE_INTERVAL = 0.25
"""Longest time (seconds) a join or leave waits for its fan-out, however big the room."""


def presence_interval(base: float, members: int) -> float:
    """Seconds between two presence-only fan-outs of a room with ``members``: ``base``, or
    longer when ``members / base`` frames per second would exceed ``FRAME_BUDGET`` (at most
    ``MAX_PRESENCE_INTERVAL``). ``base`` 0 turns coalescing off."""
    if base <= 0:
        return 0.0
    return min(max(base, members / FRAME_BUDGET), MAX_PRESENCE_INTERVAL)


class Room:
    """One room's state: members, the last ``seq`` and up to ``history_size`` messages."""

    __slots__ = ("history", "members", "name", "seq")

    def __init__(self, name: str, history_size: int) -> None:
        self.name = name
        self.members: dict[Connection, None] = {}
        self.history: deque[tuple[int, bytes]] = deque(maxlen=history_size)
        self.seq = 0

    def join(self, conn: Connection, since: int | None) -> tuple[bytes, bytes]:
        """Add ``conn``; return its ``welcome`` (history newer than ``since``) and the ``join``."""
        self.members[conn] = None
        history = [event for seq, event in self.history if since is None or seq > since]
        members = len(self.members)
        welcome = welcome_event(self.name, conn.user, self.seq, members, history)
        return welcome, presence_event("join", conn.user, members)

    def leave(self, conn: Connection) -> bytes | None:
        """Remove ``conn``; return the ``leave`` event, or None if it was not a member."""
        if self.members.pop(conn, False) is False:
            return None
        return presence_event("leave", conn.user, len(self.members))

    def say(self, conn: Connection, msg: ChatMessage) -> bytes:
        """Sequence a message, keep it in history and return its encoded event."""
        self.seq += 1
        event = message_event(self.seq, self.name, conn.user, msg)
        self.history.append((self.seq, event))
        return event


def fan_out(room: Room, events: list[bytes]) -> None:
    """Hand ``events`` as one frame to every member of ``room`` without awaiting anyone."""
    if not events:
        return
    started = time.perf_counter()
    frame = batch(events)
    frames = 0
    for conn in room.members:
        frames += conn.deliver(frame, events)
    metrics.BROADCAST_FANOUT.observe(time.perf_counter() - started)
    metrics.BROADCAST_RECIPIENTS.observe(len(room.members))
    metrics.EVENTS_DELIVERED.inc(len(events) * len(room.members))
    if frames:
        metrics.FRAMES_SENT.inc(frames)


class RoomHub:
    """The task that owns one :class:`Room` in sharded mode.

    ``pending`` holds encoded events not yet fanned out; ``urgent`` says whether one of them
    is a message or bot reply (due within the base interval) rather than presence only.
    """

    __slots__ = ("_wake", "inbox", "pending", "room", "task", "urgent")

    def __init__(self, room: Room) -> None:
        self.room = room
        self.inbox: deque[tuple[int, Connection | None, object]] = deque()
        self.pending: list[bytes] = []
        self.urgent = False
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def post(self, item: tuple[int, Connection | None, object]) -> None:
        self.inbox.append(item)
        self._wake.set()

    async def run(self, grace: float, interval: float) -> None:
        """Serve the inbox until the room has been empty and idle for ``grace`` seconds.

        Messages and bot replies fan out at least ``interval`` seconds after the previous
        fan-out; presence-only batches wait :func:`presence_interval` (longer in big rooms),
        or leave earlier with the next message.
        """
        loop = asyncio.get_running_loop()
        room = self.room
        last = -MAX_PRESENCE_INTERVAL
        while True:
            if not self.inbox:
                if self.pending:
                    due = last + presence_interval(interval, len(room.members))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(due):
                            await self._wake.wait()
                elif room.members:
                    await self._wake.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(grace):
                            await self._wake.wait()
                    if not self.inbox and not room.members:
                        return
            if self.inbox:
                wait = last + interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._wake.clear()
                self._collect()
            now = loop.time()
            if self.pending and (
                self.urgent or now >= last + presence_interval(interval, len(room.members))
            ):
                fan_out(room, self.pending)
                self.pending, self.urgent = [], False
                last = now

    def _collect(self) -> None:
        """Apply every inbox item to the room, adding the events it causes to ``pending``."""
        room, inbox = self.room, self.inbox
        while inbox:
            kind, conn, payload = inbox.popleft()
            if kind == SAY:
                if conn in room.members:
                    self.pending.append(room.say(conn, payload))  # type: ignore[arg-type]
                    self.urgent = True
            elif kind == BOT:
                self.pending.append(payload)  # type: ignore[arg-type]
                self.urgent = True
            elif kind == JOIN:
                if self.urgent:
                    # Members get earlier messages live; the joiner gets them as history.
                    fan_out(room, self.pending)
                    self.pending, self.urgent = [], False
                welcome, joined = room.join(conn, payload)  # type: ignore[arg-type]
                conn.send_event(welcome)  # type: ignore[union-attr]
                self.pending.append(joined)
            else:
                left = room.leave(conn)  # type: ignore[arg-type]
                if left is not None:
                    self.pending.append(left)


class ShardedHubs:
    """Registry of per-room hubs: a hub starts on a room's first join and is reaped when idle."""

    def __init__(self, history_size: int, room_grace: float, fanout_interval: float) -> None:
        self.history_size = history_size
        self.room_grace = room_grace
        self.fanout_interval = fanout_interval
        self._hubs: dict[str, RoomHub] = {}

    def post(self, room: str, kind: int, conn: Connection | None, payload: object = None) -> None:
        """Queue an item for ``room``'s hub; only ``JOIN`` starts a hub that is not running."""
        hub = self._hubs.get(room)
        if hub is None:
            if kind != JOIN:
                return
            hub = self._hubs[room] = RoomHub(Room(room, self.history_size))
            hub.task = asyncio.create_task(self._run(hub), name=f"hub:{room}")
        hub.post((kind, conn, payload))

    async def _run(self, hub: RoomHub) -> None:
        try:
            await hub.run(self.room_grace, self.fanout_interval)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("hub_failed", extra={"fields": {"room": hub.room.name}})
            for conn in hub.room.members:
                conn.close(CloseReason.ERROR)
        finally:
            if self._hubs.get(hub.room.name) is hub:
                del self._hubs[hub.room.name]

    def rooms(self) -> list[tuple[str, int]]:
        """``(room, members)`` for every running hub."""
        return [(name, len(hub.room.members)) for name, hub in self._hubs.items()]

    def room_count(self) -> int:
        return len(self._hubs)

    def queue_depth(self) -> int:
        return sum(len(hub.inbox) for hub in self._hubs.values())

    async def stop(self) -> None:
        tasks = [hub.task for hub in self._hubs.values() if hub.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class GlobalHub:
    """One task and one queue for every room; each send is awaited in turn."""

    def __init__(self, history_size: int) -> None:
        self.history_size = history_size
        self._queue: asyncio.Queue[tuple[str, int, Connection | None, object]] = asyncio.Queue()
        self._rooms: dict[str, Room] = {}
        self._task: asyncio.Task[None] | None = None

    def post(self, room: str, kind: int, conn: Connection | None, payload: object = None) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="hub:global")
        self._queue.put_nowait((room, kind, conn, payload))

    async def _run(self) -> None:
        while True:
            name, kind, conn, payload = await self._queue.get()
            room = self._rooms.get(name)
            if room is None:
                if kind != JOIN:
                    continue
                room = self._rooms[name] = Room(name, self.history_size)
            try:
                await self._serve(room, kind, conn, payload)
            except Exception:
                log.exception("hub_failed", extra={"fields": {"room": name}})

    async def _serve(self, room: Room, kind: int, conn: Connection | None, payload: object) -> None:
        if kind == JOIN:
            welcome, joined = room.join(conn, payload)  # type: ignore[arg-type]
            await self._broadcast([conn], welcome)  # type: ignore[list-item]
            await self._broadcast(list(room.members), joined)
        elif kind == SAY:
            if conn in room.members:
                await self._broadcast(list(room.members), room.say(conn, payload))  # type: ignore[arg-type]
        elif kind == BOT:
            await self._broadcast(list(room.members), payload)  # type: ignore[arg-type]
        else:
            left = room.leave(conn)  # type: ignore[arg-type]
            if not room.members:
                del self._rooms[room.name]
            elif left is not None:
                await self._broadcast(list(room.members), left)

    async def _broadcast(self, members: list[Connection], event: bytes) -> None:
        started = time.perf_counter()
        sent = 0
        for conn in members:
            if conn.closing:
                continue
            try:
                await conn.ws.send_frame(event, WSMsgType.TEXT)
            except ConnectionError:
                continue
            sent += 1
        metrics.BROADCAST_FANOUT.observe(time.perf_counter() - started)
        metrics.BROADCAST_RECIPIENTS.observe(len(members))
        metrics.EVENTS_DELIVERED.inc(sent)
        metrics.FRAMES_SENT.inc(sent)

    def rooms(self) -> list[tuple[str, int]]:
        return [(name, len(room.members)) for name, room in self._rooms.items()]

    def room_count(self) -> int:
        return len(self._rooms)

    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


Hubs = ShardedHubs | GlobalHub
