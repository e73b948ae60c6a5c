"""Protocol v1 against the real app, in process: rooms, history, errors, limits, hub modes."""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from websockets.frames import Close, Opcode
from websockets.protocol import Protocol, Side

from server.bot.commands import COMMANDS
from server.rooms.baseline import Room
from server.rooms.broker.memory import MemoryBroker
from server.rooms.hub import RoomHub, message_interval, presence_interval
from server.rooms.items import Join
from server.stockapi import create_app as create_stockapi
from server.web.keys import hubs_key, registry_key
from server.web.views import LISTED_ROOMS
from server.wire.protocol import CloseReason
from tests.chat import (
    HUB_MODES,
    UPGRADE_HEADERS,
    WAIT,
    Client,
    raw_client_that_never_reads,
    sample,
    settings,
    wait_until,
)
from tests.support.docs import code, table


@pytest.fixture
async def server(make_server: Any) -> TestClient:
    return await make_server()


async def connect(
    server: TestClient, room: str = "lobby", user: str = "ann", **query: Any
) -> Client:
    ws = await server.ws_connect("/ws", params={"room": room, "user": user, **query})
    return Client(ws)


async def joined(
    server: TestClient, room: str = "lobby", user: str = "ann", **query: Any
) -> Client:
    """Connect and consume the welcome and own join events."""
    client = await connect(server, room, user, **query)
    await client.next_of("welcome")
    await client.next(lambda e: e["type"] == "join" and e["user"] == user)
    return client


async def say_and_see(client: Client, texts: list[str]) -> None:
    """Send ``texts`` and wait until the client's own copies come back, in order."""
    for text in texts:
        await client.say(text)
    assert [(await client.next_of("message"))["text"] for _ in texts] == texts


@pytest.mark.parametrize("hub_mode", HUB_MODES)
async def test_welcome_names_room_user_epoch_seq_and_members(
    make_server: Any, hub_mode: str
) -> None:
    server = await make_server(hub_mode=hub_mode)
    client = await connect(server, "r1", "  ann  ")
    welcome = await client.next()
    epoch = welcome.pop("epoch")
    assert re.fullmatch(r"[A-Za-z0-9_-]{11}", epoch)
    assert welcome == {
        "type": "welcome", "room": "r1", "user": "ann", "seq": 0, "members": 1, "online": ["ann"],
        "reset": False,
        "limits": {
            "max_message_bytes": 32768, "max_text_chars": 2000, "rate_limit": 5.0,
            "rate_burst": 10,
        },
        "history": [],
    }  # fmt: skip
    other = await (await connect(server, "r1", "bob")).next_of("welcome")
    assert other["epoch"] == epoch


@pytest.mark.parametrize("hub_mode", HUB_MODES)
async def test_welcome_tells_the_limits_the_server_applies(make_server: Any, hub_mode: str) -> None:
    server = await make_server(hub_mode=hub_mode, max_msg_size=1000, rate_limit=2.5, rate_burst=3)
    limits = (await (await connect(server, "r1", "ann")).next_of("welcome"))["limits"]
    assert limits == {
        "max_message_bytes": 1000, "max_text_chars": 2000, "rate_limit": 2.5, "rate_burst": 3
    }  # fmt: skip


@pytest.mark.parametrize("hub_mode", HUB_MODES)
async def test_message_reaches_every_member_with_seq_and_echoed_id(
    make_server: Any, hub_mode: str
) -> None:
    server = await make_server(hub_mode=hub_mode)
    ann = await joined(server, "r1", "ann")
    bob = await joined(server, "r1", "bob")
    await ann.say("hello", id="m-1", sent=123)
    for client in (ann, bob):
        event = await client.next_of("message")
        assert event["text"] == "hello"
        assert event["user"] == "ann"
        assert event["seq"] == 1
        assert event["id"] == "m-1"
        assert event["sent"] == 123
        assert isinstance(event["ts"], int)


