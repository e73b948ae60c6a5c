"""The Redis backplane: several instances (in this process, each on its own port) share rooms
through a real ``redis-server``: one order, exactly once, history, presence, bot replies,
and Redis going away and coming back."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis
from aiohttp.test_utils import TestClient

from server.ops.config import Settings
from server.rooms.broker.redis import RedisBroker, candidate_names
from server.rooms.names import SUFFIX_LIMIT, name_key, suffixed
from server.web.app import create_app
from server.web.keys import broker_key
from tests.chat import UPGRADE_HEADERS, Client, sample, settings, wait_until
from tests.support.k6 import SCENARIOS, run_k6
from tests.support.processes import Process, RedisServer, free_port, run_server


@pytest.fixture
def make_instance(aiohttp_client: Any, redis_server: RedisServer):
    """Start one more instance on ``redis_server`` (extra settings as keyword arguments)."""

    async def make(**overrides: Any) -> TestClient:
        app = create_app(settings(broker=redis_server.url, **overrides))
        client = await aiohttp_client(app)
        await wait_until(lambda: _ready(client))
        return client

    return make


def _ready(instance: TestClient) -> bool:
    return instance.app[broker_key].ready


async def connect(instance: TestClient, room: str, user: str, **query: Any) -> Client:
    ws = await instance.ws_connect("/ws", params={"room": room, "user": user, **query})
    return Client(ws)


async def joined(instance: TestClient, room: str, user: str, **query: Any) -> Client:
    """Connect; consume the welcome and the client's own join."""
    client = await connect(instance, room, user, **query)
    await client.next_of("welcome")
    await client.next(lambda e: e["type"] == "join" and e["user"] == user)
    return client


async def messages(client: Client, count: int) -> list[dict[str, Any]]:
    return [await client.next_of("message") for _ in range(count)]


@pytest.mark.parametrize("instances", [2, 3])
async def test_every_member_on_every_instance_sees_each_message_once_in_one_order(
    make_instance: Any, instances: int
) -> None:
    servers = [await make_instance() for _ in range(instances)]
    clients = [await joined(server, "lobby", f"u{i}") for i, server in enumerate(servers)]
    for round_ in range(5):
        for i, client in enumerate(clients):
            await client.say(f"{round_}-{i}", id=f"{round_}-{i}")
    seen = [await messages(client, 5 * instances) for client in clients]
    orders = [[(m["seq"], m["text"]) for m in got] for got in seen]
    assert all(order == orders[0] for order in orders)
    seqs = [seq for seq, _ in orders[0]]
    assert seqs == list(range(seqs[0], seqs[0] + 5 * instances))
    assert sorted(text for _, text in orders[0]) == sorted(
        f"{r}-{i}" for r in range(5) for i in range(instances)
    )
    # No second copy of any message: the next message everyone sees is the marker.
    await clients[0].say("end")
    for client in clients:
        assert (await client.next_of("message"))["text"] == "end"
        await client.close()


async def test_since_replays_history_on_another_instance(make_instance: Any) -> None:
    a, b = await make_instance(), await make_instance()
    ann = await joined(a, "lobby", "ann")
    for i in range(5):
        await ann.say(f"m{i}")
    sent = await messages(ann, 5)
    bob = await connect(b, "lobby", "bob", since=sent[1]["seq"])
    welcome = await bob.next_of("welcome")
    assert welcome["seq"] == sent[-1]["seq"]
    assert [m["text"] for m in welcome["history"]] == ["m2", "m3", "m4"]
    await ann.say("live")
    assert (await bob.next_of("message"))["text"] == "live"
    await ann.close()
    await bob.close()


async def test_members_are_counted_over_every_instance(make_instance: Any) -> None:
    a, b = await make_instance(), await make_instance()
    ann = await joined(a, "lobby", "ann")
    bob = await connect(b, "lobby", "bob")
    assert (await bob.next_of("welcome"))["members"] == 2
    assert (await ann.next(lambda e: e["type"] == "join" and e["user"] == "bob"))["members"] == 2
    for server in (a, b):
        assert await (await server.get("/api/rooms")).json() == {
            "rooms": [{"name": "lobby", "members": 2}]
        }
    await bob.close()
    assert (await ann.next_of("leave"))["members"] == 1
    await ann.close()


