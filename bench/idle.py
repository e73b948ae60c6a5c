"""Memory cost of idle connections: open N to one room, hold them, compare the server's RSS;
and, in a server traced by tracemalloc (:mod:`bench.traced`), the lines that allocated it."""

from __future__ import annotations

import asyncio
import contextlib
import linecache
import os
import signal
import sysconfig
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from .procstat import usage
from .server import Process, serve

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


@dataclass(frozen=True, slots=True)
class Site:
    """One source line's share of the memory idle connections hold: ``size`` bytes and
    ``blocks`` allocations per connection."""

    where: str
    code: str
    size: float
    blocks: float


SNAPSHOT_TIMEOUT = 60.0


def _snapshot(server: Process, directory: Path, n: int) -> tracemalloc.Snapshot:
    os.kill(server.pid, signal.SIGUSR1)
    path = directory / f"{n}.snap"
    deadline = time.monotonic() + SNAPSHOT_TIMEOUT
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no tracemalloc snapshot {path} in {SNAPSHOT_TIMEOUT} s")
        time.sleep(POLL_EVERY)
    return tracemalloc.Snapshot.load(str(path))


def _site(stat: tracemalloc.StatisticDiff, count: int, root: str) -> Site:
    frame = stat.traceback[0]
    name = frame.filename
    for prefix in (root, "site-packages/", sysconfig.get_paths()["stdlib"] + "/"):
        if prefix in name:
            name = name.split(prefix, 1)[1]
    code = linecache.getline(frame.filename, frame.lineno).strip()
    return Site(f"{name}:{frame.lineno}", code, stat.size_diff / count, stat.count_diff / count)


async def _traced_hold(
    server: Process, count: int, directory: Path
) -> tuple[tracemalloc.Snapshot, tracemalloc.Snapshot]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _release(await _hold(server, session, WARMUP_CONNECTIONS, "bench-warmup"))
        await _settled(server, 0)
        before = await asyncio.to_thread(_snapshot, server, directory, 1)
        held = await _hold(server, session, count, "bench-idle")
        after = await asyncio.to_thread(_snapshot, server, directory, 2)
        await _release(held)
    return before, after


def allocation_sites(
    out: Path, count: int, top: int = 12, **settings: object
) -> tuple[float, list[Site]]:
    """Open ``count`` idle connections to a traced server (``settings`` as for ``serve``):
    the traced bytes they hold per connection, and the ``top`` lines that allocated most.

    Raises ``TimeoutError`` when the server doesn't settle or write its snapshots.
    """
    directory = out / "tracemalloc"
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.snap"):
        old.unlink()
    env = {"BENCH_TRACE_DIR": str(directory)}
    with serve(out / "traced-server.log", module="bench.traced", env=env, **settings) as server:
        before, after = asyncio.run(_traced_hold(server, count, directory))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "lineno")
    root = str(Path(__file__).resolve().parents[1]) + "/"
    total = sum(s.size_diff for s in stats) / count
    return total, [_site(stat, count, root) for stat in stats[:top]]
