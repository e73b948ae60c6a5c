"""Redis Cluster mode (``ROOMHUB_BROKER=redis+cluster://...``) against a real 3-master
cluster started once by the tests (tests/support/processes.py ``redis_cluster``): each room
on the master that serves its ``{room}`` slot, its events carried by sharded pub/sub, and two
real server processes sharing rooms on every master."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis

from bench.server import server_env, spawn
from server.rooms.broker import Delivery, Event
from server.rooms.broker.cluster import ClusterBroker, SlotMap, discover, room_slot
from server.wire.protocol import ChatMessage
from tests.chat import UPGRADE_HEADERS, Client, member, wait_until
from tests.support.processes import Process, RedisCluster, free_port, run_server

KEY = "cluster-key-0123456789abcdef"
_fresh = itertools.count()


def rooms_on_each_master(slots: SlotMap, stem: str) -> list[str]:
    """One new room name per master, in the masters' order."""
    found: dict[int, str] = {}
    for _ in range(1000):  # a third of the slots each: a few names do
        room = f"{stem}-{next(_fresh)}"
        found.setdefault(slots.shard_of(room), room)
        if len(found) == len(slots.masters):
            return [found[index] for index in range(len(slots.masters))]
    raise AssertionError("1000 room names and still a master without one")


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


@pytest.fixture(scope="module")
def slots(redis_cluster: RedisCluster) -> SlotMap:
    return SlotMap.of(asyncio.run(discover([node.url for node in redis_cluster.nodes])))


@pytest.fixture(scope="module")
def two(
    tmp_path_factory: pytest.TempPathFactory, redis_cluster: RedisCluster
) -> Iterator[tuple[Process, Process]]:
    """Two server processes on the cluster (the broker URL names every node as a seed)."""
    tmp = tmp_path_factory.mktemp("cluster-servers")
    common = {"broker": redis_cluster.url, "api_key": KEY, "quote_provider": "sim"}
    with run_server(tmp, **common) as a, run_server(tmp, **common) as b:
        for server in (a, b):
            every_master_up(server)
        yield a, b


def every_master_up(server: Process, timeout: float = 10.0) -> None:
    """Wait until ``/readyz`` says ``ready`` (200 ``degraded`` while a master is not up)."""
    deadline = time.monotonic() + timeout
    while json.loads(urllib.request.urlopen(f"{server.url}/readyz").read())["status"] != "ready":
        assert time.monotonic() < deadline, "a master stayed down"
        time.sleep(0.05)


async def test_slot_map_routes_each_room_to_the_master_serving_its_slot(
    redis_cluster: RedisCluster,
) -> None:
    ranges = await discover(["redis://127.0.0.1:1/0", redis_cluster.nodes[1].url])
    slots = SlotMap.of(ranges)
    assert len(slots.masters) == 3
    rooms = [f"placed-{n}" for n in range(12)]
    for room in rooms:
        with redis.Redis(port=port_of(slots.masters[slots.shard_of(room)])) as master:
            assert master.cluster("KEYSLOT", f"roomhub:{{{room}}}:seq") == room_slot(room)
            master.set(f"roomhub:{{{room}}}:probe", b"1")  # MOVED would raise here
    assert {slots.shard_of(room) for room in rooms} == {0, 1, 2}


@pytest.mark.parametrize("served", [0, 1], ids=["its-own-slot", "another-masters-slot"])
async def test_a_cluster_node_named_by_a_plain_redis_url_is_logged_and_never_ready(
    tmp_path: Path, redis_cluster: RedisCluster, slots: SlotMap, served: int
) -> None:
    room = rooms_on_each_master(slots, "plain")[served]
    node = f"redis://{slots.masters[0]}/0"
    port = free_port()
    env = server_env(port, broker=node, quote_provider="sim")
    with spawn(["-m", "server", "serve"], port, "/healthz", tmp_path / "server.log", env) as server:
        await wait_until(lambda: "broker_is_cluster_node" in server.log.read_text())
        assert "redis+cluster://" in server.log.read_text()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/readyz") as response:
                assert (response.status, await response.json()) == (
                    503,
                    {"status": "broker_unavailable"},
                )
            async with session.get(
                f"{server.url}/ws", params={"room": room, "user": "m"}, headers=UPGRADE_HEADERS
            ) as response:
                assert response.status == 503


