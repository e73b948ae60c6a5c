"""The stock bot: a bounded command queue served by a fixed pool of worker tasks.

submit -> bounded queue -> N workers -> per-symbol cache (successful quotes only) ->
single flight per symbol (concurrent commands for one symbol share one upstream call) ->
provider call under a deadline -> ``deliver(reply)``.

Every submitted command counts once in ``chat_bot_commands_total{result}``; delivered ones
also in ``chat_bot_latency_seconds`` (submit -> deliver). Each real upstream call, not a
cache hit, counts in ``chat_bot_upstream_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.bot.providers import QuoteProvider, UnknownSymbol, UpstreamError
from server.metrics import BOT_COMMANDS, BOT_LATENCY, BOT_UPSTREAM

log = logging.getLogger("roomhub.bot")

CACHE_LIMIT = 1000
"""Most symbols kept in the quote cache; the oldest entry goes first."""


@dataclass(frozen=True, slots=True)
class BotReply:
    """What the bot says about one command; ``reply_to`` echoes the command's client id."""

    text: str
    ok: bool
    reply_to: str | None


@dataclass(frozen=True, slots=True)
class _Job:
    symbol: str
    reply_to: str | None
    deliver: Callable[[BotReply], None]
    submitted: float


class StockBot:
    """Answers ``/stock=`` commands with quotes from ``provider``.

    ``workers`` tasks serve a queue of at most ``queue_size`` commands; each upstream call
    gets ``timeout`` seconds; successful quotes are reused for ``cache_ttl`` seconds
    (0 disables the cache).
    """

    name: str = "stockbot"

    def __init__(
        self,
        provider: QuoteProvider,
        *,
        workers: int,
        queue_size: int,
        timeout: float,
        cache_ttl: float,
    ) -> None:
        self._provider = provider
        self._worker_count = workers
        self._timeout = timeout
        self._cache_ttl = cache_ttl
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._cache: dict[str, tuple[float, float]] = {}  # symbol -> (expires at, price)
        self._flights: dict[str, asyncio.Task[float]] = {}

    async def start(self) -> None:
        """Start the worker tasks."""
        self._workers = [
            asyncio.create_task(self._work(), name=f"stockbot-worker-{i}")
            for i in range(self._worker_count)
        ]

    async def stop(self) -> None:
        """Cancel the workers and upstream calls and wait for them; queued commands are dropped
        without a reply."""
        tasks = [*self._workers, *self._flights.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        self._flights.clear()
        while not self._queue.empty():
            self._queue.get_nowait()

    def submit(
        self, symbol: str, reply_to: str | None, deliver: Callable[[BotReply], None]
    ) -> bool:
        """Queue a quote request for ``symbol`` (normalized, e.g. ``AAPL.US``); never blocks.

        Returns ``False`` (counted ``rejected``) when the queue is full. Otherwise a worker
        later calls ``deliver(reply)`` exactly once, unless the bot is stopped first.
        """
        try:
            self._queue.put_nowait(_Job(symbol, reply_to, deliver, time.monotonic()))
        except asyncio.QueueFull:
            BOT_COMMANDS.labels("rejected").inc()
            return False
        return True

    def queue_depth(self) -> int:
        """Commands waiting for a worker."""
        return self._queue.qsize()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            reply, result = await self._answer(job.symbol, job.reply_to)
            BOT_COMMANDS.labels(result).inc()
            BOT_LATENCY.observe(time.monotonic() - job.submitted)
            try:
                job.deliver(reply)
            except Exception:
                log.exception("bot_reply_failed", extra={"fields": {"symbol": job.symbol}})

    async def _answer(self, symbol: str, reply_to: str | None) -> tuple[BotReply, str]:
        """The reply to one command and its ``chat_bot_commands_total`` result label."""
        unavailable = f"Quote service unavailable for {symbol}, try again later"
        try:
            price = await self._quote(symbol)
        except UnknownSymbol:
            return BotReply(f"No quote for {symbol}", False, reply_to), "unknown_symbol"
        except TimeoutError:
            return BotReply(unavailable, False, reply_to), "timeout"
        except UpstreamError as exc:
            log.warning("quote_failed", extra={"fields": {"symbol": symbol, "error": str(exc)}})
            return BotReply(unavailable, False, reply_to), "upstream_error"
        except Exception:
            log.exception("quote_provider_failed", extra={"fields": {"symbol": symbol}})
            return BotReply(unavailable, False, reply_to), "upstream_error"
        return BotReply(f"{symbol} quote is ${price:.2f} per share", True, reply_to), "ok"

    async def _quote(self, symbol: str) -> float:
        """A cached price, or the result of the one upstream call in flight for ``symbol``."""
        cached = self._cache.get(symbol)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        flight = self._flights.get(symbol)
        if flight is None:
            flight = asyncio.create_task(self._fetch(symbol), name=f"stockbot-fetch-{symbol}")
            self._flights[symbol] = flight
        return await asyncio.shield(flight)

    async def _fetch(self, symbol: str) -> float:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                price = await self._provider.fetch(symbol)
        finally:
            BOT_UPSTREAM.observe(time.monotonic() - started)
            self._flights.pop(symbol, None)
        if self._cache_ttl > 0:
            self._remember(symbol, price)
        return price

    def _remember(self, symbol: str, price: float) -> None:
        self._cache.pop(symbol, None)
        if len(self._cache) >= CACHE_LIMIT:
            del self._cache[next(iter(self._cache))]
        self._cache[symbol] = (time.monotonic() + self._cache_ttl, price)
