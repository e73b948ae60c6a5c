"""The in-process broker (``ROOMHUB_BROKER=memory``): one instance, no I/O.

Each subscribed room keeps its epoch, seq, history ring and member count here; every
operation hands its result to the room's sink at once. A room's state is forgotten when its
hub unsubscribes (the room was empty for the grace period): the next join starts a new epoch.
A backend's message to a room whose hub has not subscribed yet starts the room's state with no
sink, so that the first joiner finds it in the history; the server API starts that hub first
(:meth:`~server.rooms.hub.ShardedHubs.hold`), so the state goes when the hub is reaped.
Bans are kept here with their expiry (monotonic clock) and forgotten once expired.
"""

from __future__ import annotations

import math
import time
from collections import deque
from itertools import islice

from ...wire.protocol import (
    ChatMessage,
    deleted_event,
    message_event,
    now_ms,
    presence_event,
    server_message_event,
)
from .. import names as member_names
from ..names import free_name, name_key, new_epoch
from . import Control, ControlSink, Delivery, Event, Sink, Welcome


def _no_sink(delivery: Delivery) -> None:
    """The sink of a room that has no hub yet: nobody to hand anything to."""


class _RoomState:
    """``names``: name_key -> name of each member, in join order; ``tokens``: join token ->
    name_key."""

    __slots__ = ("epoch", "history", "names", "seq", "sink", "tokens")

    def __init__(self, sink: Sink, history_size: int) -> None:
        self.sink = sink
        self.epoch = new_epoch()
        self.seq = 0
        self.names: dict[str, str] = {}
        self.tokens: dict[int, str] = {}
        self.history: deque[tuple[int, bytes]] = deque(maxlen=history_size)


class MemoryBroker:
    """Sequences, stores and counts each room in this process (a
    :class:`~server.rooms.broker.Broker`)."""

    ready = True

    def __init__(self, history_size: int) -> None:
        self.history_size = history_size
        self._rooms: dict[str, _RoomState] = {}
        self._bans: dict[tuple[str, str], float] = {}  # (room, name key) -> expiry
        self._control: ControlSink | None = None

    async def start(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        self._rooms.clear()

    async def subscribe(self, room: str, sink: Sink) -> None:
        state = self._rooms.get(room)
        if state is None:
            self._rooms[room] = _RoomState(sink, self.history_size)
        else:
            state.sink = sink

    def unsubscribe(self, room: str, sink: Sink) -> None:
        state = self._rooms.get(room)
        if state is not None and state.sink == sink:
            del self._rooms[room]

    def join(self, room: str, user: str, since: int | None, epoch: str | None, token: int) -> None:
        state = self._rooms.get(room)
        if state is None:
            return
        name = free_name(user, state.names)
        state.names[name_key(name)] = name
        state.tokens[token] = name_key(name)
        members = len(state.names)
        reset = epoch is not None and epoch != state.epoch
        if reset:
            since = None
        history = [event for seq, event in state.history if since is None or seq > since]
        online = list(islice(state.names.values(), member_names.ONLINE_LIMIT))
        welcome = Welcome(token, name, state.epoch, state.seq, members, online, reset, history)
        state.sink(welcome)
        state.sink(Event(presence_event("join", name, members)))

    def leave(self, room: str, token: int) -> None:
        state = self._rooms.get(room)
        if state is None or token not in state.tokens:
            return
        name = state.names.pop(state.tokens.pop(token))
        state.sink(Event(presence_event("leave", name, len(state.names))))

    def say(self, room: str, user: str, msg: ChatMessage, sender: int) -> None:
        state = self._rooms.get(room)
        if state is None:
            return
        state.seq += 1
        event = message_event(state.seq, room, user, msg)
        state.history.append((state.seq, event))
        state.sink(Event(event, state.seq, urgent=True))

    def publish(self, room: str, event: bytes) -> None:
        state = self._rooms.get(room)
        if state is not None:
            state.sink(Event(event, urgent=True))

    async def rooms(self, limit: int) -> list[tuple[str, int]]:
        rooms = sorted((-len(s.names), name) for name, s in self._rooms.items() if s.names)
        return [(name, -members) for members, name in rooms[:limit]]

    def on_control(self, sink: ControlSink) -> None:
        self._control = sink

    async def publish_message(self, room: str, user: str, text: str, data: object | None) -> int:
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _RoomState(_no_sink, self.history_size)
        state.seq += 1
        event = server_message_event(state.seq, room, user, text, data, now_ms())
        state.history.append((state.seq, event))
        state.sink(Event(event, state.seq, urgent=True))
        return state.seq

    async def delete(self, room: str, seq: int) -> bool:
        state = self._rooms.get(room)
        if state is None:
            return False
        for kept in state.history:
            if kept[0] == seq:
                state.history.remove(kept)
                state.sink(Event(deleted_event(room, seq), urgent=True))
                return True
        return False

    async def history(self, room: str, since: int, limit: int) -> list[bytes]:
        state = self._rooms.get(room)
        if state is None:
            return []
        newer = [event for seq, event in state.history if seq > since]
        return newer[-limit:]

    async def presence(self, room: str) -> list[str]:
        state = self._rooms.get(room)
        return [] if state is None else list(state.names.values())

    async def control(self, order: Control) -> None:
        if self._control is not None:
            self._control(order)

    async def ban(self, room: str, user: str, seconds: float | None) -> None:
        until = math.inf if seconds is None else time.monotonic() + seconds
        self._bans[room, user] = until

    async def unban(self, room: str, user: str) -> bool:
        return self._bans.pop((room, user), None) is not None

    async def banned(self, room: str, user: str) -> bool:
        until = self._bans.get((room, user))
        if until is None:
            return False
        if until <= time.monotonic():
            del self._bans[room, user]
            return False
        return True