def test_a_cluster_with_no_seed_answering_stops_start_up_naming_the_setting() -> None:
    seeds = f"redis+cluster://user:secret@127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve"],
        env={"ROOMHUB_BROKER": seeds, "ROOMHUB_HOST": "127.0.0.1", "ROOMHUB_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "ROOMHUB_BROKER" in result.stderr and "no redis cluster seed answered" in result.stderr
    assert "secret" not in result.stderr


async def test_rooms_on_every_master_carry_messages_between_two_instances(
    two: tuple[Process, Process], slots: SlotMap
) -> None:
    a, b = two
    async with aiohttp.ClientSession() as session:
        for room in rooms_on_each_master(slots, "talk"):
            alice = await member(session, a.ws_url, room, "alice")
            bob = await member(session, b.ws_url, room, "bob")
            await alice.say(f"hello {room}", id="m1")
            for client in (alice, bob):
                event = await client.next_of("message")
                assert (event["room"], event["user"], event["text"], event["seq"]) == (
                    room,
                    "alice",
                    f"hello {room}",
                    1,
                )
            await alice.close()
            await bob.close()


async def test_a_joiner_gets_the_history_and_the_members_of_both_instances(
    two: tuple[Process, Process], slots: SlotMap
) -> None:
    a, b = two
    async with aiohttp.ClientSession() as session:
        for room in rooms_on_each_master(slots, "welcome"):
            alice = await member(session, a.ws_url, room, "alice")
            await alice.say("before you came")
            await alice.next_of("message")
            carol = Client(
                await session.ws_connect(b.ws_url, params={"room": room, "user": "carol"})
            )
            welcome = await carol.next_of("welcome")
            assert [m["text"] for m in welcome["history"]] == ["before you came"]
            assert (welcome["seq"], welcome["members"]) == (1, 2)
            assert sorted(welcome["online"]) == ["alice", "carol"]
            joined = await alice.next(lambda e: e["type"] == "join" and e["user"] == "carol")
            assert joined["members"] == 2
            await alice.close()
            await carol.close()


async def test_room_listing_counts_members_on_every_master_over_both_instances(
    two: tuple[Process, Process], slots: SlotMap
) -> None:
    a = two[0]
    rooms = rooms_on_each_master(slots, "listed")
    async with aiohttp.ClientSession() as session:
        members = [
            await member(session, server.ws_url, room, "m") for room in rooms for server in two
        ]
        async with session.get(f"{a.url}/api/rooms") as response:
            listed = {room["name"]: room["members"] for room in (await response.json())["rooms"]}
        assert {room: listed.get(room) for room in rooms} == dict.fromkeys(rooms, 2)
        for client in members:
            await client.close()


async def test_a_ban_of_a_name_ending_in_instances_leaves_the_room_listing_whole(
    two: tuple[Process, Process], slots: SlotMap
) -> None:
    a = two[0]
    room = rooms_on_each_master(slots, "banlisted")[0]
    async with aiohttp.ClientSession() as session:
        client = await member(session, a.ws_url, room, "m")
        ban = {"room": room, "user": "x}:instances", "duration": 60}
        async with session.post(
            f"{a.url}/api/v1/ban", json=ban, headers={"X-API-Key": KEY}
        ) as response:
            assert response.status == 200, await response.text()
        async with session.get(f"{a.url}/api/rooms") as response:
            listed = {room["name"]: room["members"] for room in (await response.json())["rooms"]}
        assert listed.get(room) == 1
        await client.close()


async def test_room_events_travel_by_sharded_pubsub_on_the_rooms_master(
    two: tuple[Process, Process], slots: SlotMap
) -> None:
    rooms = rooms_on_each_master(slots, "sharded")
    async with aiohttp.ClientSession() as session:
        members = [
            await member(session, server.ws_url, room, "m") for room in rooms for server in two
        ]
        for index, room in enumerate(rooms):
            name = f"roomhub:{{{room}}}"
            for other, address in enumerate(slots.masters):
                with redis.Redis(port=port_of(address)) as node:
                    shard = dict(node.pubsub_shardnumsub(name))[name.encode()]
                    classic = dict(node.pubsub_numsub(name))[name.encode()]
                assert (shard, classic) == ((2 if other == index else 0), 0)
        for client in members:
            await client.close()


async def test_a_kick_from_one_instance_closes_the_member_on_the_other(
    two: tuple[Process, Process], slots: SlotMap
) -> None:
    a, b = two
    room = rooms_on_each_master(slots, "kick")[2]
    async with aiohttp.ClientSession() as session:
        eve = await member(session, b.ws_url, room, "eve")
        async with session.post(
            f"{a.url}/api/v1/kick", json={"room": room, "user": "eve"}, headers={"X-API-Key": KEY}
        ) as response:
            assert response.status == 200, await response.text()
        assert await eve.closed() == 4501


async def readiness(session: aiohttp.ClientSession, server: Process) -> dict[str, object]:
    async with session.get(f"{server.url}/readyz") as response:
        answer: dict[str, object] = await response.json()
        return answer


async def wait_readiness(
    session: aiohttp.ClientSession, server: Process, status: str
) -> dict[str, object]:
    """``/readyz`` once it says ``status`` (polled for up to 10 s)."""
    async with asyncio.timeout(10):
        while (answer := await readiness(session, server))["status"] != status:
            await asyncio.sleep(0.05)
    return answer


async def test_a_master_down_fails_only_its_rooms_until_it_is_back(
    two: tuple[Process, Process], slots: SlotMap, redis_cluster: RedisCluster
) -> None:
    a = two[0]
    lost, kept = rooms_on_each_master(slots, "down")[:2]
    node = next(n for n in redis_cluster.nodes if f"127.0.0.1:{n.port}" == slots.masters[0])
    async with aiohttp.ClientSession() as session:
        await wait_readiness(session, a, "ready")
        here, there = (
            await member(session, a.ws_url, lost, "x"),
            await member(session, a.ws_url, kept, "y"),
        )
        node.stop()
        try:
            answer = await wait_readiness(session, a, "degraded")
            assert [down["shard"] for down in answer["down"]] == [0]  # type: ignore[attr-defined]
            await here.say("into the void", id="lost-1")
            error = await here.next_of("error")
            assert (error["code"], error["reply_to"]) == ("unavailable", "lost-1")
            await there.say("still here")
            assert (await there.next_of("message"))["text"] == "still here"
        finally:
            node.start()
            redis_cluster.wait_ok()
        await wait_readiness(session, a, "ready")
        back = await member(session, a.ws_url, lost, "z")  # empty again: its members got 1012
        await back.say("back")
        assert (await back.next_of("message"))["text"] == "back"
        for client in (here, there, back):
            await client.close()


async def test_a_master_restarted_empty_closes_its_rooms_members_to_resume_in_a_new_epoch(
    two: tuple[Process, Process], slots: SlotMap, redis_cluster: RedisCluster
) -> None:
    a = two[0]
    room = rooms_on_each_master(slots, "emptied")[0]
    node = next(n for n in redis_cluster.nodes if f"127.0.0.1:{n.port}" == slots.masters[0])
    async with aiohttp.ClientSession() as session:
        await wait_readiness(session, a, "ready")
        here = await member(session, a.ws_url, room, "x")
        await here.say("before")
        assert (await here.next_of("message"))["text"] == "before"
        node.kill()
        try:
            await wait_readiness(session, a, "degraded")
        finally:
            node.start()  # answers PING at once, refuses keys until it rejoined the cluster
            redis_cluster.wait_ok()
        assert await here.closed() == 1012


def move_slot(cluster: RedisCluster, slot: int, source: int, target: int) -> None:
    """Hand empty ``slot`` from the master on port ``source`` to the one on ``target``
    (``CLUSTER SETSLOT`` IMPORTING, MIGRATING, then NODE on every node, target first)."""
    with redis.Redis(port=source) as old, redis.Redis(port=target) as new:
        old_id = old.execute_command("CLUSTER", "MYID").decode()
        new_id = new.execute_command("CLUSTER", "MYID").decode()
        new.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", old_id)
        old.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", new_id)
        ports = [target, source] + [n.port for n in cluster.nodes if n.port not in (source, target)]
        for port in ports:
            with redis.Redis(port=port) as node:
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", new_id)


async def test_a_room_whose_slot_moved_is_served_by_its_new_master_after_a_moved_answer(
    two: tuple[Process, Process], slots: SlotMap, redis_cluster: RedisCluster
) -> None:
    a = two[0]
    source, target = (port_of(address) for address in slots.masters[:2])
    with redis.Redis(port=source) as old:
        room = next(
            name
            for name in (rooms_on_each_master(slots, "moved")[0] for _ in range(50))
            if old.execute_command("CLUSTER", "COUNTKEYSINSLOT", room_slot(name)) == 0
        )
    move_slot(redis_cluster, room_slot(room), source, target)
    try:
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(10):
                while True:  # the first tries answer MOVED, then the map is read again
                    try:
                        alice = await member(session, a.ws_url, room, "alice")
                        break
                    except (aiohttp.WSServerHandshakeError, TimeoutError, KeyError):
                        await asyncio.sleep(0.1)
            await alice.say("moved along")
            assert (await alice.next_of("message"))["text"] == "moved along"
            name = f"roomhub:{{{room}}}"
            with redis.Redis(port=target) as new:
                assert dict(new.pubsub_shardnumsub(name))[name.encode()] == 1
            await alice.close()
    finally:
        move_slot(redis_cluster, room_slot(room), target, source)


async def test_messages_of_two_rooms_on_one_master_sent_together_keep_each_rooms_order(
    redis_cluster: RedisCluster, slots: SlotMap
) -> None:
    """A cluster node runs a script only on keys of one slot: the messages that wait
    together are sent room by room, each room's in order, none refused."""
    rooms = [rooms_on_each_master(slots, "together")[0] for _ in range(2)]
    broker = await ClusterBroker.connect([redis_cluster.nodes[0].url], 10, 30, 30)
    await broker.start()
    got: dict[str, list[Delivery]] = {room: [] for room in rooms}
    try:
        await wait_until(lambda: all(shard.ready for shard in broker.shards))
        for token, room in enumerate(rooms, 1):
            await broker.subscribe(room, got[room].append)
            broker.join(room, "ann", None, None, token)  # a member's messages follow its join
            await wait_until(lambda room=room: len(got[room]) == 2)  # its welcome and join
            got[room].clear()
        for n in range(20):
            for room in rooms:
                broker.say(room, "ann", ChatMessage(f"{room} {n}"), sender=1)
        await wait_until(lambda: all(len(got[room]) == 20 for room in rooms))
        for room in rooms:
            events = [d for d in got[room] if isinstance(d, Event)]
            assert [orjson.loads(e.data)["text"] for e in events] == [
                f"{room} {n}" for n in range(20)
            ]
            assert [e.seq for e in events] == list(range(1, 21))
    finally:
        await broker.close()
