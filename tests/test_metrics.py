"""`/metrics`: every documented metric is exported and moves with real traffic."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from tests.chat import Client, settings

DOCUMENTED = {
    "chat_connections": "gauge",
    "chat_rooms": "gauge",
    "chat_connections_opened": "counter",
    "chat_connections_closed": "counter",
    "chat_handshakes_rejected": "counter",
    "chat_messages_received": "counter",
    "chat_events_delivered": "counter",
    "chat_frames_sent": "counter",
    "chat_broadcast_fanout_seconds": "histogram",
    "chat_broadcast_recipients": "histogram",
    "chat_hub_queue_depth": "gauge",
    "chat_client_queue_depth": "gauge",
    "chat_asyncio_tasks": "gauge",
    "chat_event_loop_lag_seconds": "histogram",
    "chat_bot_commands": "counter",
    "chat_bot_latency_seconds": "histogram",
    "chat_bot_upstream_seconds": "histogram",
    "chat_bot_queue_depth": "gauge",
    "chat_build_info": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
}


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
    for name, kind in DOCUMENTED.items():
        assert exported.get(name) == kind, name


async def test_metrics_are_served_gzipped_when_asked(aiohttp_client: Any) -> None:
    server = await aiohttp_client(create_app(settings()))
    response = await server.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert "chat_connections" in await response.text()


async def test_traffic_moves_connection_message_fanout_and_bot_metrics(aiohttp_client: Any) -> None:
    server = await aiohttp_client(create_app(settings()))
    before = await scrape(server)
    clients = []
    for user in ("ann", "bob"):
        clients.append(Client(await server.ws_connect("/ws", params={"room": "m", "user": user})))
    await clients[0].ws.send_str('{"type":"message","text":"hi"}')
    await clients[0].ws.send_str('{"type":"message","text":"/stock=aapl"}')
    await clients[0].ws.send_str("garbage")
    await clients[1].next_of("bot")
    during = await scrape(server)
    await clients[0].close()
    after_close = await scrape(server)

    def grew(name: str, samples: dict[str, float] = during) -> bool:
        return samples.get(name, 0) > before.get(name, 0)

    assert during["chat_connections"] == before.get("chat_connections", 0) + 2
    assert during["chat_rooms"] >= 1
    assert during["chat_asyncio_tasks"] > 0
    for name in (
        "chat_connections_opened_total",
        'chat_messages_received_total{kind="message"}',
        'chat_messages_received_total{kind="command"}',
        'chat_messages_received_total{kind="invalid"}',
        "chat_events_delivered_total",
        "chat_frames_sent_total",
        "chat_broadcast_fanout_seconds_count",
        "chat_broadcast_recipients_count",
        'chat_bot_commands_total{result="ok"}',
        "chat_bot_latency_seconds_count",
        "chat_bot_upstream_seconds_count",
    ):
        assert grew(name), name
    assert during['chat_build_info{hub_mode="sharded",version="0.1.0"}'] == 1
    async with asyncio.timeout(5):
        while not grew('chat_connections_closed_total{reason="normal"}', after_close):
            after_close = await scrape(server)
    assert after_close["chat_connections"] == during["chat_connections"] - 1


async def test_event_loop_lag_probe_observes(aiohttp_client: Any) -> None:
    server = await aiohttp_client(create_app(settings()))
    first = (await scrape(server))["chat_event_loop_lag_seconds_count"]
    async with asyncio.timeout(5):
        while (await scrape(server))["chat_event_loop_lag_seconds_count"] <= first:
            await asyncio.sleep(0.05)