async def test_a_bot_reply_reaches_members_on_the_other_instance(make_instance: Any) -> None:
    a, b = await make_instance(), await make_instance()
    ann = await joined(a, "lobby", "ann")
    bob = await joined(b, "lobby", "bob")
    await ann.say("/stock=AAPL.US", id="q1")
    for client in (ann, bob):
        reply = await client.next_of("bot")
        assert reply["reply_to"] == "q1"
        assert reply["ok"] is True
    await ann.close()
    await bob.close()


async def test_redis_restarted_empty_mid_chat_unavailable_then_a_new_epoch(
    make_instance: Any, redis_server: RedisServer
) -> None:
    a, b = await make_instance(), await make_instance()
    ann = await connect(a, "lobby", "ann")
    old = await ann.next_of("welcome")
    bob = await joined(b, "lobby", "bob")
    await ann.say("before")
    assert (await bob.next_of("message"))["seq"] == 1
    reconnects = sample("chat_broker_reconnects_total")

    redis_server.stop()
    await wait_until(lambda: not _ready(a) and not _ready(b))
    response = await a.get("/readyz")
    assert response.status == 503
    assert await response.json() == {"status": "broker_unavailable"}
    assert sample("chat_broker_up", shard="0") == 0
    await ann.say("lost", id="m1")
    error = await ann.next_of("error")
    assert (error["code"], error["reply_to"]) == ("unavailable", "m1")
    assert error["detail"] == "not delivered: the broker is unavailable"  # docs/protocol.md
    assert (await a.get("/healthz")).status == 200

    redis_server.start()  # empty: the room's epoch, seq and history are gone
    await wait_until(lambda: _ready(a) and _ready(b), timeout=15)
    assert (await a.get("/readyz")).status == 200
    assert sample("chat_broker_reconnects_total") >= reconnects + 2
    # Members are told the room restarted, and resume into its new epoch.
    assert [await ann.closed(), await bob.closed()] == [1012, 1012]
    ann = await connect(a, "lobby", "ann", since=1, epoch=old["epoch"])
    new = await ann.next_of("welcome")
    assert new["reset"] is True
    assert new["epoch"] != old["epoch"]
    bob = await joined(b, "lobby", "bob")
    await ann.say("after", id="m2")
    for client in (ann, bob):
        got = await client.next_of("message")
        assert (got["text"], got["id"], got["seq"]) == ("after", "m2", 1)
    await ann.close()
    await bob.close()


async def test_a_room_whose_keys_redis_lost_refuses_then_restarts_in_a_new_epoch(
    make_instance: Any, redis_server: RedisServer
) -> None:
    a = await make_instance()
    ann = await connect(a, "b", "ann")
    old = await ann.next_of("welcome")
    bob = await joined(a, "b", "bob")
    for i in range(3):
        await ann.say(f"m{i}")
    assert [m["seq"] for m in await messages(bob, 3)] == [1, 2, 3]

    redis.Redis.from_url(redis_server.url).flushall()  # the instance stays connected
    sent = [f"lost{i}" for i in range(3)]
    for text in sent:
        await ann.say(text, id=text)
    error = await ann.next_of("error")
    assert (error["code"], error["reply_to"]) == ("unavailable", "lost0")
    assert [await ann.closed(), await bob.closed()] == [1012, 1012]
    refused = ["lost0"]
    while not ann.events.empty():
        event = ann.events.get_nowait()
        refused += [event["reply_to"]] if event["type"] == "error" else []
    ann = await connect(a, "b", "ann", since=3, epoch=old["epoch"])
    new = await ann.next_of("welcome")
    assert (new["reset"], new["epoch"] != old["epoch"]) == (True, True)
    # Each message after the loss was refused or is in the new epoch's history, seq from 1.
    kept = [m["text"] for m in new["history"]]
    assert [m["seq"] for m in new["history"]] == list(range(1, len(kept) + 1))
    assert sorted(refused + kept) == sent
    bob = await joined(a, "b", "bob")
    await ann.say("after", id="after")
    for client in (ann, bob):
        got = await client.next_of("message")
        assert (got["text"], got["seq"]) == ("after", len(kept) + 1)
    await ann.close()
    await bob.close()


