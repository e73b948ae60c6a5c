"""One client connection: its outbox, its writer, the slow-consumer rule and the rate limiter.

Hubs hand events to :meth:`Connection.deliver`, which never awaits. When nothing is queued
and the transport is not backed up, the frame is written at once (the fast path). Otherwise
the encoded events wait in the outbox and a writer task, started on demand, sends everything
that waits as one frame each time the transport drains. An outbox that grows past its limit
marks a slow consumer, which is closed with 1013.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from aiohttp import web

from . import metrics
from .protocol import CloseReason, batch, frame_header

log = logging.getLogger("roomhub.connection")

CLOSE_TIMEOUT = 2.0  # seconds a close handshake may take before the transport is aborted


class Connection:
    """A joined WebSocket client.

    ``outbox`` holds encoded events (bytes) waiting to be written; its length is in events.
    ``close_reason`` is set by whoever decides to close.
    """

    __slots__ = (
        "_closer",
        "_protocol",
        "_strikes",
        "_tokens",
        "_transport",
        "_updated",
        "_writer",
        "burst",
        "close_reason",
        "outbox",
        "outbox_limit",
        "rate",
        "room",
        "user",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        *,
        room: str,
        user: str,
        outbox_limit: int,
        rate: float,
        burst: int,
    ) -> None:
        self.ws = ws
        self.room = room
        self.user = user
        self.outbox: deque[bytes] = deque()
        self.outbox_limit = outbox_limit
        self.rate = rate
        self.burst = burst
        self.close_reason: CloseReason | None = None
        self._transport = request.transport
        self._protocol = request.protocol
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._tokens = float(burst)
        self._updated = time.monotonic()
        self._strikes = 0

    @property
    def closing(self) -> bool:
        return self.close_reason is not None or self.ws.closed

    # -- outbound -------------------------------------------------------------------------

    def deliver(self, frame: bytes, events: list[bytes]) -> int:
        """Hand ``events`` (already joined into ``frame``) to this client without waiting.

        Returns the number of frames written now (0 or 1); queued events are written later
        by the writer task.
        """
        if self.closing:
            return 0
        if not self.outbox and self._writer is None and not self._protocol.writing_paused:
            return self._write(frame)
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
        if self.deliver(event, [event]):
            metrics.FRAMES_SENT.inc()

    def _write(self, frame: bytes) -> int:
        transport = self._transport
        if transport is None or transport.is_closing() or self.ws.closed:
            return 0
        transport.write(frame_header(len(frame)) + frame)
        return 1

    async def _drain(self) -> None:
        """Writer task: send all queued events as one frame per transport drain."""
        try:
            while self.outbox and not self.closing:
                if self._protocol.writing_paused:
                    # Flow control: wait until the transport buffer is below its low-water mark.
                    await self._protocol._drain_helper()
                    continue
                pending = list(self.outbox)
                self.outbox.clear()
                if self._write(batch(pending)):
                    metrics.FRAMES_SENT.inc()
        except ConnectionError:
            self.outbox.clear()
        finally:
            self._writer = None

    async def flush(self, budget: float) -> None:
        """Wait up to ``budget`` seconds for the outbox to be written."""
        writer = self._writer
        if writer is not None:
            await asyncio.wait([writer], timeout=budget)

    # -- closing --------------------------------------------------------------------------

    def close(self, reason: CloseReason) -> None:
        """Start closing with ``reason`` (its code, text and metric label); first reason wins."""
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self.outbox.clear()
        self._closer = asyncio.create_task(self.close_now(reason))

    async def close_now(self, reason: CloseReason) -> None:
        """Close handshake bounded by ``CLOSE_TIMEOUT`` seconds, then abort the transport."""
        self.close_reason = self.close_reason or reason
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.ws.close(code=reason.code, message=reason.text.encode())
        except (TimeoutError, ConnectionError):
            if self._transport is not None:
                self._transport.abort()

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
