"""The server API's wire format: its methods, their fields, its error codes, and the
OpenAPI 3 document that describes them (docs/api.md is the prose).

A backend calls ``POST /api/v1/<method>`` with a JSON object body and its key in
``X-API-Key``. :func:`parse_body` turns the body into the method's validated fields or raises
:class:`ApiError` naming the field; :data:`ERRORS` holds every error code with its HTTP
status; :func:`openapi` builds the document served at ``/api/v1/openapi.json`` from the same
field rules, so the document and the checks cannot drift apart.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .protocol import (
    INVISIBLE_CATEGORIES,
    MAX_TEXT,
    MAX_USER,
    REFUSED_CATEGORIES,
    ProtocolError,
    validate_room,
    validate_user,
    visible,
)

MAX_ROOMS = 100
"""Rooms one ``broadcast`` may name."""
MAX_LIMIT = 1000
"""Most messages one ``history`` call returns."""
MAX_DURATION = 366 * 24 * 3600
"""Longest ban, in seconds (a ban without ``duration`` lasts until ``unban``)."""
MAX_REASON = 200
"""Characters of a ``disconnect`` reason (it goes to the log line only)."""
MAX_SEQ = 2**53
"""Largest ``seq`` or ``since`` accepted (a JSON number exact in every client)."""

ERRORS: dict[str, tuple[int, str]] = {
    "unauthorized": (401, "X-API-Key is missing or wrong"),
    "api_disabled": (404, "the server API is off: ROOMHUB_API_KEY is not set"),
    "unknown_method": (404, "no such method"),
    "method_not_allowed": (405, "the API takes POST only (GET for openapi.json)"),
    "too_large": (413, "the body is over ROOMHUB_API_MAX_BODY bytes"),
    "bad_json": (400, "the body is not one JSON object"),
    "missing_field": (400, "a required field is missing (``field`` names it)"),
    "unknown_field": (400, "a field the method does not take (``field`` names it)"),
    "bad_field": (400, "a field has a wrong type or value (``field`` names it)"),
    "not_found": (404, "delete: the room's history does not hold that seq"),
    "capacity": (503, "publish: the room is not open and no more fit under ROOMHUB_MAX_ROOMS"),
    "broker_unavailable": (503, "the broker (Redis) cannot carry the call now; retry"),
    "server_error": (500, "a fault in the server (a bug); the log line names it"),
}
"""Every error code: HTTP status and meaning. Each error answer is
``{"error": code, "detail": text}``, with ``field`` for the field errors."""


class ApiError(Exception):
    """A refused call: ``code`` from :data:`ERRORS`, ``detail`` for people, ``field`` the
    body field at fault (if one is)."""

    def __init__(self, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field = field

    @property
    def status(self) -> int:
        return ERRORS[self.code][0]

    def body(self) -> dict[str, str]:
        answer = {"error": self.code, "detail": self.detail}
        if self.field is not None:
            answer["field"] = self.field
        return answer


@dataclass(frozen=True, slots=True)
class Field:
    """One body field: its JSON ``schema`` (for the OpenAPI document) and ``check``, which
    returns the value to use or raises ``ValueError`` with the reason."""

    schema: dict[str, Any]
    check: Callable[[Any], Any]


def _room(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    try:
        return validate_room(value)
    except ProtocolError as exc:
        raise ValueError(exc.detail.removeprefix("room ")) from None


def _rooms(value: Any) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ROOMS:
        raise ValueError(f"must be a list of 1-{MAX_ROOMS} room names")
    rooms = [_room(room) for room in value]
    if len(set(rooms)) != len(rooms):
        raise ValueError("must not name a room twice")
    return rooms


def _user(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-blank string")
    try:
        return validate_user(value)
    except ProtocolError as exc:
        raise ValueError(exc.detail.removeprefix("user ")) from None


def _text(value: Any) -> str:
    if not isinstance(value, str) or not visible(value):
        raise ValueError("must be a string with a visible character")
    if len(value) > MAX_TEXT:
        raise ValueError(f"must be at most {MAX_TEXT} characters")
    return value


def _any(value: Any) -> Any:
    return value


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return value

    return check


def _duration(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= MAX_DURATION
    ):
        raise ValueError(f"must be a number of seconds above 0 and at most {MAX_DURATION}")
    return float(value)


def _reason(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_REASON:
        raise ValueError(f"must be a string of at most {MAX_REASON} characters")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _bmp_class(refused: Callable[[str], bool]) -> str:
    """The code points of the BMP for which ``refused`` holds, as the inside of a pattern's
    character class (``\\uXXXX`` or ``\\uXXXX-\\uYYYY`` runs)."""
    runs: list[list[int]] = []
    for code in range(0x10000):
        if refused(chr(code)):
            if runs and runs[-1][1] == code - 1:
                runs[-1][1] = code
            else:
                runs.append([code, code])
    return "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in runs)


CONTROLS = _bmp_class(
    lambda ch: ch == "\ufffd" or unicodedata.category(ch) in REFUSED_CATEGORIES - {"Cs"}
)
"""The characters a name may not hold that a pattern over the BMP can name: control, format,
private use, line and paragraph separators, U+FFFD. Surrogates, and the format and private
use characters beyond the BMP, are refused too (:func:`~server.wire.protocol.validate_user`),
which no ECMA-262 pattern without the ``u`` flag can say (it sees an astral character as two
surrogates)."""
INVISIBLE = _bmp_class(lambda ch: unicodedata.category(ch) in INVISIBLE_CATEGORIES)
"""The characters of the BMP that draw nothing: white space, control and format characters."""
NAME_CHAR = f"[^{CONTROLS}]"
ROOM_SCHEMA = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_.-]{1,64}$",
    "not": {"enum": [".", ".."]},
    "description": "1-64 characters of A-Z a-z 0-9 _ . - (not . or ..)",
}
FIELDS: dict[str, Field] = {
    "room": Field(ROOM_SCHEMA, _room),
    "rooms": Field(
        {
            "type": "array",
            "items": ROOM_SCHEMA,
            "minItems": 1,
            "maxItems": MAX_ROOMS,
            "uniqueItems": True,
        },
        _rooms,
    ),
    "user": Field(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_USER,
            "pattern": f"^{NAME_CHAR}*[^\\s{CONTROLS}]{NAME_CHAR}*$",
            "description": "a member name: 1-32 characters, no control or format characters",
        },
        _user,
    ),
    "text": Field(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TEXT,
            "pattern": f"[^\\s{INVISIBLE}]",
            "description": "1-2000 characters, one of them visible",
        },
        _text,
    ),
    "data": Field({"description": "any JSON value, handed to members as is"}, _any),
    "seq": Field({"type": "integer", "minimum": 1, "maximum": MAX_SEQ}, _integer(1, MAX_SEQ)),
    "since": Field(
        {"type": "integer", "minimum": 0, "maximum": MAX_SEQ, "default": 0},
        _integer(0, MAX_SEQ),
    ),
    "limit": Field(
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100},
        _integer(1, MAX_LIMIT),
    ),
    "duration": Field(
        {
            "type": "number",
            "minimum": 0,
            "exclusiveMinimum": True,
            "maximum": MAX_DURATION,
            "description": "seconds; absent: until unban",
        },
        _duration,
    ),
    "reason": Field({"type": "string", "maxLength": MAX_REASON}, _reason),
    "reconnect": Field({"type": "boolean", "default": False}, _boolean),
}
"""Every field a method may take, by name: the names are the interface."""

DEFAULTS: dict[str, Any] = {"since": 0, "limit": 100, "reconnect": False}


@dataclass(frozen=True, slots=True)
class Method:
    """One API method: ``required`` and ``optional`` field names, and the JSON schema of its
    200 ``answer``."""

    summary: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    answer: dict[str, Any]


def _obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(properties), "properties": properties}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_SEQ_ANSWER = _obj(room=_STR, seq=_INT)
_MESSAGE = {"type": "object", "description": "a message event (docs/protocol.md)"}

METHODS: dict[str, Method] = {
    "publish": Method(
        "A message from the backend in a room's sequence and history (``server`` true).",
        ("room", "text"),
        ("user", "data"),
        _SEQ_ANSWER,
    ),
    "broadcast": Method(
        "One message published to each of several rooms; a result per room.",
        ("rooms", "text"),
        ("user", "data"),
        _obj(
            results={
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["room"],
                    "properties": {"room": _STR, "seq": _INT, "error": _STR, "detail": _STR},
                },
            }
        ),
    ),
    "disconnect": Method(
        "Close a user's connections (in one room, or in every room) on every instance.",
        ("user",),
        ("room", "reason", "reconnect"),
        _obj(user=_STR, room={"type": "string", "nullable": True}, code=_INT),
    ),
    "kick": Method(
        "Close a user's connections to a room now (they may join again).",
        ("room", "user"),
        ("reason",),
        _obj(room=_STR, user=_STR, code=_INT),
    ),
    "ban": Method(
        "Refuse a user's joins to a room until the ban expires, and close them there now.",
        ("room", "user"),
        ("duration", "reason"),
        _obj(room=_STR, user=_STR, duration={"type": "number", "nullable": True}, code=_INT),
    ),
    "unban": Method(
        "Lift a ban.",
        ("room", "user"),
        (),
        _obj(room=_STR, user=_STR, lifted={"type": "boolean"}),
    ),
    "delete": Method(
        "Take a message out of the history; every member gets a ``deleted`` event.",
        ("room", "seq"),
        (),
        _SEQ_ANSWER,
    ),
    "presence": Method(
        "The members of a room over every instance.",
        ("room",),
        (),
        _obj(room=_STR, members=_INT, users={"type": "array", "items": _STR}),
    ),
    "history": Method(
        "The newest ``limit`` messages of a room above ``since``, oldest first.",
        ("room",),
        ("since", "limit"),
        _obj(room=_STR, messages={"type": "array", "items": _MESSAGE}),
    ),
    "rooms": Method(
        "Rooms with members over every instance, busiest first; while some Redis shards are "
        "down, their rooms are left out and ``down`` names the shards.",
        (),
        (),
        {
            "type": "object",
            "required": ["rooms"],
            "properties": {
                "rooms": {"type": "array", "items": _obj(name=_STR, members=_INT)},
                "down": {"type": "array", "items": _obj(shard=_INT, url=_STR)},
            },
        },
    ),
}


def parse_body(method: Method, body: bytes) -> dict[str, Any]:
    """The fields of ``method`` in ``body`` (a JSON object), checked, with defaults filled in.

    Raises :class:`ApiError` ``bad_json``, ``unknown_field``, ``missing_field`` or
    ``bad_field`` (the last three name the field)."""
    try:
        given = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError:
        raise ApiError("bad_json", "the body is not valid JSON") from None
    if not isinstance(given, dict):
        raise ApiError("bad_json", "the body must be one JSON object")
    taken = (*method.required, *method.optional)
    for name in given:
        if name not in taken:
            raise ApiError("unknown_field", f"{name!r} is not a field of this method", name)
    fields: dict[str, Any] = {}
    for name in taken:
        value = given.get(name)
        if value is None:
            if name in method.required:
                raise ApiError("missing_field", f"{name} is required", name)
            if name in DEFAULTS:
                fields[name] = DEFAULTS[name]
            continue
        try:
            fields[name] = FIELDS[name].check(value)
        except ValueError as exc:
            raise ApiError("bad_field", f"{name} {exc}", name) from None
    return fields


def openapi(version: str) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the API (served at ``/api/v1/openapi.json``)."""
    error = {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "enum": list(ERRORS)},
            "detail": _STR,
            "field": _STR,
        },
    }
    statuses = sorted({status for status, _ in ERRORS.values()})
    paths: dict[str, Any] = {}
    for name, method in METHODS.items():
        body = {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                **{field: FIELDS[field].schema for field in method.required},
                **{field: _nullable(FIELDS[field].schema) for field in method.optional},
            },
        }
        if method.required:
            body["required"] = list(method.required)
        responses: dict[str, Any] = {
            "200": {
                "description": "done",
                "content": {"application/json": {"schema": method.answer}},
            }
        }
        for status in statuses:
            codes = [code for code, (s, _) in ERRORS.items() if s == status]
            responses[str(status)] = {
                "description": ", ".join(codes),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        paths[f"/api/v1/{name}"] = {
            "post": {
                "operationId": name,
                "summary": method.summary,
                "requestBody": {
                    "required": bool(method.required),
                    "content": {"application/json": {"schema": body}},
                },
                "responses": responses,
            }
        }
    return {
        "openapi": "3.0.3",
        "info": {"title": "roomhub server API", "version": version},
        "paths": paths,
        "components": {
            "schemas": {"Error": error},
            "securitySchemes": {"key": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
        "security": [{"key": []}],
    }


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field may be given as null (the same as absent)."""
    return schema if "type" not in schema else {**schema, "nullable": True}
