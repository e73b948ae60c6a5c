"""Sharded hubs: one :class:`RoomHub` task per room, the design roomhub serves with.

Each hub task owns one :class:`~server.room.Room`. Each wake-up drains every waiting inbox
item, encodes the resulting events once and hands each member the whole batch as one frame,
never awaiting a client. Fan-outs of one room are at least ``fanout_interval`` seconds apart:
under load, events that arrive in between leave together; a quiet room fans out at once.
Joins and leaves alone may wait longer in a big room (a join storm would otherwise cost a
frame per join per member), and leave with the next message at the latest. A room empty for
``room_grace`` seconds is reaped.

Connections post :data:`~server.room.HubItem` values with ``post(room, item)``. A hub that
raises closes every member and every connection whose join was still queued with 1011;
the room starts afresh (a new epoch) on the next join. The single-hub baseline is
:mod:`server.globalhub`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from . import metrics
from .connection import Connection
from .protocol import CloseReason, batch, take_batch
from .room import BotEvent, HubItem, Join, Room, Say

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


def fan_out(room: Room, events: list[bytes], max_frame_size: int) -> None:
    """Hand ``events`` to every member of ``room`` without awaiting anyone: as one frame, or
    as several when one would exceed ``max_frame_size`` bytes (each encoded once for all)."""
    if not events:
        return
    started = time.perf_counter()
    frames = 0
    waiting = deque(events)
    while waiting:
        chunk = take_batch(waiting, max_frame_size)
        frame = batch(chunk)
        for conn in room.members:
            frames += conn.deliver(frame, chunk)
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

    __slots__ = ("_wake", "inbox", "max_frame_size", "pending", "room", "task", "urgent")

    def __init__(self, room: Room, max_frame_size: int) -> None:
        self.room = room
        self.max_frame_size = max_frame_size
        self.inbox: deque[HubItem] = deque()
        self.pending: list[bytes] = []
        self.urgent = False
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def post(self, item: HubItem) -> None:
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
                fan_out(room, self.pending, self.max_frame_size)
                self.pending, self.urgent = [], False
                last = now

    def _collect(self) -> None:
        """Apply every inbox item to the room, adding the events it causes to ``pending``.

        An item leaves the inbox only once applied: if applying it raises, it is still there
        for :meth:`ShardedHubs._run` to answer.
        """
        room, inbox = self.room, self.inbox
        while inbox:
            item = inbox[0]
            # isinstance, not match: class patterns cost about 0.5 µs more per item here.
            if isinstance(item, Say):
                if item.conn in room.members:
                    self.pending.append(room.say(item.conn, item.msg))
                    self.urgent = True
            elif isinstance(item, BotEvent):
                self.pending.append(item.event)
                self.urgent = True
            elif isinstance(item, Join):
                if self.urgent:
                    # Members get earlier messages live; the joiner gets them as history.
                    fan_out(room, self.pending, self.max_frame_size)
                    self.pending, self.urgent = [], False
                welcome, joined = room.join(item)
                item.conn.send_event(welcome)
                self.pending.append(joined)
            else:
                left = room.leave(item.conn)
                if left is not None:
                    self.pending.append(left)
            inbox.popleft()


class ShardedHubs:
    """Registry of per-room hubs: a hub starts on a room's first join and is reaped when idle.

    At most ``max_rooms`` hubs run at once: :meth:`admit` refuses a join that would start one
    more.
    """

    def __init__(
        self,
        history_size: int,
        room_grace: float,
        fanout_interval: float,
        max_rooms: int,
        max_frame_size: int,
    ) -> None:
        self.history_size = history_size
        self.room_grace = room_grace
        self.fanout_interval = fanout_interval
        self.max_rooms = max_rooms
        self.max_frame_size = max_frame_size
        self._hubs: dict[str, RoomHub] = {}

    def admit(self, room: str) -> bool:
        """Whether a client may join ``room``: its hub runs, or one more fits under
        ``max_rooms``. A new room's hub starts now, so concurrent admissions count it."""
        if room in self._hubs:
            return True
        if len(self._hubs) >= self.max_rooms:
            return False
        self._start(room)
        return True

    def post(self, room: str, item: HubItem) -> bool:
        """Queue ``item`` for ``room``'s hub; return whether a hub took it. Only a
        :class:`~server.room.Join` starts a hub that is not running."""
        hub = self._hubs.get(room)
        if hub is None:
            if not isinstance(item, Join):
                return False
            hub = self._start(room)
        hub.post(item)
        return True

    def _start(self, room: str) -> RoomHub:
        hub = self._hubs[room] = RoomHub(Room(room, self.history_size), self.max_frame_size)
        hub.task = asyncio.create_task(self._run(hub), name=f"hub:{room}")
        return hub

    async def _run(self, hub: RoomHub) -> None:
        try:
            await hub.run(self.room_grace, self.fanout_interval)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("hub_failed", extra={"fields": {"room": hub.room.name}})
            for conn in _waiting(hub):
                conn.close(CloseReason.ERROR)
            hub.inbox.clear()
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


def _waiting(hub: RoomHub) -> list[Connection]:
    """The room's members and every connection whose join is still in the inbox."""
    conns = dict.fromkeys(hub.room.members)
    conns.update((item.conn, None) for item in hub.inbox if isinstance(item, Join))
    return list(conns)
