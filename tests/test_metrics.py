"""`/metrics`: every documented metric is exported and moves with real traffic."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from server.ops.metrics import (
    BOT_RESULTS,
    BROKER_OPERATIONS,
    CLOSE_REASONS,
    HEAP_STATES,
    MESSAGE_KINDS,
)
from server.web.app import create_app
from server.wire.protocol import CloseReason
from tests.chat import Client, settings
from tests.support.docs import code, redis_only_metrics, table
from tests.support.processes import RedisServer

OVERVIEW = table("docs/metrics.md", "## Overview")
LABEL_VALUES = {  # each label's values, as the code has them (close reasons: see below)
    "chat_messages_received_total{kind}": MESSAGE_KINDS,
    "chat_bot_commands_total{result}": BOT_RESULTS,
    "chat_heap_bytes{state}": HEAP_STATES,
    "chat_broker_errors_total{operation}": BROKER_OPERATIONS,
}


def documented() -> dict[str, str]:
    """``{family name: type}`` of every metric in the overview table of docs/metrics.md
    (a counter's family is its name without ``_total``), defaults rows aside."""
    families = {}
    for row in OVERVIEW:
        name = row["metric"].split("`")[1]
        if name.endswith("*"):
            continue  # process_* and python_*: prometheus_client's defaults
        kind = row["type"].split()[0].rstrip(",")
        families[name.removesuffix("_total") if kind == "counter" else name] = kind
    return families


async def scrape(server: TestClient) -> dict[str, float]:
    response = await server.get("/metrics")
    assert response.status == 200
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


async def families(server: TestClient) -> dict[str, str]:
    text = await (await server.get("/metrics")).text()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


async def test_every_documented_metric_is_exported_with_its_type(aiohttp_client: Any) -> None:
    server = await aiohttp_client(create_app(settings()))
    exported = await families(server)
    expected = {k: v for k, v in documented().items() if k not in redis_only_metrics()}
    assert len(expected) == 28
    assert {name: exported.get(name) for name in expected} == expected
    chat = {name for name in exported if name.startswith("chat_")}
    assert chat == expected.keys(), "a chat_ metric is exported but not documented"
    for default in (
        "process_resident_memory_bytes",
        "process_open_fds",
        "python_gc_objects_collected",
    ):
        assert default in exported, default


def test_every_label_value_is_documented_in_order() -> None:
    for series, values in LABEL_VALUES.items():
        label = series.split("{")[1].rstrip("}")
        rows = table("docs/metrics.md", f"**`{series}`**")
        assert [code(row[f"`{label}`"]) for row in rows] == list(values), series


async def test_metrics_are_served_gzipped_when_asked(aiohttp_client: Any) -> None:
    server = await aiohttp_client(create_app(settings()))
    response = await server.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert "chat_connections" in await response.text()


async def test_traffic_moves_every_metric_by_exactly_what_it_caused(aiohttp_client: Any) -> None:
    server = await aiohttp_client(create_app(settings()))
    before = await scrape(server)
    ann = Client(await server.ws_connect("/ws", params={"room": "m", "user": "ann"}))
    await ann.next(lambda e: e["type"] == "join" and e["user"] == "ann")
    bob = Client(await server.ws_connect("/ws", params={"room": "m", "user": "bob"}))
    for client in (ann, bob):
        await client.next(lambda e: e["type"] == "join" and e["user"] == "bob")
    await ann.say("hi")
    for client in (ann, bob):
        await client.next_of("message")
    await ann.say("/stock=aapl")
    for client in (ann, bob):
        await client.next_of("bot")
    await ann.ws.send_str("garbage")
    await ann.next_of("error")
    during = await scrape(server)

    def moved(name: str, samples: dict[str, float] = during) -> float:
        return samples.get(name, 0) - before.get(name, 0)

    # Each step was seen before the next, so each fan-out held one event:
    # welcome 1 + ann's join 1 + welcome 1 + bob's join 2 + "hi" 2 + bot reply 2 + error 1.
    assert {
        name: moved(name)
        for name in (
            "chat_connections",
            "chat_connections_opened_total",
            'chat_messages_received_total{kind="message"}',
            'chat_messages_received_total{kind="command"}',
            'chat_messages_received_total{kind="invalid"}',
            "chat_events_delivered_total",
            "chat_frames_sent_total",
            "chat_broadcast_fanout_seconds_count",
            "chat_broadcast_recipients_count",
            "chat_broadcast_recipients_sum",
            'chat_bot_commands_total{result="ok"}',
            "chat_bot_latency_seconds_count",
            "chat_bot_upstream_seconds_count",
        )
    } == {
        "chat_connections": 2,
        "chat_connections_opened_total": 2,
        'chat_messages_received_total{kind="message"}': 1,
        'chat_messages_received_total{kind="command"}': 1,
        'chat_messages_received_total{kind="invalid"}': 1,
        "chat_events_delivered_total": 10,
        "chat_frames_sent_total": 10,
        "chat_broadcast_fanout_seconds_count": 4,
        "chat_broadcast_recipients_count": 4,
        "chat_broadcast_recipients_sum": 7,
        'chat_bot_commands_total{result="ok"}': 1,
        "chat_bot_latency_seconds_count": 1,
        "chat_bot_upstream_seconds_count": 1,
    }
    assert during["chat_rooms"] == 1
    assert during["chat_asyncio_tasks"] > 0
    assert during['chat_build_info{broker="memory",hub_mode="sharded",version="0.1.0"}'] == 1
    await ann.close()
    async with asyncio.timeout(5):
        while (
            moved('chat_connections_closed_total{reason="normal"}', after := await scrape(server))
            < 1
        ):
            await asyncio.sleep(0.01)
    assert moved('chat_connections_closed_total{reason="normal"}', after) == 1
    assert after["chat_connections"] == 1


async def test_event_loop_lag_probe_observes(aiohttp_client: Any) -> None:
    server = await aiohttp_client(create_app(settings()))
    first = (await scrape(server))["chat_event_loop_lag_seconds_count"]
    async with asyncio.timeout(5):
        while (await scrape(server))["chat_event_loop_lag_seconds_count"] <= first:
            await asyncio.sleep(0.05)


def test_metrics_doc_lists_every_close_reason_with_its_close_code() -> None:
    rows = table("docs/metrics.md", "**`chat_connections_closed_total{reason}`**")
    documented = {code(row["`reason`"]): row for row in rows}
    assert list(documented) == [reason.label for reason in CloseReason] == list(CLOSE_REASONS)
    for reason in CloseReason:
        sent = documented[reason.label]["close code ([protocol.md](protocol.md#close-codes))"]
        # 1006 is never sent: it stands for a connection that ended without a close frame.
        expected = "none" if reason.code == 1006 else str(reason.code)
        assert sent.split()[0] == expected, reason


async def test_heap_bytes_in_use_grow_with_what_the_server_holds(aiohttp_client: Any) -> None:
    server = await aiohttp_client(create_app(settings()))
    before = await scrape(server)
    held = [bytes(4096) for _ in range(4096)]  # 16 MiB from malloc, whatever PYTHONMALLOC says
    during = await scrape(server)
    del held
    grown = during['chat_heap_bytes{state="in_use"}'] - before['chat_heap_bytes{state="in_use"}']
    assert grown >= 16 * 1024 * 1024
    assert during['chat_heap_bytes{state="kept"}'] >= 0


async def test_memory_broker_exports_no_broker_connection_series(aiohttp_client: Any) -> None:
    """With the memory broker there is no broker connection: no ``chat_broker_up`` (which would
    claim one) and no ``chat_broker_subscriptions``; ``chat_build_info`` names the broker."""
    server = await aiohttp_client(create_app(settings()))
    exported = await families(server)
    assert redis_only_metrics() == {"chat_broker_up", "chat_broker_subscriptions"}
    assert not redis_only_metrics() & exported.keys()
    samples = await scrape(server)
    assert [name for name in samples if name.startswith("chat_build_info")] == [
        'chat_build_info{broker="memory",hub_mode="sharded",version="0.1.0"}'
    ]


async def test_redis_broker_exports_its_link_and_names_the_broker_kind_only(
    aiohttp_client: Any, redis_server: RedisServer
) -> None:
    server = await aiohttp_client(create_app(settings(broker=redis_server.url)))
    async with asyncio.timeout(5):
        while (samples := await scrape(server)).get('chat_broker_up{shard="0"}') != 1:
            await asyncio.sleep(0.01)
    ann = Client(await server.ws_connect("/ws", params={"room": "r", "user": "ann"}))
    await ann.next_of("welcome")
    samples = await scrape(server)
    assert samples['chat_broker_subscriptions{shard="0"}'] == 1
    assert [name for name in samples if name.startswith("chat_build_info")] == [
        'chat_build_info{broker="redis",hub_mode="sharded",version="0.1.0"}'
    ]
    await ann.close()
