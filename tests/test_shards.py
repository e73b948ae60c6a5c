"""Rooms sharded over several Redis (``ROOMHUB_BROKER=redis://a/0,redis://b/0``): where the
jump consistent hash puts a room, and two real server processes on two real ``redis-server``
shards: messages, room listing and presence over both, and one shard going away and coming
back while the other's rooms keep working."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import redis

from server.rooms.broker.redis import RedisBroker
from server.rooms.broker.sharded import ShardedBroker, fnv1a_64, jump_hash, room_shard
from server.web.app import make_broker
from tests.chat import Client, settings
from tests.support.processes import (
    Process,
    RedisServer,
    require_binary,
    run_server,
    serve_redis,
)

# Jump hash of keys for 1..19 buckets, generated from the paper's reference C++ code
# (published with the Go port github.com/dgryski/go-jump, jump_test.go).
JUMP_REFERENCE = {
    1: [0, 0, 0, 0, 0, 0, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 17, 17],
    0xDEADBEEF: [0, 1, 2, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 16, 16, 16],
    0x0DDC0FFEEBADF00D: [0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 15, 15, 15, 15],
}
ROOMS = [f"room-{i}" for i in range(10_000)]


def test_jump_hash_gives_the_reference_buckets() -> None:
    for key, buckets in JUMP_REFERENCE.items():
        assert [jump_hash(key, n) for n in range(1, 20)] == buckets
    assert jump_hash(256, 1024) == 520
    assert {jump_hash(0, n) for n in range(1, 100)} == {0}


def test_jump_hash_refuses_no_buckets() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        jump_hash(1, 0)


def test_fnv1a_64_gives_the_reference_hashes() -> None:
    # FNV test vectors (IETF draft-eastlake-fnv, FNV-1a 64-bit).
    assert fnv1a_64(b"") == 0xCBF29CE484222325
    assert fnv1a_64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a_64(b"foobar") == 0x85944171F73967E8


def test_a_room_is_placed_by_the_jump_hash_of_the_fnv1a_hash_of_its_utf8_name() -> None:
    names = ("lobby", "général", "room-1", "房间")
    assert [room_shard(8)(name) for name in names] == [
        jump_hash(fnv1a_64(name.encode("utf-8")), 8) for name in names
    ]
    # Pinned: a change here would move rooms between the shards of a running deployment.
    assert [room_shard(8)(name) for name in names] == [5, 1, 5, 7]


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 7])
def test_adding_a_shard_moves_about_one_in_n_rooms_all_to_the_new_shard(shards: int) -> None:
    before = [room_shard(shards)(room) for room in ROOMS]
    after = [room_shard(shards + 1)(room) for room in ROOMS]
    moved = [new for old, new in zip(before, after, strict=True) if old != new]
    assert set(moved) <= {shards}
    assert abs(len(moved) / len(ROOMS) - 1 / (shards + 1)) < 0.02


def test_rooms_spread_evenly_over_the_shards() -> None:
    counts = [0] * 4
    for room in ROOMS:
        counts[room_shard(4)(room)] += 1
    assert all(abs(count / len(ROOMS) - 0.25) < 0.02 for count in counts), counts


def test_one_redis_url_builds_the_one_redis_broker_and_several_a_sharded_one() -> None:
    assert type(make_broker(settings(broker="redis://127.0.0.1:6379/0"))) is RedisBroker
    urls = ["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/0"]
    sharded = make_broker(settings(broker=",".join(urls)))
    assert isinstance(sharded, ShardedBroker)
    assert [shard.url for shard in sharded.shards] == urls


# -- two instances on two shards ---------------------------------------------------------------

KEY = "test-key-0123456789abcdef"


@dataclass
class Cluster:
    """Two ``redis-server`` shards and two roomhub processes, each on both shards."""

    shards: list[RedisServer]
    instances: list[Process]

    def room_on(self, shard: int, prefix: str) -> str:
        """The first room name ``<prefix>-N`` that the jump hash puts on ``shard``."""
        place = room_shard(len(self.shards))
        return next(f"{prefix}-{n}" for n in range(1000) if place(f"{prefix}-{n}") == shard)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Shared by the tests below (each uses rooms of its own); the fault test comes last."""
    tmp_path = tmp_path_factory.mktemp("shards")
    binary = require_binary("redis-server")
    with contextlib.ExitStack() as stack:
        shards = []
        for index in range(2):
            directory = tmp_path / f"redis-{index}"
            directory.mkdir()
            shards.append(stack.enter_context(serve_redis(binary, directory)))
        broker = ",".join(shard.url for shard in shards)
        instances = [
            stack.enter_context(
                run_server(tmp_path, broker=broker, quote_provider="sim", api_key=KEY)
            )
            for _ in range(2)
        ]
        for instance in instances:
            wait_for_status(instance, "ready")
        yield Cluster(shards, instances)


def readyz(instance: Process) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{instance.url}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for_status(instance: Process, status: str, timeout: float = 15.0) -> dict[str, Any]:
    """Poll ``/readyz`` until its ``status`` is ``status``; its answer."""
    for _ in range(int(timeout / 0.05)):
        answer = readyz(instance)[1]
        if answer["status"] == status:
            return answer
        time.sleep(0.05)
    raise TimeoutError(f"/readyz of {instance.url} did not say {status} within {timeout} s")


async def joined(session: aiohttp.ClientSession, instance: Process, room: str, user: str) -> Client:
    client = Client(await session.ws_connect(instance.ws_url, params={"room": room, "user": user}))
    await client.next_of("welcome")
    await client.next(lambda e: e["type"] == "join" and e["user"] == user)
    return client


