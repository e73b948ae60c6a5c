"""The parts of a connection, each alone: the token bucket, the outbox and its writer over a
real socket pair, and the connection's state from made to closed."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from server.transport.bucket import TokenBucket
from server.transport.connection import Connection, State
from server.transport.outbox import Outbox
from server.wire.protocol import CloseReason, text_frame
from tests.chat import WAIT, settings


def test_a_full_bucket_lets_a_burst_through_then_refuses() -> None:
    bucket = TokenBucket(1.0, 3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]


def test_the_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(2.0, 1, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.25)  # half a token
    assert bucket.take(0.5)


def test_strikes_count_refusals_in_a_row_until_a_frame_goes_through() -> None:
    bucket = TokenBucket(1.0, 1, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.strikes == 2
    bucket.take(1.0)
    assert bucket.strikes == 0


class Sink(asyncio.Protocol):
    """The outbox's own end of the socket pair: records whether the socket was lost."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


@pytest.fixture
async def pair() -> AsyncIterator[tuple[asyncio.Transport, socket.socket]]:
    """A transport over one end of a socket pair, and the other end (non-blocking)."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(Sink, ours)
    yield transport, theirs
    transport.abort()
    theirs.close()


async def received(sock: socket.socket, size: int) -> bytes:
    loop, data = asyncio.get_running_loop(), b""
    async with asyncio.timeout(WAIT):
        while len(data) < size:
            data += await loop.sock_recv(sock, 65536)
    return data


async def test_an_offer_with_nothing_waiting_is_written_at_once(
    pair: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, peer = pair
    outbox = Outbox(transport)
    wire = text_frame(b'{"a":1}')
    assert outbox.offer(wire, [b'{"a":1}']) == 1
    assert len(outbox) == 0
    assert await received(peer, len(wire)) == wire


async def test_offers_while_paused_wait_and_leave_as_one_frame_once_resumed(
    pair: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, peer = pair
    outbox = Outbox(transport)
    outbox.pause()
    assert outbox.offer(text_frame(b"1"), [b"1"]) == 0
    assert outbox.offer(text_frame(b"2"), [b"2"]) == 0
    assert len(outbox) == 2
    ended: list[Exception | None] = []
    outbox.start(65536, ended.append)
    outbox.resume()
    frame = text_frame(b"[1,2]")
    assert await received(peer, len(frame)) == frame
    await outbox.flush(WAIT)
    assert ended == [None]
    assert not outbox.writing


async def test_waiting_for_a_lost_socket_raises(
    pair: tuple[asyncio.Transport, socket.socket],
) -> None:
    outbox = Outbox(pair[0])
    outbox.pause()
    waiting = asyncio.create_task(outbox.wait_writable())
    await asyncio.sleep(0)
    outbox.lose()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(waiting, WAIT)


class Ends:
    """A dispatcher that records each connection's end."""

    def __init__(self) -> None:
        self.settings = settings()
        self.ends: list[CloseReason] = []

    def on_message(self, conn: Connection, text: str | None) -> None:
        pass

    def on_ping(self, conn: Connection) -> None:
        pass

    def on_end(self, conn: Connection, reason: CloseReason, code: int | None) -> None:
        self.ends.append(reason)


async def test_a_connection_goes_from_connecting_to_closed_in_order(
    pair: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, _ = pair
    ends = Ends()
    conn = Connection(ends, transport, room="r", user="u")
    seen = [conn.state]
    conn.connection_made(transport)
    seen.append(conn.state)
    conn.close(CloseReason.SHUTDOWN)
    seen.append(conn.state)
    conn.connection_lost(None)
    seen.append(conn.state)
    assert seen == [State.CONNECTING, State.OPEN, State.CLOSING, State.CLOSED]
    assert ends.ends == [CloseReason.SHUTDOWN]