async def test_join_and_leave_are_announced_with_member_count(server: TestClient) -> None:
    ann = await joined(server, "r1", "ann")
    bob = await joined(server, "r1", "bob")
    join = await ann.next_of("join")
    assert (join["user"], join["members"]) == ("bob", 2)
    await bob.close()
    leave = await ann.next_of("leave")
    assert leave["user"] == "bob"
    assert leave["members"] == 1


async def test_rooms_are_isolated(server: TestClient) -> None:
    ann = await joined(server, "r1", "ann")
    bob = await joined(server, "r2", "bob")
    await bob.say("only r2")
    assert (await bob.next_of("message"))["text"] == "only r2"
    await ann.say("only r1")
    # r2's message was fanned out before r1's was sent: had it leaked, it would come first.
    assert (await ann.next())["text"] == "only r1"
    await bob.say("r2 again")
    assert (await bob.next())["text"] == "r2 again"


@pytest.mark.parametrize("hub_mode", HUB_MODES)
async def test_history_is_replayed_oldest_first(make_server: Any, hub_mode: str) -> None:
    server = await make_server(hub_mode=hub_mode, history_size=3)
    ann = await joined(server, "r1", "ann")
    for i in range(5):
        await ann.say(f"m{i}")
    for i in range(5):
        assert (await ann.next_of("message"))["text"] == f"m{i}"
    welcome = await (await connect(server, "r1", "bob")).next_of("welcome")
    assert welcome["seq"] == 5
    assert [m["text"] for m in welcome["history"]] == ["m2", "m3", "m4"]
    assert [m["seq"] for m in welcome["history"]] == [3, 4, 5]


async def test_joiner_gets_a_message_once_when_join_and_message_wait_together(
    make_server: Any,
) -> None:
    server = await make_server(fanout_interval=0.3)
    ann = await joined(server, "r1", "ann")
    await ann.say("w")
    assert (await ann.next_of("message"))["text"] == "w"
    await ann.say("x")  # waits for the room's next message fan-out, up to 0.3 s away
    bob = await connect(server, "r1", "bob")
    welcome = await bob.next_of("welcome")
    assert [m["text"] for m in welcome["history"]] == ["w", "x"]
    await ann.say("y")
    assert (await bob.next_of("message"))["text"] == "y"


async def test_since_replays_only_what_the_client_missed(server: TestClient) -> None:
    ann = await connect(server, "r1", "ann")
    epoch = (await ann.next_of("welcome"))["epoch"]
    await say_and_see(ann, [f"m{i}" for i in range(4)])
    welcome = await (await connect(server, "r1", "bob", since=2, epoch=epoch)).next_of("welcome")
    assert [m["seq"] for m in welcome["history"]] == [3, 4]
    assert welcome["reset"] is False


@pytest.mark.parametrize("hub_mode", HUB_MODES)
async def test_resume_into_a_restarted_room_gets_full_history_and_reset(
    make_server: Any, hub_mode: str
) -> None:
    server = await make_server(hub_mode=hub_mode, room_grace=0.1)
    hubs = server.app[hubs_key]
    ann = await connect(server, "r1", "ann")
    old = (await ann.next_of("welcome"))["epoch"]
    await say_and_see(ann, [f"old{i}" for i in range(4)])
    await ann.close()
    await wait_until(lambda: hubs.room_count() == 0)
    cat = await connect(server, "r1", "cat")
    new = await cat.next_of("welcome")
    assert (new["seq"], new["reset"]) == (0, False)
    assert new["epoch"] != old
    await say_and_see(cat, ["new0", "new1"])
    welcome = await (await connect(server, "r1", "ann", since=4, epoch=old)).next_of("welcome")
    assert (welcome["epoch"], welcome["seq"], welcome["reset"]) == (new["epoch"], 2, True)
    assert [(m["seq"], m["text"]) for m in welcome["history"]] == [(1, "new0"), (2, "new1")]


