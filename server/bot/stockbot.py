"""The stock bot: a bounded command queue served by a fixed pool of worker tasks.

submit -> (the upstream call in flight for the symbol, or) bounded queue -> N workers ->
per-symbol cache (successful quotes only) -> one upstream call per symbol under a deadline
-> ``deliver(reply)`` for every command that waited on that call.

* A command for a symbol whose upstream call is running joins that call at once: it takes
  neither a queue slot nor a worker.
* Waiting commands are grouped by symbol: a worker takes every waiting command for one
  symbol and makes one call for all of them, so at most N calls run at once.
* A command still waiting when the deadline has passed since it was submitted is answered
  "unavailable" (``timeout``) without a call.

Every accepted command counts once in ``chat_bot_commands_total{result}``: its outcome, or
``dropped`` when ``deliver`` reports that its room is gone. Delivered replies also count in
``chat_bot_latency_seconds`` (submit -> deliver). Each real upstream call, not a cache hit,
counts in ``chat_bot_upstream_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.bot.providers import QuoteProvider, UnknownSymbol, UpstreamError
from server.ops.metrics import BOT_COMMANDS, BOT_LATENCY, BOT_UPSTREAM

log = logging.getLogger("roomhub.bot")

SIMULATED = " (simulated price, not a market quote)"
"""Ends every price reply from a provider that invents prices (``sim``)."""

CACHE_LIMIT = 1000
"""Most symbols kept in the quote cache; the oldest entry goes first."""


@dataclass(frozen=True, slots=True)
class BotReply:
    """What the bot says about one command; ``reply_to`` echoes the command's client id."""

    text: str
    ok: bool
    reply_to: str | None


Deliver = Callable[[BotReply], bool]
"""Hands a reply to its room; returns False when the room is gone (the reply is dropped)."""


@dataclass(frozen=True, slots=True)
class _Job:
    symbol: str
    reply_to: str | None
    deliver: Deliver
    submitted: float


@dataclass(slots=True)
class _Flight:
    """One upstream call for a symbol and the commands waiting on it."""

    task: asyncio.Task[float]
    jobs: list[_Job]


