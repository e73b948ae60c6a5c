"""WebSocket protocol v1: query validation, inbound frames, outbound events, close codes.

The wire format is specified for users in docs/protocol.md. Outbound events are encoded
once (``orjson``) and the bytes are shared by every recipient; :func:`batch` joins several
encoded events into one JSON array frame.
"""

from __future__ import annotations

import math
import re
import secrets
import time
import unicodedata
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import orjson


class CloseReason(Enum):
    """Why a connection ended: the close ``code`` the server sends, the reason ``text`` in that
    close frame, and the ``label`` of ``chat_connections_closed_total``.

    Codes: RFC 6455 section 7.4.1; 1013 "Try Again Later" from the IANA WebSocket Close Code
    Number registry; 4001 and up are roomhub's own (4000-4999 are for private use): a code
    from 4000 to 4499 lets the page reconnect, one from 4500 to 4999 tells it not to
    (:func:`may_reconnect`, docs/api.md). 1006 is never
    sent on the wire: it stands for a connection that ended without a close frame
    (``CLIENT_GONE``). ``NORMAL`` is the client's own close, answered with 1000.
    ``HEARTBEAT_TIMEOUT`` uses 1011 as Python ``websockets`` does for its own keepalive
    timeout.
    """

    NORMAL = ("normal", 1000, "")
    CLIENT_GONE = ("client_gone", 1006, "")
    SLOW_CONSUMER = ("slow_consumer", 1013, "slow consumer")
    RATE_LIMITED = ("rate_limited", 1008, "rate limit exceeded")
    PROTOCOL_ERROR = ("protocol_error", 1002, "")
    TOO_BIG = ("too_big", 1009, "message too big")
    HEARTBEAT_TIMEOUT = ("heartbeat_timeout", 1011, "heartbeat timeout")
    SHUTDOWN = ("shutdown", 1001, "server shutdown")
    ERROR = ("error", 1011, "internal error")
    TOKEN_EXPIRED = ("token_expired", 4001, "token expired")
    BROKER_UNAVAILABLE = ("broker_unavailable", 1013, "broker unavailable")
    ROOM_RESET = ("room_reset", 1012, "room restarted")
    RECONNECT = ("reconnect", 4100, "disconnected by the server, reconnect")
    DISCONNECTED = ("disconnected", 4500, "disconnected by the server")
    KICKED = ("kicked", 4501, "kicked from the room")
    BANNED = ("banned", 4502, "banned from the room")

    def __init__(self, label: str, code: int, text: str) -> None:
        self.label = label
        self.code = code
        self.text = text


def may_reconnect(code: int) -> bool:
    """Whether a page closed with ``code`` may connect again by itself: every code but
    roomhub's 4500-4999 (disconnected, kicked, banned: docs/api.md)."""
    return not 4500 <= code <= 4999


MAX_TEXT = 2000
MAX_CLIENT_ID = 64
MAX_USER = 32
ROOM_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
EPOCH_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ProtocolError(ValueError):
    """Bad client input. ``code`` is the machine-readable error code, ``detail`` the text."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """A validated inbound ``message`` frame."""

    text: str
    id: str | None = None
    sent: float | None = None


MODERATION_TYPES = ("delete", "kick", "ban")
MAX_BAN = 366 * 24 * 3600
"""Longest ban a moderator may give, in seconds."""


@dataclass(frozen=True, slots=True)
class ModerationRequest:
    """A validated inbound ``delete``, ``kick`` or ``ban`` frame: ``seq`` for a deletion,
    ``user`` (the member's name) for a kick or ban, ``duration`` (seconds, None: until
    lifted) for a ban, ``id`` the client's id for ``reply_to``."""

    action: str
    seq: int = 0
    user: str = ""
    duration: float | None = None
    id: str | None = None