async def test_events_waiting_together_arrive_batched_in_one_frame(make_server: Any) -> None:
    server = await make_server(rate_burst=100, fanout_interval=1.0)
    ann = await joined(server, "r1", "ann")
    bob = await joined(server, "r1", "bob")
    await ann.say("warm-up")  # a fan-out now: the next one is a full interval away
    await bob.next_of("message")
    frames_before = bob.frames
    await asyncio.gather(*(ann.say(f"m{i}") for i in range(50)))
    texts = [(await bob.next_of("message"))["text"] for _ in range(50)]
    assert texts == [f"m{i}" for i in range(50)]
    assert bob.frames - frames_before == 1


@pytest.mark.parametrize(
    ("members", "messages", "presence"),
    [(10, 0.01, 0.01), (400, 0.02, 0.4), (600, 0.03, 0.6), (5000, 0.05, 1.0)],
)
def test_big_rooms_fan_out_within_the_documented_frame_budgets(
    members: int, messages: float, presence: float
) -> None:
    # docs/protocol.md "Frames and batching": 20,000 frames/s for messages (at most 50 ms
    # apart), 1,000 for joins and leaves alone (at most 1 s), from the 10 ms default up.
    assert message_interval(0.01, members) == pytest.approx(messages)
    assert presence_interval(0.01, members) == pytest.approx(presence)
    assert message_interval(0, members) == presence_interval(0, members) == 0


@pytest.mark.parametrize(("members", "wait"), [(1, 0.001), (2, 0.002), (5, 0.005), (10, 0.01)])
def test_rooms_under_ten_members_wait_a_tenth_of_the_interval_per_member(
    members: int, wait: float
) -> None:
    assert message_interval(0.01, members) == pytest.approx(wait)
    assert presence_interval(0.01, members) == pytest.approx(wait)


@pytest.mark.parametrize(
    ("frame", "code", "reply_to"),
    [
        ("not json", "bad_json", None),
        ("[1, 2]", "bad_json", None),
        ('{"type": "dance", "id": "d"}', "bad_message", "d"),
        ('{"type": "message", "text": ""}', "bad_message", None),
        ('{"type": "message", "text": 5}', "bad_message", None),
        ('{"type": "message", "text": "hi", "id": 7}', "bad_message", None),
        ('{"type": "message", "text": "hi", "sent": "now"}', "bad_message", None),
        ('{"type": "message", "text": "' + "x" * 2001 + '", "id": "long"}', "too_long", "long"),
        ('{"type": "message", "text": "/stock=", "id": "c"}', "bad_command", "c"),
    ],
)
async def test_bad_frame_gets_error_event_and_connection_keeps_working(
    server: TestClient, frame: str, code: str, reply_to: str | None
) -> None:
    ann = await joined(server, "r1", "ann")
    invalid_before = sample("chat_messages_received_total", kind="invalid")
    await ann.ws.send_str(frame)
    error = await ann.next_of("error")
    assert error["code"] == code
    assert error["detail"]
    assert error.get("reply_to") == reply_to
    assert sample("chat_messages_received_total", kind="invalid") == invalid_before + 1
    await ann.say("still here")
    assert (await ann.next_of("message"))["text"] == "still here"


async def test_binary_frame_gets_error_event(server: TestClient) -> None:
    ann = await joined(server)
    await ann.ws.send_bytes(b"\x00\x01")
    assert (await ann.next_of("error"))["code"] == "bad_message"


async def test_binary_flood_is_rate_limited_and_closed_with_1008(make_server: Any) -> None:
    server = await make_server(rate_limit=1, rate_burst=3)
    ann = await joined(server)
    for _ in range(40):
        await ann.ws.send_bytes(b"\x00")
    codes = {(await ann.next_of("error"))["code"] for _ in range(4)}
    assert "rate_limited" in codes
    assert await ann.closed() == 1008


