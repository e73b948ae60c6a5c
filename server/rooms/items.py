"""What a hub takes, and the interface every hub registry offers.

Hub items are one small dataclass per kind; :data:`HubItem` is their union. Connections and
the bot post them with :meth:`Hubs.post`. :class:`Hubs` is what the rest of the server knows
of the hubs: the sharded hubs (:class:`server.rooms.hub.ShardedHubs`, the design roomhub
serves with) and the single-hub baseline (:class:`server.rooms.baseline.GlobalHub`) both
implement it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..transport.connection import Connection
from ..wire.protocol import ChatMessage


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


class Hubs(Protocol):
    """The hubs of one server, whatever ``ROOMHUB_HUB_MODE`` runs them."""

    def __contains__(self, room: str) -> bool:
        """Whether ``room`` is open here (a join there opens no new room)."""
        ...

    def admit(self, room: str) -> bool:
        """Whether a client may join ``room`` under ``max_rooms`` (a new room may start now)."""
        ...

    def hold(self, room: str) -> bool:
        """The server API is about to publish into ``room``: keep it open as a room under
        ``max_rooms`` for the grace period (starting it if need be); False when no room fits."""
        ...

    def post(self, room: str, item: HubItem) -> bool:
        """Queue ``item`` for ``room``'s hub without waiting; return whether a hub took it."""
        ...

    async def rooms(self, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` ``(room, members)`` with members, busiest first, then by name.
        Raises :class:`~server.rooms.broker.BrokerUnavailable` when the broker cannot answer."""
        ...

    def room_count(self) -> int:
        """Rooms with a running hub (``chat_rooms``)."""
        ...

    def queue_depth(self) -> int:
        """Items waiting in hub inboxes (``chat_hub_queue_depth``)."""
        ...

    async def stop(self) -> None:
        """Stop every hub task."""
        ...
