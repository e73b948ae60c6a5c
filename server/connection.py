"""One client connection: its outbox, its writer, the closing handshake, the rate limiter.

Hubs hand events to :meth:`Connection.deliver`, which never awaits. When nothing is queued
and the transport is not backed up, the frame is written at once (the fast path). Otherwise
the encoded events wait in the outbox and a writer task, started on demand, sends what waits
as frames of at most ``max_frame_size`` bytes each time the transport drains. An outbox that
grows past its limit marks a slow consumer, which is closed with 1013.

A close the server starts (:meth:`Connection.close`) sends the close frame after every event
already queued (1013 drops the outbox first). The handler keeps reading and discarding the
client's frames until its close frame arrives, then :meth:`Connection.finish` ends TCP with a
FIN. A client that does not answer within ``close_timeout`` seconds is half-closed then, or
reset if it has stopped reading altogether.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from . import metrics
from .protocol import PING_FRAME, CloseReason, batch, close_frame, take_batch, text_frame

log = logging.getLogger("roomhub.connection")

PING_AFTER_SWEEPS = 3
"""Heartbeat sweeps without a frame from the client before it is pinged; one more closes it.
Sweeps come every half ``ROOMHUB_HEARTBEAT`` and a frame may arrive just before one, so the
third is the first to prove ``ROOMHUB_HEARTBEAT`` seconds of silence (at most 1.5 times that)."""


def backed_up(transport: asyncio.Transport) -> bool:
    """True while ``transport`` holds more unsent bytes than its high-water mark (asyncio's
    flow control pauses the protocol then)."""
    return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]


async def wait_writable(transport: asyncio.Transport, writer: AbstractStreamWriter) -> None:
    """Wait until ``transport`` takes writes again (aiohttp's ``writer.drain()`` waits for
    asyncio's resume below the low-water mark).

    Raises ``ConnectionError`` when the connection is lost while waiting, and
    ``ConnectionResetError`` when the transport is closing before or after the wait:
    ``drain()`` returns at once on a lost connection, so its return alone proves nothing.
    """
    if not transport.is_closing():
        await writer.drain()
    if transport.is_closing():
        raise ConnectionResetError("transport is closing")


class Connection:
    """A joined WebSocket client.

    ``outbox`` holds encoded events (bytes) waiting to be written; its length is in events.
    It is None while nothing waits: an empty deque costs 0.7 KB per idle connection, and one
    that grew in a burst keeps its blocks (docs/memory.md).
    ``close_reason`` is set by whoever decides to close; the first reason wins.
    """

    __slots__ = (
        "_close_sent",
        "_strikes",
        "_tokens",
        "_transport",
        "_updated",
        "_writer",
        "_ws_writer",
        "burst",
        "close_reason",
        "close_timeout",
        "max_frame_size",
        "outbox",
        "outbox_limit",
        "quiet_sweeps",
        "rate",
        "room",
        "user",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        writer: AbstractStreamWriter,
        *,
        room: str,
        user: str,
        outbox_limit: int,
        max_frame_size: int,
        close_timeout: float,
        rate: float,
        burst: int,
    ) -> None:
        self.ws = ws
        self.room = room
        self.user = user
        self.outbox: deque[bytes] | None = None
        self.outbox_limit = outbox_limit
        self.max_frame_size = max_frame_size
        self.close_timeout = close_timeout
        self.rate = rate
        self.burst = burst
        self.close_reason: CloseReason | None = None
        self._transport: asyncio.Transport = request.transport  # type: ignore[assignment]
        self._ws_writer = writer
        self._writer: asyncio.Task[None] | None = None
        self._close_sent = False
        self.quiet_sweeps = 0
        self._tokens = float(burst)
        self._updated = time.monotonic()
        self._strikes = 0

    @property
    def closing(self) -> bool:
        return self.close_reason is not None or self.ws.closed

    # -- outbound -------------------------------------------------------------------------

    def deliver(self, wire: bytes, events: list[bytes]) -> int:
        """Hand ``events`` to this client without waiting; ``wire`` is them as one text frame
        (header and payload, :func:`~server.protocol.text_frame`), written as is when nothing
        waits, so a fan-out builds it once for all recipients.

        Returns the number of frames written now (0 or 1); queued events are written later
        by the writer task.
        """
        if self.closing:
            return 0
        if not self.outbox and self._writer is None and not backed_up(self._transport):
            return self._write(wire)
        if self.outbox is None:
            self.outbox = deque()
        self.outbox.extend(events)
        if len(self.outbox) > self.outbox_limit:
            log.warning("slow_consumer", extra={"fields": {"room": self.room, "user": self.user}})
            self.close(CloseReason.SLOW_CONSUMER)
        elif self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        return 0

    def send_event(self, event: bytes) -> None:
        """Send one encoded event to this client only (welcome, error), in order with the rest."""
        metrics.EVENTS_DELIVERED.inc()
        if self.deliver(text_frame(event), [event]):
            metrics.FRAMES_SENT.inc()

    def _write(self, wire: bytes) -> int:
        transport = self._transport
        if transport.is_closing():
            return 0
        transport.write(wire)
        return 1

    async def _drain(self) -> None:
        """Writer task: send the outbox as frames of at most ``max_frame_size`` bytes, waiting
        for the transport to drain between them; then the close frame if one is due.

        A connection that is lost ends it quietly; any other exception closes the client with
        1011 and is logged once.
        """
        try:
            while self.outbox:
                if backed_up(self._transport):
                    await wait_writable(self._transport, self._ws_writer)
                    continue
                if not self._write(text_frame(batch(take_batch(self.outbox, self.max_frame_size)))):
                    break
                metrics.FRAMES_SENT.inc()
        except ConnectionError:
            pass
        except Exception:
            log.exception("writer_failed", extra={"fields": {"room": self.room, "user": self.user}})
            self.close(CloseReason.ERROR)
        finally:
            self.outbox = None
            self._writer = None
        if self.close_reason is not None:
            self._send_close()

    async def flush(self, budget: float) -> None:
        """Wait up to ``budget`` seconds for the outbox to be written."""
        writer = self._writer
        if writer is not None:
            await asyncio.wait([writer], timeout=budget)

    def heartbeat(self) -> None:
        """One heartbeat sweep (every half ``ROOMHUB_HEARTBEAT``). ``quiet_sweeps`` counts the
        sweeps since the client's last frame: after ``PING_AFTER_SWEEPS`` the client is
        pinged, after one more it is closed with ``HEARTBEAT_TIMEOUT``. The ping is written to
        the transport at once: after the frames already written, ahead of events still waiting
        in the outbox (RFC 6455 5.5 lets control frames come between data frames)."""
        if self.closing:
            return
        self.quiet_sweeps += 1
        if self.quiet_sweeps == PING_AFTER_SWEEPS:
            if not self._transport.is_closing():
                self._transport.write(PING_FRAME)
        elif self.quiet_sweeps > PING_AFTER_SWEEPS:
            self.close(CloseReason.HEARTBEAT_TIMEOUT)

    # -- closing --------------------------------------------------------------------------

    def close(self, reason: CloseReason) -> None:
        """Start closing with ``reason`` (its code, text and metric label); first reason wins.

        The close frame follows every event already queued, except for ``SLOW_CONSUMER``,
        which drops the outbox. Never awaits; the handler finishes the handshake.
        """
        if self.close_reason is not None or self.ws.closed:
            return
        self.close_reason = reason
        if reason is CloseReason.SLOW_CONSUMER:
            self.outbox = None
        self._start_close_timer()
        if self._writer is None or reason is CloseReason.SLOW_CONSUMER:
            self._send_close()

    def _send_close(self) -> None:
        if self._close_sent or self.close_reason is None:
            return
        self._close_sent = True
        if not self._transport.is_closing():
            self._transport.write(close_frame(self.close_reason.code, self.close_reason.text))

    def _start_close_timer(self) -> None:
        asyncio.get_running_loop().call_later(self.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        """The client did not finish the handshake in time: half-close, or reset a client that
        has stopped reading (its unread bytes would never reach it anyway)."""
        transport = self._transport
        if transport.get_write_buffer_size():
            transport.abort()
        elif not transport.is_closing():
            transport.write_eof()
            transport.close()

    async def finish(self, client_closed: bool) -> None:
        """End the connection once the handler has read the client's last frame.

        ``client_closed``: the client's close frame arrived. A client that closed first gets
        the 1000 reply; after a close the server started, TCP ends with a FIN (half-close,
        then close) and the close timer resets a client that does not read.
        """
        if self.close_reason is None:
            if client_closed:
                await self.ws.close(drain=False)
                self._start_close_timer()
            return
        if not self._close_sent:
            self.outbox = None
            self._send_close()
        transport = self._transport
        if not transport.is_closing():
            transport.write_eof()
            transport.close()

    # -- inbound --------------------------------------------------------------------------

    def allow(self) -> bool:
        """Token bucket: ``rate`` frames per second, bursts up to ``burst``."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            self._strikes = 0
            return True
        self._strikes += 1
        return False

    @property
    def strikes(self) -> int:
        """Frames refused in a row by the rate limiter."""
        return self._strikes
