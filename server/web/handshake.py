"""The checks a ``GET /ws`` request passes before the upgrade, in the order they run.

:data:`CHECKS` is the one ordered list: the first check that fails answers the request with
its HTTP status and a JSON body ``{"error": ..., "detail": ...}``, and no WebSocket is
opened. docs/protocol.md ("Refusals before the upgrade") shows the same table in the same
order; tests/test_handshake.py holds the two together.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from aiohttp import web

from ..ops import metrics
from ..transport.limits import Address, Throttled
from ..wire.origin import origin_allowed
from ..wire.protocol import (
    ProtocolError,
    validate_epoch,
    validate_room,
    validate_since,
    validate_user,
)
from .auth import Identity, TokenError, TokenVerifier
from .keys import broker_key, hubs_key, limits_key, registry_key, settings_key, verifier_key

log = logging.getLogger("roomhub.handshake")

WEBSOCKET_VERSION = "13"
"""The one ``Sec-WebSocket-Version`` roomhub speaks (RFC 6455)."""


@dataclass(slots=True)
class Handshake:
    """A ``GET /ws`` request on its way through :data:`CHECKS`; checks fill in the fields."""

    request: web.Request
    room: str = ""
    user: str = ""
    since: int | None = None
    epoch: str | None = None
    identity: Identity | None = None  # with ROOMHUB_AUTH=token: who the token names
    query: dict[str, str] | None = None  # the query's parameters while the checks run
    address: Address | None = None  # the client address's limits entry (None: limits off)

    def param(self, name: str) -> str | None:
        """Query parameter ``name`` (its first value), or None."""
        return self.query.get(name) if self.query else None


@dataclass(frozen=True, slots=True)
class Check:
    """One check. ``run`` raises ``ProtocolError`` (its ``detail`` goes in the body) to refuse.

    ``counted`` is the ``reason`` label of ``chat_handshakes_rejected_total`` (None: not
    counted; only WebSocket upgrade requests are counted there).
    """

    error: str
    status: int
    counted: str | None
    run: Callable[[Handshake], None]


def query_params(request: web.Request) -> dict[str, str]:
    """Each query parameter's first value, decoded as ``request.query`` decodes it. Parsed
    afresh, once per handshake: ``request.query`` keeps its parse on the request's URL, which
    lives as long as the connection (0.5 KB per connection, docs/memory.md)."""
    params: dict[str, str] = {}
    for key, value in parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True):
        params.setdefault(key, value)
    return params


def _tokens(value: str | None) -> set[str]:
    """The comma-separated tokens of a header value, lowercased (RFC 9110 section 5.6.1)."""
    return {token.strip().lower() for token in (value or "").split(",")}


def _key_valid(key: str | None) -> bool:
    """``Sec-WebSocket-Key`` is the base64 of 16 bytes (RFC 6455 section 4.1)."""
    try:
        return key is not None and len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False


def _upgrade(hs: Handshake) -> None:
    # RFC 6455 section 4.2.1: GET with Upgrade: websocket, Connection: Upgrade and a key (the
    # version is the next check's).
    request = hs.request
    headers = request.headers
    if not (
        request.method == "GET"
        and "websocket" in _tokens(headers.get("Upgrade"))
        and "upgrade" in _tokens(headers.get("Connection"))
        and _key_valid(headers.get("Sec-WebSocket-Key"))
    ):
        raise ProtocolError("not_websocket", "expected a WebSocket upgrade request")


def _version(hs: Handshake) -> None:
    # RFC 6455 section 4.4: a version the server does not speak gets 426 Upgrade Required and a
    # Sec-WebSocket-Version header naming the one it does (refusal() adds it).
    if hs.request.headers.get("Sec-WebSocket-Version") != WEBSOCKET_VERSION:
        raise ProtocolError("bad_version", "only WebSocket version 13 is supported")


def _upgrade_rate(hs: Handshake) -> None:
    # Every upgrade request that gets this far takes a token, whatever answers it later.
    limits = hs.request.app[limits_key]
    hs.address = limits.address(hs.request.remote)
    limits.take_upgrade(hs.address)


def _room(hs: Handshake) -> None:
    hs.room = validate_room(hs.param("room"))


def _verifier(hs: Handshake) -> TokenVerifier | None:
    return hs.request.app.get(verifier_key)


def _token_present(hs: Handshake) -> None:
    if _verifier(hs) is not None and not hs.param("token"):
        raise ProtocolError("token_missing", "this server needs a token: pass ?token=")


def _token_valid(hs: Handshake) -> None:
    verifier = _verifier(hs)
    if verifier is None:
        return
    try:
        hs.identity = verifier.verify(hs.param("token") or "")
    except TokenError as exc:
        log.info("token_refused", extra={"fields": {"why": exc.detail}})
        detail = "token is not valid (format, algorithm, signature or claims)"
        raise ProtocolError(exc.code, detail) from None


def _token_fresh(hs: Handshake) -> None:
    if hs.identity is not None:
        try:
            TokenVerifier.check_fresh(hs.identity)
        except TokenError as exc:
            raise ProtocolError(exc.code, exc.detail) from None


def _token_room(hs: Handshake) -> None:
    if hs.identity is not None:
        try:
            TokenVerifier.check_room(hs.identity, hs.room)
        except TokenError as exc:
            raise ProtocolError(exc.code, exc.detail) from None


def _user(hs: Handshake) -> None:
    # With tokens on, the name comes from the token and the query's user is ignored.
    wanted = hs.identity.name if hs.identity else hs.param("user")
    hs.user = validate_user(wanted)


def _since(hs: Handshake) -> None:
    hs.since = validate_since(hs.param("since"))


def _epoch(hs: Handshake) -> None:
    hs.epoch = validate_epoch(hs.param("epoch"))


def _origin(hs: Handshake) -> None:
    request = hs.request
    settings = request.app[settings_key]
    origin = request.headers.get("Origin")
    allowed, check = settings.allowed_origins, settings.origin_check
    if not origin_allowed(origin, request.scheme, request.host, allowed, check):
        raise ProtocolError("bad_origin", "origin not allowed")


def _not_draining(hs: Handshake) -> None:
    if hs.request.app[registry_key].draining:
        raise ProtocolError("shutting_down", "server is shutting down")


def _below_capacity(hs: Handshake) -> None:
    # Reserved slots count upgrades under way too, so a storm cannot overshoot the cap.
    app = hs.request.app
    if app[registry_key].reserved >= app[settings_key].max_connections:
        raise ProtocolError("capacity", "server is at its connection limit")


def _address_below_cap(hs: Handshake) -> None:
    hs.request.app[limits_key].check_connections(hs.address)


def _broker_ready(hs: Handshake) -> None:
    if not hs.request.app[broker_key].ready:
        raise ProtocolError("broker_unavailable", "the broker is unavailable")


def _new_room_rate(hs: Handshake) -> None:
    # Only a room that is not open here costs a token.
    app = hs.request.app
    if hs.room not in app[hubs_key]:
        app[limits_key].take_room(hs.address)


def _room_limit(hs: Handshake) -> None:
    # Admitting a new room starts its hub: this check comes last.
    if not hs.request.app[hubs_key].admit(hs.room):
        raise ProtocolError("capacity", "server is at its room limit")


CHECKS: tuple[Check, ...] = (
    Check("not_websocket", 400, None, _upgrade),
    Check("bad_version", 426, None, _version),
    Check("too_many_upgrades", 429, "upgrade_rate", _upgrade_rate),
    Check("bad_room", 400, "bad_room", _room),
    Check("token_missing", 401, "token_missing", _token_present),
    Check("token_invalid", 401, "token_invalid", _token_valid),
    Check("token_expired", 401, "token_expired", _token_fresh),
    Check("room_not_allowed", 403, "room_not_allowed", _token_room),
    Check("bad_user", 400, "bad_user", _user),
    Check("bad_since", 400, None, _since),
    Check("bad_epoch", 400, None, _epoch),
    Check("bad_origin", 403, "origin", _origin),
    Check("shutting_down", 503, None, _not_draining),
    Check("capacity", 503, "capacity", _below_capacity),
    Check("too_many_connections", 429, "address_connections", _address_below_cap),
    Check("broker_unavailable", 503, None, _broker_ready),
    Check("too_many_rooms", 429, "room_rate", _new_room_rate),
    Check("capacity", 503, "capacity", _room_limit),
)


def _headers(status: int, exc: ProtocolError) -> dict[str, str] | None:
    if status == 426:
        return {"Sec-WebSocket-Version": WEBSOCKET_VERSION}
    if isinstance(exc, Throttled):
        return {"Retry-After": str(exc.retry_after)}
    return None


def refusal(hs: Handshake) -> web.Response | None:
    """Run :data:`CHECKS` in order; the first failure's JSON answer (a 426 also names the
    version roomhub speaks in ``Sec-WebSocket-Version``, a 429 the seconds to wait in
    ``Retry-After``), or None if all pass. The query is parsed once for all of them, and
    dropped after (the session keeps ``hs``)."""
    hs.query = query_params(hs.request)
    try:
        for check in CHECKS:
            try:
                check.run(hs)
            except ProtocolError as exc:
                if check.counted is not None:
                    metrics.HANDSHAKES_REJECTED.labels(check.counted).inc()
                return web.json_response(
                    {"error": check.error, "detail": exc.detail},
                    status=check.status,
                    headers=_headers(check.status, exc),
                )
        return None
    finally:
        hs.query = None
