"""Quote providers: where the stock bot gets a price.

- ``stooq`` and ``url`` speak Stooq's CSV quote protocol over HTTP (``stooq`` is meant for
  https://stooq.com, ``url`` for any compatible service such as ``python -m server.stockapi``;
  both use the base URL they are given).
- ``sim`` answers offline from a hash of the symbol, with no I/O at all.

Stooq's protocol (https://stooq.com/q/l/?s=aapl.us&f=sd2t2ohlcv&h&e=csv): HTTP 200 with the
header ``Symbol,Date,Time,Open,High,Low,Close,Volume`` and one row; Close is the price. An
unknown symbol is HTTP 200 with ``N/D`` in every field. A quota message (plain text) or a bot
challenge (HTML) also comes back as HTTP 200, so anything that is not that CSV row with a
numeric Close is treated as the service being unavailable, never as a price.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import threading
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import httpx

log = logging.getLogger("roomhub.bot")

OFFLINE_HINT = "no network? ROOMHUB_QUOTE_PROVIDER=sim answers /stock= offline"

CSV_HEADER = "Symbol,Date,Time,Open,High,Low,Close,Volume"
CSV_FIELDS = tuple(CSV_HEADER.split(","))
CLOSE_FIELD = CSV_FIELDS.index("Close")
NO_DATA = "N/D"
SIM_UNKNOWN = frozenset({"ZZZZ.US"})
"""Symbols the ``sim`` provider (and the bundled stockapi) answer as unknown."""

_PRICE = re.compile(r"[0-9]+(?:\.[0-9]+)?")


class UnknownSymbol(Exception):
    """The quote service has no data for the symbol (Stooq answered ``N/D``)."""


class UpstreamError(Exception):
    """The quote service failed: HTTP error, unreachable, or a body that is not a quote."""


class QuoteProvider(Protocol):
    simulated: bool
    """True when prices are invented (``sim``): replies then say so."""

    async def fetch(self, symbol: str) -> float:
        """The Close price of ``symbol`` (an upper-case Stooq symbol such as ``AAPL.US``).

        Raises :class:`UnknownSymbol`, :class:`UpstreamError`, or ``TimeoutError`` when the
        HTTP client's own timeout fires.
        """
        ...


def parse_quote_csv(body: str, symbol: str) -> float:
    """The Close price from a Stooq ``sd2t2ohlcv`` CSV body (header + one row) for ``symbol``.

    Raises :class:`UnknownSymbol` for an ``N/D`` row, :class:`UpstreamError` for anything
    else that is not exactly that CSV with the same symbol and a positive decimal Close.
    """
    lines = body.strip().splitlines()
    if len(lines) != 2 or lines[0].strip() != CSV_HEADER:
        raise UpstreamError(f"not a Stooq CSV quote: {body[:80]!r}")
    fields = lines[1].strip().split(",")
    if len(fields) != len(CSV_FIELDS):
        raise UpstreamError(f"bad CSV row: {lines[1][:80]!r}")
    if fields[0].upper() != symbol.upper():
        raise UpstreamError(f"row is for {fields[0][:40]!r}, not {symbol!r}")
    close = fields[CLOSE_FIELD]
    if close == NO_DATA:
        raise UnknownSymbol(symbol)
    if not _PRICE.fullmatch(close) or float(close) <= 0:
        raise UpstreamError(f"Close is not a price: {close[:40]!r}")
    return float(close)


@dataclass(frozen=True, slots=True)
class CsvQuoteProvider:
    """Stooq's CSV quote protocol at ``base_url`` (no trailing slash), over a shared client."""

    base_url: str
    client: httpx.AsyncClient
    simulated = False

    async def fetch(self, symbol: str) -> float:
        """``GET {base_url}/q/l/?s=aapl.us&f=sd2t2ohlcv&h&e=csv``; see :class:`QuoteProvider`."""
        url = f"{self.base_url}/q/l/?s={quote(symbol.lower(), safe='.-')}&f=sd2t2ohlcv&h&e=csv"
        try:
            response = await self.client.get(url)
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"quote service timed out: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"quote service unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise UpstreamError(f"quote service answered HTTP {response.status_code}")
        return parse_quote_csv(response.text, symbol)


def sim_price(symbol: str) -> float:
    """A deterministic price in 10.00..999.99 derived from a hash of the upper-case symbol."""
    digest = hashlib.blake2b(symbol.upper().encode(), digest_size=8).digest()
    return (1000 + int.from_bytes(digest, "big") % 99_000) / 100


class SimProvider:
    """Offline quotes: :func:`sim_price` for every symbol except :data:`SIM_UNKNOWN`."""

    simulated = True

    async def fetch(self, symbol: str) -> float:
        if symbol.upper() in SIM_UNKNOWN:
            raise UnknownSymbol(symbol)
        return sim_price(symbol)


def make_provider(kind: str, base_url: str, client: httpx.AsyncClient) -> QuoteProvider:
    """The provider named ``kind`` (``stooq``, ``url`` or ``sim``; see the module docstring).

    ``base_url`` (e.g. ``https://stooq.com``) is used by ``stooq`` and ``url``; ``sim`` ignores
    it and the client. Raises ``ValueError`` for another ``kind``.
    """
    if kind in ("stooq", "url"):
        return CsvQuoteProvider(base_url.rstrip("/"), client)
    if kind == "sim":
        return SimProvider()
    raise ValueError(f"unknown quote provider {kind!r}; expected stooq, url or sim")


def check_quote_host(base_url: str) -> threading.Thread:
    """Resolve the host of ``base_url`` once, in a daemon thread; when it does not resolve,
    log ``quote_host_unresolved`` at warning with :data:`OFFLINE_HINT`.

    A thread of its own, so that start-up does not wait for the resolver, the event loop is
    never blocked by it, and the process can exit while a resolver hangs (the loop's default
    executor would be waited for). Returns the started thread.
    """
    host = httpx.URL(base_url).host

    def resolve() -> None:
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            fields = {"host": host, "error": str(exc), "hint": OFFLINE_HINT}
            log.warning("quote_host_unresolved", extra={"fields": fields})

    thread = threading.Thread(target=resolve, name="quote-host-check", daemon=True)
    thread.start()
    return thread
