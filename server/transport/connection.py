"""One client connection after the upgrade: its socket, frames in, events out, the closing
handshake and the rate limiter.

A :class:`Connection` is the asyncio protocol of its socket (:func:`.upgrade.take_over` hands
it over from aiohttp), so an idle connection costs no task. Frames are read with the
Sans-I/O ``Protocol`` of the ``websockets`` library (RFC 6455 framing, masking, fragments,
control frames, the closing handshake; its guide:
https://websockets.readthedocs.io/en/stable/howto/sansio.html): it answers pings and a
client's close frame itself. Each whole message goes to the app's :class:`Dispatcher` as it arrives.

Hubs hand events to :meth:`Connection.deliver`, which never awaits. When nothing is queued
and the socket is not backed up, the frame is written at once (the fast path). Otherwise the
encoded events wait in the outbox and a writer task, started on demand, sends what waits as
frames of at most ``max_frame_size`` bytes each time the socket drains. An outbox that grows
past its limit marks a slow consumer, which is closed with 1013.

A close the server starts (:meth:`Connection.close`) sends the close frame after every event
already queued (1013 drops the outbox first). Frames that arrive after it are read and
discarded until the client's close frame, then TCP ends with a FIN. A client that does not
answer within ``close_timeout`` seconds is half-closed then, or reset if it has stopped
reading altogether.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Protocol

from websockets.exceptions import PayloadTooBig
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, Side
from websockets.protocol import Protocol as Frames

from ..ops import metrics
from ..ops.config import Settings
from ..wire.protocol import PING_FRAME, CloseReason, batch, take_batch, text_frame

log = logging.getLogger("roomhub.connection")

FRAMES_LOG = logging.getLogger("roomhub.frames")
"""The ``websockets`` protocol's own log lines (one per closed connection at info)."""

PING_AFTER_SWEEPS = 3
"""Heartbeat sweeps without a frame from the client before it is pinged; one more closes it.
Sweeps come every half ``ROOMHUB_HEARTBEAT`` and a frame may arrive just before one, so the
third is the first to prove ``ROOMHUB_HEARTBEAT`` seconds of silence (at most 1.5 times that)."""

READ_LIMIT_FACTOR = 4
"""The frame reader's own message limit, as a multiple of ``max_msg_size``: a message between
the two is read whole and refused with a proper close handshake; one beyond is cut off at
once with 1009."""


class Dispatcher(Protocol):
    """What a connection hands its messages and its end to (the app's
    :class:`~server.rooms.dispatch.RoomDispatcher`)."""

    settings: Settings

    def on_message(self, conn: Connection, text: str | None) -> None:
        """A whole data message: its text, or None for a binary one."""

    def on_ping(self, conn: Connection) -> None:
        """A ping (already answered with a pong)."""

    def on_end(self, conn: Connection, reason: CloseReason, code: int | None) -> None:
        """The socket is closed: why, and the close code sent or received (None: none)."""