async def api(session: aiohttp.ClientSession, instance: Process, method: str, **body: Any) -> Any:
    headers = {"X-API-Key": KEY}
    async with session.post(f"{instance.url}/api/v1/{method}", json=body, headers=headers) as r:
        return r.status, await r.json()


async def test_two_instances_chat_in_rooms_on_either_shard_each_kept_on_its_own(
    cluster: Cluster,
) -> None:
    rooms = [cluster.room_on(0, "chat"), cluster.room_on(1, "chat")]
    a, b = cluster.instances
    async with aiohttp.ClientSession() as session:
        for shard, room in enumerate(rooms):
            ann, bob = await joined(session, a, room, "ann"), await joined(session, b, room, "bob")
            await ann.say("from a", id="a1")
            await bob.say("from b", id="b1")
            for client in (ann, bob):
                got = [await client.next_of("message") for _ in range(2)]
                assert [(m["seq"], m["room"]) for m in got] == [(1, room), (2, room)]
                assert {m["id"] for m in got} == {"a1", "b1"}
            stores = [redis.Redis.from_url(s.url) for s in cluster.shards]
            held = [store.exists(f"roomhub:{{{room}}}:history") for store in stores]
            assert held == [int(shard == 0), int(shard == 1)]
            for store in stores:
                store.close()
            await ann.close()
            await bob.close()


async def test_rooms_and_presence_are_counted_over_both_shards(cluster: Cluster) -> None:
    rooms = [cluster.room_on(0, "list"), cluster.room_on(1, "list")]
    a, b = cluster.instances
    async with aiohttp.ClientSession() as session:
        members = [
            await joined(session, a, rooms[0], "ann"),
            await joined(session, b, rooms[0], "bob"),
            await joined(session, b, rooms[1], "cat"),
        ]
        for instance in (a, b):
            async with session.get(f"{instance.url}/api/rooms") as response:
                listed = (await response.json())["rooms"]
            assert [r for r in listed if r["name"] in rooms] == [
                {"name": rooms[0], "members": 2},
                {"name": rooms[1], "members": 1},
            ]
            for room, names in zip(rooms, (["ann", "bob"], ["cat"]), strict=True):
                status, answer = await api(session, instance, "presence", room=room)
                assert (status, sorted(answer["users"])) == (200, names)
        for client in members:
            await client.close()


async def test_a_shard_down_fails_only_its_rooms_until_it_is_back(cluster: Cluster) -> None:
    kept, lost = cluster.room_on(0, "fault"), cluster.room_on(1, "fault")
    a, b = cluster.instances
    async with aiohttp.ClientSession() as session:
        ann, bob = await joined(session, a, kept, "ann"), await joined(session, b, kept, "bob")
        cat = await joined(session, a, lost, "cat")

        os.kill(cluster.shards[1].pid, signal.SIGKILL)
        cluster.shards[1].stop()  # reaps it
        for instance in (a, b):
            answer = wait_for_status(instance, "degraded")
            assert answer["down"] == [{"shard": 1, "url": cluster.shards[1].url}]
        assert readyz(a)[0] == 200
        samples = a.metrics()
        assert (samples['chat_broker_up{shard="0"}'], samples['chat_broker_up{shard="1"}']) == (
            1,
            0,
        )
        await ann.say("still here", id="k1")
        assert (await bob.next_of("message"))["id"] == "k1"
        await cat.say("lost", id="l1")
        error = await cat.next_of("error")
        assert (error["code"], error["reply_to"]) == ("unavailable", "l1")
        down = [{"shard": 1, "url": cluster.shards[1].url}]
        async with session.get(f"{a.url}/api/rooms") as response:
            listed = await response.json()
        status, answer = await api(session, b, "rooms")
        assert status == 200
        for shown in (listed, answer):  # /api/rooms and the server API's rooms
            assert kept in [r["name"] for r in shown["rooms"]]
            assert lost not in [r["name"] for r in shown["rooms"]]
            assert shown["down"] == down
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await joined(session, b, lost, "eve")
        assert refused.value.status == 503

        cluster.shards[1].start()  # empty: the room restarts in a new epoch
        for instance in (a, b):
            wait_for_status(instance, "ready")
        assert await cat.closed() == 1012
        cat, dan = await joined(session, a, lost, "cat"), await joined(session, b, lost, "dan")
        await cat.say("back", id="l2")
        assert (await dan.next_of("message"))["id"] == "l2"
        for client in (ann, bob, cat, dan):
            await client.close()


async def test_a_kick_reaches_every_instance_while_the_first_shard_is_down(
    cluster: Cluster,
) -> None:
    room = cluster.room_on(1, "kick")
    a, b = cluster.instances
    async with aiohttp.ClientSession() as session:
        ann = await joined(session, b, room, "ann")
        cluster.shards[0].stop()
        wait_for_status(a, "degraded")
        status, answer = await api(session, a, "kick", room=room, user="ann")
        assert (status, answer["code"]) == (200, 4501)
        assert await ann.closed() == 4501
        cluster.shards[0].start()
        for instance in (a, b):
            wait_for_status(instance, "ready")


async def test_readyz_is_503_only_once_no_shard_is_up(cluster: Cluster) -> None:
    a = cluster.instances[0]
    cluster.shards[0].stop()
    assert wait_for_status(a, "degraded")["down"] == [{"shard": 0, "url": cluster.shards[0].url}]
    cluster.shards[1].stop()
    wait_for_status(a, "broker_unavailable")
    assert readyz(a)[0] == 503
    for shard in cluster.shards:
        shard.start()
    wait_for_status(a, "ready")
