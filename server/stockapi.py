"""A Stooq-compatible quote service with latency and failure injection.

``python -m server.stockapi [--host 127.0.0.1] [--port 8081] [--latency-ms 20] [--jitter-ms 0]
[--error-rate 0] [--unknown SYM,...]`` serves:

- ``GET /q/l/?s=aapl.us&f=sd2t2ohlcv&h&e=csv``: Stooq's CSV quote (header
  ``Symbol,Date,Time,Open,High,Low,Close,Volume`` and one row, Close from
  :func:`server.bot.providers.sim_price`). Only ``s`` is read; the answer always has that
  header and those fields.
- ``GET /healthz``: 200 ``ok``.
- ``GET /stats``: ``{"requests": {"AAPL.US": 3}}``, quote requests per upper-case symbol.
- ``GET /metrics``: ``stockapi_requests_total{outcome}`` and
  ``stockapi_request_duration_seconds`` from a registry of this app's own.

Special symbols trigger each upstream failure on purpose (:data:`SPECIAL_SYMBOLS`). An unknown
symbol is answered HTTP 200 with ``N/D`` in every field, as Stooq does. Decision order for
``s``: special symbol, ``--unknown`` list (or empty ``s``) -> ``N/D``, ``--error-rate`` roll
-> HTTP 500, else a quote. Every answer waits ``--latency-ms`` ± ``--jitter-ms`` first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.aiohttp import make_aiohttp_handler

from server.bot.commands import CommandError, stooq_symbol
from server.bot.providers import CSV_FIELDS, CSV_HEADER, NO_DATA, SIM_UNKNOWN, sim_price

OUTCOMES = ("ok", "unknown", "error", "html", "quota", "slow")
SPECIAL_SYMBOLS: dict[str, str] = {
    **{symbol: "unknown" for symbol in SIM_UNKNOWN},  # ZZZZ.US: N/D in every field
    "HTML.US": "html",  # HTTP 200 text/html, like Stooq's bot-challenge page
    "QUOTA.US": "quota",  # HTTP 200 text/plain, Stooq's daily-limit message
    "FAIL.US": "error",  # HTTP 500
    "SLOW.US": "slow",  # a quote after SLOW_SECONDS (or when the service shuts down)
}
SLOW_SECONDS = 30.0
QUOTA_TEXT = "Exceeded the daily hits limit"
HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
    "<body><p>Checking your browser before accessing stooq.com.</p></body></html>"
)
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Behaviour:
    """Injected latency (milliseconds), failure fraction and extra unknown symbols.

    Raises ``ValueError`` naming the flag of a bad value.
    """

    latency_ms: float = 20.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    unknown: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for flag, value in (("--latency-ms", self.latency_ms), ("--jitter-ms", self.jitter_ms)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{flag} must be a finite number >= 0, got {value}")
        if not 0 <= self.error_rate <= 1:
            raise ValueError(f"--error-rate must be between 0 and 1, got {self.error_rate}")

    def delay(self, rng: random.Random) -> float:
        """Seconds to wait before one answer."""
        jitter = rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        return max(0.0, self.latency_ms + jitter) / 1000


@dataclass(slots=True)
class _State:
    behaviour: Behaviour
    requests_total: Counter
    duration: Histogram
    rng: random.Random = field(default_factory=random.Random)
    requests: Tally[str] = field(default_factory=Tally)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def outcome(self, symbol: str) -> str:
        special = SPECIAL_SYMBOLS.get(symbol)
        if special is not None:
            return special
        if not symbol or symbol in self.behaviour.unknown:
            return "unknown"
        if self.rng.random() < self.behaviour.error_rate:
            return "error"
        return "ok"


state_key = web.AppKey("state_key", _State)


def quote_csv(symbol: str, now: datetime) -> str:
    """Stooq's ``sd2t2ohlcv`` CSV (header + one row) for ``symbol`` at ``now`` (UTC)."""
    close = sim_price(symbol)
    row = (
        symbol,
        now.strftime("%Y-%m-%d"),
        now.strftime("%H:%M:%S"),
        f"{close * 0.995:.2f}",
        f"{close * 1.01:.2f}",
        f"{close * 0.99:.2f}",
        f"{close:.2f}",
        str(int(close * 1000)),
    )
    return f"{CSV_HEADER}\n{','.join(row)}\n"


