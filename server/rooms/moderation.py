"""Moderation: closing a member's connections, bans and deletions, for the server API and
for moderators in the page.

Every action goes through the broker, so that it reaches every instance: a kick or a
disconnect is a :class:`~server.rooms.broker.Control` order that each instance's control sink
(:func:`close_matching` over its open connections) carries out; a ban is kept by the broker
(Redis keys with a TTL, or this process's memory) and read before every upgrade; a deletion
takes the message out of the history and sends every member a ``deleted`` event. Members are
matched by name key (:func:`~server.rooms.names.name_key`): case and width do not matter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import orjson

from ..ops import metrics
from ..transport.connection import Connection
from ..wire.protocol import CloseReason
from .broker import Broker, Control
from .names import name_key

log = logging.getLogger("roomhub.moderation")

CLOSES = {
    reason.label: reason
    for reason in (
        CloseReason.RECONNECT,
        CloseReason.DISCONNECTED,
        CloseReason.KICKED,
        CloseReason.BANNED,
    )
}
"""The close reasons a :class:`Control` order may name, by label."""


def close_matching(connections: Iterable[Connection], order: Control) -> None:
    """Close every connection of ``order.user`` (in ``order.room``, or in any room when it is
    None) with the order's close reason, and log how many this instance closed."""
    reason = CLOSES.get(order.action)
    if reason is None:
        return
    closed = 0
    for conn in list(connections):
        if name_key(conn.user) == order.user and order.room in (None, conn.room):
            conn.close(reason)
            closed += 1
    if closed:
        log.info(
            "members_closed",
            extra={"fields": {"room": order.room, "reason": reason.label, "connections": closed}},
        )


class Moderation:
    """The moderation actions over one broker; each counts ``chat_moderation_total{action}``
    and raises :class:`~server.rooms.broker.BrokerUnavailable` when the broker cannot carry it."""

    def __init__(self, broker: Broker, history_size: int) -> None:
        self.broker = broker
        self.broker_history = history_size

    async def disconnect(self, user: str, room: str | None, reconnect: bool) -> CloseReason:
        """Close ``user``'s connections (in ``room``, or everywhere) on every instance: 4100
        (the page reconnects) with ``reconnect``, else 4500 (it does not)."""
        reason = CloseReason.RECONNECT if reconnect else CloseReason.DISCONNECTED
        await self.broker.control(Control(reason.label, name_key(user), room))
        metrics.MODERATION.labels("disconnect").inc()
        return reason

    async def kick(self, room: str, user: str) -> CloseReason:
        """Close ``user``'s connections to ``room`` on every instance with 4501."""
        await self.broker.control(Control(CloseReason.KICKED.label, name_key(user), room))
        metrics.MODERATION.labels("kick").inc()
        return CloseReason.KICKED

    async def ban(self, room: str, user: str, seconds: float | None) -> CloseReason:
        """Refuse ``user``'s joins to ``room`` for ``seconds`` (None: until :meth:`unban`) and
        close their connections there with 4502."""
        key = name_key(user)
        await self.broker.ban(room, key, seconds)
        await self.broker.control(Control(CloseReason.BANNED.label, key, room))
        metrics.MODERATION.labels("ban").inc()
        return CloseReason.BANNED

    async def unban(self, room: str, user: str) -> bool:
        """Lift ``user``'s ban from ``room``; whether there was one."""
        return await self.broker.unban(room, name_key(user))

    async def banned(self, room: str, user: str) -> bool:
        """Whether ``user`` may not join ``room`` now."""
        return await self.broker.banned(room, name_key(user))

    async def delete(self, room: str, seq: int, author: str | None = None) -> bool | None:
        """Take message ``seq`` out of ``room``'s history and tell every member; False when
        the history does not hold it. With ``author``, only a message that member sent (not
        one from the server API) is deleted: None when it is someone else's."""
        if author is not None:
            kept = await self.broker.history(room, seq - 1, self.broker_history)
            message = next((m for m in map(orjson.loads, kept) if m.get("seq") == seq), None)
            if message is None:
                return False
            if message.get("server") or name_key(message.get("user", "")) != name_key(author):
                return None
        found = await self.broker.delete(room, seq)
        if found:
            metrics.MODERATION.labels("delete").inc()
        return found
