"""The server API for backends: ``POST /api/v1/<method>`` (docs/api.md).

Off unless ``ROOMHUB_API_KEY`` is set (every call then answers 404 ``api_disabled``). A call
passes, in order: POST only, the key in ``X-API-Key`` (compared in constant time: the SHA-256
digests of both, with :func:`hmac.compare_digest`, so neither the key's length nor its
content shows in the timing), a known method, a body of at most ``ROOMHUB_API_MAX_BODY``
bytes (a bigger ``Content-Length`` is refused before anything is read, and the body is read
with a bounded reader), then the method's fields (:func:`server.wire.api.parse_body`). Every
answer is JSON; every refusal one of :data:`server.wire.api.ERRORS`. The key is never logged
or counted: ``chat_api_requests_total`` has the method and the result only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from ..ops import metrics
from ..ops.version import VERSION
from ..rooms.broker import BrokerUnavailable
from ..rooms.names import SERVER_NAME
from ..wire.api import METHODS, ApiError, openapi, parse_body
from .keys import broker_key, hubs_key, moderation_key, settings_key
from .views import room_list

log = logging.getLogger("roomhub.api")


def _json(answer: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(answer), status=status, content_type="application/json")


def _key_matches(given: str | None, key: str) -> bool:
    """Whether ``given`` is ``key``, in constant time over the digests."""
    given_digest = hashlib.sha256((given or "").encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(given_digest, hashlib.sha256(key.encode()).digest())


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The request body, or ``too_large`` as soon as it is known to pass ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError("too_large", f"the body is over {limit} bytes")
    body = bytearray()
    while True:
        chunk = await request.content.read(limit + 1 - len(body))
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            raise ApiError("too_large", f"the body is over {limit} bytes")


def _check_access(request: web.Request) -> None:
    settings = request.app[settings_key]
    if not settings.api_key:
        raise ApiError("api_disabled", "the server API is off: set ROOMHUB_API_KEY")
    if not _key_matches(request.headers.get("X-API-Key"), settings.api_key):
        raise ApiError("unauthorized", "X-API-Key is missing or wrong")


async def api_call(request: web.Request) -> web.Response:
    """``POST /api/v1/<method>``: one call, timed and counted by method and result."""
    started = time.perf_counter()
    name = request.match_info["method"]
    label = name if name in METHODS else "unknown"
    try:
        if request.method != "POST":
            raise ApiError("method_not_allowed", "use POST")
        _check_access(request)
        method = METHODS.get(name)
        if method is None:
            raise ApiError("unknown_method", f"no method {name!r}; see /api/v1/openapi.json")
        body = await _read_body(request, request.app[settings_key].api_max_body)
        fields = parse_body(method, body)
        response = _json(await CALLS[name](request.app, fields))
        result = "ok"
    except ApiError as exc:
        response, result = _json(exc.body(), exc.status), exc.code
        if exc.code == "method_not_allowed":
            response.headers["Allow"] = "POST"  # RFC 9110 section 15.5.6
    except BrokerUnavailable:
        error = ApiError("broker_unavailable", "the broker is unavailable, retry")
        response, result = _json(error.body(), error.status), error.code
    except Exception:
        log.exception("api_failed", extra={"fields": {"method": label}})
        error = ApiError("server_error", "the server failed; its log names the fault")
        response, result = _json(error.body(), error.status), error.code
    metrics.API_REQUESTS.labels(label, result).inc()
    metrics.API_SECONDS.observe(time.perf_counter() - started)
    return response


async def openapi_document(request: web.Request) -> web.Response:
    """``GET /api/v1/openapi.json``: the API's OpenAPI 3 document (no key needed)."""
    if not request.app[settings_key].api_key:
        return _json(ApiError("api_disabled", "the server API is off").body(), 404)
    return _json(openapi(VERSION))


Fields = dict[str, Any]


ROOM_LIMIT = "the server is at its room limit (ROOMHUB_MAX_ROOMS)"


async def _publish(app: web.Application, f: Fields) -> object:
    if not app[hubs_key].hold(f["room"]):
        raise ApiError("capacity", ROOM_LIMIT)
    seq = await app[broker_key].publish_message(
        f["room"], f.get("user") or SERVER_NAME, f["text"], f.get("data")
    )
    return {"room": f["room"], "seq": seq}


async def _broadcast(app: web.Application, f: Fields) -> object:
    broker, hubs, user = app[broker_key], app[hubs_key], f.get("user") or SERVER_NAME
    text, data = f["text"], f.get("data")

    async def one(room: str) -> dict[str, object]:
        if not hubs.hold(room):
            return {"room": room, "error": "capacity", "detail": ROOM_LIMIT}
        try:
            return {"room": room, "seq": await broker.publish_message(room, user, text, data)}
        except BrokerUnavailable:
            detail = "the broker is unavailable"
            return {"room": room, "error": "broker_unavailable", "detail": detail}

    return {"results": await asyncio.gather(*map(one, f["rooms"]))}


async def _disconnect(app: web.Application, f: Fields) -> object:
    room = f.get("room")
    reason = await app[moderation_key].disconnect(f["user"], room, f["reconnect"])
    log.info(
        "api_disconnect",
        extra={"fields": {"user": f["user"], "room": room, "reason": f.get("reason")}},
    )
    return {"user": f["user"], "room": room, "code": reason.code}


async def _kick(app: web.Application, f: Fields) -> object:
    reason = await app[moderation_key].kick(f["room"], f["user"])
    return {"room": f["room"], "user": f["user"], "code": reason.code}


async def _ban(app: web.Application, f: Fields) -> object:
    duration = f.get("duration")
    reason = await app[moderation_key].ban(f["room"], f["user"], duration)
    return {"room": f["room"], "user": f["user"], "duration": duration, "code": reason.code}


async def _unban(app: web.Application, f: Fields) -> object:
    lifted = await app[moderation_key].unban(f["room"], f["user"])
    return {"room": f["room"], "user": f["user"], "lifted": lifted}


async def _delete(app: web.Application, f: Fields) -> object:
    if not await app[moderation_key].delete(f["room"], f["seq"]):
        raise ApiError("not_found", f"room {f['room']} holds no message {f['seq']} in its history")
    return {"room": f["room"], "seq": f["seq"]}


async def _presence(app: web.Application, f: Fields) -> object:
    users = await app[broker_key].presence(f["room"])
    return {"room": f["room"], "members": len(users), "users": users}


async def _history(app: web.Application, f: Fields) -> object:
    events = await app[broker_key].history(f["room"], f["since"], f["limit"])
    return {"room": f["room"], "messages": [orjson.loads(event) for event in events]}


async def _rooms(app: web.Application, f: Fields) -> object:
    return await room_list(app)


CALLS = {
    "publish": _publish,
    "broadcast": _broadcast,
    "disconnect": _disconnect,
    "kick": _kick,
    "ban": _ban,
    "unban": _unban,
    "delete": _delete,
    "presence": _presence,
    "history": _history,
    "rooms": _rooms,
}


def setup_api_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/openapi.json", openapi_document)
    app.router.add_route("*", "/api/v1/{method}", api_call)