class Connection(asyncio.Protocol):
    """A joined WebSocket client.

    ``outbox`` holds encoded events (bytes) waiting to be written; its length is in events.
    It is None while nothing waits: an empty deque costs 0.7 KB per idle connection, and one
    that grew in a burst keeps its blocks (docs/memory.md).
    ``close_reason`` is set when the server decides to close; the first reason wins.
    ``closing`` is True from then on, and once the client has closed or the socket is gone.
    """

    __slots__ = (
        "_close_timer",
        "_drained",
        "_fragments",
        "_frames",
        "_lost",
        "_paused",
        "_strikes",
        "_tokens",
        "_transport",
        "_updated",
        "_writer",
        "close_reason",
        "closing",
        "dispatcher",
        "expiry",
        "outbox",
        "quiet_sweeps",
        "room",
        "user",
    )

    def __init__(self, dispatcher: Dispatcher, *, room: str, user: str) -> None:
        settings = dispatcher.settings
        self.dispatcher = dispatcher
        self.room = room
        self.user = user
        self._frames = Frames(
            Side.SERVER, max_size=READ_LIMIT_FACTOR * settings.max_msg_size, logger=FRAMES_LOG
        )
        self._transport: asyncio.Transport | None = None
        self.outbox: deque[bytes] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.close_reason: CloseReason | None = None
        self.closing = False
        self._lost = False
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self._fragments: tuple[Opcode, list[bytes]] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.quiet_sweeps = 0
        self._tokens = float(settings.rate_burst)
        self._updated = time.monotonic()
        self._strikes = 0

    # -- the socket (asyncio.Protocol) ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        frames = self._frames
        frames.receive_data(data)
        for frame in frames.events_received():
            self.quiet_sweeps = 0
            try:
                self._on_frame(frame)
            except Exception:
                log.exception(
                    "frame_failed", extra={"fields": {"room": self.room, "user": self.user}}
                )
                self.close(CloseReason.ERROR)
        self._send_frames()

    def eof_received(self) -> None:
        self._frames.receive_eof()
        self._send_frames()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writers()

    def _wake_writers(self) -> None:
        """Let whatever waits in :meth:`wait_writable` go on (it checks why itself)."""
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = self.closing = True
        for timer in (self._close_timer, self.expiry):
            if timer is not None:
                timer.cancel()
        self._wake_writers()
        reason, code = self._end()
        self.dispatcher.on_end(self, reason, code)

    def _end(self) -> tuple[CloseReason, int | None]:
        """Why the connection ended, and the close code sent (or the client's, or None)."""
        if self.close_reason is not None:
            return self.close_reason, self.close_reason.code
        frames = self._frames
        if frames.close_rcvd_then_sent and frames.close_rcvd is not None:
            return CloseReason.NORMAL, frames.close_rcvd.code
        code = frames.close_sent.code if frames.close_sent is not None else None
        if isinstance(frames.parser_exc, PayloadTooBig):
            return CloseReason.TOO_BIG, code
        if code is not None:
            return CloseReason.PROTOCOL_ERROR, code
        return CloseReason.CLIENT_GONE, None

    # -- inbound --------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._on_message(opcode, frame.data)
            else:
                self._fragments = (opcode, [frame.data])
        elif opcode is Opcode.CONT and self._fragments is not None:
            opcode, parts = self._fragments
            parts.append(frame.data)
            if frame.fin:
                self._fragments = None
                self._on_message(opcode, b"".join(parts))
        elif opcode is Opcode.PING and not self.closing:
            self.dispatcher.on_ping(self)

    def _on_message(self, opcode: Opcode, data: bytes) -> None:
        if self.closing:
            return
        if len(data) > self.dispatcher.settings.max_msg_size:
            self.close(CloseReason.TOO_BIG)
        elif opcode is Opcode.BINARY:
            self.dispatcher.on_message(self, None)
        else:
            try:
                text = data.decode()
            except UnicodeDecodeError as exc:
                # RFC 6455 section 8.1: fail the connection, as for a framing error.
                self._frames.fail(1007, f"{exc.reason} at position {exc.start}")
                self.closing = True
                return
            self.dispatcher.on_message(self, text)

    def allow(self) -> bool:
        """Token bucket: ``rate`` frames per second, bursts up to ``burst``."""
        settings = self.dispatcher.settings
        now = time.monotonic()
        self._tokens = min(
            settings.rate_burst, self._tokens + (now - self._updated) * settings.rate_limit
        )
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

    # -- outbound -------------------------------------------------------------------------

    def deliver(self, wire: bytes, events: list[bytes]) -> int:
        """Hand ``events`` to this client without waiting; ``wire`` is them as one text frame
        (header and payload, :func:`~server.wire.protocol.text_frame`), written as is when nothing
        waits, so a fan-out builds it once for all recipients.

        Returns the number of frames written now (0 or 1); queued events are written later
        by the writer task.
        """
        if self.closing:
            return 0
        if not self.outbox and self._writer is None and not self._paused:
            self._transport.write(wire)  # type: ignore[union-attr]
            return 1
        if self.outbox is None:
            self.outbox = deque()
        self.outbox.extend(events)
        if len(self.outbox) > self.dispatcher.settings.outbox_limit:
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

    async def send(self, wire: bytes) -> None:
        """Write one frame, then wait until the socket takes writes again (one await per send,
        for ``ROOMHUB_HUB_MODE=global``). Raises ``ConnectionResetError`` once closing."""
        if self.closing:
            raise ConnectionResetError("connection is closing")
        self._transport.write(wire)  # type: ignore[union-attr]
        await self.wait_writable()

    async def wait_writable(self) -> None:
        """Wait while asyncio's flow control holds writes back (above the socket's high-water
        mark, until it drains below the low-water mark). Raises ``ConnectionResetError`` when
        the connection is lost before or while waiting."""
        if self._paused and not self._lost:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)
        if self._lost:
            raise ConnectionResetError("connection lost")

    async def _drain(self) -> None:
        """Writer task: send the outbox as frames of at most ``max_frame_size`` bytes, waiting
        for the socket to drain between them; then the close frame if one is due.

        A connection that is lost ends it quietly; any other exception closes the client with
        1011 and is logged once.
        """
        max_frame_size = self.dispatcher.settings.max_frame_size
        try:
            while self.outbox and not self._lost:
                if self._paused:
                    await self.wait_writable()
                    continue
                self._transport.write(text_frame(batch(take_batch(self.outbox, max_frame_size))))  # type: ignore[union-attr]
                metrics.FRAMES_SENT.inc()
        except ConnectionError:
            pass
        except Exception:
            log.exception("writer_failed", extra={"fields": {"room": self.room, "user": self.user}})
            self.close(CloseReason.ERROR)
        finally:
            self.outbox = None
            self._writer = None
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
        the socket at once: after the frames already written, ahead of events still waiting
        in the outbox (RFC 6455 5.5 lets control frames come between data frames)."""
        if self.closing:
            return
        self.quiet_sweeps += 1
        if self.quiet_sweeps == PING_AFTER_SWEEPS:
            self._transport.write(PING_FRAME)  # type: ignore[union-attr]
        elif self.quiet_sweeps > PING_AFTER_SWEEPS:
            self.close(CloseReason.HEARTBEAT_TIMEOUT)

    # -- closing --------------------------------------------------------------------------

    def close(self, reason: CloseReason) -> None:
        """Start closing with ``reason`` (its code, text and metric label); first reason wins.

        The close frame follows every event already queued, except for ``SLOW_CONSUMER``,
        which drops the outbox. Never awaits.
        """
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        if reason is CloseReason.SLOW_CONSUMER:
            self.outbox = None
        self._start_close_timer()
        if self._writer is None or reason is CloseReason.SLOW_CONSUMER:
            self._send_close()

    def abort(self) -> None:
        """Reset the connection at once (shutdown, after its grace period)."""
        if self._transport is not None:
            self._transport.abort()

    def _send_close(self) -> None:
        reason = self.close_reason
        if reason is None or self._lost or self._frames.state is not OPEN:
            return
        self._frames.send_close(reason.code, reason.text)
        self._send_frames()

    def _send_frames(self) -> None:
        """Write what the frame protocol has to send (pongs, close frames); after its end of
        stream (the closing handshake is over, or the client broke the protocol), end TCP."""
        frames, transport = self._frames, self._transport
        for data in frames.data_to_send():
            if transport is None or transport.is_closing():
                break
            if data:
                transport.write(data)
            else:
                transport.write_eof()
                transport.close()
                self._start_close_timer()
        if frames.state is not OPEN:
            self.closing = True

    def _start_close_timer(self) -> None:
        if self._close_timer is None and not self._lost:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(
                self.dispatcher.settings.close_timeout, self._close_timed_out
            )

    def _close_timed_out(self) -> None:
        """The client did not finish the handshake in time: half-close, or reset a client that
        has stopped reading (its unread bytes would never reach it anyway)."""
        transport = self._transport
        if transport is None:
            return
        if transport.get_write_buffer_size():
            transport.abort()
        elif not transport.is_closing():
            transport.write_eof()
            transport.close()