class StockBot:
    """Answers ``/stock=`` commands with quotes from ``provider``.

    ``workers`` tasks serve at most ``queue_size`` waiting commands; each upstream call gets
    ``timeout`` seconds, and so does a command waiting for a worker; successful quotes are
    reused for ``cache_ttl`` seconds (0 disables the cache).
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
        self._queue_size = queue_size
        self._timeout = timeout
        self._cache_ttl = cache_ttl
        self._waiting: dict[str, list[_Job]] = {}  # symbol -> its commands, oldest symbol first
        self._queued = 0  # commands in _waiting
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._cache: dict[str, tuple[float, float]] = {}  # symbol -> (expires at, price)
        self._flights: dict[str, _Flight] = {}

    async def start(self) -> None:
        """Start the worker tasks."""
        self._workers = [
            asyncio.create_task(self._work(), name=f"stockbot-worker-{i}")
            for i in range(self._worker_count)
        ]

    async def stop(self) -> None:
        """Cancel the workers and upstream calls and wait for them; commands still waiting
        are dropped without a reply."""
        tasks = [*self._workers, *(flight.task for flight in self._flights.values())]
        self._flights.clear()
        self._waiting.clear()
        self._queued = 0
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()

    def submit(self, symbol: str, reply_to: str | None, deliver: Deliver) -> bool:
        """Take a quote request for ``symbol`` (normalized, e.g. ``AAPL.US``); never blocks.

        Returns ``False`` (counted ``rejected``) when the command would have to wait and
        ``queue_size`` commands already do. Otherwise ``deliver(reply)`` is called exactly
        once later, unless the bot is stopped first.
        """
        job = _Job(symbol, reply_to, deliver, time.monotonic())
        flight = self._flights.get(symbol)
        if flight is not None:
            flight.jobs.append(job)
            return True
        if self._queued >= self._queue_size:
            BOT_COMMANDS.labels("rejected").inc()
            return False
        waiting = self._waiting.get(symbol)
        if waiting is None:
            self._waiting[symbol] = [job]
            asyncio.get_running_loop().call_later(self._timeout, self._expire, symbol)
        else:
            waiting.append(job)
        self._queued += 1
        self._wake.set()
        return True

    def queue_depth(self) -> int:
        """Commands waiting for a worker."""
        return self._queued

    def _expire(self, symbol: str) -> None:
        """Answer ``symbol``'s commands that have waited ``timeout`` seconds with "unavailable"."""
        jobs = self._waiting.get(symbol)
        if jobs is None:
            return
        now = time.monotonic()
        live = [job for job in jobs if now - job.submitted < self._timeout]
        for job in jobs[: len(jobs) - len(live)]:
            self._reply(job, _unavailable(job), "timeout")
        self._queued -= len(jobs) - len(live)
        if live:
            self._waiting[symbol] = live
            delay = live[0].submitted + self._timeout - now
            asyncio.get_running_loop().call_later(delay, self._expire, symbol)
        else:
            del self._waiting[symbol]

    async def _next(self) -> tuple[str, list[_Job]]:
        """Wait for waiting commands; take every one for the symbol that waits longest."""
        while not self._waiting:
            self._wake.clear()
            await self._wake.wait()
        symbol = next(iter(self._waiting))
        jobs = self._waiting.pop(symbol)
        self._queued -= len(jobs)
        return symbol, jobs

    async def _work(self) -> None:
        while True:
            symbol, jobs = await self._next()
            cached = self._cache.get(symbol)
            if cached is not None and cached[0] > time.monotonic():
                for job in jobs:
                    self._reply(job, _quote(job, cached[1], self._provider.simulated), "ok")
                continue
            task = asyncio.create_task(self._fetch(symbol), name=f"stockbot-fetch-{symbol}")
            flight = self._flights[symbol] = _Flight(task, jobs)
            await asyncio.wait([task])
            if self._flights.get(symbol) is flight:
                del self._flights[symbol]
                self._answer(flight)

    async def _fetch(self, symbol: str) -> float:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                price = await self._provider.fetch(symbol)
        finally:
            BOT_UPSTREAM.observe(time.monotonic() - started)
        if self._cache_ttl > 0:
            self._remember(symbol, price)
        return price

    def _answer(self, flight: _Flight) -> None:
        """Reply to every command that waited on ``flight``, a finished upstream call."""
        error = flight.task.exception()
        symbol = flight.jobs[0].symbol
        if isinstance(error, UpstreamError):
            log.warning("quote_failed", extra={"fields": {"symbol": symbol, "error": str(error)}})
        elif error is not None and not isinstance(error, UnknownSymbol | TimeoutError):
            log.error("quote_provider_failed", exc_info=error, extra={"fields": {"symbol": symbol}})
        for job in flight.jobs:
            if error is None:
                self._reply(job, _quote(job, flight.task.result(), self._provider.simulated), "ok")
            elif isinstance(error, UnknownSymbol):
                self._reply(
                    job, BotReply(f"No quote for {symbol}", False, job.reply_to), "unknown_symbol"
                )
            elif isinstance(error, TimeoutError):
                self._reply(job, _unavailable(job), "timeout")
            else:
                self._reply(job, _unavailable(job), "upstream_error")

    def _reply(self, job: _Job, reply: BotReply, result: str) -> None:
        """Deliver ``reply``; count ``result``, or ``dropped`` when nobody could take it."""
        try:
            delivered = job.deliver(reply)
        except Exception:
            log.exception("bot_reply_failed", extra={"fields": {"symbol": job.symbol}})
            delivered = False
        if delivered:
            BOT_LATENCY.observe(time.monotonic() - job.submitted)
        BOT_COMMANDS.labels(result if delivered else "dropped").inc()

    def _remember(self, symbol: str, price: float) -> None:
        self._cache.pop(symbol, None)
        if len(self._cache) >= CACHE_LIMIT:
            del self._cache[next(iter(self._cache))]
        self._cache[symbol] = (time.monotonic() + self._cache_ttl, price)


def _quote(job: _Job, price: float, simulated: bool) -> BotReply:
    text = f"{job.symbol} quote is ${price:.2f} per share"
    return BotReply(text + SIMULATED if simulated else text, True, job.reply_to)


def _unavailable(job: _Job) -> BotReply:
    return BotReply(
        f"Quote service unavailable for {job.symbol}, try again later", False, job.reply_to
    )
