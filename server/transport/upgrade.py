"""Taking an accepted WebSocket upgrade over from aiohttp.

aiohttp serves every HTTP request, the upgrade included. Once roomhub has accepted an upgrade,
:func:`take_over` answers 101 itself and moves the socket to roomhub's own protocol object, and
aiohttp lets go of the connection: its request, its HTTP parser and its two tasks are freed at
once instead of living as long as the WebSocket (they were 13.4 KB of a 15.7 KB idle
connection, docs/memory.md).

aiohttp has no public call for this. It relies on three facts of aiohttp 3.14, which
tests/test_upgrade.py checks against the installed version (pyproject.toml keeps aiohttp to
the 3.14 series, and :func:`seam_problem`, called at start-up, names any of the parts it
touches that the installed aiohttp lacks; docs/memory.md says why and the way out):

- ``RequestHandler.connection_lost()`` drops the handler's hold on the connection and takes
  it off the server's list; with its ``transport`` set to None first, it closes nothing;
- the handler's ``_message_tail`` holds what the client sent after the upgrade request;
- a response returned after that is not written (the transport is gone) and ends the
  request as a client disconnect, without closing anything.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from importlib import metadata

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
"""RFC 6455 section 1.3: appended to ``Sec-WebSocket-Key`` before hashing."""


SEAMS = (
    (web.BaseRequest, "transport"),
    (web.BaseRequest, "protocol"),
    (RequestHandler, "_message_tail"),
    (RequestHandler, "transport"),
    (RequestHandler, "connection_lost"),
)
"""The parts of aiohttp :func:`take_over` touches: the request's transport and handler (its
``RequestHandler``), the handler's early bytes, transport and ``connection_lost``."""


def supported_aiohttp() -> str:
    """The aiohttp versions roomhub declares (pyproject.toml, via the installed metadata),
    e.g. ``aiohttp<3.15,>=3.14.5``."""
    for requirement in metadata.requires("roomhub") or ():
        if re.match(r"aiohttp(?![\w.-])", requirement):
            return requirement.replace(" ", "")
    raise LookupError("roomhub's metadata names no aiohttp requirement")


def seam_problem() -> str | None:
    """None when the installed aiohttp has every part in :data:`SEAMS`; otherwise a one-line
    message naming the missing ones, the installed aiohttp version and the supported range."""
    missing = [f"{cls.__name__}.{name}" for cls, name in SEAMS if not hasattr(cls, name)]
    if not missing:
        return None
    return (
        f"aiohttp {aiohttp.__version__} lacks {', '.join(missing)}, which "
        f"server/transport/upgrade.py hands the WebSocket over with; roomhub supports "
        f"{supported_aiohttp()}"
    )


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for ``Sec-WebSocket-Key`` ``key`` (RFC 6455 section 4.2.2):
    base64 of the SHA-1 of the key followed by :data:`GUID`."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def switching_protocols(key: str) -> bytes:
    """The whole 101 answer to an upgrade request that sent ``key``."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
    ).encode()


def take_over(request: web.Request, protocol: asyncio.Protocol) -> web.StreamResponse:
    """Answer ``request`` (an upgrade that passed every check, so its key is valid) with 101,
    hand its transport to ``protocol`` (``connection_made`` is called, then ``data_received``
    with anything the client sent early) and detach aiohttp from it.

    Returns the response the handler must return: aiohttp's attempt to write it ends the
    request quietly. Raises ``ConnectionResetError`` when the client is already gone.
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client went away during the upgrade")
    handler = request.protocol
    early = handler._message_tail  # RFC 6455 4.1: a client waits for the 101; most send nothing
    transport.set_protocol(protocol)
    handler.transport = None  # what it no longer holds, it does not close
    handler.connection_lost(None)
    protocol.connection_made(transport)
    transport.write(switching_protocols(request.headers["Sec-WebSocket-Key"]))
    if not transport.is_reading():  # aiohttp pauses reading when the early bytes pile up
        transport.resume_reading()
    if early:
        protocol.data_received(early)
    return web.Response(status=101)