async def test_members_on_every_instance_resume_in_the_new_epoch_a_message_made(
    make_instance: Any, redis_server: RedisServer
) -> None:
    a, b = await make_instance(), await make_instance()
    ann = await connect(a, "b", "ann")
    old = await ann.next_of("welcome")
    bob = await joined(b, "b", "bob")
    await ann.say("m0")
    assert [m["seq"] for m in await messages(bob, 1)] == [1]

    redis.Redis.from_url(redis_server.url).flushall()  # both instances stay connected
    await ann.say("lost", id="lost")
    error = await ann.next_of("error")
    assert (error["code"], error["reply_to"]) == ("unavailable", "lost")
    # bob, on the other instance, is told too, though he sent nothing.
    assert [await ann.closed(), await bob.closed()] == [1012, 1012]
    bob = await connect(b, "b", "bob", since=1, epoch=old["epoch"])
    new = await bob.next_of("welcome")
    assert (new["reset"], new["epoch"] != old["epoch"]) == (True, True)
    ann = await joined(a, "b", "ann")
    await bob.say("after", id="after")
    for client in (ann, bob):
        got = await client.next_of("message")
        assert (got["text"], got["seq"]) == ("after", 1)
    await ann.close()
    await bob.close()


async def test_a_server_api_publish_into_a_lost_room_makes_its_members_elsewhere_resume(
    make_instance: Any, redis_server: RedisServer
) -> None:
    key = "test-key-0123456789abcdef"
    a, b = await make_instance(api_key=key), await make_instance()
    bob = await connect(b, "b", "bob")
    old = await bob.next_of("welcome")
    await bob.say("m0")
    assert [m["seq"] for m in await messages(bob, 1)] == [1]

    redis.Redis.from_url(redis_server.url).flushall()  # both instances stay connected
    body = {"room": "b", "text": "from the api"}
    response = await a.post("/api/v1/publish", json=body, headers={"X-API-Key": key})
    assert response.status == 200, await response.text()
    assert await bob.closed() == 1012
    bob = await connect(b, "b", "bob", since=1, epoch=old["epoch"])
    new = await bob.next_of("welcome")
    assert (new["reset"], new["epoch"] != old["epoch"]) == (True, True)
    assert [m["text"] for m in new["history"]] == ["from the api"]
    await bob.close()


async def test_a_join_into_a_room_whose_keys_redis_lost_closes_its_members_with_1012(
    make_instance: Any, redis_server: RedisServer
) -> None:
    a = await make_instance()
    ann = await joined(a, "b", "ann")
    await ann.say("m0")
    assert (await ann.next_of("message"))["seq"] == 1

    redis.Redis.from_url(redis_server.url).flushall()  # the instance stays connected
    cy = await connect(a, "b", "cy")
    assert (await cy.next_of("welcome"))["seq"] == 0
    assert await ann.closed() == 1012
    await cy.say("after")
    assert (await cy.next_of("message"))["seq"] == 1
    await cy.close()


async def test_an_abandoned_rooms_keys_expire_and_it_restarts_in_a_new_epoch(
    make_instance: Any, redis_server: RedisServer
) -> None:
    # Keys live max(room_grace, presence_ttl) = 3 s past the last use; refreshed every 1 s.
    a = await make_instance(room_grace=1.0, presence_ttl=3.0)
    store = redis.Redis.from_url(redis_server.url)
    keys = [f"roomhub:{{lobby}}:{name}" for name in ("epoch", "seq", "history", "instances")]
    ann = await connect(a, "lobby", "ann")
    old = await ann.next_of("welcome")
    await ann.say("hello")
    assert (await ann.next_of("message"))["seq"] == 1
    assert store.exists(*keys) == 4
    assert all(0 < store.ttl(key) <= 3 for key in keys)

    await asyncio.sleep(4.5)  # in use past the retention: the presence refresh keeps the keys
    assert store.exists(*keys) == 4
    await ann.close()
    await wait_until(lambda: not store.keys("roomhub:{lobby}:*"), timeout=15)
    assert store.zscore("roomhub:rooms", "lobby") is None

    ann = await connect(a, "lobby", "ann", since=1, epoch=old["epoch"])
    new = await ann.next_of("welcome")
    assert (new["reset"], new["seq"], new["history"]) == (True, 0, [])
    assert new["epoch"] != old["epoch"]
    await ann.close()
    store.close()


