"""The real process: start-up, graceful shutdown, the page routes and security headers."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp

from tests.chat import Client
from tests.support.processes import run_server


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
