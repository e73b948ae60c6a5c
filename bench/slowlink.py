"""A slow, stalling TCP link for fault tests: an asyncio proxy on 127.0.0.1 in front of one
upstream port, whose added delay and stalls can be changed while connections run.

Each chunk read from either side is written to the other ``delay`` seconds after it arrived
(so a round trip gains twice that), in order; while the link is stalled nothing is written
in either direction, and what arrived meanwhile follows in order once it flows again. The
kernel here has no ``netem`` qdisc, which is how such links are usually made (tc-netem(8)).
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["SlowLink"]

CHUNK = 65536  # bytes read at a time


class SlowLink:
    """A proxy from ``127.0.0.1:port`` (after :meth:`start`) to ``127.0.0.1:upstream``.

    ``delay``: seconds added to each direction (0: none). :meth:`stall` holds every byte
    until :meth:`flow`. A connection whose either side ends is ended on the other side once
    what was read from it has been written.
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.delay = 0.0
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen on a free port of 127.0.0.1; return it."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def stall(self) -> None:
        """Stop forwarding in both directions (reading goes on)."""
        self._flowing.clear()

    def flow(self) -> None:
        """Forward again, what waited first."""
        self._flowing.set()

    async def close(self) -> None:
        """Stop listening and end every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
            except OSError:
                return
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer``, each chunk ``delay`` seconds after it was read."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(CHUNK):
                    chunks.put_nowait((loop.time() + self.delay, data))
            chunks.put_nowait((0.0, b""))

        reading = asyncio.create_task(read())
        try:
            while True:
                due, data = await chunks.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                await self._flowing.wait()
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            pass
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