async def test_a_lost_subscription_is_restored_without_touching_the_room(
    make_instance: Any, redis_server: RedisServer
) -> None:
    """redis-py #2089: after its pub/sub connection drops, an instance subscribes again by
    itself; the room keeps its epoch and members stay connected."""
    a, b = await make_instance(), await make_instance()
    ann = await joined(a, "lobby", "ann")
    bob = await joined(b, "lobby", "bob")
    reconnects = sample("chat_broker_reconnects_total")
    with redis.Redis(port=redis_server.port) as admin:
        assert admin.client_kill_filter(_type="pubsub") == 2
    await wait_until(lambda: sample("chat_broker_reconnects_total") >= reconnects + 2)
    await ann.say("still here", id="m1")
    got = await bob.next_of("message")
    assert (got["text"], got["seq"]) == ("still here", 1)
    await bob.say("me too", id="m2")
    got = await ann.next(lambda e: e["type"] == "message" and e["id"] == "m2")
    assert got["seq"] == 2
    await ann.close()
    await bob.close()


async def test_upgrades_wait_for_the_broker_at_start(aiohttp_client: Any) -> None:
    instance = await aiohttp_client(
        create_app(settings(broker=f"redis://127.0.0.1:{free_port()}/0"))
    )
    response = await instance.get("/readyz")
    assert response.status == 503
    assert await response.json() == {"status": "broker_unavailable"}
    response = await instance.get(
        "/ws", params={"room": "lobby", "user": "ann"}, headers=UPGRADE_HEADERS
    )
    assert response.status == 503
    assert (await response.json())["error"] == "broker_unavailable"
    assert (await instance.get("/api/rooms")).status == 503


async def test_numbered_messages_arrive_in_order_while_members_churn(
    make_instance: Any,
) -> None:
    """1000 numbered messages at 100/s from A to a listener on B while 50 clients keep
    joining and leaving that room on A and B: 1..1000 in order, no gap."""
    fast = {"rate_limit": 1000, "rate_burst": 1000}
    a, b = await make_instance(**fast), await make_instance(**fast)
    listener = await joined(b, "lobby", "listener")
    sender = await joined(a, "lobby", "sender")
    done = asyncio.Event()

    async def churn(index: int) -> None:
        server = (a, b)[index % 2]
        while not done.is_set():
            client = await connect(server, "lobby", f"churn{index}")
            await client.next_of("welcome")
            await client.close()

    churners = [asyncio.create_task(churn(i)) for i in range(50)]
    started = asyncio.get_running_loop().time()
    for n in range(1, 1001):
        await sender.say(str(n))
        await asyncio.sleep(max(0.0, started + n / 100 - asyncio.get_running_loop().time()))
    try:
        got = []
        async with asyncio.timeout(30):
            while len(got) < 1000:
                event = await listener.events.get()
                if event["type"] == "message":
                    got.append(int(event["text"]))
    finally:
        done.set()
        await asyncio.gather(*churners, return_exceptions=True)
    assert got == list(range(1, 1001))
    await listener.close()
    await sender.close()


async def test_subscribe_churn_on_one_room_loses_nothing_in_another(make_instance: Any) -> None:
    """Room ``churn`` keeps being subscribed and unsubscribed on A (its members come and go,
    no grace) while B sends 10 messages/s to ``steady``, whose listener is on A."""
    a = await make_instance(room_grace=0)
    b = await make_instance(rate_limit=100, rate_burst=100)
    listener = await joined(a, "steady", "listener")
    sender = await joined(b, "steady", "sender")
    done = asyncio.Event()
    subscriptions = 0

    async def churn() -> None:
        nonlocal subscriptions
        while not done.is_set():
            client = await connect(a, "churn", "visitor")
            await client.next_of("welcome")
            subscriptions += 1
            await client.close()

    churner = asyncio.create_task(churn())
    try:
        for n in range(50):
            await sender.say(str(n))
            await asyncio.sleep(0.1)
        got = [int(m["text"]) for m in await messages(listener, 50)]
    finally:
        done.set()
        await churner
    assert got == list(range(50))
    assert subscriptions > 5
    await listener.close()
    await sender.close()


