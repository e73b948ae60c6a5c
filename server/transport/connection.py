"""One client connection after the upgrade: its socket, frames in, events out, the closing
handshake and its life (:class:`State`).

A :class:`Connection` is the asyncio protocol of its socket (:func:`.upgrade.take_over` hands
it over from aiohttp), so an idle connection costs no task. The connection splits its
inbound stream into whole frames itself (:func:`.frames.split`) and holds a partial frame until
the rest arrives. The common frame, a whole masked text or binary message while the
connection is open and no fragmented message is in progress, is unmasked and handled at once.
Every other frame goes whole to the Sans-I/O ``Protocol`` of the ``websockets`` library, the
authority on RFC 6455 (fragments, control frames, reserved bits, the closing handshake; its
guide: https://websockets.readthedocs.io/en/stable/howto/sansio.html), which answers pings
and a client's close frame itself and fails the connection on what breaks the RFC. From a
header it fails on at sight (a payload over its limit: 1009; no mask or an unknown opcode:
1002) it reads the stream itself. Each whole message goes to the app's :class:`Dispatcher` as
it arrives, after a :class:`~.bucket.TokenBucket` rate check the dispatcher asks for.

Hubs hand events to :meth:`Connection.deliver`, which never awaits. When nothing is queued
and the socket is not backed up, the frame is written at once (the fast path). Otherwise the
encoded events wait in the :class:`~.outbox.Outbox` and its writer task, started on demand,
sends what waits as frames of at most ``max_frame_size`` bytes each time the socket drains.
An outbox that grows past its limit marks a slow consumer, which is closed with 1013.

A close the server starts (:meth:`Connection.close`) sends the close frame after every event
already queued (1013 drops the outbox first). Frames that arrive after it are read and
discarded until the client's close frame, then TCP ends with a FIN. A client that does not
answer within ``close_timeout`` seconds gets :meth:`Connection.end_tcp`: a FIN when all the
server wrote is in the kernel, which still delivers it, close frame included, to a client
that reads late; a reset only when bytes are left that the kernel would not take (the client
stopped reading and its buffers are full), so that such a client is cut at once rather than
held by the kernel.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import struct
import time
from typing import Protocol, cast

from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import OPEN as FRAMES_OPEN
from websockets.protocol import Protocol as Frames
from websockets.protocol import Side
from websockets.speedups import apply_mask

from ..ops import metrics
from ..ops.config import Settings
from ..wire.protocol import PING_FRAME, CloseReason, text_frame
from .bucket import TokenBucket
from .frames import BINARY_MESSAGE, TEXT_MESSAGE, split
from .limits import Address
from .outbox import Outbox

log = logging.getLogger("roomhub.connection")

FRAMES_LOG = logging.getLogger("roomhub.frames")
"""The ``websockets`` protocol's own log lines (one per closed connection at info)."""

PING_AFTER_SWEEPS = 3
"""Heartbeat sweeps without a frame from the client before it is pinged; one more closes it.
Sweeps come every half ``ROOMHUB_HEARTBEAT`` and a frame may arrive just before one, so the
third is the first to prove ``ROOMHUB_HEARTBEAT`` seconds of silence (at most 1.5 times that)."""

RESET_ON_CLOSE = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on, 0 seconds: closing the socket sends a TCP reset (socket(7))."""

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


class State(enum.Enum):
    """A connection's life; it only moves forward."""

    CONNECTING = "connecting"  # made for an accepted upgrade; the socket not handed over yet
    OPEN = "open"  # frames flow both ways
    CLOSING = "closing"  # the server started closing, the client closed, or the frames failed
    CLOSED = "closed"  # the socket is gone


# The members as plain names: on Python 3.11 each ``State.X`` costs a class lookup (~0.1 µs),
# and the state is checked once per recipient of every fan-out (deliver).
CONNECTING, OPEN, CLOSING, CLOSED = State.CONNECTING, State.OPEN, State.CLOSING, State.CLOSED
TEXT, BINARY = Opcode.TEXT, Opcode.BINARY