async def test_every_ping_gets_its_pong_and_costs_a_token_then_1008(make_server: Any) -> None:
    """docs/protocol.md, rate limit: every ping is answered (RFC 6455 5.5.2) and costs a token;
    one that finds the bucket empty also gets a ``rate_limited`` error, and 20 refusals in a
    row close with 1008."""
    server = await make_server(rate_limit=0.01, rate_burst=10)  # no refill during the test
    ws = await server.ws_connect("/ws", params={"room": "r", "user": "pinger"}, autoping=False)
    refused = []
    async with asyncio.timeout(WAIT):
        for i in range(30):
            await ws.ping(b"%d" % i)
            errors = 0
            while (msg := await ws.receive()).type is not WSMsgType.PONG:
                events = orjson.loads(msg.data)
                events = events if isinstance(events, list) else [events]
                errors += sum(e.get("code") == "rate_limited" for e in events)
            assert msg.data == b"%d" % i
            refused.append(errors)  # the error is written before the pong
        while (msg := await ws.receive()).type is WSMsgType.TEXT:
            pass
    assert refused == [0] * 10 + [1] * 20
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1008)


async def test_plain_get_on_ws_gets_400_json(server: TestClient) -> None:
    response = await server.get("/ws", params={"room": "r1"})
    assert response.status == 400
    assert (await response.json())["error"] == "not_websocket"


async def test_oversized_frame_closes_with_1009_and_server_keeps_serving(
    server: TestClient,
) -> None:
    ann = await joined(server, "r1", "ann")
    bob = await joined(server, "r1", "bob")
    before = sample("chat_connections_closed_total", reason="too_big")
    await ann.ws.send_str("x" * (settings().max_msg_size + 1))
    assert await ann.closed() == 1009
    await wait_until(
        lambda: sample("chat_connections_closed_total", reason="too_big") >= before + 1
    )
    assert sample("chat_connections_closed_total", reason="too_big") == before + 1
    await bob.say("after")
    assert (await bob.next_of("message"))["text"] == "after"


async def test_frame_four_times_over_the_limit_is_cut_off_with_1009(server: TestClient) -> None:
    ann = await joined(server, "r1", "ann")
    before = sample("chat_connections_closed_total", reason="too_big")
    await ann.ws.send_str("x" * (4 * settings().max_msg_size + 1))
    assert await ann.closed() == 1009
    await wait_until(
        lambda: sample("chat_connections_closed_total", reason="too_big") == before + 1
    )


@pytest.mark.parametrize(
    ("params", "error", "reason"),
    [
        ({"room": "bad room"}, "bad_room", "bad_room"),
        ({"room": "x" * 65}, "bad_room", "bad_room"),
        ({}, "bad_room", "bad_room"),
        ({"room": "ok", "user": "x" * 33}, "bad_user", "bad_user"),
        ({"room": "ok", "user": "a\x07b"}, "bad_user", "bad_user"),
        ({"room": "ok", "user": "ali\u200bce"}, "bad_user", "bad_user"),
        ({"room": "ok", "since": "-1"}, "bad_since", None),
        ({"room": "ok", "epoch": "a b"}, "bad_epoch", None),
        ({"room": "ok", "epoch": "x" * 65}, "bad_epoch", None),
    ],
)
async def test_bad_query_is_refused_with_400_json(
    server: TestClient, params: dict[str, str], error: str, reason: str | None
) -> None:
    before = sample("chat_handshakes_rejected_total", reason=reason or "bad_room")
    response = await server.get("/ws", params=params, headers=UPGRADE_HEADERS)
    assert response.status == 400
    assert (await response.json())["error"] == error
    if reason:
        assert sample("chat_handshakes_rejected_total", reason=reason) == before + 1


async def test_missing_user_becomes_a_guest(server: TestClient) -> None:
    welcome = await (await connect(server, "r1", "")).next_of("welcome")
    assert welcome["user"].startswith("guest-")


async def test_foreign_origin_is_refused_with_403(server: TestClient) -> None:
    before = sample("chat_handshakes_rejected_total", reason="origin")
    with pytest.raises(Exception) as info:
        await server.ws_connect("/ws?room=r1", headers={"Origin": "http://evil.example"})
    assert getattr(info.value, "status", None) == 403
    assert sample("chat_handshakes_rejected_total", reason="origin") == before + 1


