"""Brokers: where a room's order, history and presence live, and how its events travel.

A sharded room hub never sequences or stores anything itself. It asks its instance's broker
to ``join``, ``leave``, ``say`` or ``publish``, and fans out only what the broker hands back
to the room's sink, in the broker's order (so every member, on any instance, gets each event
once, in one order):

* :class:`~server.rooms.broker.memory.MemoryBroker` (``ROOMHUB_BROKER=memory``, the default): one
  process; the answer is handed back at once, no I/O.
* :class:`~server.rooms.broker.redis.RedisBroker` (``redis://`` or ``rediss://`` URL): the seq,
  history and presence live in Redis; a server-side script sequences, stores and publishes
  each message in one atomic step, and the answer comes back over Redis pub/sub.
* :class:`~server.rooms.broker.sharded.ShardedBroker` (several such URLs, separated by
  commas): rooms spread over several Redis, each room on one, chosen by a consistent hash.

What a broker hands to a room's sink is a :class:`Delivery`: an :class:`Event` for every
member, a :class:`Welcome` for one joining connection, or a :class:`Refused` message.

The server API (docs/api.md) goes through the broker too, so that its effects reach every
instance: a backend's message is sequenced and kept like a member's
(:meth:`Broker.publish_message`), a deletion leaves the history and reaches every member as a
``deleted`` event, bans are kept where every instance reads them, and a :class:`Control`
order (close a user's connections) is handed to the control sink of every instance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ...wire.protocol import ChatMessage


@dataclass(frozen=True, slots=True)
class Event:
    """An encoded event for every member of the room.

    ``seq``: the message's sequence number, 0 for events outside the sequence (presence, bot).
    ``urgent``: a message or bot reply (fans out within the base interval), not presence.
    ``published``: wall-clock time (``time.time()`` seconds) the publisher handed it to the
    broker, or None when it never left the process.
    """

    data: bytes
    seq: int = 0
    urgent: bool = False
    published: float | None = None


@dataclass(frozen=True, slots=True)
class Welcome:
    """The answer to ``join(token=...)``: the name the joiner got (``user``: the one it asked
    for, or the first free ``-N`` variant), the room's ``epoch`` and latest ``seq``,
    ``members`` counted over every instance with the first ``online`` names, and the encoded
    history newer than the joiner's ``since``, oldest first; all of it with ``reset`` when the
    joiner named another epoch.

    Handed to the sink after every event with a seq up to ``seq`` and before any newer one,
    so the joiner gets each message once: in ``history`` or live.
    """

    token: int
    user: str
    epoch: str
    seq: int
    members: int
    online: list[str]
    reset: bool
    history: list[bytes]


@dataclass(frozen=True, slots=True)
class Refused:
    """The broker could not carry an operation (Redis unavailable).

    ``token``: the join that failed, or None for a message (then ``reply_to`` is the client id
    of the message that was not delivered and ``sender`` the connection token that sent it).
    """

    token: int | None = None
    sender: int | None = None
    reply_to: str | None = None


Delivery = Event | Welcome | Refused
Sink = Callable[[Delivery], None]


@dataclass(frozen=True, slots=True)
class Control:
    """An order for every instance: close the connections of the member whose name key
    (:func:`~server.rooms.names.name_key`) is ``user``, in ``room`` only or, when ``room``
    is None, in every room; ``action`` is the label of the
    :class:`~server.wire.protocol.CloseReason` to close them with."""

    action: str
    user: str
    room: str | None = None


ControlSink = Callable[[Control], None]


class BrokerUnavailable(ConnectionError):
    """The broker cannot be reached (Redis down or not yet connected)."""


class Broker(Protocol):
    """What a room hub needs from its broker; every method returns without waiting on I/O
    except :meth:`subscribe` and :meth:`rooms`."""

    @property
    def ready(self) -> bool:
        """Whether operations can be carried now (``/readyz``)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, room: str, sink: Sink) -> None:
        """Hand ``room``'s deliveries to ``sink`` from now on (until :meth:`unsubscribe`).

        Raises :class:`BrokerUnavailable` when the subscription cannot be made.
        """
        ...

    def unsubscribe(self, room: str, sink: Sink) -> None:
        """Stop handing ``room``'s deliveries to ``sink`` (no-op if another sink took over)."""
        ...

    def join(self, room: str, user: str, since: int | None, epoch: str | None, token: int) -> None:
        """Give the joiner ``token`` a name no member of the room has on any instance (``user``
        or its first free ``-N`` variant), count it present, publish the ``join`` event and
        hand a :class:`Welcome` (or :class:`Refused`) to this instance's sink.
        ``since``/``epoch``: the last seq and the epoch the joiner saw, if any."""
        ...

    def leave(self, room: str, token: int) -> None:
        """The joiner ``token`` is gone: free its name and publish the ``leave`` event."""
        ...

    def say(self, room: str, user: str, msg: ChatMessage, sender: int) -> None:
        """Sequence ``msg``, keep it in the room's history and publish it; a failure comes
        back as :class:`Refused` with ``sender`` and the message id."""
        ...

    def publish(self, room: str, event: bytes) -> None:
        """Publish an event outside the sequence and history (a bot reply)."""
        ...

    async def rooms(self, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` ``(room, members)`` with members, busiest first, over every instance."""
        ...

    # The server API's operations: each waits for the broker's answer and raises
    # BrokerUnavailable when the broker cannot carry it.

    def on_control(self, sink: ControlSink) -> None:
        """Hand every :class:`Control` order, from any instance, to ``sink``."""
        ...

    async def publish_message(self, room: str, user: str, text: str, data: object | None) -> int:
        """Sequence a backend's message (``server`` true) in ``room``, keep it in the history,
        publish it to the members on every instance; return its ``seq``. Raises
        :class:`BrokerUnavailable` when the broker cannot (or found the room's keys lost
        while it has members here: the room then starts a new epoch)."""
        ...

    async def delete(self, room: str, seq: int) -> bool:
        """Take message ``seq`` out of ``room``'s history and publish a ``deleted`` event;
        False when the history does not hold it."""
        ...

    async def history(self, room: str, since: int, limit: int) -> list[bytes]:
        """The encoded messages of ``room`` with a seq above ``since``: the newest ``limit``
        of them, oldest first."""
        ...

    async def presence(self, room: str) -> list[str]:
        """The names of ``room``'s members over every instance."""
        ...

    async def control(self, order: Control) -> None:
        """Hand ``order`` to the control sink of every instance (this one included)."""
        ...

    async def ban(self, room: str, user: str, seconds: float | None) -> None:
        """Refuse the name key ``user`` in ``room`` for ``seconds`` (None: until unbanned)."""
        ...

    async def unban(self, room: str, user: str) -> bool:
        """Lift the ban of name key ``user`` in ``room``; False when there was none."""
        ...

    async def banned(self, room: str, user: str) -> bool:
        """Whether name key ``user`` is banned from ``room`` now."""
        ...


def encoded_history_seq(event: bytes) -> int:
    """The ``seq`` of an encoded ``message`` event (``{"type":"message","seq":N,...``)."""
    start = len(MESSAGE_PREFIX)
    return int(event[start : event.index(b",", start)])


MESSAGE_PREFIX = b'{"type":"message","seq":'
