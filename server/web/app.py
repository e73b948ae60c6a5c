"""The application factory: routes, shared objects and their lifetimes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp_jinja2
import httpx
import jinja2
from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp_remotes import XForwardedStrict

from ..bot.providers import check_quote_host, make_provider
from ..bot.stockbot import StockBot
from ..ops import heap, metrics
from ..ops.config import ConfigError, Settings, redacted
from ..ops.version import VERSION
from ..rooms.baseline import GlobalHub
from ..rooms.broker import Broker
from ..rooms.broker.cluster import ClusterBroker
from ..rooms.broker.memory import MemoryBroker
from ..rooms.broker.redis import RedisBroker
from ..rooms.broker.sharded import ShardedBroker, redis_shards, room_shard
from ..rooms.dispatch import RoomDispatcher
from ..rooms.hub import ShardedHubs
from ..rooms.items import Hubs
from ..rooms.moderation import Moderation, close_matching
from ..transport.limits import AddressLimits
from ..transport.registry import ConnectionRegistry
from ..wire.protocol import CloseReason
from .api import setup_api_routes
from .auth import TokenVerifier
from .errorpages import error_pages
from .keys import (
    bot_key,
    broker_key,
    dispatcher_key,
    http_client_key,
    hubs_key,
    limits_key,
    moderation_key,
    registry_key,
    settings_key,
    verifier_key,
)
from .views import setup_routes

log = logging.getLogger("roomhub.app")

LOOP_PROBE_INTERVAL = 0.25  # seconds between event-loop lag probes
RELEASE_AFTER_CLOSES = 200  # closed connections between two heap releases (at least)
RELEASE_INTERVAL = 30.0  # seconds after which any closed connection is enough
RELEASE_CHECK = 0.1  # seconds between two looks at the closes (a storm closes ~1000 a second)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def http_client_context(app: web.Application) -> AsyncIterator[None]:
    """One shared ``httpx.AsyncClient`` for quote calls, with pool limits."""
    settings = app[settings_key]
    limits = httpx.Limits(
        max_connections=settings.bot_workers * 2, max_keepalive_connections=settings.bot_workers
    )
    async with httpx.AsyncClient(limits=limits, timeout=settings.bot_timeout) as client:
        app[http_client_key] = client
        yield


async def bot_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    provider = make_provider(settings.quote_provider, settings.quote_url, app[http_client_key])
    if not provider.simulated:
        check_quote_host(settings.quote_url)
    bot = StockBot(
        provider,
        workers=settings.bot_workers,
        queue_size=settings.bot_queue_size,
        timeout=settings.bot_timeout,
        cache_ttl=settings.bot_cache_ttl,
    )
    await bot.start()
    app[bot_key] = bot
    yield
    await bot.stop()


def make_broker(settings: Settings) -> Broker:
    """The broker ``settings`` ask for: in-process, one Redis, or rooms sharded over several
    Redis (:class:`~server.rooms.broker.sharded.ShardedBroker`; one URL needs no wrapper)."""
    if not settings.redis:
        return MemoryBroker(settings.history_size)
    shards = [
        RedisBroker(
            url,
            settings.history_size,
            settings.presence_ttl,
            settings.room_grace,
            settings.redis_batch_window / 1e6,
        )
        for url in settings.broker_urls
    ]
    return shards[0] if len(shards) == 1 else ShardedBroker(shards, room_shard(len(shards)))


async def cluster_broker(settings: Settings) -> ClusterBroker:
    """Rooms over the Redis Cluster whose seed nodes ``settings.broker`` names; raises
    :class:`ConfigError` naming ``ROOMHUB_BROKER`` when no seed node answers."""
    try:
        return await ClusterBroker.connect(
            list(settings.broker_urls),
            settings.history_size,
            settings.presence_ttl,
            settings.room_grace,
            settings.redis_batch_window / 1e6,
        )
    except ConnectionError as exc:
        raise ConfigError(f"ROOMHUB_BROKER={redacted(settings.broker)!r}: {exc}") from None


async def broker_context(app: web.Application) -> AsyncIterator[None]:
    """The instance's broker (:func:`make_broker`), connecting to Redis in the background;
    on a Redis Cluster (``redis+cluster://``), one per master once a seed node has told the
    slot map (no seed answering stops start-up, naming each seed's failure)."""
    settings = app[settings_key]
    broker = await cluster_broker(settings) if settings.broker_cluster else make_broker(settings)
    await broker.start()
    app[broker_key] = broker
    app[moderation_key] = Moderation(broker, settings.history_size)
    registry = app[registry_key]
    broker.on_control(lambda order: close_matching(registry.connections, order))
    shards = redis_shards(broker)
    if shards:
        metrics.BROKER_LINK.watch(lambda: [(s.ready, s.subscriptions()) for s in shards])
    yield
    if shards:
        metrics.BROKER_LINK.watch(None)
    await broker.close()


async def hubs_context(app: web.Application) -> AsyncIterator[None]:
    settings, registry, broker = app[settings_key], app[registry_key], app[broker_key]
    hubs: Hubs
    if settings.hub_mode == "global":
        hubs = GlobalHub(settings.history_size, settings.max_rooms)
    else:
        hubs = ShardedHubs(
            broker,
            settings.room_grace,
            settings.fanout_interval,
            settings.max_rooms,
            settings.max_frame_size,
        )
    app[hubs_key] = hubs
    bot = app[bot_key]
    app[dispatcher_key] = RoomDispatcher(settings, hubs, bot, registry, app[moderation_key])
    loop = asyncio.get_running_loop()
    metrics.set_scrape_sources(
        connections=lambda: len(registry.connections),
        rooms=hubs.room_count,
        hub_queue_depth=hubs.queue_depth,
        client_queue_depth=lambda: sum(len(c.outbox) for c in registry.connections),
        bot_queue_depth=bot.queue_depth,
        asyncio_tasks=lambda: len(asyncio.all_tasks(loop)),
    )
    yield
    await hubs.stop()


async def loop_monitor_context(app: web.Application) -> AsyncIterator[None]:
    """Observe ``chat_event_loop_lag_seconds``: how late a periodic sleep wakes up."""

    async def probe() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(LOOP_PROBE_INTERVAL)
            lag = time.perf_counter() - started - LOOP_PROBE_INTERVAL
            metrics.EVENT_LOOP_LAG.observe(max(lag, 0.0))

    task = asyncio.create_task(probe(), name="loop-monitor")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def heartbeat_context(app: web.Application) -> AsyncIterator[None]:
    """One task for every connection: each half ``heartbeat`` seconds, a sweep calls
    :meth:`Connection.heartbeat` on each (none when ``heartbeat`` is 0)."""
    settings, registry = app[settings_key], app[registry_key]
    if not settings.heartbeat:
        yield
        return

    async def sweep() -> None:
        while True:
            await asyncio.sleep(settings.heartbeat / 2)
            for conn in list(registry.connections):
                conn.heartbeat()

    task = asyncio.create_task(sweep(), name="heartbeat")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def heap_context(app: web.Application) -> AsyncIterator[None]:
    """Free what closed connections leave (:func:`server.ops.heap.release`) once
    ``RELEASE_AFTER_CLOSES`` connections, or a quarter of those open if more, have closed since
    the last release, or ``RELEASE_INTERVAL`` seconds after a close; checked every
    ``RELEASE_CHECK`` seconds."""
    registry = app[registry_key]

    async def upkeep() -> None:
        loop = asyncio.get_running_loop()
        released_at, closed = loop.time(), registry.closed
        while True:
            await asyncio.sleep(RELEASE_CHECK)
            since = registry.closed - closed
            due = max(RELEASE_AFTER_CLOSES, len(registry.connections) // 4)
            if since >= due or (since and loop.time() - released_at >= RELEASE_INTERVAL):
                started = time.perf_counter()
                found = heap.release()
                took = round((time.perf_counter() - started) * 1000, 1)
                log.debug("heap_released", extra={"fields": {"garbage": found, "ms": took}})
                released_at, closed = loop.time(), registry.closed

    task = asyncio.create_task(upkeep(), name="heap-upkeep")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def shutdown_connections(app: web.Application) -> None:
    """Turn ``/readyz`` to 503 and refuse new upgrades, flush outboxes for up to half of
    ``shutdown_timeout``, then close every connection with 1001 and give the closing
    handshakes the rest of it. Then end TCP on the connections still open
    (:meth:`~server.transport.connection.Connection.end_tcp`): a FIN, so that a client that
    reads late still gets its 1001, or a reset where bytes are left that the kernel would not
    take. Idempotent."""
    settings, registry = app[settings_key], app[registry_key]
    if registry.draining and not registry.connections:
        return
    conns = registry.drain()
    log.info("shutdown", extra={"fields": {"connections": len(conns)}})
    if not conns:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(settings.shutdown_timeout, 0.2)
    await asyncio.gather(*(c.flush(settings.shutdown_timeout / 2) for c in conns))
    remaining = max(deadline - loop.time(), 0.1)
    for conn in conns:
        conn.close(CloseReason.SHUTDOWN, remaining)
    if not await registry.drained(remaining):
        for conn in list(registry.connections):
            conn.end_tcp()
        await asyncio.sleep(0)  # their connection_lost callbacks run now


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Browser security headers on every HTTP answer. A WebSocket upgrade's 101 goes without:
    they mean nothing to a socket, and its response object lives as long as the connection."""
    if response.status == 101:
        return
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


DIRECT_PATHS = ("/healthz", "/readyz", "/metrics")
"""Paths answered to any peer even with ``trusted_proxies`` set: probes and scrapes come
straight to the server, not through the proxy."""


def forwarded_middleware(trusted_proxies: tuple[str, ...]) -> Middleware:
    """Take the client's scheme, ``Host`` and address from a trusted proxy's headers.

    aiohttp-remotes' ``XForwardedStrict`` with one hop: the peer must be one of
    ``trusted_proxies`` and send exactly one ``X-Forwarded-For`` address; ``X-Forwarded-Proto``
    and ``X-Forwarded-Host`` (one value each, optional) replace ``request.scheme`` and
    ``request.host``. Any other request, except to :data:`DIRECT_PATHS`, gets HTTP 400.
    """
    return XForwardedStrict([trusted_proxies], white_paths=DIRECT_PATHS).middleware


def create_app(settings: Settings) -> web.Application:
    """Build the roomhub application for ``settings``."""
    # aiohttp closes a connection whose request header is not complete within
    # keepalive_timeout seconds of connecting or of its previous answer (aiohttp 3.14
    # RequestHandler; tests/test_door.py holds it to that). The first request's deadline is
    # also kept, and counted, by server.transport.deadline in front of aiohttp.
    handler_args = {"keepalive_timeout": settings.handshake_timeout}
    app = web.Application(middlewares=[error_pages], handler_args=handler_args)
    if settings.trusted_proxies:
        app.middlewares.append(forwarded_middleware(settings.trusted_proxies))
    app[settings_key] = settings
    app[registry_key] = ConnectionRegistry()
    app[limits_key] = AddressLimits(settings)
    if settings.auth == "token":
        app[verifier_key] = TokenVerifier(settings)
    metrics.BUILD_INFO.clear()
    metrics.BUILD_INFO.labels(
        VERSION, settings.hub_mode, "redis" if settings.redis else "memory"
    ).set(1)
    aiohttp_jinja2.setup(
        app, loader=jinja2.PackageLoader("server.web", "templates"), autoescape=True
    )
    setup_routes(app)
    setup_api_routes(app)
    app.cleanup_ctx.extend(
        [
            http_client_context,
            bot_context,
            broker_context,
            hubs_context,
            loop_monitor_context,
            heartbeat_context,
            heap_context,
        ]
    )
    app.on_shutdown.append(shutdown_connections)
    app.on_response_prepare.append(add_security_headers)
    return app