async def test_own_origin_and_allow_listed_origins_are_accepted(make_server: Any) -> None:
    server = await make_server(allowed_origins=("http://chat.example",))
    ws = await server.ws_connect("/ws?room=r1", headers={"Origin": "http://chat.example"})
    assert (await Client(ws).next())["type"] == "welcome"
    default = await make_server()
    own = f"http://{default.host}:{default.port}"
    ws = await default.ws_connect("/ws?room=r1", headers={"Origin": own})
    assert (await Client(ws).next())["type"] == "welcome"


async def test_over_capacity_is_refused_with_503(make_server: Any) -> None:
    server = await make_server(max_connections=2)
    await joined(server, "r1", "a")
    await joined(server, "r1", "b")
    before = sample("chat_handshakes_rejected_total", reason="capacity")
    with pytest.raises(Exception) as info:
        await server.ws_connect("/ws?room=r1")
    assert getattr(info.value, "status", None) == 503
    assert sample("chat_handshakes_rejected_total", reason="capacity") == before + 1


async def test_rate_limit_answers_rate_limited_then_closes_abuser_with_1008(
    make_server: Any,
) -> None:
    server = await make_server(rate_limit=1, rate_burst=3)
    ann = await joined(server)
    for i in range(3):
        await ann.say(f"ok{i}")
    await ann.say("too fast", id="x")
    error = await ann.next_of("error")
    assert (error["code"], error["reply_to"]) == ("rate_limited", "x")
    for _ in range(30):
        await ann.say("spam")
    assert await ann.closed() == 1008


async def test_slow_consumer_is_closed_with_1013_while_others_keep_receiving(
    make_server: Any,
) -> None:
    server = await make_server(outbox_limit=20, rate_limit=10000, rate_burst=10000)
    registry = server.app[registry_key]
    ann = await joined(server, "r1", "ann")
    before = sample("chat_connections_closed_total", reason="slow_consumer")
    slow = raw_client_that_never_reads(server.host, server.port, "r1")
    try:
        await wait_until(lambda: len(registry.connections) == 2)
        big = "x" * 1900
        sent = 0
        while not any(c.close_reason is CloseReason.SLOW_CONSUMER for c in registry.connections):
            assert sent < 5000, "the silent client was never closed as a slow consumer"
            await ann.say(big, id=str(sent))
            sent += 1
            if sent % 20 == 0:
                await asyncio.sleep(0.01)
        # The silent client reads at last: what was written, then 1013, then the FIN.
        close = await asyncio.to_thread(read_until_eof, slow)
        assert (close.code, close.reason) == (1013, "slow consumer")
        await ann.say("last", id="last")
        ids = set()
        while "last" not in ids:
            ids.add((await ann.next_of("message"))["id"])
        assert len(ids) == sent + 1
        await wait_until(lambda: len(registry.connections) == 1)
        assert sample("chat_connections_closed_total", reason="slow_consumer") == before + 1
    finally:
        slow.close()


def read_until_eof(sock: socket.socket) -> Close:
    """Read an upgraded raw socket until the server ends TCP; return the close frame it sent.

    Raises ``ConnectionResetError`` if the server reset the connection instead."""
    sock.settimeout(WAIT)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    client = Protocol(Side.CLIENT, max_size=None)
    client.receive_data(data.split(b"\r\n\r\n", 1)[1])
    (close,) = [f for f in client.events_received() if f.opcode is Opcode.CLOSE]
    return Close.parse(close.data)


async def test_bot_reply_is_broadcast_to_the_room_and_command_is_not_stored(
    server: TestClient,
) -> None:
    ann = await joined(server, "r1", "ann")
    bob = await joined(server, "r1", "bob")
    before = sample("chat_bot_commands_total", result="ok")
    await ann.say("/stock=aapl", id="c1")
    for client in (ann, bob):
        reply = await client.next_of("bot")
        assert reply["user"] == "stockbot"
        assert reply["ok"] is True
        assert reply["reply_to"] == "c1"
        assert reply["text"].startswith("AAPL.US quote is $")
        assert " per share" in reply["text"]
    assert sample("chat_bot_commands_total", result="ok") == before + 1
    welcome = await (await connect(server, "r1", "cat")).next_of("welcome")
    assert welcome["history"] == []
    assert welcome["seq"] == 0


