"""The room rules, once, for every broker: the same operations on the Broker protocol hand the
room's sink the same deliveries from the MemoryBroker (the reference), from a RedisBroker on a
real redis-server, from a ShardedBroker over two (the rooms of the listing test fall on both)
and from a ClusterBroker on a real 3-master Redis Cluster: names given, welcome fields, seq
order, history, presence, the room listing and the server API's operations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from server.rooms import names
from server.rooms.broker import (
    Broker,
    BrokerUnavailable,
    Control,
    Delivery,
    Event,
    Refused,
    Welcome,
)
from server.rooms.broker.cluster import ClusterBroker
from server.rooms.broker.memory import MemoryBroker
from server.rooms.broker.redis import RedisBroker
from server.rooms.broker.sharded import ShardedBroker, redis_shards, room_shard
from server.wire.protocol import MAX_USER, ChatMessage
from tests.chat import wait_until
from tests.support.processes import RedisCluster, RedisServer, require_binary, serve_redis

HISTORY = 3
"""Messages each broker keeps per room in these tests."""
LISTED = ("c", "b", "a", "d")
"""The rooms of the listing test, in the order they are made."""
WAIT = 5.0
"""Seconds a delivery may take to reach the sink."""


@pytest.fixture(scope="module")
def redis_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """Two redis-servers shared by the module's tests (emptied before each test)."""
    binary = require_binary("redis-server")
    with (
        serve_redis(binary, _folder(tmp_path_factory)) as first,
        serve_redis(binary, _folder(tmp_path_factory)) as second,
    ):
        yield [first, second]


def _folder(factory: pytest.TempPathFactory) -> Path:
    return factory.mktemp("redis")