async def test_members_of_a_killed_instance_stop_being_counted_within_the_ttl(
    tmp_path: Any, redis_server: RedisServer
) -> None:
    ttl = 2
    common = {"broker": redis_server.url, "presence_ttl": ttl, "quote_provider": "sim"}
    with run_server(tmp_path, **common) as doomed, run_server(tmp_path, **common) as survivor:
        async with aiohttp.ClientSession() as session:
            first = [
                Client(await session.ws_connect(doomed.ws_url, params={"room": "lobby", "user": u}))
                for u in ("ann", "bob", "cid")
            ]
            for client in first:
                await client.next_of("welcome")
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.proc.wait()
            again = [
                Client(
                    await session.ws_connect(survivor.ws_url, params={"room": "lobby", "user": u})
                )
                for u in ("ann", "bob", "cid")
            ]
            await again[-1].next_of("welcome")

            async def counted() -> int:
                async with session.get(f"{survivor.url}/api/rooms") as response:
                    return (await response.json())["rooms"][0]["members"]

            async with asyncio.timeout(ttl + 5):
                while await counted() != 3:
                    await asyncio.sleep(0.1)
            for client in again:
                await client.close()


async def test_members_elsewhere_see_a_leave_for_each_member_of_a_killed_instance(
    tmp_path: Any, redis_server: RedisServer
) -> None:
    ttl = 3
    common = {"broker": redis_server.url, "presence_ttl": ttl, "quote_provider": "sim"}
    with run_server(tmp_path, **common) as doomed, run_server(tmp_path, **common) as survivor:
        async with aiohttp.ClientSession() as session:

            async def member(server: Process, user: str) -> Client:
                ws = await session.ws_connect(server.ws_url, params={"room": "b", "user": user})
                client = Client(ws)
                await client.next_of("welcome")
                return client

            ann = await member(survivor, "ann")
            gone = [await member(doomed, user) for user in ("bob", "cy")]
            for user in ("bob", "cy"):
                await ann.next(lambda e, user=user: e["type"] == "join" and e["user"] == user)
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.proc.wait()
            leaves = [await ann.next_of("leave") for _ in range(2)]  # within the ttl
            assert [(e["type"], e["user"], e["members"]) for e in leaves] == [
                ("leave", "bob", 2),
                ("leave", "cy", 1),
            ]
            async with session.get(f"{survivor.url}/api/rooms") as response:
                assert (await response.json())["rooms"][0]["members"] == 1
            newcomer = await member(survivor, "bob")  # the name is free again
            await ann.close()
            await newcomer.close()
            del gone


async def test_members_of_live_instances_are_never_let_go(
    make_instance: Any, redis_server: RedisServer
) -> None:
    a, b = await make_instance(presence_ttl=3), await make_instance(presence_ttl=3)
    ann = await joined(a, "b", "ann")
    bob = await joined(b, "b", "bob")
    store = redis.Redis.from_url(redis_server.url)
    users = sorted(store.scan_iter("roomhub:{b}:users:*"))
    assert len(users) == 2
    # Each instance refreshes every second: watch both do it three times over.
    refreshed = dict.fromkeys(users, 0)
    last = {key: store.pttl(key) for key in users}
    async with asyncio.timeout(10):
        while min(refreshed.values()) < 3:
            await asyncio.sleep(0.05)
            for key in users:
                now = store.pttl(key)
                refreshed[key] += now > last[key]
                last[key] = now
    await bob.say("still here")
    got = await ann.next(lambda e: e["type"] in ("leave", "message"))
    assert (got["type"], got["text"]) == ("message", "still here")
    assert store.hlen(users[0]) == store.hlen(users[1]) == 1
    await ann.close()
    await bob.close()


@pytest.mark.parametrize("back", ["stall", "reconnect"])
async def test_members_of_an_instance_whose_entries_were_let_go_are_announced_when_it_is_back(
    make_instance: Any, redis_server: RedisServer, back: str
) -> None:
    a, b = await make_instance(presence_ttl=3), await make_instance(presence_ttl=3)
    ann = await joined(a, "b", "ann")
    await joined(b, "b", "bob")
    await ann.next(lambda e: e["type"] == "join" and e["user"] == "bob")
    store = redis.Redis.from_url(redis_server.url)
    cut_off = b.app[broker_key].instance
    # What another instance's refresh leaves of B's entries once B stopped refreshing.
    store.delete(*(f"roomhub:{{b}}:{name}:{cut_off}" for name in ("users", "tokens", "joined")))
    store.srem("roomhub:{b}:instances", cut_off)
    if back == "reconnect":  # both instances reconnect and refresh whole
        store.client_kill_filter(_type="pubsub")
    got = await ann.next_of("join")  # else at B's next refresh, within a second
    assert (got["user"], got["members"]) == ("bob", 2)
    assert store.hlen(f"roomhub:{{b}}:users:{cut_off}") == 1
    await ann.close()


