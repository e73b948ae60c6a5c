"""What a client's message becomes: the one place a parsed frame goes to a room or the bot.

:class:`RoomDispatcher` is the :class:`~server.transport.connection.Dispatcher` of every
connection of one server. Each data message and each ping takes a rate-limit token; a
message is then parsed (:func:`~server.wire.protocol.parse_frame`), and a chat message goes
to its room's hub as :class:`~server.rooms.items.Say`, a ``/stock=CODE`` command to the
stock bot (whose reply comes back to the room as :class:`~server.rooms.items.BotEvent`),
``/help`` or an unknown command to a bot reply for the sender only, a moderation request
(``delete``, ``kick``, ``ban``) to :class:`~server.rooms.moderation.Moderation` once its
permission is checked (moderators, the token role ``mod``, may do all three to anyone;
with token sign-in, everyone may delete their own messages), anything else back to the
client as an ``error`` event. A connection's end leaves its room and frees its slot in the
registry.
"""

from __future__ import annotations

import asyncio
import logging

from ..bot.commands import CommandError, help_reply, parse_stock_command
from ..bot.stockbot import BotReply, StockBot
from ..ops import metrics
from ..ops.config import Settings
from ..transport.connection import Connection
from ..transport.registry import ConnectionRegistry
from ..wire.protocol import (
    CloseReason,
    ModerationRequest,
    ProtocolError,
    bot_event,
    client_id_of,
    error_event,
    parse_frame,
)
from .broker import BrokerUnavailable
from .items import BotEvent, Hubs, Leave, Say
from .moderation import Moderation

# The logger these lines have always had: log queries filter on it.
log = logging.getLogger("roomhub.views")

ABUSE_STRIKES = 20
"""Frames refused in a row by the rate limiter before the connection is closed with 1008."""

RECEIVED_MESSAGES = metrics.MESSAGES_RECEIVED.labels("message")
RECEIVED_COMMANDS = metrics.MESSAGES_RECEIVED.labels("command")
RECEIVED_INVALID = metrics.MESSAGES_RECEIVED.labels("invalid")

ROUTINE_CLOSES = frozenset({CloseReason.NORMAL, CloseReason.CLIENT_GONE})
"""Ends logged at debug only, like every connection's opening: the client closed or went away.
The server's own closes (a fault, a shutdown) are logged at info."""


class RoomDispatcher:
    """What the server does with the messages of every connection, and with each
    connection's end."""

    def __init__(
        self,
        settings: Settings,
        hubs: Hubs,
        bot: StockBot,
        registry: ConnectionRegistry,
        moderation: Moderation,
    ) -> None:
        self.settings = settings
        self.hubs = hubs
        self.bot = bot
        self.registry = registry
        self.moderation = moderation
        self.moderators: set[Connection] = set()
        """Open connections whose token has the role ``mod``."""
        self._tasks: set[asyncio.Task[None]] = set()

    def on_message(self, conn: Connection, text: str | None) -> None:
        """One data message (None: binary): rate limit, validate, then hand to the room's hub
        or the bot."""
        if _refused(conn, text):
            return
        if text is None:
            _on_invalid(conn, "bad_message", "binary frames are not supported")
            return
        try:
            msg = parse_frame(text)
            if isinstance(msg, ModerationRequest):
                self._moderate(conn, msg)
                return
            symbol = parse_stock_command(msg.text)
        except ProtocolError as exc:
            _on_invalid(conn, exc.code, exc.detail, client_id_of(text))
            return
        except CommandError as exc:
            _on_invalid(conn, "bad_command", str(exc), msg.id)
            return
        hubs, bot = self.hubs, self.bot
        if symbol is None:
            answer = help_reply(msg.text)
            if answer is None:
                RECEIVED_MESSAGES.inc()
                hubs.post(conn.room, Say(conn, msg))
            else:  # /help or an unknown command: answered to the sender only
                RECEIVED_COMMANDS.inc()
                conn.send_event(bot_event(bot.name, answer.text, answer.ok, msg.id, conn.user))
            return
        RECEIVED_COMMANDS.inc()
        room = conn.room

        def deliver(reply: BotReply) -> bool:
            event = bot_event(bot.name, reply.text, reply.ok, reply.reply_to, conn.user)
            return hubs.post(room, BotEvent(event))

        if not bot.submit(symbol, msg.id, deliver):
            conn.send_event(error_event("busy", "the stock bot is busy, try again", msg.id))

    def _moderate(self, conn: Connection, request: ModerationRequest) -> None:
        """Check ``request``'s permission now, carry it out in a task; refusals and failures
        come back to ``conn`` as ``error`` events (``reply_to``: the request's ``id``)."""
        metrics.MESSAGES_RECEIVED.labels("command").inc()
        moderator = conn in self.moderators
        if request.action != "delete" and not moderator:
            conn.send_event(
                error_event("not_allowed", "only moderators may kick or ban", request.id)
            )
            return
        if not moderator and self.settings.auth != "token":
            # Without tokens a name proves nothing: whoever takes it next is not its author.
            detail = "deleting needs sign-in with a token (ROOMHUB_AUTH=token)"
            conn.send_event(error_event("not_allowed", detail, request.id))
            return
        task = asyncio.create_task(self._carry_out(conn, request, moderator))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _carry_out(
        self, conn: Connection, request: ModerationRequest, moderator: bool
    ) -> None:
        moderation, room = self.moderation, conn.room
        try:
            if request.action == "kick":
                await moderation.kick(room, request.user)
            elif request.action == "ban":
                await moderation.ban(room, request.user, request.duration)
            else:
                found = await moderation.delete(room, request.seq, None if moderator else conn.user)
                if found is None:
                    detail = "you may delete only your own messages"
                    conn.send_event(error_event("not_allowed", detail, request.id))
                elif not found:
                    detail = f"no message {request.seq} in this room's history"
                    conn.send_event(error_event("not_found", detail, request.id))
        except BrokerUnavailable:
            detail = "not done: the broker is unavailable"
            conn.send_event(error_event("unavailable", detail, request.id))
        log.info(
            "moderation",
            extra={"fields": {"room": room, "by": conn.user, "action": request.action}},
        )

    def on_ping(self, conn: Connection) -> None:
        """Pings take a rate-limit token like data frames (the pong is sent regardless, as
        RFC 6455 section 5.5.2 requires)."""
        _refused(conn, None)

    def on_end(self, conn: Connection, reason: CloseReason, code: int | None) -> None:
        """Leave the room, free the slot, count and log the close."""
        self.hubs.post(conn.room, Leave(conn))
        self.moderators.discard(conn)
        self.registry.close(conn, reason)
        log.log(
            logging.DEBUG if reason in ROUTINE_CLOSES else logging.INFO,
            "connection_closed",
            extra={
                "fields": {
                    "room": conn.room,
                    "user": conn.user,
                    "reason": reason.label,
                    "code": code,
                }
            },
        )


def _on_invalid(conn: Connection, code: str, detail: str, reply_to: str | None = None) -> None:
    RECEIVED_INVALID.inc()
    conn.send_event(error_event(code, detail, reply_to))


def _refused(conn: Connection, text: str | None) -> bool:
    """Take a token for one frame from the client (data or ping); when the bucket is empty,
    answer ``rate_limited`` (``reply_to`` from ``text``) and close after ``ABUSE_STRIKES``
    refusals in a row. Returns whether the frame was refused."""
    if conn.allow():
        return False
    _on_invalid(conn, "rate_limited", "slow down", text and client_id_of(text))
    if conn.strikes >= ABUSE_STRIKES:
        conn.close(CloseReason.RATE_LIMITED)
    return True