def validate_room(raw: str | None) -> str:
    """Return the room name; raise ``ProtocolError('bad_room')`` unless 1-64 of [A-Za-z0-9_.-].

    ``.`` and ``..`` are refused too: they cannot stand in a page path (``/rooms/ROOM``).
    """
    if raw is None or not ROOM_RE.fullmatch(raw) or raw in (".", ".."):
        raise ProtocolError("bad_room", "room must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return raw


REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
"""Unicode categories a name may not hold: control, format (zero-width space and joiner,
U+2060, U+FEFF, the bidi controls...: invisible, so ``ali\u200bce`` would pass for
``alice``), surrogate, private use, line and paragraph separators."""
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
"""Unicode categories that draw nothing: a message text needs one character outside them."""


def _name_char_ok(ch: str) -> bool:
    return ch != "\ufffd" and unicodedata.category(ch) not in REFUSED_CATEGORIES


def visible(text: str) -> bool:
    """Whether ``text`` holds a character outside :data:`INVISIBLE_CATEGORIES` (white space,
    control and format characters). Stops at the first one: one lookup for most texts."""
    return any(unicodedata.category(ch) not in INVISIBLE_CATEGORIES for ch in text)


NAME_TRIM_RE = re.compile(r"^[^\S\x00-\x1f\x7f-\x9f]+|[^\S\x00-\x1f\x7f-\x9f]+$")
"""White space at either end of a name that is not a control character (Unicode Cc is
U+0000-U+001F and U+007F-U+009F): ``str.strip()`` would also remove U+001C-U+001F and U+0085,
which the name rule refuses."""


def validate_user(raw: str | None) -> str:
    """Return the user name trimmed of :data:`NAME_TRIM_RE`, or ``guest-xxxx`` when missing or
    blank.

    Raises ``ProtocolError('bad_user')`` when longer than 32 code points or holding a control,
    format (Cf: zero-width and bidi controls among them), surrogate, private-use or
    line/paragraph separator character, or U+FFFD (what a query that is not valid UTF-8
    decodes to).
    """
    name = NAME_TRIM_RE.sub("", raw or "")
    if not name:
        return f"guest-{secrets.token_hex(2)}"
    if len(name) > MAX_USER or not all(map(_name_char_ok, name)):
        raise ProtocolError(
            "bad_user", "user must be 1-32 characters without control or format characters"
        )
    return name


def validate_since(raw: str | None) -> int | None:
    """Return the last sequence number the client saw, or None; ``bad_since`` if not an int >= 0."""
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ProtocolError("bad_since", "since must be a non-negative integer")
    return int(raw)


def validate_epoch(raw: str | None) -> str | None:
    """Return the room epoch the client saw, or None; ``bad_epoch`` unless 1-64 of [A-Za-z0-9_-]."""
    if raw is None or raw == "":
        return None
    if not EPOCH_RE.fullmatch(raw):
        raise ProtocolError("bad_epoch", "epoch must be 1-64 characters of A-Z a-z 0-9 _ -")
    return raw


def parse_frame(data: str) -> ChatMessage | ModerationRequest:
    """Parse one client text frame: a chat message, or a moderation request
    (:data:`MODERATION_TYPES`, whose permission the dispatcher checks).

    Raises ``ProtocolError`` with code ``bad_json`` (not a JSON object), ``bad_message``
    (unknown type, wrong field types, a text without a :func:`visible` character) or
    ``too_long`` (text over 2000 chars).
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProtocolError("bad_json", "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", "frame must hold one JSON object")
    kind = obj.get("type")
    if kind != "message":
        if kind in MODERATION_TYPES:
            return _moderation(kind, obj)
        raise ProtocolError("bad_message", 'type must be "message", "delete", "kick" or "ban"')
    text = obj.get("text")
    if not isinstance(text, str) or not visible(text):
        raise ProtocolError("bad_message", "text must be a string with a visible character")
    if len(text) > MAX_TEXT:
        raise ProtocolError("too_long", f"text is longer than {MAX_TEXT} characters")
    client_id = obj.get("id")
    if client_id is not None and (not isinstance(client_id, str) or len(client_id) > MAX_CLIENT_ID):
        raise ProtocolError("bad_message", f"id must be a string of at most {MAX_CLIENT_ID} chars")
    sent = obj.get("sent")
    if sent is not None and (
        isinstance(sent, bool) or not isinstance(sent, int | float) or not math.isfinite(sent)
    ):
        raise ProtocolError("bad_message", "sent must be a number (client ms)")
    return ChatMessage(text, client_id, sent)


def _moderation(kind: str, obj: dict[str, object]) -> ModerationRequest:
    client_id = obj.get("id")
    if client_id is not None and (not isinstance(client_id, str) or len(client_id) > MAX_CLIENT_ID):
        raise ProtocolError("bad_message", f"id must be a string of at most {MAX_CLIENT_ID} chars")
    if kind == "delete":
        seq = obj.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise ProtocolError("bad_message", "seq must be a positive integer")
        return ModerationRequest(kind, seq=seq, id=client_id)
    user = obj.get("user")
    if not isinstance(user, str) or not user.strip() or len(user) > MAX_USER:
        raise ProtocolError("bad_message", "user must be a member's name")
    duration = obj.get("duration")
    if duration is not None and (
        isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not 0 < duration <= MAX_BAN
    ):
        raise ProtocolError("bad_message", "duration must be seconds above 0, at most a year")
    return ModerationRequest(
        kind, user=user, duration=None if duration is None else float(duration), id=client_id
    )


def client_id_of(data: str) -> str | None:
    """Best-effort ``id`` of a frame that failed validation, for ``reply_to``."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    cid = obj.get("id") if isinstance(obj, dict) else None
    return cid if isinstance(cid, str) and len(cid) <= MAX_CLIENT_ID else None


def now_ms() -> int:
    """Server wall clock in milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def encode(event: dict[str, object]) -> bytes:
    """``event`` as compact JSON bytes of exactly its length.

    ``orjson.dumps`` returns its result in a 4 KiB block however short it is (orjson 3.13:
    4,120 bytes of RSS per small event kept, against 123 for a copy); events are kept for a
    while (room history, batches waiting for their fan-out, outboxes), so they are copied."""
    return bytes(memoryview(orjson.dumps(event)))


def message_event(seq: int, room: str, user: str, msg: ChatMessage) -> bytes:
    event: dict[str, object] = {
        "type": "message",
        "seq": seq,
        "room": room,
        "user": user,
        "text": msg.text,
        "ts": now_ms(),
    }
    if msg.id is not None:
        event["id"] = msg.id
    if msg.sent is not None:
        event["sent"] = msg.sent
    return encode(event)


def server_message_event(
    seq: int, room: str, user: str, text: str, data: object | None, ts: int
) -> bytes:
    """A ``message`` event a backend published through the server API: ``server`` true,
    and its JSON ``data`` when it gave any."""
    event: dict[str, object] = {
        "type": "message",
        "seq": seq,
        "room": room,
        "user": user,
        "text": text,
        "ts": ts,
        "server": True,
    }
    if data is not None:
        event["data"] = data
    return encode(event)


def deleted_event(room: str, seq: int) -> bytes:
    """The message ``seq`` of ``room`` was deleted: the page removes it from view."""
    return encode({"type": "deleted", "room": room, "seq": seq, "ts": now_ms()})


def presence_event(kind: str, user: str, members: int) -> bytes:
    """A ``join`` or ``leave`` event."""
    return encode({"type": kind, "user": user, "members": members, "ts": now_ms()})


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may send, told to the client in ``welcome.limits`` so that it can
    refuse locally what the server would refuse (docs/protocol.md, "welcome").

    ``max_message_bytes``: UTF-8 bytes of one client message (the whole JSON text); a bigger
    one closes the connection with 1009. ``max_text_chars``: Unicode code points of ``text``;
    more gets ``error`` ``too_long``. ``rate_limit``: frames per second the token bucket
    refills; ``rate_burst``: frames it holds (``error`` ``rate_limited`` beyond).
    """

    max_message_bytes: int
    max_text_chars: int
    rate_limit: float
    rate_burst: int


class LimitSettings(Protocol):
    """What :func:`limits_of` reads of the server's settings
    (:class:`server.ops.config.Settings`, which this layer does not import)."""

    @property
    def max_msg_size(self) -> int: ...

    @property
    def rate_limit(self) -> float: ...

    @property
    def rate_burst(self) -> int: ...


def limits_of(settings: LimitSettings) -> Limits:
    """The :class:`Limits` a server with ``settings`` applies to every connection."""
    return Limits(settings.max_msg_size, MAX_TEXT, settings.rate_limit, settings.rate_burst)


def welcome_event(
    room: str,
    user: str,
    epoch: str,
    seq: int,
    members: int,
    online: list[str],
    reset: bool,
    limits: Limits,
    history: list[bytes],
) -> bytes:
    """The first event on a connection. ``members``: how many are in the room; ``online``:
    names of (the first of) them; ``limits``: what the connection may send; ``history``:
    encoded ``message`` events, oldest first."""
    head = orjson.dumps(
        {
            "type": "welcome",
            "room": room,
            "user": user,
            "epoch": epoch,
            "seq": seq,
            "members": members,
            "online": online,
            "reset": reset,
            "limits": limits,
        }
    )
    return head[:-1] + b',"history":[' + b",".join(history) + b"]}"


def bot_event(user: str, text: str, ok: bool, reply_to: str | None, asker: str) -> bytes:
    """A bot reply to the command ``reply_to`` sent by the member named ``asker``."""
    return encode(
        {
            "type": "bot",
            "user": user,
            "text": text,
            "ts": now_ms(),
            "reply_to": reply_to,
            "asker": asker,
            "ok": ok,
        }
    )


def error_event(code: str, detail: str, reply_to: str | None = None) -> bytes:
    event: dict[str, object] = {"type": "error", "code": code, "detail": detail}
    if reply_to is not None:
        event["reply_to"] = reply_to
    return encode(event)


def batch(events: list[bytes]) -> bytes:
    """One frame payload for encoded events: the event itself, or a JSON array of them."""
    if len(events) == 1:
        return events[0]
    return b"[" + b",".join(events) + b"]"


def take_batch(events: deque[bytes], max_size: int) -> list[bytes]:
    """Pop from the left of ``events`` the longest run whose :func:`batch` payload stays within
    ``max_size`` bytes; at least one event, however big."""
    taken = [events.popleft()]
    size = len(taken[0]) + 2  # as the first of an array: "[" + event + "]"
    while events and size + 1 + len(events[0]) <= max_size:
        size += 1 + len(events[0])
        taken.append(events.popleft())
    return taken


PING_FRAME = bytes((0x89, 0))
"""RFC 6455 section 5.5.2: an unmasked ping with no payload."""


def frame_header(length: int) -> bytes:
    """RFC 6455 section 5.2 header of an unmasked final text frame of ``length`` bytes."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return bytes((0x81, 126)) + length.to_bytes(2, "big")
    return bytes((0x81, 127)) + length.to_bytes(8, "big")


def text_frame(payload: bytes) -> bytes:
    """The wire bytes of an unmasked final text frame: :func:`frame_header` then ``payload``.
    Built once per fan-out and written as is to every recipient."""
    return frame_header(len(payload)) + payload
