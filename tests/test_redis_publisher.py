"""The RedisBroker's publisher on a real redis-server: it keeps one connection of its own
while that works, and takes a new one when Redis closed it, went away or left a pipeline
unanswered past the command timeout, so operations flow again without a lost batch; a Redis
that lost its scripts runs a message once; ban checks go through it and are refused while
Redis is away. And the start-up guard on the redis-py internals the broker's connections use."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import orjson
import pytest
import redis

from server.rooms.broker import BrokerUnavailable, Event, Refused, Welcome
from server.rooms.broker import redis as redis_broker
from server.rooms.broker.redis import RedisBroker
from server.rooms.broker.resp import check_redis_py
from server.rooms.broker.scripts import channel
from server.wire.protocol import ChatMessage
from tests.chat import wait_until
from tests.support.processes import RedisServer
from tests.test_broker_contract import Sink, join

WAIT = 5.0
"""Seconds the broker may take to be ready again."""


@pytest.fixture
async def broker(redis_server: RedisServer) -> AsyncIterator[RedisBroker]:
    made = RedisBroker(redis_server.url, 3, presence_ttl=30, retention=30)
    await made.start()
    await wait_until(lambda: made.ready, timeout=WAIT)
    yield made
    await made.close()


@pytest.fixture
async def impatient(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RedisBroker]:
    """A broker whose pipelines time out after 0.3 s, checked every 0.05 s."""
    monkeypatch.setattr(redis_broker, "COMMAND_TIMEOUT", 0.3)
    monkeypatch.setattr(redis_broker, "WATCHDOG_EVERY", 0.05)
    made = RedisBroker(redis_server.url, 3, presence_ttl=30, retention=30)
    await made.start()
    await wait_until(lambda: made.ready, timeout=WAIT)
    yield made
    await made.close()


@contextlib.asynccontextmanager
async def windowed(redis_server: RedisServer, window: float) -> AsyncIterator[RedisBroker]:
    """A ready broker whose pipelines leave at least ``window`` seconds apart."""
    made = RedisBroker(redis_server.url, 3, presence_ttl=600, retention=600, batch_window=window)
    await made.start()
    try:
        await wait_until(lambda: made.ready, timeout=WAIT)
        yield made
    finally:
        await made.close()


async def ann_in_lobby(broker: RedisBroker) -> Sink:
    """The sink of room ``lobby``, subscribed, with ``ann`` joined (her welcome taken)."""
    sink = Sink()
    await broker.subscribe("lobby", sink)
    await join(broker, sink, "ann", 1)
    return sink


async def said(broker: RedisBroker, sink: Sink, text: str) -> Event | Refused:
    """What ``sink`` is handed for a message ``text`` said in ``lobby`` now."""
    broker.say("lobby", "ann", ChatMessage(text, text), sender=1)
    (got,) = await sink.take(1)
    assert isinstance(got, Event | Refused)
    return got


async def test_a_message_after_redis_closed_the_publishers_connection_is_delivered(
    broker: RedisBroker, redis_server: RedisServer
) -> None:
    """Redis (or a proxy) closed the idle connection the publisher keeps: the closed
    connection is seen before the next batch is written, and the batch goes on a new one."""
    sink = await ann_in_lobby(broker)
    assert isinstance(await said(broker, sink, "before"), Event)
    with redis.Redis(port=redis_server.port) as admin:
        publishers = [c["id"] for c in admin.client_list() if c["cmd"] == "evalsha"]
        assert len(publishers) == 1
        admin.client_kill_filter(_id=publishers[0])
    # Redis closed the socket before it answered: one pass of the event loop hands the end
    # of stream that loopback already holds to the connection, as time does to an idle one.
    await asyncio.sleep(0)
    got = await said(broker, sink, "after")
    assert isinstance(got, Event) and got.seq == 2


async def test_messages_flow_again_after_redis_restarts(
    broker: RedisBroker, redis_server: RedisServer
) -> None:
    sink = await ann_in_lobby(broker)
    assert isinstance(await said(broker, sink, "before"), Event)
    redis_server.stop()
    await wait_until(lambda: not broker.ready, timeout=WAIT)
    redis_server.start()
    await wait_until(lambda: broker.ready, timeout=WAIT)
    (catch_up,) = await sink.take(1)
    assert isinstance(catch_up, Welcome) and catch_up.token == 0
    got = await said(broker, sink, "after")
    assert isinstance(got, Event) and got.seq == 1


async def test_a_ban_check_while_redis_is_down_is_refused_and_answered_once_it_is_back(
    broker: RedisBroker, redis_server: RedisServer
) -> None:
    redis_server.stop()
    await wait_until(lambda: not broker.ready, timeout=WAIT)
    with pytest.raises(BrokerUnavailable):
        await broker.banned("lobby", "ann")
    redis_server.start()
    await wait_until(lambda: broker.ready, timeout=WAIT)
    await broker.ban("lobby", "ann", None)
    assert await broker.banned("lobby", "ann") is True


async def test_a_message_after_redis_lost_its_scripts_runs_once(
    broker: RedisBroker, redis_server: RedisServer
) -> None:
    """SCRIPT FLUSH (as a restart or failover does): the batch is answered NOSCRIPT, the
    scripts are loaded and the batch sent again, and the message is sequenced once."""
    sink = await ann_in_lobby(broker)
    assert isinstance(await said(broker, sink, "before"), Event)
    with redis.Redis(port=redis_server.port) as admin:
        admin.script_flush()
    got = await said(broker, sink, "after")
    assert isinstance(got, Event) and got.seq == 2
    got = await said(broker, sink, "next")
    assert isinstance(got, Event) and got.seq == 3


async def test_a_pipeline_unanswered_past_the_timeout_fails_and_the_next_is_delivered(
    impatient: RedisBroker, redis_server: RedisServer
) -> None:
    """Redis stops answering (CLIENT PAUSE) with a message in flight: past the command
    timeout the message is refused and the connection dropped; once Redis answers again, the
    next message goes out on a new connection."""
    sink = await ann_in_lobby(impatient)
    with redis.Redis(port=redis_server.port) as admin:
        admin.execute_command("CLIENT", "PAUSE", 1000, "ALL")
        assert isinstance(await said(impatient, sink, "paused"), Refused)
        admin.execute_command("CLIENT", "UNPAUSE")
    assert isinstance(await said(impatient, sink, "after"), Event)


def test_redis_py_without_the_writer_the_broker_reads_stops_start_up() -> None:
    class Changed(redis.asyncio.Connection):
        def __init__(self) -> None:
            super().__init__()
            del self._writer

    check_redis_py()  # the pinned redis-py has it
    with pytest.raises(RuntimeError, match=r"redis-py \d.*Changed keeps no _writer"):
        check_redis_py(Changed)


async def test_an_unreadable_payload_on_a_room_channel_is_skipped(
    broker: RedisBroker, redis_server: RedisServer
) -> None:
    """Something else published on a room's channel: it is logged and passed over; the
    pub/sub connection stays, so the room's next message arrives with no catch-up."""
    sink = await ann_in_lobby(broker)
    with redis.Redis(port=redis_server.port) as admin:
        assert admin.publish(channel("lobby"), b"not a payload") == 1
    got = await said(broker, sink, "after")
    assert isinstance(got, Event) and got.seq == 1


