"""Every close the server starts reaches real clients intact: the exact code and reason, and
every event sent before it, even while the client keeps sending (docs/protocol.md, closing).

Each case runs against an aiohttp client that sends 200 more frames after the trigger and
against a Python ``websockets`` client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from websockets.frames import Frame, Opcode

import server.rooms.dispatch
import server.transport.outbox
from server.web.keys import registry_key
from server.wire.protocol import CloseReason
from tests.chat import (
    CLIENTS,
    TCP_CLOSE,
    TCP_CLOSE_WAIT,
    Peer,
    close_read,
    raw_client_that_never_reads,
    read_to_end,
    settings,
    tcp_info,
    upgrade_request,
    wait_until,
)


@pytest.fixture
async def peers() -> Any:
    opened: list[Peer] = []

    async def open_peer(kind: str, server: TestClient, room: str, user: str, **kw: Any) -> Peer:
        url = str(server.make_url("/ws").with_query(room=room, user=user)).replace("http", "ws")
        peer = await Peer(kind).open(url, **kw)
        opened.append(peer)
        return peer

    yield open_peer
    for peer in opened:
        await peer.aclose()


async def echoed(peer: Peer, text: str) -> None:
    """Send a message and wait until it comes back, so it was delivered before what follows."""
    await peer.send(text, id=text)
    await peer.wait_for(lambda e: e.get("id") == text)


@pytest.mark.parametrize("read", [True, False], ids=["reading", "reading-after-sending"])
@pytest.mark.parametrize("kind", CLIENTS)
async def test_rate_limit_close_1008_arrives_after_every_refusal(
    make_server: Any, peers: Any, kind: str, read: bool
) -> None:
    server = await make_server(rate_limit=0.01, rate_burst=10)  # no refill during the test
    peer = await peers(kind, server, "r", "spam", read=read)
    for i in range(30):  # 10 accepted, then the 20 refusals that trigger the close
        await peer.send("spam", id=f"s{i}")
    await peer.flood()
    peer.start_reading()
    assert await peer.closed() == (1008, "rate limit exceeded")
    refusals = [e["reply_to"] for e in peer.of("error") if e["code"] == "rate_limited"]
    assert refusals == [f"s{i}" for i in range(10, 30)]


@pytest.mark.parametrize("kind", CLIENTS)
async def test_too_big_close_1009_arrives_after_the_events_before_it(
    make_server: Any, peers: Any, kind: str
) -> None:
    server = await make_server()
    peer = await peers(kind, server, "r", "big")
    await echoed(peer, "before")
    await peer.send_raw("x" * (settings().max_msg_size + 1))
    await peer.flood()
    assert await peer.closed() == (1009, "message too big")
    assert [e["id"] for e in peer.of("message")] == ["before"]


@pytest.mark.parametrize("kind", CLIENTS)
async def test_internal_error_close_1011_arrives_after_the_events_before_it_and_is_logged_once(
    make_server: Any,
    peers: Any,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    parse = server.rooms.dispatch.parse_stock_command

    def failing(text: str) -> str | None:
        if text == "boom":
            raise RuntimeError("injected fault")
        return parse(text)

    monkeypatch.setattr(server.rooms.dispatch, "parse_stock_command", failing)
    test_server = await make_server(rate_limit=10000, rate_burst=10000)
    peer = await peers(kind, test_server, "r", "err")
    await echoed(peer, "before")
    with caplog.at_level(logging.ERROR, logger="roomhub.connection"):
        await peer.send("boom")
        await peer.flood()
        assert await peer.closed() == (1011, "internal error")
    assert [e["id"] for e in peer.of("message")] == ["before"]
    assert [r.message for r in caplog.records if r.name == "roomhub.connection"] == ["frame_failed"]


@pytest.mark.parametrize("kind", CLIENTS)
async def test_writer_failure_closes_that_client_with_1011_and_is_logged_once(
    make_server: Any,
    peers: Any,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    test_server = await make_server()
    registry = test_server.app[registry_key]
    peer = await peers(kind, test_server, "r", "w")
    await echoed(peer, "before")
    (conn,) = registry.connections

    def failing(*args: Any) -> list[bytes]:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(server.transport.outbox, "take_batch", failing)
    with caplog.at_level(logging.ERROR, logger="roomhub.connection"):
        conn.outbox.events = deque([b'{"type":"error","code":"x","detail":"queued"}'])
        conn.deliver(b"{}", [b"{}"])  # the outbox is not empty: starts the writer task
        await peer.flood()
        assert await peer.closed() == (1011, "internal error")
    assert [r.message for r in caplog.records if r.name == "roomhub.connection"] == [
        "writer_failed"
    ]


@pytest.mark.parametrize("kind", CLIENTS)
async def test_slow_consumer_close_1013_follows_what_was_written_before_it(
    make_server: Any, peers: Any, kind: str
) -> None:
    test_server = await make_server(outbox_limit=20, rate_limit=10000, rate_burst=10000)
    registry = test_server.app[registry_key]
    ann = await peers("aiohttp", test_server, "r", "ann")
    await ann.wait_for(lambda e: e["type"] == "welcome")
    slow = await peers(kind, test_server, "r", "slow", read=False)
    await wait_until(lambda: len(registry.connections) == 2)
    sent = 0
    while not any(c.close_reason is CloseReason.SLOW_CONSUMER for c in registry.connections):
        assert sent < 5000, "the client that reads nothing was never closed as slow"
        await ann.send("x" * 1900, id=str(sent))
        sent += 1
        if sent % 20 == 0:
            await asyncio.sleep(0.01)
    slow.start_reading()
    await slow.flood()
    assert await slow.closed() == (1013, "slow consumer")
    seqs = [e["seq"] for e in slow.of("message")]
    assert seqs, "nothing written before the close reached the client"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap before the close"


@pytest.mark.parametrize("kind", CLIENTS)
async def test_a_client_that_fell_behind_catches_up_in_frames_within_the_cap(
    make_server: Any, peers: Any, kind: str
) -> None:
    test_server = await make_server(outbox_limit=100000, rate_limit=10000, rate_burst=10000)
    cap = settings().max_frame_size
    registry = test_server.app[registry_key]
    slow = await peers(kind, test_server, "busy", "slow", read=False)
    talkers = [await peers("aiohttp", test_server, "busy", f"t{i}") for i in range(10)]
    await talkers[-1].wait_for(lambda e: e["type"] == "welcome")
    rounds = 200  # 2000 messages of 4 KB: 8 MB, more than the sockets' buffers hold
    for k in range(rounds):
        for i, talker in enumerate(talkers):
            await talker.send("\u00e9" * 2000, id=f"{k}-{i}")
        await talkers[0].wait_for(lambda e, last=f"{k}-9": e.get("id") == last)
    assert max(len(c.outbox) for c in registry.connections) > 0, "nobody fell behind"
    slow.start_reading()
    await slow.wait_for(lambda e: e.get("id") == f"{rounds - 1}-9")
    ids = [e["id"] for e in slow.of("message")]
    assert ids == [f"{k}-{i}" for k in range(rounds) for i in range(10)]
    assert max(slow.frame_sizes) <= cap
    assert slow.code is None


async def test_heartbeat_closes_a_client_that_never_answers_pings_with_1011(
    make_server: Any, peers: Any
) -> None:
    test_server = await make_server(heartbeat=0.2)
    peer = await peers("aiohttp", test_server, "r", "mute", autoping=False)
    await echoed(peer, "before")
    assert await peer.closed() == (1011, "heartbeat timeout")
    assert len(peer.pinged_at) == 1
    assert [e["id"] for e in peer.of("message")] == ["before"]


async def test_heartbeat_pings_only_after_a_full_heartbeat_of_silence_then_closes_with_1011(
    make_server: Any, peers: Any
) -> None:
    """README and docs/protocol.md: a ping after at least ``ROOMHUB_HEARTBEAT`` seconds without
    a frame, and 1011 when no pong follows within half that. Ten clients fall silent at
    different points between two sweeps."""
    heartbeat = 1.0
    test_server = await make_server(heartbeat=heartbeat)
    mutes = [await peers("aiohttp", test_server, "r", f"m{i}", autoping=False) for i in range(10)]
    sent_at = []
    for i, mute in enumerate(mutes):
        sent_at.append(time.monotonic())
        await echoed(mute, f"last-{i}")
        await asyncio.sleep(heartbeat / 20)
    for mute in mutes:
        assert await mute.closed() == (1011, "heartbeat timeout")
    silences = [mute.pinged_at[0] - sent for mute, sent in zip(mutes, sent_at, strict=True)]
    assert min(silences) >= heartbeat, silences
    assert all(len(mute.pinged_at) == 1 for mute in mutes)


async def test_heartbeat_close_1011_reaches_a_stalled_client_once_it_reads_again(
    make_server: Any, peers: Any
) -> None:
    test_server = await make_server(heartbeat=0.2)
    registry = test_server.app[registry_key]
    peer = await peers("websockets", test_server, "r", "stalled")
    await echoed(peer, "before")
    peer.stall()
    await wait_until(
        lambda: any(c.close_reason is CloseReason.HEARTBEAT_TIMEOUT for c in registry.connections)
    )
    peer.stall(False)
    assert await peer.closed() == (1011, "heartbeat timeout")
    assert [e["id"] for e in peer.of("message")] == ["before"]


async def test_heartbeat_keeps_an_idle_client_that_answers_pings(
    make_server: Any, peers: Any
) -> None:
    test_server = await make_server(heartbeat=0.4)
    idle = await peers("aiohttp", test_server, "r", "idle")
    other = await peers("aiohttp", test_server, "r", "other")
    await echoed(idle, "before")
    await asyncio.sleep(2.0)  # five heartbeat periods in which the idle client only pongs
    await echoed(other, "after")
    await idle.wait_for(lambda e: e.get("id") == "after")
    assert idle.code is None


async def test_a_client_that_reads_after_the_close_timeout_still_gets_its_close_frame(
    make_server: Any,
) -> None:
    """A raw client sends a message too big, then reads nothing: at ``close_timeout`` the
    server ends TCP with a FIN, behind the close frame, which the client's kernel holds for
    it; no reset, which would drop it."""
    test_server = await make_server(close_timeout=0.3, max_msg_size=1000)
    with socket.create_connection((test_server.host, test_server.port)) as sock:
        too_big = Frame(Opcode.TEXT, b"x" * 2000).serialize(mask=True, extensions=[])
        sock.sendall(upgrade_request("late", "lou") + too_big)
        await wait_until(lambda: tcp_info(sock)[0] == TCP_CLOSE_WAIT)  # the server's FIN
        stream = await asyncio.to_thread(read_to_end, sock)
    assert close_read(stream) == (1009, "message too big")


async def test_a_client_whose_buffers_are_full_is_reset_at_the_close_timeout(
    make_server: Any, peers: Any
) -> None:
    """A client that stopped reading, with its receive buffer and the server's send buffer
    full: what is left cannot be written, so the close timeout resets it (its TCP state goes
    to CLOSE at once) rather than queueing a FIN behind bytes that will never leave."""
    test_server = await make_server(close_timeout=0.3, rate_limit=10000, rate_burst=10000)
    registry = test_server.app[registry_key]
    ann = await peers("aiohttp", test_server, "full", "ann")
    await ann.wait_for(lambda e: e["type"] == "welcome")
    sock = raw_client_that_never_reads(test_server.host, test_server.port, "full")
    with sock:
        await wait_until(lambda: len(registry.connections) == 2)
        sent = 0
        while not any(c.closing for c in registry.connections):  # closed as a slow consumer
            assert sent < 20000, "the client that reads nothing was never closed"
            await ann.send("x" * 1900, id=str(sent))
            sent += 1
            if sent % 20 == 0:
                await asyncio.sleep(0.01)
        await wait_until(lambda: tcp_info(sock)[0] == TCP_CLOSE)
