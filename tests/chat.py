"""Helpers for tests that talk protocol v1 to an in-process app."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import websockets.asyncio.client as websockets_client
from prometheus_client import REGISTRY
from websockets.exceptions import ConnectionClosed
from websockets.protocol import Protocol as WebSocketProtocol
from websockets.protocol import Side

from server.ops.config import Settings

HUB_MODES = ["sharded", "global"]

WAIT = 5.0  # seconds any single expected event may take

# Every client of the suite comes from 127.0.0.1: the per-address limits are off unless a
# test turns one on (tests/test_door.py).
TEST_SETTINGS = Settings(
    host="127.0.0.1",
    port=0,
    quote_provider="sim",
    room_grace=0.2,
    max_connections_per_address=0,
    upgrade_rate=0,
    new_rooms_per_minute=0,
)


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


async def member(session: aiohttp.ClientSession, ws_url: str, room: str, user: str) -> Client:
    """A member of ``room`` on the server at ``ws_url``, past its welcome."""
    client = Client(await session.ws_connect(ws_url, params={"room": room, "user": user}))
    await client.next_of("welcome")
    return client


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


TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8
"""Linux TCP states (include/net/tcp_states.h): CLOSE_WAIT once the peer's FIN has arrived,
CLOSE after a reset."""


def tcp_info(sock: socket.socket) -> tuple[int, int]:
    """``(state, unacked)`` of ``sock`` from Linux ``TCP_INFO`` (struct tcp_info: ``tcpi_state``
    is its first byte, ``tcpi_unacked`` the u32 at offset 24): what the kernel knows, whether
    or not the application has read."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 28)
    return info[0], int.from_bytes(info[24:28], sys.byteorder)


def read_to_end(sock: socket.socket) -> bytes:
    """Read a blocking socket until the peer's end of stream (at most ``WAIT`` s per read)."""
    sock.settimeout(WAIT)
    stream = bytearray()
    while data := sock.recv(65536):
        stream += data
    return bytes(stream)


def close_read(stream: bytes) -> tuple[int, str] | None:
    """The close frame a raw client read: ``stream`` is all it received (the 101 response,
    then frames); the frames are parsed by the ``websockets`` Sans-I/O client protocol.
    Returns ``(code, reason)``, or None when no close frame came."""
    frames = WebSocketProtocol(Side.CLIENT, max_size=None)
    frames.receive_data(stream.partition(b"\r\n\r\n")[2])
    close = frames.close_rcvd
    return None if close is None else (close.code, close.reason)


CLIENTS = ["aiohttp", "websockets"]
FLOOD = 200  # frames the aiohttp client sends after the trigger


def small_rcvbuf_socket(family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket with a 4 KiB receive buffer: a client that stops reading backs up fast."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


class Peer:
    """One real client library on a WebSocket: events it read, then the close it saw."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.events: list[dict[str, Any]] = []
        self.frame_sizes: list[int] = []
        self.code: int | None = None
        self.reason = ""
        self.pinged_at: list[float] = []
        self.reading = asyncio.Event()
        self._ws: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self, url: str, *, read: bool = True, autoping: bool = True) -> Peer:
        """Connect; start reading now, or only once :meth:`start_reading` is called.

        ``autoping=False`` (aiohttp only): pings are never answered; ``pinged_at`` holds the
        ``time.monotonic()`` of each one's arrival.
        """
        if self.kind == "aiohttp":
            connector = aiohttp.TCPConnector(socket_factory=lambda info: small_rcvbuf_socket())
            self._session = aiohttp.ClientSession(connector=connector)
            self._ws = await self._session.ws_connect(url, autoping=autoping)
        else:
            sock = small_rcvbuf_socket()
            host, port = url.split("/")[2].split(":")
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
            sock.setblocking(False)
            self._ws = await websockets_client.connect(url, sock=sock, proxy=None)
        if read:
            self.reading.set()
        self._task = asyncio.create_task(self._read())
        return self

    def start_reading(self) -> None:
        self.reading.set()

    def stall(self, stalled: bool = True) -> None:
        """Stop (or resume) reading from the socket at all, pongs included (websockets only):
        a client whose process hangs."""
        transport = self._ws.transport
        transport.pause_reading() if stalled else transport.resume_reading()

    async def _read(self) -> None:
        await self.reading.wait()
        if self.kind == "aiohttp":
            while True:
                msg = await self._ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self._add(msg.data)
                    continue
                if msg.type is aiohttp.WSMsgType.PING:
                    self.pinged_at.append(time.monotonic())
                    continue
                if msg.type is aiohttp.WSMsgType.CLOSE:
                    self.reason = msg.extra or ""
                self.code = self._ws.close_code
                return
        try:
            async for raw in self._ws:
                self._add(raw)
        except ConnectionClosed:
            pass
        self.code, self.reason = self._ws.close_code, self._ws.close_reason or ""

    def _add(self, raw: str | bytes) -> None:
        self.frame_sizes.append(len(raw.encode() if isinstance(raw, str) else raw))
        data = orjson.loads(raw)
        self.events.extend(data if isinstance(data, list) else [data])

    async def send(self, text: str, **fields: Any) -> None:
        frame = orjson.dumps({"type": "message", "text": text, **fields}).decode()
        if self.kind == "aiohttp":
            await self._ws.send_str(frame)
        else:
            await self._ws.send(frame)

    async def send_raw(self, frame: str) -> None:
        await (self._ws.send_str(frame) if self.kind == "aiohttp" else self._ws.send(frame))

    async def flood(self) -> int:
        """Send up to ``FLOOD`` more frames (the aiohttp client only); return how many went."""
        if self.kind != "aiohttp":
            return 0
        for i in range(FLOOD):
            try:
                await self.send("more", id=f"f{i}")
            except (ConnectionError, RuntimeError):
                return i
            await asyncio.sleep(0)  # let the server read (and close) while frames still come
        return FLOOD

    async def closed(self) -> tuple[int | None, str]:
        """Wait until the connection is closed; return the code and reason the client saw."""
        assert self._task is not None
        async with asyncio.timeout(WAIT):
            await self._task
        return self.code, self.reason

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == kind]

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        await wait_until(lambda: any(predicate(event) for event in self.events))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.kind == "aiohttp":
            await self._ws.close()
            assert self._session is not None
            await self._session.close()
        else:
            await self._ws.close()
