"""HTTP and WebSocket handlers."""

from __future__ import annotations

import asyncio
import logging
import time
from importlib.metadata import version
from pathlib import Path

import aiohttp_jinja2
from aiohttp import WSMessage, WSMsgType, web
from prometheus_client.aiohttp import make_aiohttp_handler

from . import metrics
from .auth import Identity
from .bot.commands import CommandError, parse_stock_command
from .bot.stockbot import BotReply
from .broker import BrokerUnavailable
from .connection import Connection
from .handshake import Handshake, refusal
from .keys import bot_key, broker_key, hubs_key, settings_key, state_key
from .protocol import (
    CloseReason,
    ProtocolError,
    bot_event,
    client_id_of,
    error_event,
    parse_frame,
    validate_room,
)
from .room import BotEvent, Join, Leave, Say

log = logging.getLogger("roomhub.views")

ABUSE_STRIKES = 20
"""Frames refused in a row by the rate limiter before the connection is closed with 1008."""

READ_LIMIT_FACTOR = 4
"""aiohttp's own message limit, as a multiple of ``max_msg_size``: a message between the two
is read whole and refused with a proper close handshake; one beyond is cut off at once."""

VERSION = version("roomhub")


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
    """``GET /ws?room=ROOM&user=NAME[&since=SEQ&epoch=EPOCH]``: protocol v1 (docs/protocol.md)."""
    app = request.app
    settings, state = app[settings_key], app[state_key]
    ws = web.WebSocketResponse(
        compress=False,
        # roomhub checks max_msg_size itself and closes with the handshake; aiohttp's own
        # limit only guards memory, and cuts the connection at once.
        max_msg_size=READ_LIMIT_FACTOR * settings.max_msg_size,
        # Pings and closes are roomhub's own: the heartbeat sweep and Connection.close.
        autoclose=False,
        autoping=False,
    )
    hs = Handshake(request, ws)
    refused = refusal(hs)
    if refused is not None:
        return refused
    # The slot is reserved before the upgrade and released however the request ends.
    state.reserved += 1
    try:
        return await _session(hs)
    finally:
        state.reserved -= 1


async def _session(hs: Handshake) -> web.StreamResponse:
    """Upgrade an admitted request, join its room and serve it until it ends."""
    request, ws, room, user = hs.request, hs.ws, hs.room, hs.user
    app = request.app
    settings, state, hubs = app[settings_key], app[state_key], app[hubs_key]
    try:
        writer = await ws.prepare(request)
    except ConnectionError:
        # The peer vanished during the upgrade; aiohttp drops this answer quietly.
        log.info("upgrade_aborted", extra={"fields": {"room": room, "user": user}})
        return web.Response(status=400)
    conn = Connection(
        ws,
        request,
        writer,
        room=room,
        user=user,
        outbox_limit=settings.outbox_limit,
        max_frame_size=settings.max_frame_size,
        close_timeout=settings.close_timeout,
        rate=settings.rate_limit,
        burst=settings.rate_burst,
    )
    state.connections.add(conn)
    metrics.CONNECTIONS_OPENED.inc()
    log.info("connection_opened", extra={"fields": {"room": room, "user": user}})
    hubs.post(room, Join(conn, hs.since, hs.epoch))
    expiry = _close_at_expiry(conn, hs.identity)
    reason = CloseReason.CLIENT_GONE
    try:
        reason = await _serve(request, conn, settings.max_msg_size)
        await conn.finish(client_closed=reason is CloseReason.NORMAL)
    except Exception:
        log.exception("connection_failed", extra={"fields": {"room": room, "user": user}})
        conn.close(CloseReason.ERROR)
        await conn.finish(client_closed=False)
    finally:
        if expiry is not None:
            expiry.cancel()
        hubs.post(room, Leave(conn))
        state.connections.discard(conn)
        state.closed += 1
        reason = conn.close_reason or reason
        metrics.CONNECTIONS_CLOSED.labels(reason.label).inc()
        code = reason.code if conn.close_reason else ws.close_code
        log.info(
            "connection_closed",
            extra={
                "fields": {"room": room, "user": conn.user, "reason": reason.label, "code": code}
            },
        )
    return ws


def _close_at_expiry(conn: Connection, identity: Identity | None) -> asyncio.TimerHandle | None:
    """With a token that has ``exp``: close ``conn`` with 4001 once the clock passes it."""
    if identity is None or identity.expires is None:
        return None
    delay = max(0.0, identity.expires - time.time())
    return asyncio.get_running_loop().call_later(delay, conn.close, CloseReason.TOKEN_EXPIRED)


async def _serve(request: web.Request, conn: Connection, max_msg_size: int) -> CloseReason:
    """Read frames until the client's close frame or the end of the connection; return what
    ended it (``NORMAL``: the close frame). Frames that arrive once the server has started
    closing are read and discarded, so that the client's close frame can arrive. Any frame
    counts as a sign of life for the heartbeat; pings take a rate-limit token like data frames
    and are answered here when they get one."""
    ws = conn.ws
    while True:
        msg = await ws.receive()
        conn.quiet_sweeps = 0
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            if conn.closing:
                continue
            if _too_big(msg.data, max_msg_size):
                conn.close(CloseReason.TOO_BIG)
                continue
            try:
                _on_frame(request, conn, msg)
            except Exception:
                log.exception(
                    "frame_failed", extra={"fields": {"room": conn.room, "user": conn.user}}
                )
                conn.close(CloseReason.ERROR)
        elif msg.type == WSMsgType.PING:
            if not conn.closing and not _refused(conn, None):
                await ws.pong(msg.data)
        elif msg.type == WSMsgType.PONG:
            pass
        elif msg.type == WSMsgType.CLOSE:
            return CloseReason.NORMAL
        elif msg.type == WSMsgType.ERROR:
            if getattr(msg.data, "code", None) == CloseReason.TOO_BIG.code:
                return CloseReason.TOO_BIG
            return CloseReason.PROTOCOL_ERROR
        else:  # CLOSING / CLOSED
            return CloseReason.CLIENT_GONE


def _too_big(data: str | bytes, limit: int) -> bool:
    """Whether a data message is over ``limit`` bytes on the wire. Text counts its UTF-8 bytes,
    encoded only when it could be over (a character is at most 4 bytes)."""
    if isinstance(data, str):
        return len(data) * 4 > limit and len(data.encode()) > limit
    return len(data) > limit


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


def _on_frame(request: web.Request, conn: Connection, frame: WSMessage) -> None:
    """One data frame: rate limit, validate, then hand to the room's hub or the bot."""
    text = frame.data if frame.type == WSMsgType.TEXT else None
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
    app = request.app
    hubs = app[hubs_key]
    if symbol is None:
        metrics.MESSAGES_RECEIVED.labels("message").inc()
        hubs.post(conn.room, Say(conn, msg))
        return
    metrics.MESSAGES_RECEIVED.labels("command").inc()
    bot = app[bot_key]
    room = conn.room

    def deliver(reply: BotReply) -> bool:
        event = bot_event(bot.name, reply.text, reply.ok, reply.reply_to, conn.user)
        return hubs.post(room, BotEvent(event))

    if not bot.submit(symbol, msg.id, deliver):
        conn.send_event(error_event("busy", "the stock bot is busy, try again", msg.id))


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
