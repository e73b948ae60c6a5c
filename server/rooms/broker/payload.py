"""What the Redis broker publishes, and how its reader takes it apart.

Three shapes, one per kind of channel (the Lua scripts in ``lua/`` write the first two, Python
writes a bot reply's event payload and the control order):

* a room channel carries events: ``<kind> <seq> <published> <event>``, kind ``m`` (message),
  ``b`` (bot reply or ``deleted``) or ``p`` (presence), ``seq`` 0 outside the sequence,
  ``published`` the publisher's ``time.time()`` in seconds (Python's ``repr`` of it), then the
  encoded event (JSON, no newline); and the notice of a new epoch, ``e 0 0 <epoch>
  [<channel>]``, which a script publishes when it makes the room's epoch (members elsewhere
  may be in a lost one), with the channel of the welcome it was made for (none for a server
  API publish);
* an instance channel carries welcomes: a head line ``w <token> <seq> <members> <reset 0|1>
  <epoch> <room>`` (token 0: a catch-up), then lines holding the JSON-encoded name given
  (``""`` for a catch-up), the JSON list of the names online, and one history event each,
  oldest first; lines are joined by ``\\n``;
* the control channel carries :class:`~server.rooms.broker.Control` orders as JSON
  ``{"action": str, "user": str, "room": str | null}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from . import Control, Event

MESSAGE = b"m"
BOT = b"b"
PRESENCE = b"p"
"""The kinds of event payload; a presence event is the only one that is not urgent."""

NEW_EPOCH = b"e "
"""How the notice of a new epoch starts (``e 0 0 <epoch> [<channel>]``)."""


def decode_epoch(data: bytes) -> tuple[str, bytes]:
    """The epoch of a new-epoch notice and the channel of the welcome it was made for (``b""``
    if none); raises ValueError when ``data`` does not have its shape."""
    kind, _, _, rest = data.split(b" ", 3)
    epoch, _, channel = rest.partition(b" ")
    if kind + b" " != NEW_EPOCH or not epoch:
        raise ValueError("not a new-epoch notice")
    return epoch.decode(), channel


def encode_event(kind: bytes, seq: int, published: float, event: bytes) -> bytes:
    """``<kind> <seq> <published> <event>``; ``published`` in seconds (``time.time()``)."""
    return b"%s %d %s %s" % (kind, seq, repr(published).encode(), event)


def decode_event(data: bytes) -> Event:
    """The :class:`~server.rooms.broker.Event` of an event payload; raises ValueError when
    ``data`` does not have its shape."""
    kind, seq, published, event = data.split(b" ", 3)
    return Event(event, int(seq), kind != PRESENCE, float(published))


@dataclass(frozen=True, slots=True)
class WelcomePayload:
    """A welcome as published: ``name`` is the JSON-encoded name given (``b'""'`` for a
    catch-up), ``online`` the names online, ``history`` the encoded events, oldest first."""

    token: int
    seq: int
    members: int
    reset: bool
    epoch: str
    room: str
    name: bytes
    online: list[str]
    history: list[bytes]


def encode_welcome(welcome: WelcomePayload) -> bytes:
    """The welcome payload (the JOIN and SYNC scripts write the same bytes, in Lua)."""
    w = welcome
    head = f"w {w.token} {w.seq} {w.members} {int(w.reset)} {w.epoch} {w.room}"
    return b"\n".join([head.encode(), welcome.name, orjson.dumps(welcome.online), *welcome.history])


def decode_welcome(data: bytes) -> WelcomePayload:
    """The :class:`WelcomePayload` of a welcome payload; raises ValueError when ``data`` does
    not have its shape."""
    head, name, online, *history = data.split(b"\n")
    _, token, seq, members, reset, epoch, room = head.decode().split(" ", 6)
    return WelcomePayload(
        int(token),
        int(seq),
        int(members),
        reset == "1",
        epoch,
        room,
        name,
        orjson.loads(online),
        history,
    )


def encode_control(order: Control) -> bytes:
    """The control payload of ``order``."""
    return orjson.dumps({"action": order.action, "user": order.user, "room": order.room})


def decode_control(data: bytes) -> Control:
    """The :class:`~server.rooms.broker.Control` of a control payload; raises ValueError when
    ``data`` is not JSON or lacks a field."""
    try:
        fields = orjson.loads(data)
        return Control(fields["action"], fields["user"], fields["room"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"control order without {exc}") from None