@pytest.fixture(params=["memory", "redis", "sharded", "cluster"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """The MemoryBroker; a RedisBroker on an empty redis-server; a ShardedBroker over two; a
    ClusterBroker on the emptied 3-master cluster."""
    made: Broker
    if request.param == "memory":
        made = MemoryBroker(HISTORY)
    elif request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        for node in cluster.nodes:
            with redis.Redis(port=node.port) as admin:
                admin.flushall()
        seeds = [node.url for node in cluster.nodes]
        made = await ClusterBroker.connect(seeds, HISTORY, presence_ttl=30, retention=30)
    else:
        servers: list[RedisServer] = request.getfixturevalue("redis_servers")
        for server in servers:
            with redis.Redis(port=server.port) as admin:
                admin.flushall()
        if request.param == "redis":
            made = RedisBroker(servers[0].url, HISTORY, presence_ttl=30, retention=30)
        else:
            shards = [RedisBroker(s.url, HISTORY, presence_ttl=30, retention=30) for s in servers]
            made = ShardedBroker(shards, room_shard(len(shards)))
    await made.start()
    await wait_until(lambda: made.ready and all(shard.ready for shard in redis_shards(made)))
    yield made
    await made.close()


class Sink:
    """A room's sink that keeps what it is handed; :meth:`take` waits for the next ones."""

    def __init__(self) -> None:
        self.got: list[Delivery] = []
        self.read = 0
        self.changed = asyncio.Event()

    def __call__(self, delivery: Delivery) -> None:
        self.got.append(delivery)
        self.changed.set()

    async def take(self, count: int) -> list[Delivery]:
        """The next ``count`` deliveries (TimeoutError after ``WAIT`` s)."""
        async with asyncio.timeout(WAIT):
            while len(self.got) < self.read + count:
                self.changed.clear()
                await self.changed.wait()
        taken = self.got[self.read : self.read + count]
        self.read += count
        return taken

    async def welcome(self) -> Welcome:
        """The next delivery, a welcome; the joiner's own join event after it is consumed."""
        welcome, joined = await self.take(2)
        assert isinstance(welcome, Welcome)
        assert _fields(joined)["type"] == "join"
        return welcome

    async def event(self) -> dict[str, Any]:
        (event,) = await self.take(1)
        return _fields(event)

    async def nothing_before(self, broker: Broker, room: str) -> None:
        """Nothing more reaches the sink before a marker event published now."""
        broker.publish(room, b'{"type":"marker"}')
        assert await self.event() == {"type": "marker"}


def _fields(delivery: Delivery) -> dict[str, Any]:
    """An event's JSON fields but its wall-clock ``ts``."""
    assert isinstance(delivery, Event)
    fields: dict[str, Any] = orjson.loads(delivery.data)
    fields.pop("ts", None)
    return fields


async def room(broker: Broker, name: str = "lobby") -> Sink:
    sink = Sink()
    await broker.subscribe(name, sink)
    return sink


async def join(
    broker: Broker,
    sink: Sink,
    user: str,
    token: int,
    since: int | None = None,
    epoch: str | None = None,
    name: str = "lobby",
) -> Welcome:
    broker.join(name, user, since, epoch, token)
    return await sink.welcome()


async def say(broker: Broker, sink: Sink, *texts: str, name: str = "lobby") -> list[Event]:
    for text in texts:
        broker.say(name, "ann", ChatMessage(text), sender=1)
    events = await sink.take(len(texts))
    assert all(isinstance(event, Event) for event in events)
    return events  # type: ignore[return-value]


async def chatted(broker: Broker, *texts: str) -> tuple[Sink, Welcome]:
    """Room ``lobby`` joined by ann (token 1), who said ``texts``: its sink and ann's welcome."""
    sink = await room(broker)
    welcome = await join(broker, sink, "ann", 1)
    await say(broker, sink, *texts)
    return sink, welcome


async def test_a_joiner_gets_the_name_it_asked_for(broker: Broker) -> None:
    sink = await room(broker)
    assert (await join(broker, sink, "ann", 1)).user == "ann"


async def test_a_taken_name_gets_the_first_free_numbered_variant(broker: Broker) -> None:
    sink = await room(broker)
    await join(broker, sink, "ann", 1)
    await join(broker, sink, "Ann-2", 2)
    assert (await join(broker, sink, "ANN", 3)).user == "ANN-3"


async def test_names_are_told_apart_by_case_and_compatibility_forms(broker: Broker) -> None:
    sink = await room(broker)
    await join(broker, sink, "ﬁona", 1)
    assert (await join(broker, sink, "FIONA", 2)).user == "FIONA-2"


async def test_a_numbered_variant_keeps_quotes_backslashes_and_emoji(broker: Broker) -> None:
    sink = await room(broker)
    await join(broker, sink, 'a"b\\c 😀', 1)
    welcome = await join(broker, sink, 'a"b\\c 😀', 2)
    assert (welcome.user, welcome.online) == ('a"b\\c 😀-2', ['a"b\\c 😀', 'a"b\\c 😀-2'])


async def test_a_numbered_variant_of_a_long_name_is_cut_to_fit(broker: Broker) -> None:
    sink = await room(broker)
    await join(broker, sink, "x" * MAX_USER, 1)
    assert (await join(broker, sink, "x" * MAX_USER, 2)).user == "x" * (MAX_USER - 2) + "-2"


async def test_a_reserved_name_is_never_given(broker: Broker) -> None:
    sink = await room(broker)
    assert (await join(broker, sink, "StockBot", 1)).user == "StockBot-2"
    assert (await join(broker, sink, "server", 2)).user == "server-2"


async def test_a_name_is_free_again_once_its_member_left(broker: Broker) -> None:
    sink = await room(broker)
    await join(broker, sink, "ann", 1)
    broker.leave("lobby", 1)
    await sink.take(1)
    assert (await join(broker, sink, "ann", 2)).user == "ann"


async def test_the_join_event_names_the_joiner_and_counts_every_member(broker: Broker) -> None:
    sink = await room(broker)
    await join(broker, sink, "ann", 1)
    broker.join("lobby", "bob", None, None, 2)
    welcome, joined = await sink.take(2)
    assert isinstance(welcome, Welcome)
    assert (welcome.token, welcome.members, welcome.online) == (2, 2, ["ann", "bob"])
    assert _fields(joined) == {"type": "join", "user": "bob", "members": 2}
    assert isinstance(joined, Event) and (joined.seq, joined.urgent) == (0, False)


async def test_the_welcome_lists_the_first_online_names_and_counts_all(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(names, "ONLINE_LIMIT", 2)
    sink = await room(broker)
    for token, user in enumerate(["ann", "bob"], start=1):
        await join(broker, sink, user, token)
    welcome = await join(broker, sink, "cy", 3)
    assert (welcome.members, welcome.online) == (3, ["ann", "bob"])


async def test_online_and_presence_list_the_members_in_join_order(broker: Broker) -> None:
    """A name of 20 emoji (82 bytes of JSON) makes Redis keep a hash as a hash table, which
    has no order of its own."""
    sink = await room(broker)
    users = ["ann", "😀" * 20, *(f"u{n}" for n in range(6))]
    for token, user in enumerate(users, start=1):
        welcome = await join(broker, sink, user, token)
    assert welcome.online == users
    assert await broker.presence("lobby") == users


async def test_messages_are_sequenced_in_the_order_they_were_said(broker: Broker) -> None:
    sink = await room(broker)
    await join(broker, sink, "ann", 1)
    events = await say(broker, sink, "a", "b", "c")
    assert [(e.seq, e.urgent) for e in events] == [(1, True), (2, True), (3, True)]
    assert [_fields(e) for e in events] == [
        {"type": "message", "seq": n, "room": "lobby", "user": "ann", "text": text}
        for n, text in enumerate("abc", start=1)
    ]


async def test_the_welcome_holds_the_epoch_seq_and_history_after_since(broker: Broker) -> None:
    sink, first = await chatted(broker, "a", "b", "c")
    welcome = await join(broker, sink, "bob", 2, since=1, epoch=first.epoch)
    assert (welcome.epoch, welcome.seq, welcome.reset) == (first.epoch, 3, False)
    assert [orjson.loads(e)["text"] for e in welcome.history] == ["b", "c"]


async def test_a_joiner_from_another_epoch_gets_reset_and_the_whole_history(
    broker: Broker,
) -> None:
    sink, _ = await chatted(broker, "a", "b")
    welcome = await join(broker, sink, "bob", 2, since=2, epoch="another")
    assert (welcome.reset, welcome.seq) == (True, 2)
    assert [orjson.loads(e)["seq"] for e in welcome.history] == [1, 2]


async def test_a_joiner_with_since_and_no_epoch_gets_the_history_after_it(
    broker: Broker,
) -> None:
    sink, _ = await chatted(broker, "a", "b")
    welcome = await join(broker, sink, "bob", 2, since=1)
    assert welcome.reset is False
    assert [orjson.loads(e)["seq"] for e in welcome.history] == [2]


async def test_a_backends_message_before_any_member_is_in_the_first_welcome(
    broker: Broker,
) -> None:
    assert await broker.publish_message("lobby", "server", "first", None) == 1
    sink = await room(broker)
    welcome = await join(broker, sink, "ann", 1)
    assert welcome.seq == 1
    assert [orjson.loads(e)["text"] for e in welcome.history] == ["first"]


async def test_the_history_keeps_the_newest_messages_up_to_its_size(broker: Broker) -> None:
    sink, _ = await chatted(broker, *"abcde")
    welcome = await join(broker, sink, "bob", 2)
    assert [orjson.loads(e)["seq"] for e in welcome.history] == [3, 4, 5]
    kept = await broker.history("lobby", since=3, limit=1)
    assert [orjson.loads(e)["seq"] for e in kept] == [5]


async def test_a_leave_frees_the_member_and_tells_the_room(broker: Broker) -> None:
    sink = await room(broker)
    await join(broker, sink, "ann", 1)
    await join(broker, sink, "bob", 2)
    broker.leave("lobby", 1)
    assert await sink.event() == {"type": "leave", "user": "ann", "members": 1}
    assert await broker.presence("lobby") == ["bob"]


async def test_a_second_leave_of_a_token_tells_nobody(broker: Broker) -> None:
    sink = await room(broker)
    await join(broker, sink, "ann", 1)
    broker.leave("lobby", 1)
    await sink.take(1)
    broker.leave("lobby", 1)
    await sink.nothing_before(broker, "lobby")


async def test_a_published_event_is_urgent_and_outside_the_sequence(broker: Broker) -> None:
    sink = await room(broker)
    broker.publish("lobby", b'{"type":"bot","text":"hi"}')
    (event,) = await sink.take(1)
    assert isinstance(event, Event) and (event.seq, event.urgent) == (0, True)
    assert _fields(event) == {"type": "bot", "text": "hi"}


async def test_rooms_lists_the_busiest_first_then_by_name(broker: Broker) -> None:
    sinks = {name: await room(broker, name) for name in LISTED}
    token = 0
    for name, members in (("c", 1), ("b", 1), ("a", 1), ("d", 2)):
        for _ in range(members):
            token += 1
            await join(broker, sinks[name], f"u{token}", token, name=name)
    assert await broker.rooms(3) == [("d", 2), ("a", 1), ("b", 1)]


def test_the_listed_rooms_fall_on_both_shards_of_the_sharded_broker() -> None:
    assert {room_shard(2)(name) for name in LISTED} == {0, 1}


async def test_a_room_whose_members_all_left_is_not_listed(broker: Broker) -> None:
    sink = await room(broker)
    await join(broker, sink, "ann", 1)
    broker.leave("lobby", 1)
    await sink.take(1)
    assert await broker.rooms(10) == []


async def test_a_backends_message_is_sequenced_kept_and_delivered(broker: Broker) -> None:
    sink, _ = await chatted(broker, "a")
    assert await broker.publish_message("lobby", "server", "notice", {"k": 1}) == 2
    (event,) = await sink.take(1)
    assert isinstance(event, Event) and (event.seq, event.urgent) == (2, True)
    assert _fields(event) == {
        "type": "message",
        "seq": 2,
        "room": "lobby",
        "user": "server",
        "text": "notice",
        "server": True,
        "data": {"k": 1},
    }
    kept = await broker.history("lobby", since=1, limit=10)
    assert [orjson.loads(e)["text"] for e in kept] == ["notice"]


async def test_a_deleted_message_leaves_the_history_and_the_room_is_told(broker: Broker) -> None:
    sink, _ = await chatted(broker, "a", "b")
    assert await broker.delete("lobby", 1) is True
    assert await sink.event() == {"type": "deleted", "room": "lobby", "seq": 1}
    assert [orjson.loads(e)["seq"] for e in await broker.history("lobby", 0, 10)] == [2]
    assert await broker.delete("lobby", 1) is False


async def test_a_message_older_than_the_history_cannot_be_deleted(broker: Broker) -> None:
    await chatted(broker, *"abcde")
    assert await broker.delete("lobby", 2) is False


async def test_presence_names_every_member(broker: Broker) -> None:
    sink = await room(broker)
    for token, user in enumerate(["ann", "bob"], start=1):
        await join(broker, sink, user, token)
    assert await broker.presence("lobby") == ["ann", "bob"]


async def test_a_ban_holds_until_lifted_or_expired(broker: Broker) -> None:
    await broker.ban("lobby", "ann", None)
    await broker.ban("lobby", "bob", 0.2)
    assert [await broker.banned("lobby", u) for u in ("ann", "bob", "cy")] == [True, True, False]
    assert await broker.banned("other", "ann") is False
    assert await broker.unban("lobby", "ann") is True
    assert await broker.unban("lobby", "ann") is False
    async with asyncio.timeout(WAIT):
        while await broker.banned("lobby", "bob"):
            await asyncio.sleep(0.05)


async def test_ban_checks_asked_at_once_each_get_their_own_answer(broker: Broker) -> None:
    await broker.ban("lobby", "u1", None)
    await broker.ban("lobby", "u4", None)
    checks = [broker.banned("lobby", f"u{n}") for n in range(6)]
    assert await asyncio.gather(*checks) == [False, True, False, False, True, False]


async def test_a_control_order_reaches_the_control_sink_once(broker: Broker) -> None:
    orders: list[Control] = []
    broker.on_control(orders.append)
    await broker.control(Control("kick", "ann", "lobby"))
    await broker.control(Control("disconnect", "bob"))
    await broker.control(Control("kick", "marker"))
    await wait_until(lambda: orders[-1:] == [Control("kick", "marker")], timeout=WAIT)
    assert orders[:-1] == [Control("kick", "ann", "lobby"), Control("disconnect", "bob")]


async def test_a_burst_of_ban_checks_is_answered_while_messages_still_go(broker: Broker) -> None:
    """Hundreds of joins at once each ask whether their name is banned: every check is
    answered (a check waits for a free connection rather than failing), and a message said
    meanwhile is delivered, not refused."""
    sink, _ = await chatted(broker)
    checks = [broker.banned("lobby", f"user{n}") for n in range(300)]
    broker.say("lobby", "ann", ChatMessage("during"), sender=1)
    assert await asyncio.gather(*checks) == [False] * 300
    assert (await sink.event())["text"] == "during"


@pytest.mark.parametrize("broker", ["redis", "sharded", "cluster"], indirect=True)
async def test_messages_into_a_room_whose_keys_redis_lost_are_refused_then_it_restarts(
    broker: Broker,
) -> None:
    """Redis lost the room's keys (a flush, an eviction, a failover to a replica that was
    behind) while the broker stayed connected: the messages of the batch are refused, the
    room gets one catch-up welcome in a new epoch, and its seq starts again from 1."""
    sink, old = await chatted(broker, "m0", "m1")
    _flush(broker)
    for n in range(3):
        broker.say("lobby", "ann", ChatMessage(f"lost{n}", f"c{n}"), sender=1)
    *refused, catch_up = await sink.take(4)
    assert refused == [Refused(sender=1, reply_to=f"c{n}") for n in range(3)]
    assert isinstance(catch_up, Welcome)
    assert (catch_up.token, catch_up.seq, catch_up.history) == (0, 0, [])
    assert catch_up.epoch != old.epoch
    await sink.nothing_before(broker, "lobby")  # one catch-up, no message published
    welcome = await join(broker, sink, "ann", 2, since=old.seq, epoch=old.epoch)
    assert (welcome.epoch, welcome.reset) == (catch_up.epoch, True)
    assert [event.seq for event in await say(broker, sink, "after")] == [1]


@pytest.mark.parametrize("broker", ["redis", "sharded", "cluster"], indirect=True)
async def test_an_api_publish_into_a_room_with_members_whose_keys_redis_lost_fails(
    broker: Broker,
) -> None:
    """The room has members on this instance, so it must have an epoch: the publish makes
    none, fails, and the room gets a catch-up welcome in a new epoch."""
    sink, old = await chatted(broker, "m0")
    _flush(broker)
    with pytest.raises(BrokerUnavailable):
        await broker.publish_message("lobby", "server", "hi", None)
    (catch_up,) = await sink.take(1)
    assert isinstance(catch_up, Welcome)
    assert (catch_up.token, catch_up.seq, catch_up.epoch != old.epoch) == (0, 0, True)


def _flush(broker: Broker) -> None:
    """Empty every Redis of ``broker`` while it stays connected."""
    for shard in redis_shards(broker):
        with redis.Redis.from_url(shard.url) as admin:
            admin.flushall()