async def test_help_gets_a_bot_reply_listing_the_commands_to_the_sender_only(
    server: TestClient,
) -> None:
    ann = await joined(server, "r1", "ann")
    bob = await joined(server, "r1", "bob")
    await ann.say("/help", id="h1")
    reply = await ann.next_of("bot")
    assert (reply["user"], reply["ok"], reply["reply_to"]) == ("stockbot", True, "h1")
    assert reply["text"] == COMMANDS
    await ann.say("after", id="a1")
    seen = await bob.next(lambda e: e["type"] in ("bot", "message"))
    assert seen.get("id") == "a1", "the help reply reached another member"


async def test_an_unknown_command_gets_a_bot_reply_naming_it_and_is_not_stored(
    server: TestClient,
) -> None:
    ann = await joined(server, "r1", "ann")
    await ann.say("/nope now", id="n1")
    reply = await ann.next_of("bot")
    assert (reply["ok"], reply["reply_to"]) == (False, "n1")
    assert reply["text"] == f"Unknown command /nope. {COMMANDS}"
    welcome = await (await connect(server, "r1", "cat")).next_of("welcome")
    assert (welcome["seq"], welcome["history"]) == (0, [])


async def test_room_list_holds_rooms_with_members_busiest_first(server: TestClient) -> None:
    await joined(server, "quiet", "ann")
    await joined(server, "busy", "bob")
    await joined(server, "busy", "cat")
    gone = await joined(server, "gone", "dan")
    await gone.close()
    expected = [{"name": "busy", "members": 2}, {"name": "quiet", "members": 1}]
    async with asyncio.timeout(5):
        while (await (await server.get("/api/rooms")).json())["rooms"] != expected:
            await asyncio.sleep(0.02)


async def test_empty_room_is_reaped_after_the_grace_period(server: TestClient) -> None:
    hubs = server.app[hubs_key]
    ann = await connect(server, "reap-me", "ann")
    epoch = (await ann.next_of("welcome"))["epoch"]
    await ann.say("before")
    await ann.next_of("message")
    assert ("reap-me", 1) in await hubs.rooms(100)
    await ann.close()
    await wait_until(lambda: hubs.room_count() == 0)
    assert sample("chat_rooms") == 0
    welcome = await (await connect(server, "reap-me", "bob")).next_of("welcome")
    assert (welcome["seq"], welcome["history"]) == (0, [])
    assert welcome["epoch"] != epoch