async def test_a_redis_that_stopped_reading_fails_the_pipeline_after_the_timeout(
    impatient: RedisBroker, redis_server: RedisServer
) -> None:
    """Redis stops reading (SIGSTOP) while a pipeline larger than the socket buffers is still
    being written: past the command timeout the connection is dropped at once, without
    waiting for the rest to be sent, and a ban check queued behind it is refused."""
    assert await impatient.banned("lobby", "ann") is False  # the publisher's connection is up
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        impatient.publish("lobby", b"x" * 32_000_000)
        with pytest.raises(BrokerUnavailable):
            async with asyncio.timeout(WAIT):
                await impatient.banned("lobby", "ann")
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)


async def test_pipelines_leave_a_batch_window_apart_and_one_after_a_quiet_spell_at_once(
    redis_server: RedisServer,
) -> None:
    """``batch_window`` is the shortest time from one pipeline to the next: a message queued
    a window or more after the last pipeline leaves at once; messages queued within the window
    wait for its end and leave together, in one SAY call."""
    window = 2.0
    async with windowed(redis_server, window) as made:
        sink = await ann_in_lobby(made)
        await asyncio.sleep(window)  # the join's pipeline is a window old
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert isinstance(await said(made, sink, "one"), Event)
        assert loop.time() - started < window
        with redis.Redis(port=redis_server.port) as admin:
            calls = admin.info("commandstats")["cmdstat_evalsha"]["calls"]
            made.say("lobby", "ann", ChatMessage("two", "two"), sender=1)
            await asyncio.sleep(0.1)
            made.say("lobby", "ann", ChatMessage("three", "three"), sender=1)
            two, three = await sink.take(2)
            assert loop.time() - started >= window
            assert isinstance(two, Event) and two.seq == 2
            assert isinstance(three, Event) and three.seq == 3
            assert admin.info("commandstats")["cmdstat_evalsha"]["calls"] == calls + 1


