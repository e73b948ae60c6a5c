"""HTTP and WebSocket handlers."""

from __future__ import annotations

import asyncio
import logging
import time
from importlib.metadata import version
from pathlib import Path

import aiohttp_jinja2
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from ..bot.commands import CommandError, parse_stock_command
from ..bot.stockbot import BotReply
from ..ops import metrics
from ..rooms.broker import BrokerUnavailable
from ..rooms.items import BotEvent, Join, Leave, Say
from ..transport.connection import Connection
from ..transport.upgrade import take_over
from ..wire.protocol import (
    CloseReason,
    ProtocolError,
    bot_event,
    client_id_of,
    error_event,
    parse_frame,
    validate_room,
)
from .auth import Identity
from .handshake import Handshake, refusal
from .keys import bot_key, broker_key, hubs_key, settings_key, state_key

log = logging.getLogger("roomhub.views")

ABUSE_STRIKES = 20
"""Frames refused in a row by the rate limiter before the connection is closed with 1008."""

VERSION = version("roomhub")


ROUTINE_CLOSES = frozenset({CloseReason.NORMAL, CloseReason.CLIENT_GONE})
"""Ends logged at debug only, like every connection's opening: the client closed or went away.
The server's own closes (a fault, a shutdown) are logged at info."""

LISTED_ROOMS = 100
"""Most rooms the lobby and ``/api/rooms`` list: the busiest ones."""


async def _rooms(request: web.Request) -> list[dict[str, object]]:
    """Rooms with members over every instance, busiest first (then by name), at most
    ``LISTED_ROOMS``. Raises :class:`BrokerUnavailable` when the broker cannot answer."""
    rooms = await request.app[hubs_key].rooms(LISTED_ROOMS)
    return [{"name": name, "members": members} for name, members in rooms]


@aiohttp_jinja2.template("lobby.html")
async def lobby(request: web.Request) -> dict[str, object]:
    try:
        rooms = await _rooms(request)
    except BrokerUnavailable:
        rooms = []
    return {"rooms": rooms, "version": VERSION, "auth": request.app[settings_key].auth}


async def room_page(request: web.Request) -> web.Response:
    try:
        room = validate_room(request.match_info["room"])
    except ProtocolError as exc:
        raise web.HTTPBadRequest(text=exc.detail) from None
    context = {"room": room, "version": VERSION, "auth": request.app[settings_key].auth}
    return aiohttp_jinja2.render_template("room.html", request, context)


