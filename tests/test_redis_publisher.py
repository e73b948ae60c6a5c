"""The RedisBroker's publisher on a real redis-server: it keeps one connection of its own
while that works, and takes a new one when Redis closed it or went away, so operations flow
again without a lost batch; ban checks go through it and are refused while Redis is away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis

from server.rooms.broker import BrokerUnavailable, Event, Refused, Welcome
from server.rooms.broker.redis import RedisBroker
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
    sink = Sink()
    await broker.subscribe("lobby", sink)
    await join(broker, sink, "ann", 1)
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
    sink = Sink()
    await broker.subscribe("lobby", sink)
    await join(broker, sink, "ann", 1)
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