async def test_failing_hub_answers_every_queued_join_and_the_room_restarts(
    server: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    hubs = server.app[hubs_key]
    gate = asyncio.Event()
    run, join = RoomHub.run, MemoryBroker.join

    async def gated_run(self: RoomHub, grace: float, interval: float) -> None:
        await gate.wait()
        await run(self, grace, interval)

    def failing_join(self: MemoryBroker, room: str, user: str, *args: Any) -> None:
        if user == "boom":
            raise RuntimeError("injected fault")
        join(self, room, user, *args)

    monkeypatch.setattr(RoomHub, "run", gated_run)
    monkeypatch.setattr(MemoryBroker, "join", failing_join)
    before = sample("chat_connections_closed_total", reason="error")
    clients = [await connect(server, "r1", user) for user in ("ann", "boom", "bob", "cat")]
    await wait_until(lambda: hubs.queue_depth() == 4)
    gate.set()
    # ann's join went through (its welcome may or may not have left); the rest never did.
    assert [await client.closed() for client in clients] == [1011] * 4
    for client in clients[1:]:
        assert client.events.empty()
    await wait_until(lambda: sample("chat_connections_closed_total", reason="error") == before + 4)
    await wait_until(lambda: hubs.room_count() == 0)
    dan = await joined(server, "r1", "dan")
    await dan.say("works again")
    assert (await dan.next_of("message"))["seq"] == 1


async def test_a_members_message_to_a_sleeping_hub_goes_to_the_broker_in_the_senders_read(
    make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_server()
    ann = await joined(server, "r1", "ann")
    bob = await joined(server, "r1", "bob")
    await wait_until(lambda: server.app[hubs_key].queue_depth() == 0)
    said_in: list[asyncio.Task[Any] | None] = []
    say = MemoryBroker.say

    def recording(self: MemoryBroker, *args: Any) -> None:
        said_in.append(asyncio.current_task())
        say(self, *args)

    monkeypatch.setattr(MemoryBroker, "say", recording)
    await ann.say("now")
    assert (await bob.next_of("message"))["text"] == "now"
    assert said_in == [None]  # the socket's read callback: the hub's task did not wake for it


@pytest.mark.parametrize("hub_mode", HUB_MODES)
async def test_join_that_would_open_a_room_over_the_limit_is_refused_with_503(
    make_server: Any, hub_mode: str
) -> None:
    server = await make_server(hub_mode=hub_mode, max_rooms=2)
    await joined(server, "r1", "ann")
    await joined(server, "r2", "bob")
    before = sample("chat_handshakes_rejected_total", reason="capacity")
    response = await server.get("/ws", params={"room": "r3"}, headers=UPGRADE_HEADERS)
    assert response.status == 503
    assert await response.json() == {"error": "capacity", "detail": "server is at its room limit"}
    assert sample("chat_handshakes_rejected_total", reason="capacity") == before + 1
    await joined(server, "r1", "cat")  # an open room still takes joins


ERRORS = table("docs/protocol.md", "### `error`")
CAUSES: dict[str, str | bytes] = {
    "frame is not valid JSON": "not json",
    "frame must hold one JSON object": "[1, 2]",
    'type must be "message", "delete", "kick" or "ban"': '{"type": "dance"}',
    "seq must be a positive integer": '{"type": "delete", "seq": 0}',
    "user must be a member's name": '{"type": "kick", "user": " "}',
    "duration must be seconds above 0, at most a year": (
        '{"type": "ban", "user": "x", "duration": -1}'
    ),
    "only moderators may kick or ban": '{"type": "kick", "user": "bob"}',
    "deleting needs sign-in with a token (ROOMHUB_AUTH=token)": '{"type": "delete", "seq": 9}',
    "text must be a string with a visible character": '{"type": "message", "text": " "}',
    "id must be a string of at most 64 chars": '{"type": "message", "text": "x", "id": 7}',
    "sent must be a number (client ms)": '{"type": "message", "text": "x", "sent": true}',
    "binary frames are not supported": b"{}",
    "text is longer than 2000 characters": f'{{"type": "message", "text": "{"x" * 2001}"}}',
    "missing stock code, e.g. /stock=AAPL": '{"type": "message", "text": "/stock="}',
    "stock code is longer than 20 characters": (
        f'{{"type": "message", "text": "/stock={"A" * 21}"}}'
    ),
    "stock code may hold only letters, digits, inner '.' or '-' and a leading '^'": (
        '{"type": "message", "text": "/stock=a_b"}'
    ),
}
"""A frame (text, or bytes for a binary frame) causing each documented ``detail`` of an
``error`` event; ``busy``, ``rate_limited`` and ``unavailable`` need a full bot queue, an
empty bucket and a lost Redis."""


def documented_errors() -> dict[str, str]:
    """``{detail: code}`` for every detail in the ``error`` table of docs/protocol.md."""
    column = "`detail` (exact text, or an example)"
    return {d: code(row["`code`"]) for row in ERRORS for d in re.findall(r"`([^`]*)`", row[column])}


async def test_every_documented_error_detail_is_what_the_server_sends(make_server: Any) -> None:
    ann = await joined(await make_server(rate_burst=100), "errors", "ann")
    documented = documented_errors()
    # unavailable needs Redis gone: tests/test_backplane.py stops a real one; deleting
    # someone else's message (or a missing one) needs token sign-in: tests/test_moderation.py.
    assert set(documented) - set(CAUSES) == {
        "the stock bot is busy, try again",
        "slow down",
        "not delivered: the broker is unavailable",
        "not done: the broker is unavailable",
        "you may delete only your own messages",
        "no message 999999 in this room's history",
    }
    for detail, frame in CAUSES.items():
        if isinstance(frame, bytes):
            await ann.ws.send_bytes(frame)
        else:
            await ann.ws.send_str(frame)
        event = await ann.next_of("error")
        assert (event["code"], event["detail"]) == (documented[detail], detail)


async def test_a_command_finding_the_bot_queue_full_gets_the_documented_busy_error(
    make_server: Any, aiohttp_server: Any
) -> None:
    # One worker held by a 2 s quote, one queue place: a third command finds the queue full.
    quotes = await aiohttp_server(create_stockapi(latency_ms=2000))
    server = await make_server(
        quote_provider="url",
        quote_url=str(quotes.make_url("")).rstrip("/"),
        bot_workers=1,
        bot_queue_size=1,
    )
    ann = await joined(server, "market", "ann")
    for symbol in ("aaa", "bbb", "ccc"):
        await ann.say(f"/stock={symbol}", id=symbol)
    event = await ann.next_of("error")
    assert documented_errors()[event["detail"]] == event["code"] == "busy"
    assert event["reply_to"] in ("bbb", "ccc")


async def test_a_frame_finding_the_bucket_empty_gets_the_documented_rate_limited_error(
    make_server: Any,
) -> None:
    ann = await joined(await make_server(rate_limit=0.01, rate_burst=1), "slow", "ann")
    await ann.say("one", id="s1")
    await ann.say("two", id="s2")
    event = await ann.next_of("error")
    assert documented_errors()[event["detail"]] == event["code"] == "rate_limited"
    assert event["reply_to"] == "s2"


async def test_http_endpoints_answer_as_documented(server: TestClient) -> None:
    answers = {
        code(row["endpoint"]): row["answer"]
        for row in table("docs/protocol.md", "## HTTP endpoints")
    }
    await joined(server, "demo", "ann")
    for path, status in (("/healthz", 200), ("/readyz", 200)):
        documented = orjson.loads(re.findall(r"`([^`]*)`", answers[f"GET {path}"])[0])
        response = await server.get(path)
        assert (response.status, await response.json()) == (status, documented), path
    assert f"at most {LISTED_ROOMS}" in answers["GET /api/rooms"]
    assert await (await server.get("/api/rooms")).json() == {
        "rooms": [{"name": "demo", "members": 1}]
    }
    assert (await server.get("/rooms/a%20b")).status == 400
    assert "400 for a bad room name" in answers["GET /rooms/{room}"]


async def test_global_hub_closes_a_join_it_failed_with_1011_and_serves_on(
    make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_server(hub_mode="global")
    join = Room.join

    def failing_join(self: Room, item: Join) -> tuple[bytes, bytes]:
        if item.conn.user == "boom":
            raise RuntimeError("injected fault")
        return join(self, item)

    monkeypatch.setattr(Room, "join", failing_join)
    ann = await joined(server, "r1", "ann")
    boom = await connect(server, "r1", "boom")
    assert await boom.closed() == 1011
    assert boom.events.empty()
    await ann.say("still here")
    assert (await ann.next_of("message"))["text"] == "still here"


async def test_refused_upgrade_opens_no_room(make_server: Any) -> None:
    server = await make_server(max_connections=1)
    hubs = server.app[hubs_key]
    await joined(server, "r1", "ann")
    headers = {**UPGRADE_HEADERS, "Origin": "http://evil.example"}
    assert (await server.get("/ws", params={"room": "r2"}, headers=headers)).status == 403
    assert (await server.get("/ws", params={"room": "r3"}, headers=UPGRADE_HEADERS)).status == 503
    assert hubs.room_count() == 1  # r1's hub only
    assert [name for name, _ in await hubs.rooms(100)] == ["r1"]