async def api_rooms(request: web.Request) -> web.Response:
    """``{"rooms": [{"name": str, "members": int}, ...]}``: rooms with members, busiest first;
    503 ``broker_unavailable`` while the broker cannot answer."""
    try:
        return web.json_response({"rooms": await _rooms(request)})
    except BrokerUnavailable:
        return web.json_response(
            {"error": "broker_unavailable", "detail": "the broker is unavailable"}, status=503
        )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 while accepting connections; 503 once shutdown has begun (``shutting_down``) or
    while the broker is unavailable (``broker_unavailable``)."""
    if request.app[state_key].shutting_down:
        return web.json_response({"status": "shutting_down"}, status=503)
    if not request.app[broker_key].ready:
        return web.json_response({"status": "broker_unavailable"}, status=503)
    return web.json_response({"status": "ready"})


async def websocket(request: web.Request) -> web.StreamResponse:
    """``GET /ws?room=ROOM&user=NAME[&since=SEQ&epoch=EPOCH]``: protocol v1 (docs/protocol.md).

    Once the checks pass, the connection leaves aiohttp (:func:`server.upgrade.take_over`) and
    lives on as a :class:`~server.connection.Connection` driven by :class:`Chat`."""
    app = request.app
    hs = Handshake(request)
    refused = refusal(hs)
    if refused is not None:
        return refused
    chat, state = app[chat_key], app[state_key]
    conn = Connection(chat, room=hs.room, user=hs.user)
    hubs = app[hubs_key]
    # The join is queued first, so that the room's hub knows the connection before any
    # message it sent early (held there until its welcome); the slot is reserved before the
    # upgrade and released when the connection ends.
    hubs.post(hs.room, Join(conn, hs.since, hs.epoch))
    state.reserved += 1
    try:
        response = take_over(request, conn)
    except ConnectionError:
        state.reserved -= 1
        hubs.post(hs.room, Leave(conn))
        log.info("upgrade_aborted", extra={"fields": {"room": hs.room, "user": hs.user}})
        return web.Response(status=400)
    state.connections.add(conn)
    metrics.CONNECTIONS_OPENED.inc()
    log.debug("connection_opened", extra={"fields": {"room": hs.room, "user": hs.user}})
    conn.expiry = _close_at_expiry(conn, hs.identity)
    return response


def _close_at_expiry(conn: Connection, identity: Identity | None) -> asyncio.TimerHandle | None:
    """With a token that has ``exp``: close ``conn`` with 4001 once the clock passes it."""
    if identity is None or identity.expires is None:
        return None
    delay = max(0.0, identity.expires - time.time())
    return asyncio.get_running_loop().call_later(delay, conn.close, CloseReason.TOKEN_EXPIRED)


class Chat:
    """What the server does with the messages of every connection of one app, and with each
    connection's end (the :class:`~server.connection.Chat` of its connections)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.settings = app[settings_key]

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
            symbol = parse_stock_command(msg.text)
        except ProtocolError as exc:
            _on_invalid(conn, exc.code, exc.detail, client_id_of(text))
            return
        except CommandError as exc:
            _on_invalid(conn, "bad_command", str(exc), msg.id)
            return
        hubs = self.app[hubs_key]
        if symbol is None:
            metrics.MESSAGES_RECEIVED.labels("message").inc()
            hubs.post(conn.room, Say(conn, msg))
            return
        metrics.MESSAGES_RECEIVED.labels("command").inc()
        bot = self.app[bot_key]
        room = conn.room

        def deliver(reply: BotReply) -> bool:
            event = bot_event(bot.name, reply.text, reply.ok, reply.reply_to, conn.user)
            return hubs.post(room, BotEvent(event))

        if not bot.submit(symbol, msg.id, deliver):
            conn.send_event(error_event("busy", "the stock bot is busy, try again", msg.id))

    def on_ping(self, conn: Connection) -> None:
        """Pings take a rate-limit token like data frames (the pong is sent regardless, as
        RFC 6455 section 5.5.2 requires)."""
        _refused(conn, None)

    def on_end(self, conn: Connection, reason: CloseReason, code: int | None) -> None:
        """Leave the room, free the slot, count and log the close."""
        app = self.app
        state = app[state_key]
        app[hubs_key].post(conn.room, Leave(conn))
        state.connections.discard(conn)
        state.reserved -= 1
        state.closed += 1
        if state.drained is not None and not state.connections:
            state.drained.set()
        metrics.CONNECTIONS_CLOSED.labels(reason.label).inc()
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


chat_key = web.AppKey("chat_key", Chat)


def _on_invalid(conn: Connection, code: str, detail: str, reply_to: str | None = None) -> None:
    metrics.MESSAGES_RECEIVED.labels("invalid").inc()
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


async def per_worker_metrics(request: web.Request) -> web.Response:
    """With several workers the shared port reaches any one of them, so ``/metrics`` there
    would mix processes (counters would seem to go back): 404 naming the workers' ports."""
    settings = request.app[settings_key]
    first, last = settings.metrics_port, settings.metrics_port + settings.workers - 1
    return web.json_response(
        {
            "error": "per_worker_metrics",
            "detail": f"each worker serves /metrics on its own port: {first}..{last}",
        },
        status=404,
    )


def setup_routes(app: web.Application) -> None:
    app[chat_key] = Chat(app)
    app.router.add_get("/", lobby, name="lobby")
    app.router.add_get("/rooms/{room}", room_page, name="room")
    app.router.add_get("/api/rooms", api_rooms)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/ws", websocket)
    settings = app[settings_key]
    if settings.workers > 1:
        app.router.add_get("/metrics", per_worker_metrics)
    else:
        app.router.add_get("/metrics", make_aiohttp_handler())
    app.router.add_static("/static/", Path(__file__).parent / "static", name="static")
