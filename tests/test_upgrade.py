"""The take-over of an accepted upgrade from aiohttp (server/transport/upgrade.py), checked against
the installed aiohttp: the 101 is right, the socket's bytes reach roomhub's protocol (the early
ones too), nothing else is written, and aiohttp keeps nothing of the connection. Then the
flow control a connection's writes rely on: asyncio's pause and resume of writing. Last, the
start-up check of the aiohttp parts the take-over touches."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tomllib
import weakref
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from packaging.requirements import Requirement

from server.rooms.baseline import send
from server.transport.connection import Connection
from server.transport.upgrade import accept_key, seam_problem, supported_aiohttp, take_over
from server.web.app import create_app
from server.web.keys import registry_key
from tests.chat import UPGRADE_HEADERS, WAIT, settings, upgrade_request
from tests.support.promql import ROOT

RFC_KEY, RFC_ACCEPT = "dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
"""RFC 6455 section 1.3's worked example."""


def test_accept_key_is_the_rfc_example() -> None:
    assert accept_key(RFC_KEY) == RFC_ACCEPT


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.got = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.set()


async def taken_over(aiohttp_server: Any) -> tuple[Any, list[Recorder], list[Any]]:
    """A server whose ``/ws`` hands every connection to a :class:`Recorder`; the recorders and
    weak references to the requests."""
    recorders: list[Recorder] = []
    handlers: list[Any] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        recorders.append(Recorder())
        handlers.append(weakref.ref(request))
        return take_over(request, recorders[-1])

    app = web.Application()
    app.router.add_get("/ws", handler)
    return await aiohttp_server(app), recorders, handlers


async def test_the_socket_moves_to_the_new_protocol_with_the_bytes_sent_early(
    aiohttp_server: Any,
) -> None:
    server, recorders, handlers = await taken_over(aiohttp_server)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(upgrade_request("r", "u") + b"early")  # RFC 6455 4.1 says wait; some don't
    async with asyncio.timeout(WAIT):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        expected = accept_key(UPGRADE_HEADERS["Sec-WebSocket-Key"])
        assert f"Sec-WebSocket-Accept: {expected}\r\n".encode() in head
        (recorder,) = recorders
        while bytes(recorder.data) != b"early":
            recorder.got.clear()
            await recorder.got.wait()
        writer.write(b" then late")
        while bytes(recorder.data) != b"early then late":
            recorder.got.clear()
            await recorder.got.wait()
    assert server.runner.server.connections == []
    assert handlers[0]() is None, "aiohttp still holds the request"
    assert recorder.transport is not None
    recorder.transport.write(b"after")
    recorder.transport.close()
    async with asyncio.timeout(WAIT):
        assert await reader.read() == b"after"  # the 101 alone, then only what roomhub writes
    writer.close()


async def stalled_connection(aiohttp_client: Any) -> tuple[Connection, socket.socket]:
    """A roomhub connection whose client (a 4 KiB receive buffer) does not read."""
    client = await aiohttp_client(create_app(settings()))
    registry = client.server.app[registry_key]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (client.host, client.port))
    await loop.sock_sendall(sock, upgrade_request("r", "u"))
    async with asyncio.timeout(WAIT):
        while not registry.connections:
            await asyncio.sleep(0.01)
    (conn,) = registry.connections
    return conn, sock


async def fill(conn: Connection) -> asyncio.Task[None]:
    """Send 60 KB frames until one send has to wait; that send."""
    chunk = b"\x81\x7e\xea\x60" + b"x" * 60_000
    while True:
        task = asyncio.create_task(send(conn, chunk))
        await asyncio.sleep(0)
        if not task.done():
            return task
        await task


async def test_a_send_waits_until_the_client_reads(aiohttp_client: Any) -> None:
    conn, sock = await stalled_connection(aiohttp_client)
    waiting = await fill(conn)
    await asyncio.sleep(0.05)
    assert not waiting.done(), "the send returned while the client read nothing"
    loop = asyncio.get_running_loop()

    async def read_all() -> None:
        while await loop.sock_recv(sock, 65536):
            pass

    reader = asyncio.create_task(read_all())
    async with asyncio.timeout(WAIT):
        await waiting
    reader.cancel()
    sock.close()


async def test_a_waiting_send_raises_when_the_client_goes_away(aiohttp_client: Any) -> None:
    conn, sock = await stalled_connection(aiohttp_client)
    waiting = await fill(conn)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # a reset: the connection is lost while the send waits
    async with asyncio.timeout(WAIT):
        with pytest.raises(ConnectionError):
            await waiting


def test_the_installed_aiohttp_has_every_part_the_take_over_touches() -> None:
    assert seam_problem() is None


def test_the_supported_aiohttp_range_is_the_one_pyproject_declares() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (aiohttp_range,) = (Requirement(r) for r in declared if Requirement(r).name == "aiohttp")
    assert Requirement(supported_aiohttp()).specifier == aiohttp_range.specifier


WITHOUT_MESSAGE_TAIL = """\
from aiohttp.web_protocol import RequestHandler

del RequestHandler._message_tail
"""


@pytest.mark.parametrize(
    "env",
    [
        {"ROOMHUB_HOST": "127.0.0.1", "ROOMHUB_PORT": "0", "ROOMHUB_METRICS_PORT": "0"},
        {"ROOMHUB_WORKERS": "2"},  # refused for want of Redis, had the check not come first
    ],
    ids=["one-process", "workers"],
)
def test_an_aiohttp_without_a_seam_stops_start_up_with_exit_2_naming_versions(
    env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "sitecustomize.py").write_text(WITHOUT_MESSAGE_TAIL)
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve"],
        env={**env, "PATH": "", "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"roomhub: aiohttp {aiohttp.__version__} lacks RequestHandler._message_tail, which "
        f"server/transport/upgrade.py hands the WebSocket over with; roomhub supports "
        f"{supported_aiohttp()}\n"
    )
