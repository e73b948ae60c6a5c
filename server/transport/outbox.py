"""What waits to be written to one client, and the writer task that writes it.

Writes go straight to the socket while nothing waits and asyncio's flow control lets them
(the fast path, :meth:`Outbox.offer`). Otherwise the encoded events queue here, and a writer
task (:meth:`Outbox.start`) sends what waits as frames of at most ``max_frame_size`` bytes
each time the socket drains, coalescing every waiting event into as few frames as fit.

The socket's flow control is asyncio's: the transport pauses writing above its high-water
mark and resumes below the low-water mark (https://docs.python.org/3/library/asyncio-protocol.html#flow-control-callbacks);
the connection passes those calls on (:meth:`Outbox.pause`, :meth:`Outbox.resume`), and
:meth:`Outbox.lose` once the socket is gone.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable

from ..ops import metrics
from ..wire.protocol import batch, take_batch, text_frame


class Flow(enum.Enum):
    """Whether the socket takes writes: asyncio's flow control, and the socket's end."""

    WRITABLE = "writable"
    PAUSED = "paused"  # above the transport's high-water mark until it drains
    LOST = "lost"  # the socket is gone (connection_lost)


# The members as plain names: on Python 3.11 each ``Flow.X`` costs a class lookup (~0.1 µs),
# and offer() checks the flow once per recipient of every fan-out.
WRITABLE, PAUSED, LOST = Flow.WRITABLE, Flow.PAUSED, Flow.LOST


class Outbox:
    """The events (encoded, bytes) waiting for one client over ``transport``.

    ``events`` is None while nothing waits: an empty deque costs 0.7 KB per idle connection,
    and one that grew in a burst keeps its blocks (docs/memory.md). Its length is in events.
    """

    __slots__ = ("_drained", "_flow", "_writer", "events", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.events: deque[bytes] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._flow = WRITABLE
        self._drained: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self.events) if self.events else 0

    @property
    def writing(self) -> bool:
        """Whether the writer task runs."""
        return self._writer is not None

    @property
    def lost(self) -> bool:
        return self._flow is LOST

    def offer(self, wire: bytes, events: list[bytes]) -> int:
        """Write ``wire`` (``events`` as one frame) now if nothing waits and the socket takes
        writes, else queue ``events``. Returns the frames written now (0 or 1)."""
        if not self.events and self._writer is None and self._flow is WRITABLE:
            self.transport.write(wire)
            return 1
        if self.events is None:
            self.events = deque()
        self.events.extend(events)
        return 0

    def write(self, data: bytes) -> None:
        """Write ``data`` now, ahead of the events still waiting (control frames)."""
        self.transport.write(data)

    def clear(self) -> None:
        """Drop every waiting event (a slow consumer is closed without them)."""
        self.events = None

    def start(self, max_frame_size: int, done: Callable[[Exception | None], None]) -> None:
        """Start the writer task unless it runs: it writes the waiting events as frames of at
        most ``max_frame_size`` bytes, waiting for the socket to drain between them, until
        none waits or the socket is gone; then it calls ``done`` with the exception that
        stopped it (None: none, or only the socket's loss)."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all(max_frame_size, done))

    async def _write_all(
        self, max_frame_size: int, done: Callable[[Exception | None], None]
    ) -> None:
        error: Exception | None = None
        try:
            while self.events and self._flow is not LOST:
                if self._flow is PAUSED:
                    await self.wait_writable()
                    continue
                self.transport.write(text_frame(batch(take_batch(self.events, max_frame_size))))
                metrics.FRAMES_SENT.inc()
        except ConnectionError:
            pass
        except Exception as exc:
            error = exc
        finally:
            self.events = None
            self._writer = None
        done(error)

    async def flush(self, budget: float) -> None:
        """Wait up to ``budget`` seconds for the writer task to write what waits."""
        writer = self._writer
        if writer is not None:
            await asyncio.wait([writer], timeout=budget)

    def pause(self) -> None:
        if self._flow is WRITABLE:
            self._flow = PAUSED

    def resume(self) -> None:
        if self._flow is PAUSED:
            self._flow = WRITABLE
        self._wake()

    def lose(self) -> None:
        self._flow = LOST
        self._wake()

    def _wake(self) -> None:
        """Let whatever waits in :meth:`wait_writable` go on (it checks why itself)."""
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def wait_writable(self) -> None:
        """Wait while asyncio's flow control holds writes back. Raises
        ``ConnectionResetError`` when the socket is lost before or while waiting."""
        if self._flow is PAUSED:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)
        if self._flow is LOST:
            raise ConnectionResetError("connection lost")
