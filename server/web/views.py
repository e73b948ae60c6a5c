"""HTTP and WebSocket handlers."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import aiohttp_jinja2
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from ..ops import metrics
from ..ops.version import VERSION
from ..rooms.broker import BrokerUnavailable
from ..rooms.broker.sharded import shards_down
from ..rooms.items import Join, Leave
from ..transport.connection import Connection
from ..transport.upgrade import take_over
from ..wire.protocol import ProtocolError, validate_room
from .auth import Identity
from .handshake import Handshake, refusal
from .keys import (
    broker_key,
    dispatcher_key,
    hubs_key,
    moderation_key,
    registry_key,
    settings_key,
)

log = logging.getLogger("roomhub.views")

LISTED_ROOMS = 100
"""Most rooms the lobby, ``/api/rooms`` and the server API's ``rooms`` list: the busiest
ones."""


async def _rooms(app: web.Application) -> list[dict[str, object]]:
    """Rooms with members over every instance, busiest first (then by name), at most
    ``LISTED_ROOMS``. Raises :class:`BrokerUnavailable` when the broker cannot answer."""
    rooms = await app[hubs_key].rooms(LISTED_ROOMS)
    return [{"name": name, "members": members} for name, members in rooms]


async def room_list(app: web.Application) -> dict[str, object]:
    """``{"rooms": [{"name": str, "members": int}, ...]}`` (:func:`_rooms`), and ``"down"``
    (as in ``/readyz``) while some Redis shards are down and their rooms are left out: the
    body of ``/api/rooms`` and of the server API's ``rooms``. Raises
    :class:`BrokerUnavailable` when the broker cannot answer."""
    rooms = await _rooms(app)
    down = shards_down(app[broker_key])
    return {"rooms": rooms, **({"down": down} if down else {})}


@aiohttp_jinja2.template("lobby.html")
async def lobby(request: web.Request) -> dict[str, object]:
    try:
        rooms = await _rooms(request.app)
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
    """:func:`room_list`; 503 ``broker_unavailable`` while the broker cannot answer."""
    try:
        return web.json_response(await room_list(request.app))
    except BrokerUnavailable:
        return web.json_response(
            {"error": "broker_unavailable", "detail": "the broker is unavailable"}, status=503
        )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 ``ready`` while accepting connections; 503 once shutdown has begun
    (``shutting_down``) or while no Redis shard can carry operations (``broker_unavailable``);
    200 ``degraded`` while some shards are down (``down``: each one's ``shard`` index and
    ``url``, password hidden): their rooms fail, every other room works."""
    if request.app[registry_key].draining:
        return web.json_response({"status": "shutting_down"}, status=503)
    broker = request.app[broker_key]
    if not broker.ready:
        return web.json_response({"status": "broker_unavailable"}, status=503)
    down = shards_down(broker)
    if down:
        return web.json_response({"status": "degraded", "down": down})
    return web.json_response({"status": "ready"})


async def websocket(request: web.Request) -> web.StreamResponse:
    """``GET /ws?room=ROOM&user=NAME[&since=SEQ&epoch=EPOCH]``: protocol v1 (docs/protocol.md).

    Once the checks pass, the connection leaves aiohttp
    (:func:`server.transport.upgrade.take_over`) and lives on as a
    :class:`~server.transport.connection.Connection` driven by the app's
    :class:`~server.rooms.dispatch.RoomDispatcher`."""
    app = request.app
    hs = Handshake(request)
    refused = refusal(hs) or await _ban_refusal(app, hs)
    if refused is not None:
        return refused
    registry = app[registry_key]
    transport = request.transport
    if transport is None:  # the client went away before the handler ran
        return _aborted(hs)
    conn = Connection(
        app[dispatcher_key], transport, room=hs.room, user=hs.user, address=hs.address
    )
    hubs = app[hubs_key]
    # The join is queued first, so that the room's hub knows the connection before any
    # message it sent early (held there until its welcome); the slot is reserved before the
    # upgrade and released when the connection ends.
    hubs.post(hs.room, Join(conn, hs.since, hs.epoch))
    registry.reserve(conn.address)
    try:
        response = take_over(request, conn)
    except ConnectionError:
        registry.release(conn.address)
        hubs.post(hs.room, Leave(conn))
        return _aborted(hs)
    registry.open(conn)
    if hs.identity is not None and "mod" in hs.identity.roles:
        app[dispatcher_key].moderators.add(conn)
    log.debug("connection_opened", extra={"fields": {"room": hs.room, "user": hs.user}})
    _close_at_expiry(conn, hs.identity)
    return response


async def _ban_refusal(app: web.Application, hs: Handshake) -> web.Response | None:
    """403 ``banned`` while the user is banned from the room (the server API's ``ban``,
    read from the broker after every other check); 503 when the broker cannot tell."""
    try:
        banned = await app[moderation_key].banned(hs.room, hs.user)
    except BrokerUnavailable:
        return web.json_response(
            {"error": "broker_unavailable", "detail": "the broker is unavailable"}, status=503
        )
    if not banned:
        return None
    metrics.HANDSHAKES_REJECTED.labels("banned").inc()
    return web.json_response(
        {"error": "banned", "detail": "you are banned from this room for now"}, status=403
    )


def _aborted(hs: Handshake) -> web.Response:
    """The answer to an upgrade whose client went away during it (never read), logged."""
    log.info("upgrade_aborted", extra={"fields": {"room": hs.room, "user": hs.user}})
    return web.Response(status=400)


def _close_at_expiry(conn: Connection, identity: Identity | None) -> None:
    """With a token that has ``exp``: close ``conn`` with 4001 once the clock passes it."""
    if identity is not None and identity.expires is not None:
        conn.close_at(max(0.0, identity.expires - time.time()))


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
