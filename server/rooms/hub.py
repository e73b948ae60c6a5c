"""Sharded hubs: one :class:`RoomHub` task per room, the design roomhub serves with.

A room's epoch, order, history and member count belong to the instance's broker
(:mod:`server.rooms.broker`: in this process, or Redis shared by every instance). The hub asks it to
join, leave, say or publish, and fans out only what the broker hands back, in the broker's
order, so each member on any instance gets each event once. Each wake-up drains every waiting
inbox item and hands each member the whole batch of events as one frame, never awaiting a
client. Fan-outs of one room are at least ``fanout_interval`` seconds apart (a share of it in
a room of fewer than :data:`FULL_WAIT_MEMBERS`), longer in a big room
(:func:`message_interval`: a fan-out costs a write per member, whatever it carries):
under load, events that arrive in between leave together; a quiet room fans out at once.
Joins and leaves alone may wait longer in a big room (a join storm would otherwise cost a
frame per join per member), and leave with the next message at the latest. A room empty for
``room_grace`` seconds is reaped, and its broker subscription dropped (the in-process broker
then forgets its state); one that never had a message is reaped as soon as it is empty. A
room the server API publishes into is held by its hub the same way (:meth:`ShardedHubs.hold`):
it counts under ``max_rooms`` and is reaped ``room_grace`` seconds after the last publish if
nobody joins.

Connections post :data:`~server.rooms.items.HubItem` values with ``post(room, item)``. A hub that
raises closes every member and every connection whose join was still queued with 1011;
the room starts afresh (a new epoch) on the next join. The single-hub baseline is
:mod:`server.rooms.baseline`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque

from ..ops import metrics
from ..transport.connection import Connection
from ..wire.protocol import (
    CloseReason,
    batch,
    error_event,
    limits_of,
    take_batch,
    text_frame,
    welcome_event,
)
from .broker import (
    Broker,
    BrokerUnavailable,
    Delivery,
    Event,
    Refused,
    Welcome,
    encoded_history_seq,
)
from .items import BotEvent, HubItem, Join, Leave, Say

log = logging.getLogger("roomhub.hub")

MESSAGE_FRAME_BUDGET = 20_000
"""Frames per second one busy room may spend on fan-outs, summed over members: each fan-out
costs a socket write per member, whatever it carries."""
MAX_MESSAGE_INTERVAL = 0.05
"""Longest time (seconds) a message waits for its fan-out, however big the room."""
PRESENCE_FRAME_BUDGET = 1_000
"""Frames per second one room may spend on presence (join/leave) events, summed over members."""
MAX_PRESENCE_INTERVAL = 1.0
"""Longest time (seconds) a join or leave waits for its fan-out, however big the room."""


class Hold:
    """The inbox item of :meth:`RoomHub.hold`."""

    __slots__ = ()


HOLD = Hold()


FULL_WAIT_MEMBERS = 10
"""Members from which a room waits the whole base interval between fan-outs; a smaller room
waits a share of it per member: there a fan-out costs few writes, fewer than the timer and
second wake-up of a wait (docs/scaling.md, "The fan-out interval in small rooms")."""


def spacing(base: float, members: int, budget: int, longest: float) -> float:
    """Seconds between two fan-outs of a room with ``members``: ``base`` (a share of it below
    :data:`FULL_WAIT_MEMBERS`), or longer when that many fan-outs a second would exceed
    ``budget`` frames (at most ``longest``). ``base`` 0 turns coalescing off."""
    if base <= 0:
        return 0.0
    floor = base if members >= FULL_WAIT_MEMBERS else base * members / FULL_WAIT_MEMBERS
    return min(max(floor, members / budget), longest)


def message_interval(base: float, members: int) -> float:
    """Seconds between two fan-outs carrying messages or bot replies (see :func:`spacing`)."""
    return spacing(base, members, MESSAGE_FRAME_BUDGET, MAX_MESSAGE_INTERVAL)


def presence_interval(base: float, members: int) -> float:
    """Seconds between two presence-only fan-outs (see :func:`spacing`)."""
    return spacing(base, members, PRESENCE_FRAME_BUDGET, MAX_PRESENCE_INTERVAL)


def fan_out(members: dict[Connection, None], events: list[bytes], max_frame_size: int) -> None:
    """Hand ``events`` to every connection in ``members`` without awaiting anyone: as one
    frame, or as several when one would exceed ``max_frame_size`` bytes (each frame's wire
    bytes, header included, built once for all)."""
    if not events:
        return
    started = time.perf_counter()
    frames = 0
    # "[" + events joined by "," + "]": most fan-outs fit one frame, taken whole.
    if sum(map(len, events)) + len(events) + 1 <= max_frame_size:
        wire = text_frame(batch(events))
        for conn in members:
            frames += conn.deliver(wire, events)
    else:
        waiting = deque(events)
        while waiting:
            chunk = take_batch(waiting, max_frame_size)
            wire = text_frame(batch(chunk))
            for conn in members:
                frames += conn.deliver(wire, chunk)
    metrics.BROADCAST_FANOUT.observe(time.perf_counter() - started)
    metrics.BROADCAST_RECIPIENTS.observe(len(members))
    metrics.EVENTS_DELIVERED.inc(len(events) * len(members))
    if frames:
        metrics.FRAMES_SENT.inc(frames)


class RoomHub:
    """The task that serves one room in sharded mode, on top of the instance's broker.

    ``members`` are the connections that got their welcome; ``joining`` maps the token of a
    join the broker has not answered yet to its connection, ``tokens`` every local
    connection to its token, ``early`` the messages of joining connections, held until their
    welcome so that none is lost and each comes after it. ``epoch`` and ``seq`` are the
    room's epoch and the last message seq handed to members (older ones coming back after a
    reconnect are dropped).
    ``pending`` holds encoded events not yet fanned out; ``urgent`` says whether one of them
    is a message or bot reply (due within the base interval) rather than presence only;
    ``published`` holds the broker publish times of the pending ones that came over Redis.
    ``held``: the server API published here (:meth:`hold`), so the room keeps its grace
    period even before its hub has seen a message.
    """

    __slots__ = (
        "_waiter",
        "broker",
        "early",
        "epoch",
        "held",
        "inbox",
        "joining",
        "max_frame_size",
        "members",
        "name",
        "pending",
        "published",
        "seq",
        "task",
        "tokens",
        "urgent",
    )

    _next_token = itertools.count(1)

    def __init__(self, name: str, broker: Broker, max_frame_size: int) -> None:
        self.name = name
        self.broker = broker
        self.max_frame_size = max_frame_size
        self.members: dict[Connection, None] = {}
        self.joining: dict[int, Connection] = {}
        self.tokens: dict[Connection, int] = {}
        self.early: dict[Connection, list[Say]] = {}
        self.epoch = ""
        self.seq = 0
        self.inbox: deque[HubItem | Delivery | Hold] = deque()
        self.pending: list[bytes] = []
        self.published: list[float] = []
        self.urgent = False
        self._waiter: asyncio.Future[None] | None = None
        self.held = False
        self.task: asyncio.Task[None] | None = None

    def post(self, item: HubItem | Delivery | Hold) -> None:
        """Queue ``item`` (from a connection or the bot, a delivery from the broker, or the
        server API's hold).

        A member's message to a hub that sleeps with nothing queued goes to the broker at
        once, without waking the hub: the broker sequences it and hands it back as an event,
        which the hub fans out as any other (with the events of the same loop pass, at its
        fan-out interval)."""
        if type(item) is Say and self._waiter is not None and not self.inbox:
            conn = item.conn
            if conn in self.members:
                self.broker.say(self.name, conn.user, item.msg, self.tokens[conn])
                return
        self.inbox.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            _wake(waiter)

    def hold(self) -> None:
        """The server API publishes here: keep the room for the grace period from now on,
        as a room whose members left."""
        self.post(HOLD)

    async def run(self, grace: float, interval: float) -> None:
        """Subscribe, then serve the inbox until the room has had no connection for ``grace``
        seconds (at once if it never had a message). Raises :class:`BrokerUnavailable` when
        the subscription cannot be made.

        Messages and bot replies fan out :func:`message_interval` (at least ``interval``)
        seconds after the previous fan-out; presence-only batches wait
        :func:`presence_interval`, or leave earlier with the next message.
        """
        await self.broker.subscribe(self.name, self.post)
        try:
            await self._serve(grace, interval)
        finally:
            self.broker.unsubscribe(self.name, self.post)

    async def _serve(self, grace: float, interval: float) -> None:
        loop = asyncio.get_running_loop()
        last = -MAX_PRESENCE_INTERVAL
        while True:
            if not self.inbox:
                if self.pending:
                    await self._sleep(loop, last + presence_interval(interval, len(self.members)))
                elif self.tokens:
                    await self._sleep(loop, None)
                else:
                    # A room that never had a message keeps nothing worth a grace period,
                    # and must not hold a slot under ROOMHUB_MAX_ROOMS for one.
                    await self._sleep(loop, loop.time() + (grace if self.seq or self.held else 0))
                    if not self.inbox and not self.tokens:
                        return
            if self.inbox:
                wait = last + message_interval(interval, len(self.members)) - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._collect()
            now = loop.time()
            if self.pending and (
                self.urgent or now >= last + presence_interval(interval, len(self.members))
            ):
                self._flush()
                last = now

    async def _sleep(self, loop: asyncio.AbstractEventLoop, until: float | None) -> None:
        """Wait until something is posted or the loop's clock reaches ``until`` (None: no
        limit). A post wakes the hub through a future made only while it sleeps, with no
        timeout context: the cheapest wake-up asyncio has."""
        waiter = self._waiter = loop.create_future()
        timer = None if until is None else loop.call_at(until, _wake, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _flush(self) -> None:
        fan_out(self.members, self.pending, self.max_frame_size)
        if self.published:
            now = time.time()
            for published in self.published:
                metrics.BROKER_LAG.observe(max(now - published, 0.0))
            self.published = []
        self.pending, self.urgent = [], False

    def _collect(self) -> None:
        """Apply every inbox item, adding the events it causes to ``pending``.

        An item leaves the inbox only once applied: if applying it raises, it is still there
        for :meth:`ShardedHubs._run` to answer.
        """
        inbox, broker, name = self.inbox, self.broker, self.name
        while inbox:
            item = inbox[0]
            # isinstance, not match: class patterns cost about 0.5 µs more per item here.
            if isinstance(item, Event):
                self._on_event(item)
            elif isinstance(item, Say):
                if item.conn in self.members:
                    broker.say(name, item.conn.user, item.msg, self.tokens[item.conn])
                elif item.conn in self.tokens:
                    self.early.setdefault(item.conn, []).append(item)
            elif isinstance(item, BotEvent):
                broker.publish(name, item.event)
            elif isinstance(item, Join):
                token = next(self._next_token)
                self.joining[token] = item.conn
                self.tokens[item.conn] = token
                broker.join(name, item.conn.user, item.since, item.epoch, token)
            elif isinstance(item, Leave):
                left = self.tokens.pop(item.conn, None)
                self.early.pop(item.conn, None)
                if left is not None:
                    self.joining.pop(left, None)
                    self.members.pop(item.conn, None)
                    broker.leave(name, left)
            elif isinstance(item, Welcome):
                self._on_welcome(item)
            elif isinstance(item, Hold):
                self.held = True
            else:
                self._on_refused(item)
            inbox.popleft()

    def _on_event(self, event: Event) -> None:
        if event.seq:
            if event.seq <= self.seq:
                return  # already handed out (a catch-up after a reconnect overlaps)
            self.seq = event.seq
        self.pending.append(event.data)
        if event.urgent:
            self.urgent = True
            if event.published is not None:
                self.published.append(event.published)

    def _on_welcome(self, welcome: Welcome) -> None:
        if welcome.token == 0:
            self._catch_up(welcome)
            return
        conn = self.joining.pop(welcome.token, None)
        if conn is None or conn.closing:
            return
        if self.urgent:
            # Members get earlier messages live; the joiner gets them as history.
            self._flush()
        if welcome.epoch != self.epoch:
            self._reset(welcome)
        self.seq = max(self.seq, welcome.seq)
        conn.rename(welcome.user)
        event = welcome_event(
            self.name,
            conn.user,
            welcome.epoch,
            welcome.seq,
            welcome.members,
            welcome.online,
            welcome.reset,
            limits_of(conn.dispatcher.settings),
            welcome.history,
        )
        conn.send_event(event)
        self.members[conn] = None
        for say in self.early.pop(conn, ()):
            self.broker.say(self.name, conn.user, say.msg, welcome.token)

    def _catch_up(self, welcome: Welcome) -> None:
        """After a broker reconnect: hand out the history members missed meanwhile. If the
        broker lost the room (a new epoch), close the members so they resume in it."""
        if self.epoch and welcome.epoch != self.epoch:
            self._reset(welcome)
            return
        for data in welcome.history:
            self._on_event(Event(data, encoded_history_seq(data), urgent=True))

    def _reset(self, welcome: Welcome) -> None:
        """Take the room's epoch from ``welcome``; if the room had another, the broker lost
        it (its keys too: a join or a catch-up made a new one), so close the members."""
        if self.epoch:
            log.warning(
                "room_reset",
                extra={"fields": {"room": self.name, "epoch": self.epoch, "now": welcome.epoch}},
            )
            for conn in self.members:
                conn.close(CloseReason.ROOM_RESET)
        self.epoch, self.seq = welcome.epoch, welcome.seq

    def _on_refused(self, refused: Refused) -> None:
        if refused.token is not None:
            conn = self.joining.pop(refused.token, None)
            if conn is not None:
                conn.close(CloseReason.BROKER_UNAVAILABLE)
            return
        for conn, token in self.tokens.items():
            if token == refused.sender:
                detail = "not delivered: the broker is unavailable"
                conn.send_event(error_event("unavailable", detail, refused.reply_to))
                return

    def waiting(self) -> list[Connection]:
        """Every local connection: members, joins the broker has not answered, joins queued."""
        conns = dict.fromkeys(self.tokens)
        conns.update((item.conn, None) for item in self.inbox if isinstance(item, Join))
        return list(conns)

    def release(self) -> None:
        """Tell the broker every local connection is gone (the hub stops)."""
        for token in self.tokens.values():
            self.broker.leave(self.name, token)
        self.tokens.clear()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ShardedHubs:
    """Registry of per-room hubs over one broker: a hub starts on a room's first join and is
    reaped when idle.

    At most ``max_rooms`` hubs run at once: :meth:`admit` refuses a join that would start one
    more.
    """

    def __init__(
        self,
        broker: Broker,
        room_grace: float,
        fanout_interval: float,
        max_rooms: int,
        max_frame_size: int,
    ) -> None:
        self.broker = broker
        self.room_grace = room_grace
        self.fanout_interval = fanout_interval
        self.max_rooms = max_rooms
        self.max_frame_size = max_frame_size
        self._hubs: dict[str, RoomHub] = {}

    def __contains__(self, room: str) -> bool:
        """Whether ``room``'s hub runs (a join there opens no new room)."""
        return room in self._hubs

    def admit(self, room: str) -> bool:
        """Whether a client may join ``room``: its hub runs, or one more fits under
        ``max_rooms``. A new room's hub starts now, so concurrent admissions count it."""
        if room in self._hubs:
            return True
        if len(self._hubs) >= self.max_rooms:
            return False
        self._start(room)
        return True

    def hold(self, room: str) -> bool:
        """The server API is about to publish into ``room``: start its hub if it is not
        running and one more fits under ``max_rooms`` (else False), and keep the room for
        ``room_grace`` seconds from now if nobody joins, so its history lasts as long as that
        of a room whose members left, and no longer."""
        hub = self._hubs.get(room)
        if hub is None:
            if len(self._hubs) >= self.max_rooms:
                return False
            hub = self._start(room)
        hub.hold()
        return True

    def post(self, room: str, item: HubItem) -> bool:
        """Queue ``item`` for ``room``'s hub; return whether a hub took it. Only a
        :class:`~server.rooms.items.Join` starts a hub that is not running."""
        hub = self._hubs.get(room)
        if hub is None:
            if not isinstance(item, Join):
                return False
            hub = self._start(room)
        hub.post(item)
        return True

    def _start(self, room: str) -> RoomHub:
        hub = self._hubs[room] = RoomHub(room, self.broker, self.max_frame_size)
        hub.task = asyncio.create_task(self._run(hub), name=f"hub:{room}")
        return hub

    async def _run(self, hub: RoomHub) -> None:
        try:
            await hub.run(self.room_grace, self.fanout_interval)
        except asyncio.CancelledError:
            raise
        except BrokerUnavailable:
            for conn in hub.waiting():
                conn.close(CloseReason.BROKER_UNAVAILABLE)
            hub.inbox.clear()
        except Exception:
            log.exception("hub_failed", extra={"fields": {"room": hub.name}})
            for conn in hub.waiting():
                conn.close(CloseReason.ERROR)
            hub.inbox.clear()
        finally:
            hub.release()
            if self._hubs.get(hub.name) is hub:
                del self._hubs[hub.name]

    async def rooms(self, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` ``(room, members)`` over every instance, busiest first.

        Raises :class:`BrokerUnavailable` when the broker cannot answer."""
        return await self.broker.rooms(limit)

    def room_count(self) -> int:
        return len(self._hubs)

    def queue_depth(self) -> int:
        return sum(len(hub.inbox) for hub in self._hubs.values())

    async def stop(self) -> None:
        tasks = [hub.task for hub in self._hubs.values() if hub.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
