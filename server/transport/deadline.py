"""The handshake timeout: a connection must send its whole first request header (a WebSocket
upgrade or any HTTP request) within ``ROOMHUB_HANDSHAKE_TIMEOUT`` seconds of connecting, or
it is closed and counted in ``chat_handshake_timeouts_total``. One that sends nothing is
closed the same way.

aiohttp itself closes a connection whose request header is incomplete once its
``keepalive_timeout`` has passed since it connected or since its previous answer
(``RequestHandler`` in aiohttp 3.14); ``server.app.create_app`` sets that to the handshake
timeout, which covers every later request of a keep-alive connection. aiohttp does not say
when it does so, so the first request, where slow or silent clients hold sockets, gets its
deadline here too: :class:`HeaderDeadline` stands between the socket and aiohttp's protocol
until the header's blank line has arrived, then only passes data on. A WebSocket upgrade
then moves the socket to roomhub's own protocol (:mod:`.upgrade`) and this object is gone.

Like nginx's ``client_header_timeout``, the deadline counts from the connection, not from the
last byte: a client that sends one byte a second does not extend it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from aiohttp import web

from ..ops import metrics

HEADER_END = (b"\r\n\r\n", b"\n\n")
"""What ends a request header (RFC 9112 section 2.2 lets a server accept a bare LF)."""


class HeaderDeadline(asyncio.Protocol):
    """``inner`` (aiohttp's protocol for one connection) behind a deadline of ``timeout``
    seconds for the end of the first request header."""

    __slots__ = ("deadline", "done", "inner", "tail", "timeout", "timer", "transport")

    def __init__(self, inner: asyncio.Protocol, timeout: float) -> None:
        self.inner = inner
        self.timeout = timeout
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.tail = b""  # the last bytes seen, in case a header end is split over two reads
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transport: asyncio's or uvloop's (no asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + self.timeout
        self.timer = loop.call_at(self.deadline, self._expired)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.done:
            seen = self.tail + data
            if any(end in seen for end in HEADER_END):
                self._finish()
            else:
                self.tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        # aiohttp's own timer may close it at the same moment as ours would have.
        if not self.done and asyncio.get_running_loop().time() >= self.deadline:
            metrics.HANDSHAKE_TIMEOUTS.inc()
        self._finish()
        self.inner.connection_lost(exc)

    def _finish(self) -> None:
        self.done, self.tail = True, b""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.transport is not None and not self.done:
            metrics.HANDSHAKE_TIMEOUTS.inc()
            self.done = True
            self.transport.close()


def protocol_factory(server: web.Server, timeout: float) -> Callable[[], HeaderDeadline]:
    """What ``loop.create_server`` calls per connection: aiohttp's protocol behind a
    :class:`HeaderDeadline` of ``timeout`` seconds."""
    return lambda: HeaderDeadline(server(), timeout)


async def listen(
    runner: web.AppRunner, host: str, port: int, header_timeout: float, reuse_port: bool
) -> asyncio.Server:
    """Serve ``runner``'s app on ``host:port`` with a deadline of ``header_timeout`` seconds (what
    ``web.TCPSite`` does, with the same backlog). Raises ``OSError`` when it cannot listen.
    Stop listening with ``close()`` on the result before ``runner.cleanup()``."""
    assert runner.server is not None, "call runner.setup() first"
    loop = asyncio.get_running_loop()
    factory = protocol_factory(runner.server, header_timeout)
    return await loop.create_server(factory, host, port, backlog=128, reuse_port=reuse_port or None)
