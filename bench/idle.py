"""Memory cost of idle connections: open N to one room, hold them, compare the server's RSS."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import aiohttp

from .procstat import usage
from .server import Process

WARMUP_CONNECTIONS = 20
OPEN_CONCURRENCY = 100
SETTLE_TIMEOUT = 60.0
POLL_EVERY = 0.25


@dataclass(frozen=True, slots=True)
class IdleMemory:
    """RSS (bytes) of the server before and after ``connections`` idle connections joined."""

    connections: int
    rss_before: int
    rss_after: int

    @property
    def per_connection(self) -> float:
        return (self.rss_after - self.rss_before) / self.connections


async def _open(session: aiohttp.ClientSession, url: str) -> tuple[object, asyncio.Task]:
    ws = await session.ws_connect(url, autoping=True)

    async def read() -> None:  # drain join events so the server never sees a slow reader
        async for _ in ws:
            pass

    return ws, asyncio.create_task(read())


async def _settled(server: Process, connections: int) -> None:
    """Wait until the server holds ``connections`` and every queue is empty."""
    for _ in range(int(SETTLE_TIMEOUT / POLL_EVERY)):
        m = await asyncio.to_thread(server.metrics)
        if (
            m["chat_connections"] == connections
            and m["chat_client_queue_depth"] == 0
            and m["chat_hub_queue_depth"] == 0
        ):
            return
        await asyncio.sleep(POLL_EVERY)
    raise TimeoutError(f"{connections} idle connections did not settle in {SETTLE_TIMEOUT} s")


async def _hold(server: Process, session: aiohttp.ClientSession, count: int, room: str) -> list:
    limit = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one(n: int) -> tuple[object, asyncio.Task]:
        async with limit:
            return await _open(session, f"{server.ws_url}?room={room}&user=idle-{n}")

    held = await asyncio.gather(*(one(n) for n in range(count)))
    await _settled(server, count)
    return held


async def _release(held: list) -> None:
    await asyncio.gather(*(ws.close() for ws, _ in held))
    for _, reader in held:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def measure(server: Process, count: int) -> IdleMemory:
    """Open ``count`` idle connections to one room after a warm-up; the RSS they added.

    Raises ``TimeoutError`` if the server doesn't settle with all of them joined.
    """
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _release(await _hold(server, session, WARMUP_CONNECTIONS, "bench-warmup"))
        await _settled(server, 0)
        before = usage(server.pid).rss
        held = await _hold(server, session, count, "bench-idle")
        after = usage(server.pid).rss
        await _release(held)
    return IdleMemory(count, before, after)
