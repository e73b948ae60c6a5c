"""What a k6 member counts (k6/lib/chat.js), against a scripted server that sends a welcome
and then chosen frames, encoded as roomhub encodes them: every message event and every event
received, and every seq the room skipped (chat_messages_missed), however the frames hold them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from server.wire.protocol import (
    MAX_TEXT,
    ChatMessage,
    Limits,
    batch,
    message_event,
    presence_event,
    welcome_event,
)
from tests.support.k6 import CHECKS, K6Run, run_k6

pytestmark = pytest.mark.k6

ROOM = "reader"
WELCOME_SEQ = 10
JOIN = "join"

Event = int | str  # a message's seq, or JOIN for a presence event


def encode(event: Event) -> bytes:
    if event == JOIN:
        return presence_event("join", "someone", 2)
    return message_event(int(event), ROOM, "someone", ChatMessage(f"text {event}"))


async def read(
    frames: list[list[Event]],
    tmp_path: Path,
    k6_bin: str,
    aiohttp_server,
    welcome: bool = True,
) -> K6Run:
    """Run k6/checks/reader.js against a server that sends a welcome (seq WELCOME_SEQ), then
    the message WELCOME_SEQ + 1 alone (the member parses it to sample delivery lag), then
    ``frames``, each one WebSocket frame, and reads until the member closes. Without
    ``welcome`` the member reads what it reads when k6 dropped the welcome."""

    async def chat(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if welcome:
            limits = Limits(32768, MAX_TEXT, 5.0, 10)
            event = welcome_event(
                ROOM, "reader", "e", WELCOME_SEQ, 2, ["reader"], False, limits, []
            )
            await ws.send_str(event.decode())
        for frame in [[WELCOME_SEQ + 1], *frames]:
            await ws.send_str(batch([encode(event) for event in frame]).decode())
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", chat)
    server = await aiohttp_server(app)
    url = f"ws://127.0.0.1:{server.port}/ws"
    return await asyncio.to_thread(run_k6, k6_bin, CHECKS / "reader.js", url, tmp_path)


CASES = {
    "consecutive frames": ([[12, 13, 14], [15], [16, 17, 18, 19]], 0),
    "a gap inside a frame": ([[12, 14, 15]], 1),
    "a gap between frames": ([[12, 13], [16, 17]], 2),
    "a repeated and an older seq": ([[12, 13], [13, 14], [12], [15]], 0),
    "a presence event among messages": ([[12, JOIN, 13]], 0),
    "a gap beside a presence event": ([[12, JOIN, 14]], 1),
    "a repeated seq and a gap in one frame": ([[12, 13], [13, 15]], 1),
}


@pytest.mark.parametrize(("frames", "missed"), CASES.values(), ids=CASES.keys())
async def test_a_member_counts_every_message_and_each_skipped_seq(
    frames, missed, tmp_path, k6_bin, aiohttp_server
):
    run = await read(frames, tmp_path, k6_bin, aiohttp_server)
    assert run.returncode == 0, run.output[-4000:]
    events = [event for frame in frames for event in frame]
    messages = sum(event != JOIN for event in events)
    assert run.count("chat_messages_received") == 1 + messages
    assert run.count("chat_events_received") == 2 + len(events)  # the welcome, message 11
    assert run.count("chat_messages_missed") == missed


async def test_a_member_samples_delivery_lag_from_the_server_ts(tmp_path, k6_bin, aiohttp_server):
    """Every frame comes within a second of the first, so message 11 (read without parsing
    it) gives the only sample: the time since the server stamped it, not a seq or a date."""
    run = await read([[12, 13], [14, JOIN, 15]], tmp_path, k6_bin, aiohttp_server)
    assert run.returncode == 0, run.output[-4000:]
    lag = run.values("chat_delivery_lag")
    assert lag["count"] == 1
    assert 0 <= lag["max"] < 5_000


async def test_a_member_whose_welcome_k6_dropped_checks_seq_from_its_first_message(
    tmp_path, k6_bin, aiohttp_server
):
    """k6/experimental/websockets drops a frame it reads before the socket's open event, here
    the welcome (seq 10): the member's first event is message 11. It counts the lost welcome,
    not the room's 10 earlier messages as missed, and still counts the seq the room skipped
    after it."""
    frames = [[JOIN], [12, 13], [15]]
    run = await read(frames, tmp_path, k6_bin, aiohttp_server, welcome=False)
    assert run.returncode == 0, run.output[-4000:]
    assert run.count("chat_welcomes_lost") == 1
    assert run.count("chat_messages_missed") == 1
    assert run.count("chat_messages_received") == 4
