"""The real process: start-up, graceful shutdown, the page routes and security headers."""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
import time
from pathlib import Path

import aiohttp
import pytest

from tests.chat import (
    CLIENTS,
    UPGRADE_HEADERS,
    WAIT,
    Client,
    Peer,
    close_read,
    raw_client_that_never_reads,
    read_to_end,
    upgrade_request,
)
from tests.support.processes import Process, run_server


async def test_sigterm_closes_clients_with_1001_and_exits_0(tmp_path: Path) -> None:
    with run_server(tmp_path, quote_provider="sim", hub_mode="sharded") as server:
        async with aiohttp.ClientSession() as session:
            clients = [
                Client(await session.ws_connect(f"{server.ws_url}?room=r&user=u{i}"))
                for i in range(3)
            ]
            for client in clients:
                await client.next_of("welcome")
            server.proc.send_signal(signal.SIGTERM)
            codes = [await client.closed() for client in clients]
        assert codes == [1001, 1001, 1001]
        assert await asyncio.to_thread(server.proc.wait, 15) == 0
    assert '"reason":"shutdown"' in server.output()


LATE_READERS = 20


async def test_sigterm_gives_1001_to_members_that_read_after_the_close_timeout(
    tmp_path: Path,
) -> None:
    """Members that get to their socket 1.5 s after SIGTERM, past ``close_timeout`` (0.5 s) but
    within ``shutdown_timeout`` (4 s): the closing handshake waits for them. An aiohttp client
    that finds the server's FIN before it answers the close frame reports 1006 (its answer
    cannot be written), so TCP must still be open when they read."""
    settings = {"quote_provider": "sim", "close_timeout": 0.5, "shutdown_timeout": 4}
    with run_server(tmp_path, **settings) as server:
        async with aiohttp.ClientSession() as session:
            members = [
                await session.ws_connect(f"{server.ws_url}?room=late&user=m{i}")
                for i in range(LATE_READERS)
            ]
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.5)  # the members' lateness: what this test is about
            codes = []
            for member in members:
                async with asyncio.timeout(5):
                    while (await member.receive()).type == aiohttp.WSMsgType.TEXT:
                        pass
                codes.append(member.close_code)
        assert codes == [1001] * LATE_READERS
        assert await asyncio.to_thread(server.proc.wait, 15) == 0


async def test_sigterm_close_frame_reaches_raw_readers_after_the_server_exits(
    tmp_path: Path,
) -> None:
    """Sockets that read nothing until the server process has exited: at the end of the
    shutdown budget TCP ended with a FIN, so their kernels still hold every frame sent, the
    1001 close frame last."""
    settings = {"quote_provider": "sim", "close_timeout": 10, "shutdown_timeout": 1}
    with run_server(tmp_path, **settings) as server:
        socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
        for i, sock in enumerate(socks):
            sock.sendall(upgrade_request("gone", f"r{i}"))
        await asyncio.to_thread(wait_for_members, server, 5)
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.proc.wait, 15) == 0
        closes = []
        for sock in socks:
            with sock:
                closes.append(close_read(await asyncio.to_thread(read_to_end, sock)))
    assert closes == [(1001, "server shutdown")] * 5


def wait_for_members(server: Process, count: int) -> None:
    """Until the server counts ``count`` open connections (``WAIT`` s at most)."""
    deadline = time.monotonic() + WAIT
    while server.metrics()["chat_connections"] < count:
        assert time.monotonic() < deadline, "the members never joined"
        time.sleep(0.05)


@pytest.mark.parametrize("kind", CLIENTS)
async def test_sigterm_flushes_each_outbox_then_closes_with_1001(tmp_path: Path, kind: str) -> None:
    settings = {"quote_provider": "sim", "outbox_limit": 100000}
    settings |= {"rate_limit": 10000, "rate_burst": 10000}
    with run_server(tmp_path, **settings) as server:
        ann = await Peer("aiohttp").open(f"{server.ws_url}?room=r&user=ann")
        slow = await Peer(kind).open(f"{server.ws_url}?room=r&user=slow", read=False)
        try:
            await ann.wait_for(lambda e: e["type"] == "join" and e["user"] == "slow")
            sent = 0
            while sent % 20 or server.metrics()["chat_client_queue_depth"] == 0:
                assert sent < 10000, "the client that reads nothing never backed up"
                await ann.send("x" * 1900, id=str(sent))
                sent += 1
                if sent % 20 == 0:
                    await ann.wait_for(lambda e, last=str(sent - 1): e.get("id") == last)
            await ann.wait_for(lambda e, last=str(sent - 1): e.get("id") == last)
            server.proc.send_signal(signal.SIGTERM)
            slow.start_reading()
            await slow.flood()
            assert await slow.closed() == (1001, "server shutdown")
            from_ann = [e["id"] for e in slow.of("message") if e["user"] == "ann"]
            assert from_ann == [str(i) for i in range(sent)]
            assert await ann.closed() == (1001, "server shutdown")
        finally:
            await slow.aclose()
            await ann.aclose()
        assert await asyncio.to_thread(server.proc.wait, 15) == 0


async def test_pages_and_api_answer_with_security_headers(tmp_path: Path) -> None:
    with run_server(tmp_path, quote_provider="sim") as server:
        async with aiohttp.ClientSession() as session:
            for path in ("/", "/rooms/lobby", "/api/rooms", "/healthz", "/readyz"):
                async with session.get(server.url + path) as response:
                    assert response.status == 200, path
                    csp = response.headers["Content-Security-Policy"]
                    assert "script-src 'self'" in csp, path
            async with session.get(server.url + "/rooms/bad%20room") as response:
                assert response.status == 400


def test_peers_vanishing_during_the_upgrade_log_no_error(tmp_path: Path) -> None:
    with run_server(tmp_path, quote_provider="sim") as server:
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(upgrade_request("r", "v"))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        deadline = time.monotonic() + 5
        while server.output().count('"upgrade_aborted"') < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.stop() == 0
    log = server.output()
    assert '"upgrade_aborted"' in log
    assert '"level":"error"' not in log
    assert "Traceback" not in log


async def test_draining_server_answers_readyz_and_upgrades_with_503(tmp_path: Path) -> None:
    settings = {"quote_provider": "sim", "shutdown_timeout": 6, "outbox_limit": 100000}
    settings |= {"rate_limit": 10000, "rate_burst": 10000}
    with run_server(tmp_path, **settings) as server:
        slow = raw_client_that_never_reads("127.0.0.1", server.port, "r")
        async with aiohttp.ClientSession() as session:
            ann = Client(await session.ws_connect(f"{server.ws_url}?room=r&user=ann"))
            await ann.next_of("welcome")
            for i in range(2000):  # bounded: the slow reader's outbox fills long before
                await ann.say("x" * 1900)
                if i % 50 == 49 and server.metrics()["chat_client_queue_depth"] > 0:
                    break
            assert server.metrics()["chat_client_queue_depth"] > 0
            server.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(3):
                while True:
                    async with session.get(f"{server.url}/readyz") as response:
                        if response.status == 503:
                            break
            async with session.get(f"{server.url}/ws?room=r", headers=UPGRADE_HEADERS) as response:
                assert response.status == 503
                assert (await response.json())["error"] == "shutting_down"
            assert await ann.closed() == 1001
        slow.close()
        assert await asyncio.to_thread(server.proc.wait, 15) == 0