@pytest.mark.k6
def test_k6_mixed_smoke_against_two_instances(
    tmp_path: Any, redis_server: RedisServer, stockapi: Process, k6_bin: str
) -> None:
    """The k6 ``mixed`` scenario (smoke profile) with its VUs spread over two instances: its
    thresholds pass (chatters get their own messages back, bot users their replies), and both
    instances carried users and relayed messages for the other."""
    common = {
        "broker": redis_server.url,
        "quote_provider": "url",
        "quote_url": stockapi.url,
        "room_grace": 1,
    }
    with run_server(tmp_path, **common) as a, run_server(tmp_path, **common) as b:
        run = run_k6(k6_bin, SCENARIOS / "mixed.js", f"{a.ws_url},{b.ws_url}", tmp_path)
        assert run.thresholds()
        assert not run.failures(), "thresholds failed:\n" + "\n".join(run.failures())
        assert run.returncode == 0, run.output[-4000:]
        for instance in (a, b):
            metrics = instance.metrics()
            assert metrics["chat_connections_opened_total"] > 0
            assert metrics["chat_broker_lag_seconds_count"] > 0
            assert metrics['chat_broker_errors_total{operation="message"}'] == 0


async def test_names_are_unique_over_every_instance(make_instance: Any) -> None:
    a, b = await make_instance(), await make_instance()
    first = await connect(a, "dup", "alice")
    assert (await first.next_of("welcome"))["user"] == "alice"
    second = await connect(b, "dup", "Alice")
    welcome = await second.next_of("welcome")
    assert welcome["user"] == "Alice-2"
    assert sorted(welcome["online"]) == ["Alice-2", "alice"]
    join = await first.next(lambda e: e["type"] == "join" and e["user"] != "alice")
    assert join["user"] == "Alice-2"
    await first.close()
    await second.next(lambda e: e["type"] == "leave" and e["user"] == "alice")
    again = await connect(b, "dup", "alice")
    assert (await again.next_of("welcome"))["user"] == "alice"
    await second.close()
    await again.close()


def test_readme_states_the_reconnect_backoff_the_broker_uses() -> None:
    from server.rooms.broker.redis import MAX_BACKOFF, MIN_BACKOFF

    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert f"backoff from {MIN_BACKOFF:g} s doubling up to {MAX_BACKOFF:g} s" in readme


def test_a_rooms_keys_are_kept_for_the_room_grace_or_the_presence_ttl_if_longer() -> None:
    # README settings table and docs/scaling.md: max of both, 30 s by default.
    defaults = Settings()
    assert broker_retention(defaults.presence_ttl, defaults.room_grace) == 30
    assert broker_retention(15, 0.2) == 15
    assert broker_retention(2, 0) == 2


def broker_retention(presence_ttl: float, room_grace: float) -> int:
    return RedisBroker("redis://127.0.0.1:1/0", 50, presence_ttl, room_grace).retention


@pytest.mark.parametrize("user", ["bob", "x" * 32, "a" * 30, "ÅNGSTRÖM" + "ﬁ" * 20, "İstanbul"])
def test_a_joins_candidate_ranges_expand_to_the_names_free_name_tries(user: str) -> None:
    wanted = [user, *(suffixed(user, n) for n in range(2, SUFFIX_LIMIT + 1))]
    quads = candidate_names(user)
    expanded = []
    for i in range(0, len(quads) - 4, 4):
        key, json, first, last = quads[i : i + 4]
        assert isinstance(key, str) and isinstance(json, bytes)
        assert isinstance(first, int) and isinstance(last, int)
        for n in range(first, last + 1):
            suffix = f"-{n}" if n else ""
            expanded.append((key + suffix, json[:-1] + suffix.encode() + json[-1:]))
    assert expanded == [(name_key(name), orjson.dumps(name)) for name in wanted]