class Connection(asyncio.Protocol):
    """A joined WebSocket client on ``transport``, the socket of its accepted upgrade, from
    ``address`` (its per-address limits entry, :mod:`.limits`; None: those limits are off).

    ``state`` is its life (:class:`State`); ``close_reason`` the reason the server closed it
    with, if it did (the first reason wins); ``outbox`` what waits to be written.
    """

    __slots__ = (
        "_bucket",
        "_close_timer",
        "_expiry",
        "_fragments",
        "_frames",
        "_inbound",
        "_quiet_sweeps",
        "_reason",
        "_user",
        "address",
        "dispatcher",
        "outbox",
        "room",
        "state",
    )

    def __init__(
        self,
        dispatcher: Dispatcher,
        transport: asyncio.Transport,
        *,
        room: str,
        user: str,
        address: Address | None = None,
    ) -> None:
        settings = dispatcher.settings
        self.dispatcher = dispatcher
        self.room = room
        self._user = user
        self.address = address  # its client address's entry in the per-address limits
        self._frames = Frames(
            Side.SERVER, max_size=READ_LIMIT_FACTOR * settings.max_msg_size, logger=FRAMES_LOG
        )
        # A partial frame read so far (a bytearray, grown in place), b"" when none, or None
        # once the frame protocol reads the stream itself.
        self._inbound: bytearray | bytes | None = b""
        self.outbox = Outbox(transport)
        self.state = CONNECTING
        self._reason: CloseReason | None = None
        self._fragments: tuple[Opcode, list[bytes]] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._quiet_sweeps = 0
        self._bucket = TokenBucket(settings.rate_limit, settings.rate_burst, time.monotonic())

    @property
    def user(self) -> str:
        """The member name: the one asked for until the room gives one (:meth:`rename`)."""
        return self._user

    def rename(self, user: str) -> None:
        """Take the name the room gave (the one asked for, or a free variant of it)."""
        self._user = user

    @property
    def closing(self) -> bool:
        """Whether the connection is closing or closed (it takes no more events)."""
        state = self.state
        return state is CLOSING or state is CLOSED

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the server closed the connection, if it did (the first reason wins)."""
        return self._reason

    def _closing(self) -> None:
        """Move to CLOSING, unless already there or past it."""
        if self.state is CONNECTING or self.state is OPEN:
            self.state = CLOSING

    def close_at(self, delay: float) -> None:
        """Close with ``TOKEN_EXPIRED`` in ``delay`` seconds (a token's ``exp``)."""
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(delay, self.close, CloseReason.TOKEN_EXPIRED)

    # -- the socket (asyncio.Protocol) ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The socket is handed over (``transport`` is the one the connection was made for)."""
        if self.state is CONNECTING:
            self.state = OPEN

    def data_received(self, data: bytes) -> None:
        inbound = self._inbound
        if inbound is None:  # since a refused header (.frames.split) the protocol reads it all
            self._feed(data)
            self._send_frames()
            return
        held = inbound if isinstance(inbound, bytearray) else None
        buffer: bytes | bytearray = data
        if held is not None:
            held += data
            buffer = held
        frames = self._frames
        spans, rest, refused = split(
            buffer, READ_LIMIT_FACTOR * self.dispatcher.settings.max_msg_size
        )
        fed = refused  # whether the frame protocol got bytes, and so may have frames to send
        for head, start, body, end in spans:
            self._quiet_sweeps = 0
            if (
                head in (TEXT_MESSAGE, BINARY_MESSAGE)
                and self._fragments is None
                and self.state is OPEN
                and frames.state is FRAMES_OPEN
            ):
                message = apply_mask(buffer[body:end], buffer[body - 4 : body])
                try:
                    self._on_message(TEXT if head == TEXT_MESSAGE else BINARY, message)
                except Exception:
                    self._failed()
            else:
                fed = True
                self._feed(buffer[start:end])
        if refused:
            self._inbound = None
            self._feed(buffer[rest:])
        elif held is None:
            if rest < len(data):
                self._inbound = bytearray(data[rest:])
        elif rest == len(held):
            self._inbound = b""
        else:
            del held[:rest]
        if fed:
            self._send_frames()

    def _feed(self, data: bytes | bytearray) -> None:
        """Hand ``data`` to the frame protocol and handle the frames it gives back."""
        frames = self._frames
        frames.receive_data(data)
        # A bare frame Protocol yields Frames only (Request and Response are a handshake's).
        for frame in cast(list[Frame], frames.events_received()):
            self._quiet_sweeps = 0
            try:
                self._on_frame(frame)
            except Exception:
                self._failed()

    def _failed(self) -> None:
        """Handling a frame raised (in an ``except`` block): log it, close with 1011."""
        log.exception("frame_failed", extra={"fields": {"room": self.room, "user": self.user}})
        self.close(CloseReason.ERROR)

    def eof_received(self) -> None:
        self._frames.receive_eof()
        self._send_frames()

    def pause_writing(self) -> None:
        self.outbox.pause()

    def resume_writing(self) -> None:
        self.outbox.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        for timer in (self._close_timer, self._expiry):
            if timer is not None:
                timer.cancel()
        self.outbox.lose()
        reason, code = self._end()
        self.dispatcher.on_end(self, reason, code)

    def _end(self) -> tuple[CloseReason, int | None]:
        """Why the connection ended, and the close code sent (or the client's, or None).

        Reads the frame reader's public outcome only: with the socket gone its stream has
        ended (``receive_eof``), so ``close_exc`` says which close frames went each way.
        """
        if self._reason is not None:
            return self._reason, self._reason.code
        frames = self._frames
        frames.receive_eof()
        closed = frames.close_exc
        # The client's close, answered with its own close frame, unless it broke the protocol
        # (a close frame between two fragments is answered 1002): then what the server sent.
        if closed.rcvd_then_sent and closed.rcvd is not None and closed.sent == closed.rcvd:
            return CloseReason.NORMAL, closed.rcvd.code
        code = closed.sent.code if closed.sent is not None else None
        if code == CloseCode.MESSAGE_TOO_BIG:  # sent only when a frame is over the read limit
            return CloseReason.TOO_BIG, code
        if code is not None:
            return CloseReason.PROTOCOL_ERROR, code
        return CloseReason.CLIENT_GONE, None

    # -- inbound --------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        data = cast(bytes, frame.data)  # the frame parser makes bytes
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._on_message(opcode, data)
            else:
                self._fragments = (opcode, [data])
        elif opcode is Opcode.CONT and self._fragments is not None:
            opcode, parts = self._fragments
            parts.append(data)
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
                self._closing()
                self._send_frames()
                return
            self.dispatcher.on_message(self, text)

    def allow(self) -> bool:
        """Take a rate-limit token: ``rate`` frames per second, bursts up to ``burst``."""
        return self._bucket.take(time.monotonic())

    @property
    def strikes(self) -> int:
        """Frames refused in a row by the rate limiter."""
        return self._bucket.strikes

    # -- outbound -------------------------------------------------------------------------

    def deliver(self, wire: bytes, events: list[bytes]) -> int:
        """Hand ``events`` to this client without waiting; ``wire`` is them as one text frame
        (header and payload, :func:`~server.wire.protocol.text_frame`), written as is when
        nothing waits, so a fan-out builds it once for all recipients.

        Returns the number of frames written now (0 or 1); queued events are written later
        by the outbox's writer task.
        """
        state = self.state  # self.closing, inline: this runs once per recipient
        if state is CLOSING or state is CLOSED:
            return 0
        outbox = self.outbox
        if outbox.offer(wire, events):
            return 1
        if len(outbox) > self.dispatcher.settings.outbox_limit:
            log.warning("slow_consumer", extra={"fields": {"room": self.room, "user": self.user}})
            self.close(CloseReason.SLOW_CONSUMER)
        else:
            outbox.start(self.dispatcher.settings.max_frame_size, self._written)
        return 0

    def send_event(self, event: bytes) -> None:
        """Send one encoded event to this client only (welcome, error), in order with the rest."""
        metrics.EVENTS_DELIVERED.inc()
        if self.deliver(text_frame(event), [event]):
            metrics.FRAMES_SENT.inc()

    def _written(self, error: Exception | None) -> None:
        """The writer task ended: the outbox is written, or the socket is gone, or ``error``
        stopped it (logged once; the client is closed with 1011). The close frame follows if
        one is due."""
        if error is not None:
            log.error(
                "writer_failed",
                exc_info=error,
                extra={"fields": {"room": self.room, "user": self.user}},
            )
            self.close(CloseReason.ERROR)
        self._send_close()

    async def flush(self, budget: float) -> None:
        """Wait up to ``budget`` seconds for the outbox to be written."""
        await self.outbox.flush(budget)

    def heartbeat(self) -> None:
        """One heartbeat sweep (every half ``ROOMHUB_HEARTBEAT``), counting the sweeps since
        the client's last frame: after ``PING_AFTER_SWEEPS`` the client is pinged, after one
        more it is closed with ``HEARTBEAT_TIMEOUT``. The ping is written to the socket at
        once: after the frames already written, ahead of events still waiting in the outbox
        (RFC 6455 5.5 lets control frames come between data frames)."""
        if self.closing:
            return
        self._quiet_sweeps += 1
        if self._quiet_sweeps == PING_AFTER_SWEEPS:
            self.outbox.write(PING_FRAME)
        elif self._quiet_sweeps > PING_AFTER_SWEEPS:
            self.close(CloseReason.HEARTBEAT_TIMEOUT)

    # -- closing --------------------------------------------------------------------------

    def close(self, reason: CloseReason, timeout: float | None = None) -> None:
        """Start closing with ``reason`` (its code, text and metric label); first reason wins.

        The close frame follows every event already queued, except for ``SLOW_CONSUMER``,
        which drops the outbox. The client has ``timeout`` seconds (default
        ``close_timeout``) to answer it before TCP is ended. Never awaits.
        """
        if self.closing:
            return
        self.state = CLOSING
        self._reason = reason
        if reason is CloseReason.SLOW_CONSUMER:
            self.outbox.clear()
        self._start_close_timer(timeout)
        if not self.outbox.writing or reason is CloseReason.SLOW_CONSUMER:
            self._send_close()

    def end_tcp(self) -> None:
        """End TCP now (the close timeout, or the end of the shutdown budget).

        When everything written has reached the kernel: a FIN after it; the kernel still
        delivers what it holds, close frame included, to a client that reads late. When bytes
        are left in the transport's buffer, the kernel would not take them (the client stopped
        reading and its buffers are full): a reset (``SO_LINGER`` 0), which drops them and
        what the kernel holds, and frees the socket at once. asyncio's own ``abort()`` would
        only close the socket, and the kernel would keep it, unsent bytes and all, for as long
        as it probes the client's zero window."""
        if self.state is CLOSED:
            return
        transport = self.outbox.transport
        if transport.get_write_buffer_size():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
            transport.abort()
        else:
            transport.write_eof()
            transport.close()

    def _send_close(self) -> None:
        reason = self._reason
        if reason is None or self.state is CLOSED or self._frames.state is not FRAMES_OPEN:
            return
        self._frames.send_close(reason.code, reason.text)
        self._send_frames()

    def _send_frames(self) -> None:
        """Write what the frame protocol has to send (pongs, close frames); after its end of
        stream (the closing handshake is over, or the client broke the protocol), end TCP."""
        frames, transport = self._frames, self.outbox.transport
        for data in frames.data_to_send():
            if transport.is_closing():
                break
            if data:
                transport.write(data)
            else:
                transport.write_eof()
                transport.close()
                self._start_close_timer()
        if frames.state is not FRAMES_OPEN:
            self._closing()

    def _start_close_timer(self, timeout: float | None = None) -> None:
        """Call :meth:`end_tcp` in ``timeout`` seconds (default ``close_timeout``)."""
        if self._close_timer is None and self.state is not CLOSED:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(
                self.dispatcher.settings.close_timeout if timeout is None else timeout,
                self.end_tcp,
            )