def no_data_csv(symbol: str) -> str:
    """Stooq's answer for an unknown symbol: the header and ``N/D`` in every data field."""
    return f"{CSV_HEADER}\n{symbol}{f',{NO_DATA}' * (len(CSV_FIELDS) - 1)}\n"


def _response(outcome: str, symbol: str) -> web.Response:
    if outcome == "unknown":
        return web.Response(text=no_data_csv(symbol), content_type="text/csv")
    if outcome == "error":
        return web.Response(status=500, text="Internal Server Error")
    if outcome == "html":
        return web.Response(text=HTML_PAGE, content_type="text/html")
    if outcome == "quota":
        return web.Response(text=QUOTA_TEXT, content_type="text/plain")
    return web.Response(text=quote_csv(symbol, datetime.now(UTC)), content_type="text/csv")


async def quote(request: web.Request) -> web.Response:
    """``GET /q/l/?s=SYMBOL``: one Stooq CSV quote, or the failure the symbol asks for."""
    state = request.app[state_key]
    started = time.perf_counter()
    symbol = request.query.get("s", "").strip().upper()
    outcome = state.outcome(symbol)
    state.requests[symbol] += 1
    try:
        await asyncio.sleep(state.behaviour.delay(state.rng))
        if outcome == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.closing.wait(), SLOW_SECONDS)
        return _response(outcome, symbol)
    finally:
        state.requests_total.labels(outcome).inc()
        state.duration.observe(time.perf_counter() - started)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def stats(request: web.Request) -> web.Response:
    """``{"requests": {"AAPL.US": 3}}``: quote requests so far per upper-case symbol."""
    return web.json_response({"requests": dict(request.app[state_key].requests)})


async def _release_slow(app: web.Application) -> None:
    app[state_key].closing.set()


def create_app(
    *,
    latency_ms: float = 20.0,
    jitter_ms: float = 0.0,
    error_rate: float = 0.0,
    unknown: Iterable[str] = (),
) -> web.Application:
    """The quote service app; arguments mirror the command-line flags.

    Raises ``ValueError`` naming the flag of a bad value.
    """
    behaviour = Behaviour(
        float(latency_ms),
        float(jitter_ms),
        float(error_rate),
        frozenset(_unknown_symbol(code) for code in unknown if code.strip()),
    )
    registry = CollectorRegistry()
    requests_total = Counter(
        "stockapi_requests", "Quote requests, by outcome.", ["outcome"], registry=registry
    )
    for outcome in OUTCOMES:
        requests_total.labels(outcome)
    duration = Histogram(
        "stockapi_request_duration_seconds",
        "Time to answer one quote request, injected latency included.",
        buckets=DURATION_BUCKETS,
        registry=registry,
    )
    app = web.Application()
    app[state_key] = _State(behaviour, requests_total, duration)
    app.on_shutdown.append(_release_slow)
    app.router.add_get("/q/l/", quote)
    app.router.add_get("/q/l", quote)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    return app


def _unknown_symbol(code: str) -> str:
    """An ``--unknown`` entry as the bot asks for it: ``foo`` and ``FOO.US`` are ``FOO.US``."""
    try:
        return stooq_symbol(code)
    except CommandError as exc:
        raise ValueError(f"--unknown {code.strip()!r}: {exc}") from None


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, web.Application]:
    """The parsed flags and the app they describe; a bad flag exits 2 naming it."""
    parser = argparse.ArgumentParser(
        prog="python -m server.stockapi", description="Stooq-compatible quote service."
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8081, help="TCP port (default 8081)")
    parser.add_argument(
        "--latency-ms", type=float, default=20.0, help="mean added latency (default 20)"
    )
    parser.add_argument(
        "--jitter-ms", type=float, default=0.0, help="uniform ± jitter on the latency (default 0)"
    )
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="fraction answered HTTP 500, 0..1 (default 0)"
    )
    parser.add_argument(
        "--unknown",
        default="",
        help="comma-separated extra symbols answered N/D, written as in /stock= (foo: FOO.US)",
    )
    args = parser.parse_args(argv)
    try:
        app = create_app(
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
            error_rate=args.error_rate,
            unknown=args.unknown.split(","),
        )
    except ValueError as exc:
        parser.error(str(exc))
    return args, app


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then exit 0."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client: not annotated
    args, app = parse_args(argv)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        shutdown_timeout=2.0,
        access_log=None,
        handler_cancellation=True,
        print=lambda text: log.info("%s", text.strip()),
    )


if __name__ == "__main__":
    main()
