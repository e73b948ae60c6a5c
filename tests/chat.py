"""Helpers for tests that talk protocol v1 to an in-process app."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from prometheus_client import REGISTRY

from server.config import Settings

HUB_MODES = ["sharded", "global"]

WAIT = 5.0  # seconds any single expected event may take

TEST_SETTINGS = Settings(host="127.0.0.1", port=0, quote_provider="sim", room_grace=0.2)


def settings(**overrides: Any) -> Settings:
    """Test settings: loopback, the offline ``sim`` quote provider, a short room grace."""
    return dataclasses.replace(TEST_SETTINGS, **overrides)


def sample(name: str, **labels: str) -> float:
    """Current value of a metric sample in the default registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Client:
    """A protocol v1 client: reads frames (object or array) into a queue of events."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.frames = 0
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            self.frames += 1
            data = orjson.loads(msg.data)
            for event in data if isinstance(data, list) else [data]:
                self.events.put_nowait(event)

    async def next(
        self, predicate: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        """The next event (matching ``predicate``), skipping others; fails after ``WAIT`` s."""
        async with asyncio.timeout(WAIT):
            while True:
                event = await self.events.get()
                if predicate is None or predicate(event):
                    return event

    async def next_of(self, kind: str) -> dict[str, Any]:
        return await self.next(lambda e: e["type"] == kind)

    async def say(self, text: str, **fields: Any) -> None:
        await self.ws.send_str(orjson.dumps({"type": "message", "text": text, **fields}).decode())

    async def closed(self) -> int | None:
        """Wait for the server to close the socket; return the close code."""
        async with asyncio.timeout(WAIT):
            await self._reader
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


async def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll ``condition`` on the event loop until true; ``TimeoutError`` after ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


UPGRADE_HEADERS = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}
"""The headers of a WebSocket upgrade request (RFC 6455 section 4.1)."""


def upgrade_request(room: str, user: str) -> bytes:
    """A raw HTTP/1.1 WebSocket upgrade request for ``/ws`` (RFC 6455 section 4.1)."""
    headers = "".join(f"{name}: {value}\r\n" for name, value in UPGRADE_HEADERS.items())
    return f"GET /ws?room={room}&user={user} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()


def raw_client_that_never_reads(host: str, port: int, room: str) -> socket.socket:
    """Upgrade a TCP socket with a tiny (4 KiB) receive buffer, then never read from it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.sendall(upgrade_request(room, "slow"))
    return sock