async def test_a_pipeline_of_more_messages_than_one_call_carries_leaves_in_several_in_order(
    redis_server: RedisServer,
) -> None:
    """Messages queued within one window, more than ``SAY_BATCH`` of them, leave in one
    pipeline of as few SAY calls as hold them, and are sequenced in the order they were said."""
    count = 2 * redis_broker.SAY_BATCH + 1
    async with windowed(redis_server, 1.0) as made:
        sink = await ann_in_lobby(made)
        with redis.Redis(port=redis_server.port) as admin:
            calls = admin.info("commandstats")["cmdstat_evalsha"]["calls"]
            for n in range(count):
                made.say("lobby", "ann", ChatMessage(str(n), str(n)), sender=1)
            events = await sink.take(count)
            assert admin.info("commandstats")["cmdstat_evalsha"]["calls"] == calls + 3
    assert all(isinstance(e, Event) for e in events)
    assert [e.seq for e in events] == list(range(1, count + 1))
    assert [orjson.loads(e.data)["text"] for e in events] == [str(n) for n in range(count)]


async def test_a_ban_check_and_a_join_do_not_wait_for_the_batch_window(
    redis_server: RedisServer,
) -> None:
    """A join has just left in a pipeline, so the next would wait a whole window; a ban check
    and then a join, which a client's upgrade and its welcome wait on, leave at once."""
    window = 10.0
    async with windowed(redis_server, window) as made:
        sink = await ann_in_lobby(made)
        async with asyncio.timeout(window / 2):
            assert await made.banned("lobby", "eve") is False
            welcome = await join(made, sink, "eve", 2)
        assert welcome.user == "eve"


async def test_after_redis_lost_its_scripts_only_the_script_calls_go_again(
    redis_server: RedisServer,
) -> None:
    """A bot reply (a plain PUBLISH) and a message leave in one pipeline after SCRIPT FLUSH:
    the message's call is answered NOSCRIPT and sent again; the bot reply, which ran, is
    delivered once."""
    async with windowed(redis_server, 1.0) as made:
        sink = await ann_in_lobby(made)
        with redis.Redis(port=redis_server.port) as admin:
            made.publish("lobby", b'{"type":"bot","text":"quote"}')
            made.say("lobby", "ann", ChatMessage("hello", "hello"), sender=1)
            admin.script_flush()  # before the window ends and the two leave together
            bot, message = await sink.take(2)
        assert isinstance(bot, Event) and bot.data == b'{"type":"bot","text":"quote"}'
        assert isinstance(message, Event) and message.seq == 1
        assert isinstance(await said(made, sink, "next"), Event)  # nothing else came between
