"""The two transport facts the writer relies on, checked against the installed aiohttp and
asyncio: when a connection is backed up, and how to wait until it takes writes again. If a
new aiohttp changes either, these fail before any chat test hangs."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aiohttp import web

from server.connection import backed_up, wait_writable
from server.protocol import frame_header
from tests.chat import WAIT, upgrade_request

CHUNK = frame_header(60_000) + b"x" * 60_000


async def serve_one(aiohttp_server: Any, body: Any) -> tuple[Any, asyncio.Future[Any]]:
    """A server whose one WebSocket handler runs ``body(transport, writer)``; its result."""
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        writer = await ws.prepare(request)
        try:
            done.set_result(await body(request.transport, writer))
        except Exception as exc:
            done.set_exception(exc)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    return await aiohttp_server(app), done


async def fill(transport: asyncio.Transport) -> None:
    while not backed_up(transport):
        transport.write(CHUNK)


async def silent_client(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, upgrade_request("r", "u"))
    return sock


async def test_wait_writable_returns_once_the_client_reads(aiohttp_server: Any) -> None:
    reading = asyncio.Event()

    async def body(transport: asyncio.Transport, writer: Any) -> bool:
        await fill(transport)
        waiter = asyncio.create_task(wait_writable(transport, writer))
        await asyncio.sleep(0.05)
        assert not waiter.done(), "wait_writable returned while the client read nothing"
        reading.set()
        async with asyncio.timeout(WAIT):
            await waiter
        return backed_up(transport)

    server, done = await serve_one(aiohttp_server, body)
    sock = await silent_client(server.port)
    loop = asyncio.get_running_loop()
    await reading.wait()
    reader = asyncio.create_task(drain_socket(loop, sock))
    async with asyncio.timeout(WAIT):
        assert await done is False
    reader.cancel()
    sock.close()


async def drain_socket(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    while await loop.sock_recv(sock, 65536):
        pass


async def test_wait_writable_raises_when_the_client_goes_away(aiohttp_server: Any) -> None:
    waiter: asyncio.Future[asyncio.Task[None]] = asyncio.get_running_loop().create_future()

    async def body(transport: asyncio.Transport, writer: Any) -> None:
        await fill(transport)
        task = asyncio.create_task(wait_writable(transport, writer))
        waiter.set_result(task)
        await asyncio.wait([task])  # a cancelled handler leaves the task running

    server, _ = await serve_one(aiohttp_server, body)
    sock = await silent_client(server.port)
    task = await waiter
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # a reset: the server's transport is lost while the writer waits
    async with asyncio.timeout(WAIT):
        with pytest.raises(ConnectionError):
            await task
