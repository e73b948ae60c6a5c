"""The door: the handshake timeout, the per-address limits and rooms that cannot be squatted
(docs/limits.md). The attacks themselves run against a real server in tests/test_attacks.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from server.ops.config import ConfigError, load_settings
from server.transport.bucket import TokenBucket
from server.transport.deadline import listen
from server.transport.limits import SWEEP_INTERVAL, AddressLimits, address_key
from server.web.app import create_app
from server.web.keys import broker_key, hubs_key, limits_key
from tests.chat import WAIT, Client, sample, settings, upgrade_request

TIMEOUT = 0.5  # seconds: the handshake timeout of the servers below
MARGIN = 3.0  # seconds a close may come after its deadline on a busy machine


# -- the per-address table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remote", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        (None, ""),
    ],
)
def test_an_address_is_limited_as_itself_or_its_ipv6_64(remote: str | None, key: str) -> None:
    assert address_key(remote) == key


def test_an_empty_bucket_says_how_many_whole_seconds_until_its_next_token() -> None:
    bucket = TokenBucket(rate=0.5, burst=1, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.0)
    assert bucket.wait() == 2
    assert not bucket.take(1.5)
    assert bucket.wait() == 1
    assert bucket.take(2.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_idle_addresses_are_forgotten_and_busy_ones_kept() -> None:
    clock = Clock()
    limits = AddressLimits(settings(max_connections_per_address=5, upgrade_rate=10), clock)
    holder = limits.address("192.0.2.1")
    limits.opened(holder)
    for n in range(1000):
        limits.take_upgrade(limits.address(f"10.0.{n // 256}.{n % 256}"))
    assert len(limits) == 1001
    clock.now += SWEEP_INTERVAL  # the buckets (burst 100 at 10/s) are full again by now
    limits.address("192.0.2.2")  # a new address runs the sweep
    assert len(limits) == 2  # the holder of a connection, and the newcomer
    assert limits.address("192.0.2.1") is holder


def test_zero_turns_a_per_address_limit_off_and_the_handshake_timeout_must_be_positive() -> None:
    assert load_settings({"ROOMHUB_NEW_ROOMS_PER_MINUTE": "0"}).new_rooms_per_minute == 0
    with pytest.raises(ConfigError, match="ROOMHUB_HANDSHAKE_TIMEOUT"):
        load_settings({"ROOMHUB_HANDSHAKE_TIMEOUT": "0"})


def test_with_every_limit_off_nothing_is_tracked() -> None:
    limits = AddressLimits(settings())  # the suite's settings turn them off
    assert limits.address("192.0.2.1") is None
    assert len(limits) == 0


# -- refusals -------------------------------------------------------------------------------


async def test_an_address_over_its_upgrade_rate_gets_429_with_retry_after(make_server: Any) -> None:
    server = await make_server(upgrade_rate=0.1, upgrade_burst=1)
    ws = await server.ws_connect("/ws", params={"room": "r", "user": "ann"})
    assert (await Client(ws).next())["type"] == "welcome"
    with pytest.raises(Exception) as refused:
        await server.ws_connect("/ws", params={"room": "r", "user": "bob"})
    assert getattr(refused.value, "status", None) == 429
    retry_after = int(refused.value.headers["Retry-After"])  # type: ignore[attr-defined]
    assert retry_after in range(8, 11)  # a token every 10 s, most of one still missing


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit(
    make_server: Any,
) -> None:
    server = await make_server(trusted_proxies=("127.0.0.1",), max_connections_per_address=1)

    async def join(client: str, user: str) -> int:
        headers = {"X-Forwarded-For": client}
        response = await server.get(
            "/ws", params={"room": "r", "user": user}, headers={**headers, **UPGRADE}
        )
        return response.status

    held = await server.ws_connect(
        "/ws", params={"room": "r", "user": "ann"}, headers={"X-Forwarded-For": "192.0.2.1"}
    )
    assert (await Client(held).next())["type"] == "welcome"
    assert await join("192.0.2.1", "bob") == 429
    assert await join("192.0.2.2", "cy") == 101


UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


# -- rooms that cannot be squatted ----------------------------------------------------------


async def wait_for(condition: Any) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture(params=["memory", "redis"])
async def room_server(make_server: Any, request: pytest.FixtureRequest) -> Any:
    """A server whose rooms keep a 30 s grace, on the in-process broker or a real Redis."""
    redis = request.param == "redis"
    url = request.getfixturevalue("redis_server").url if redis else "memory"
    server = await make_server(room_grace=30, broker=url)
    await wait_for(lambda: server.app[broker_key].ready)
    return server


async def test_a_room_left_without_a_message_frees_its_slot_at_once(room_server: Any) -> None:
    hubs = room_server.app[hubs_key]
    ws = await room_server.ws_connect("/ws", params={"room": "quiet", "user": "ann"})
    assert (await Client(ws).next())["type"] == "welcome"
    assert "quiet" in hubs
    await ws.close()
    await wait_for(lambda: "quiet" not in hubs)


async def test_a_room_that_had_a_message_keeps_its_grace_period(room_server: Any) -> None:
    hubs = room_server.app[hubs_key]
    ws = await room_server.ws_connect("/ws", params={"room": "used", "user": "ann"})
    client = Client(ws)
    assert (await client.next())["type"] == "welcome"
    await ws.send_json({"type": "message", "text": "hi", "id": "m1"})
    assert (await client.next(lambda e: e["type"] == "message"))["text"] == "hi"
    await ws.close()
    await asyncio.sleep(0.5)  # long past the moment a quiet room closes (the test above)
    assert "used" in hubs


async def test_a_new_room_costs_its_address_a_token_and_an_open_one_does_not(
    make_server: Any,
) -> None:
    server = await make_server(new_rooms_per_minute=1)
    first = await server.ws_connect("/ws", params={"room": "one", "user": "ann"})
    assert (await Client(first).next())["type"] == "welcome"
    again = await server.ws_connect("/ws", params={"room": "one", "user": "bob"})
    assert (await Client(again).next())["type"] == "welcome"
    response = await server.get("/ws", params={"room": "two", "user": "cy"}, headers=UPGRADE)
    assert response.status == 429
    assert (await response.json())["error"] == "too_many_rooms"
    assert int(response.headers["Retry-After"]) in range(55, 61)
    assert server.app[limits_key].address("127.0.0.1").connections == 2


# -- the handshake timeout ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def deadline_server(**overrides: Any) -> AsyncIterator[int]:
    """The app served as ``python -m server`` serves it (:func:`server.transport.deadline.listen`),
    with a handshake timeout of ``TIMEOUT``; yields its port."""
    runner = web.AppRunner(create_app(settings(handshake_timeout=TIMEOUT, **overrides)))
    await runner.setup()
    site = await listen(runner, "127.0.0.1", 0, TIMEOUT, False)
    try:
        yield site.sockets[0].getsockname()[1]
    finally:
        site.close()
        await runner.cleanup()


async def closed_after(reader: asyncio.StreamReader) -> float:
    """Read until the server ends the connection; seconds that took."""
    started = time.monotonic()
    async with asyncio.timeout(TIMEOUT + MARGIN):
        with contextlib.suppress(ConnectionResetError):
            while await reader.read(4096):
                pass
    return time.monotonic() - started


async def test_a_connection_that_sends_nothing_is_closed_and_counted() -> None:
    async with deadline_server() as port:
        before = sample("chat_handshake_timeouts_total")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        took = await closed_after(reader)
        writer.close()
        assert took >= TIMEOUT * 0.9
        assert sample("chat_handshake_timeouts_total") == before + 1


async def test_an_upgrade_trickled_a_byte_at_a_time_is_closed_at_its_deadline() -> None:
    async with deadline_server() as port:
        before = sample("chat_handshake_timeouts_total")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        with contextlib.suppress(ConnectionError):
            for byte in upgrade_request("r", "ann")[:-2]:
                writer.write(bytes([byte]))
                await asyncio.sleep(TIMEOUT / 10)
                if reader.at_eof() or writer.is_closing():
                    break
        await closed_after(reader)
        writer.close()
        assert time.monotonic() - started < TIMEOUT + MARGIN
        assert sample("chat_handshake_timeouts_total") == before + 1


async def test_a_request_in_time_is_answered_and_not_counted() -> None:
    async with deadline_server() as port:
        before = sample("chat_handshake_timeouts_total")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(WAIT):
            answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200")
        assert sample("chat_handshake_timeouts_total") == before


async def test_a_websocket_outlives_the_handshake_timeout() -> None:
    async with deadline_server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(upgrade_request("r", "ann"))
        async with asyncio.timeout(WAIT):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        await asyncio.sleep(TIMEOUT * 2)
        assert not reader.at_eof()
        writer.close()


async def test_a_keep_alive_connection_stalling_its_next_request_is_closed() -> None:
    # aiohttp's own keepalive_timeout does this (server.web.app sets it to the handshake timeout);
    # this holds aiohttp 3.14's RequestHandler to it.
    async with deadline_server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(WAIT):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        await closed_after(reader)
        writer.close()


async def test_aiohttp_alone_closes_a_stalled_first_request(make_server: Any) -> None:
    # The test server has no HeaderDeadline in front: aiohttp's keepalive_timeout closes it.
    server = await make_server(handshake_timeout=TIMEOUT)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    await closed_after(reader)
    writer.close()
