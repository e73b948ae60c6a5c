"""Bounds under churn, against a real server process: the connection cap under a storm of
upgrades, and memory after many rooms have come and gone."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import struct
from pathlib import Path

from bench.procstat import usage
from tests.chat import upgrade_request
from tests.support.processes import Process, run_server

CAP = 1000
STORM = 1200
ROOMS = 10_000
WARM_UP_ROOMS = 2000
CONCURRENCY = 50
RSS_GROWTH = 1.10  # RSS after the churn may be at most 10% above where it started


def allow_open_files(count: int) -> None:
    """Raise this process's soft limit on open files to ``count`` (servers started later
    inherit it); the hard limit must allow it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


async def upgrade(port: int, room: str, user: str) -> tuple[int, asyncio.StreamWriter]:
    """Send a WebSocket upgrade request; the HTTP status of the answer, and the open stream."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_request(room, user))
    async with asyncio.timeout(60):
        status = await reader.readline()
        while await reader.readline() not in (b"\r\n", b""):
            pass  # headers
        if status.split()[1] == b"101":
            await reader.readexactly(2)  # the welcome frame's header: the hub has the join
    return int(status.split()[1]), writer


async def storm(server: Process, count: int, tag: str) -> tuple[list[int], list]:
    """``count`` upgrades at once, each to a room of its own; their statuses and streams."""
    results = await asyncio.gather(
        *(upgrade(server.port, f"{tag}{n}", f"u{n}") for n in range(count))
    )
    return [status for status, _ in results], [writer for _, writer in results]


async def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


async def wait_for(server: Process, name: str, value: float, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while (await asyncio.to_thread(server.metrics))[name] != value:
            await asyncio.sleep(0.1)


def abort_upgrade(port: int) -> None:
    """Send an upgrade request and vanish with a TCP reset before reading the answer."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(upgrade_request("gone", "v"))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def test_storm_over_the_connection_cap_never_opens_more_than_the_cap(
    tmp_path: Path,
) -> None:
    allow_open_files(2 * STORM + 200)
    settings = {"quote_provider": "sim", "log_level": "warning", "max_connections": CAP}
    with run_server(tmp_path, **settings) as server:
        statuses, writers = await storm(server, STORM, "a")
        try:
            assert (statuses.count(101), statuses.count(503)) == (CAP, STORM - CAP)
            metrics = await asyncio.to_thread(server.metrics)
            assert metrics["chat_connections"] == CAP
            assert metrics['chat_handshakes_rejected_total{reason="capacity"}'] == STORM - CAP
        finally:
            await close_all(writers)
        await wait_for(server, "chat_connections", 0)
        for _ in range(20):  # upgrades whose peer vanishes release their slot too
            abort_upgrade(server.port)
        statuses, writers = await storm(server, CAP, "b")
        await close_all(writers)
        assert statuses == [101] * CAP, "a slot of the first storm was never released"


async def churn(server: Process, rooms: range) -> None:
    """Join each room (one connection alone in it) and leave it, ``CONCURRENCY`` at a time."""
    queue = iter(rooms)

    async def worker() -> None:
        for n in queue:
            status, writer = await upgrade(server.port, f"churn{n}", "u")
            assert status == 101
            await close_all([writer])

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def test_many_rooms_joined_and_left_leave_rss_where_it_started(tmp_path: Path) -> None:
    # A short grace keeps the rooms alive at once (join rate x grace) few and steady: a higher
    # peak of live rooms would leave the allocator with more arenas, not a leak.
    settings = {"quote_provider": "sim", "log_level": "warning", "room_grace": 0.1}
    with run_server(tmp_path, **settings) as server:
        # The warm-up takes the allocator to its working size for this load.
        await churn(server, range(WARM_UP_ROOMS))
        await wait_for(server, "chat_rooms", 0)
        started = usage(server.pid).rss
        tasks = (await asyncio.to_thread(server.metrics))["chat_asyncio_tasks"]
        await churn(server, range(WARM_UP_ROOMS, WARM_UP_ROOMS + ROOMS))
        await wait_for(server, "chat_rooms", 0)
        await wait_for(server, "chat_connections", 0)
        ended = usage(server.pid).rss
        with contextlib.suppress(OSError):
            (tmp_path / "rss.txt").write_text(f"{started} {ended} {ended / started:.3f}\n")
        assert ended <= started * RSS_GROWTH, f"RSS {started} -> {ended} bytes"
        assert (await asyncio.to_thread(server.metrics))["chat_asyncio_tasks"] == tasks
