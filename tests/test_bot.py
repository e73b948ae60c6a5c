"""The stock bot against the real bundled quote service over real HTTP (httpx)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from server.bot.commands import (
    COMMANDS,
    STOCK_PREFIX,
    CommandError,
    HelpReply,
    help_reply,
    parse_stock_command,
)
from server.bot.providers import (
    QuoteProvider,
    UnknownSymbol,
    UpstreamError,
    make_provider,
    parse_quote_csv,
    sim_price,
)
from server.bot.stockbot import BotReply, StockBot
from server.stockapi import create_app
from server.stockapi import state_key as stockapi_state_key
from server.web.app import create_app as chat_app
from server.web.keys import bot_key, hubs_key
from tests.chat import Client, wait_until
from tests.chat import settings as chat_settings
from tests.support.processes import free_port, run_server

UNAVAILABLE = "Quote service unavailable for {}, try again later"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def commands(result: str) -> float:
    return sample("chat_bot_commands_total", result=result)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture
async def quotes(aiohttp_server) -> TestServer:
    """The bundled quote service in process, without added latency."""
    return await aiohttp_server(create_app(latency_ms=0))


def url_provider(server: TestServer, http: httpx.AsyncClient) -> QuoteProvider:
    return make_provider("url", str(server.make_url("")), http)


async def upstream_calls(server: TestServer, http: httpx.AsyncClient, symbol: str) -> int:
    """Quote requests the service has seen for ``symbol``, from its ``/stats``."""
    response = await http.get(str(server.make_url("/stats")))
    return response.json()["requests"].get(symbol, 0)


@contextlib.asynccontextmanager
async def running(
    provider: QuoteProvider,
    *,
    workers: int = 2,
    queue_size: int = 20,
    bot_timeout: float = 5.0,
    cache_ttl: float = 0.0,
) -> AsyncIterator[StockBot]:
    bot = StockBot(
        provider, workers=workers, queue_size=queue_size, timeout=bot_timeout, cache_ttl=cache_ttl
    )
    await bot.start()
    try:
        yield bot
    finally:
        await bot.stop()


def submit(bot: StockBot, symbol: str, reply_to: str | None = "c1") -> asyncio.Future[BotReply]:
    """Submit a command; the future holds the delivered reply."""
    future: asyncio.Future[BotReply] = asyncio.get_running_loop().create_future()

    def deliver(reply: BotReply) -> bool:
        future.set_result(reply)
        return True

    assert bot.submit(symbol, reply_to, deliver)
    return future


def release_slow(quotes: TestServer) -> None:
    """Let the quote service answer every ``SLOW.US`` request waiting and to come."""
    quotes.app[stockapi_state_key].closing.set()


async def ask(bot: StockBot, symbol: str, reply_to: str | None = "c1") -> BotReply:
    async with asyncio.timeout(10):
        return await submit(bot, symbol, reply_to)


# --- /stock= parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "symbol"),
    [
        ("/stock=aapl", "AAPL.US"),
        ("/stock=AAPL.US", "AAPL.US"),
        ("/stock=msft.us", "MSFT.US"),
        ("/stock=brk-b", "BRK-B.US"),
        ("  /stock=aapl  ", "AAPL.US"),
    ],
)
def test_ticker_is_normalized_to_upper_case_stooq_symbol(text: str, symbol: str) -> None:
    assert parse_stock_command(text) == symbol


def test_index_keeps_no_suffix() -> None:
    assert parse_stock_command("/stock=^spx") == "^SPX"


def test_prefix_is_case_insensitive() -> None:
    assert parse_stock_command("/STOCK=aapl") == "AAPL.US"


@pytest.mark.parametrize("text", ["hello", "stock=aapl", "see /stock=aapl", "/stocks=aapl", ""])
def test_text_without_the_prefix_is_not_a_command(text: str) -> None:
    assert parse_stock_command(text) is None


@pytest.mark.parametrize("text", ["/help", "  /HELP ", "/Help me"])
def test_help_lists_the_commands(text: str) -> None:
    assert help_reply(text) == HelpReply(COMMANDS, True)


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("/nope", "/nope"),
        (" /nope 1 2", "/nope"),
        ("/stocks=aapl", "/stocks"),
        ("/x-y_z", "/x-y_z"),
    ],
)
def test_an_unknown_command_word_is_named_before_the_list(text: str, word: str) -> None:
    assert help_reply(text) == HelpReply(f"Unknown command {word}. {COMMANDS}", False)


@pytest.mark.parametrize("text", ["hello", "/usr/bin is a path", "/ that", "/1st", "a /help", ""])
def test_a_chat_message_is_no_command(text: str) -> None:
    assert help_reply(text) is None


@pytest.mark.parametrize(
    "code", ["", "   ", "aa pl", "aapl!", "^", ".us", "aapl.", "a^b", "ÄAPL", "A" * 21]
)
def test_malformed_code_raises_command_error(code: str) -> None:
    with pytest.raises(CommandError):
        parse_stock_command(STOCK_PREFIX + code)


@given(
    st.one_of(
        st.text(max_size=30),
        st.text(alphabet="aZ09.^-_ /=\t\u0130\u212aé", max_size=30).map(STOCK_PREFIX.__add__),
        st.from_regex(r"/stock=\^?[A-Za-z0-9.-]{0,22}", fullmatch=True),
    )
)
def test_any_accepted_code_parses_to_a_clean_symbol(text: str) -> None:
    try:
        symbol = parse_stock_command(text)
    except CommandError:
        return
    assert symbol is None or re.fullmatch(r"[A-Z0-9.^-]+", symbol)


# --- CSV parsing --------------------------------------------------------------------------

HEADER = "Symbol,Date,Time,Open,High,Low,Close,Volume"


@pytest.mark.parametrize(
    "body",
    [
        "",
        HEADER,
        "Exceeded the daily hits limit",
        "<!DOCTYPE html><html><body>Checking your browser</body></html>",
        f"{HEADER}\nAAPL.US,2026-01-02,22:00:00,1,2,0.5,abc,100",
        f"{HEADER}\nAAPL.US,2026-01-02,22:00:00,1,2,0.5,-3,100",
        f"{HEADER}\nAAPL.US,2026-01-02,22:00:00,1,2,0.5,nan,100",
        f"{HEADER}\nAAPL.US,2026-01-02,22:00:00,1,2,0.5,93.42",
        f"{HEADER}\nMSFT.US,2026-01-02,22:00:00,1,2,0.5,93.42,100",
        f"{HEADER}\nAAPL.US,2026-01-02,22:00:00,1,2,0.5,93.42,100\nAAPL.US,x,x,1,2,3,4,5",
    ],
)
def test_body_without_one_numeric_close_for_the_symbol_is_upstream_error(body: str) -> None:
    with pytest.raises(UpstreamError):
        parse_quote_csv(body, "AAPL.US")


def test_nd_row_is_unknown_symbol() -> None:
    with pytest.raises(UnknownSymbol):
        parse_quote_csv(f"{HEADER}\nZZZZ.US,N/D,N/D,N/D,N/D,N/D,N/D,N/D\n", "ZZZZ.US")


def test_close_is_the_price() -> None:
    body = f"{HEADER}\r\nAAPL.US,2026-01-02,22:00:00,92.1,94.0,91.5,93.42,5117232\r\n"
    assert parse_quote_csv(body, "AAPL.US") == 93.42


# --- providers ------------------------------------------------------------------------------


async def test_provider_requests_stooq_csv_with_lower_case_symbol(
    aiohttp_server, http: httpx.AsyncClient
) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return web.Response(text=f"{HEADER}\nAAPL.US,2026-01-02,22:00:00,1,2,0.5,93.42,100\n")

    app = web.Application()
    app.router.add_get("/q/l/", handler)
    server = await aiohttp_server(app)
    price = await url_provider(server, http).fetch("AAPL.US")
    assert (seen, price) == (["/q/l/?s=aapl.us&f=sd2t2ohlcv&h&e=csv"], 93.42)


async def test_sim_provider_quotes_without_any_io() -> None:
    closed = httpx.AsyncClient()
    await closed.aclose()
    provider = make_provider("sim", "http://127.0.0.1:9", closed)
    assert await provider.fetch("AAPL.US") == sim_price("AAPL.US")
    with pytest.raises(UnknownSymbol):
        await provider.fetch("ZZZZ.US")


# --- the bot ------------------------------------------------------------------------------


async def test_ok_reply_names_symbol_and_price_with_two_decimals(
    quotes: TestServer, http: httpx.AsyncClient
) -> None:
    async with running(url_provider(quotes, http)) as bot:
        reply = await ask(bot, "AAPL.US", "m-17")
    assert reply == BotReply("AAPL.US quote is $955.09 per share", True, "m-17")


async def test_ok_command_counts_result_latency_and_one_upstream_call(
    quotes: TestServer, http: httpx.AsyncClient
) -> None:
    before = (
        commands("ok"),
        sample("chat_bot_latency_seconds_count"),
        sample("chat_bot_upstream_seconds_count"),
    )
    async with running(url_provider(quotes, http)) as bot:
        await ask(bot, "MSFT.US")
    after = (
        commands("ok"),
        sample("chat_bot_latency_seconds_count"),
        sample("chat_bot_upstream_seconds_count"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


async def test_unknown_symbol_gets_a_no_quote_reply(
    quotes: TestServer, http: httpx.AsyncClient
) -> None:
    before = commands("unknown_symbol")
    async with running(url_provider(quotes, http)) as bot:
        reply = await ask(bot, "ZZZZ.US")
    assert reply == BotReply("No quote for ZZZZ.US", False, "c1")
    assert commands("unknown_symbol") - before == 1


async def test_slow_upstream_times_out_as_unavailable(
    quotes: TestServer, http: httpx.AsyncClient
) -> None:
    before = commands("timeout")
    async with running(url_provider(quotes, http), bot_timeout=0.2) as bot:
        reply = await ask(bot, "SLOW.US")
    assert reply == BotReply(UNAVAILABLE.format("SLOW.US"), False, "c1")
    assert commands("timeout") - before == 1


@pytest.mark.parametrize(
    "symbol", ["FAIL.US", "HTML.US", "QUOTA.US"], ids=["http500", "html", "quota"]
)
async def test_failed_upstream_answer_is_unavailable_never_a_price(
    symbol: str, quotes: TestServer, http: httpx.AsyncClient
) -> None:
    before = commands("upstream_error")
    async with running(url_provider(quotes, http)) as bot:
        reply = await ask(bot, symbol)
    assert reply == BotReply(UNAVAILABLE.format(symbol), False, "c1")
    assert commands("upstream_error") - before == 1


async def test_unreachable_service_is_unavailable(http: httpx.AsyncClient) -> None:
    provider = make_provider("url", f"http://127.0.0.1:{free_port()}", http)
    async with running(provider) as bot:
        reply = await ask(bot, "AAPL.US")
    assert reply == BotReply(UNAVAILABLE.format("AAPL.US"), False, "c1")


async def test_second_command_within_ttl_makes_no_upstream_call(
    quotes: TestServer, http: httpx.AsyncClient
) -> None:
    async with running(url_provider(quotes, http), cache_ttl=60) as bot:
        first = await ask(bot, "AAPL.US")
        upstream_before = sample("chat_bot_upstream_seconds_count")
        second = await ask(bot, "AAPL.US")
    assert second == first
    assert await upstream_calls(quotes, http, "AAPL.US") == 1
    assert sample("chat_bot_upstream_seconds_count") == upstream_before


async def test_failed_quote_is_not_cached(quotes: TestServer, http: httpx.AsyncClient) -> None:
    async with running(url_provider(quotes, http), cache_ttl=60) as bot:
        await ask(bot, "FAIL.US")
        await ask(bot, "FAIL.US")
    assert await upstream_calls(quotes, http, "FAIL.US") == 2


async def test_zero_ttl_fetches_every_command(quotes: TestServer, http: httpx.AsyncClient) -> None:
    async with running(url_provider(quotes, http), cache_ttl=0) as bot:
        await ask(bot, "AAPL.US")
        await ask(bot, "AAPL.US")
    assert await upstream_calls(quotes, http, "AAPL.US") == 2


async def test_concurrent_commands_for_one_symbol_share_one_upstream_call(
    aiohttp_server, http: httpx.AsyncClient
) -> None:
    server = await aiohttp_server(create_app(latency_ms=50))
    async with running(url_provider(server, http), workers=10, cache_ttl=0) as bot:
        futures = [submit(bot, "AAPL.US", f"c{i}") for i in range(10)]
        async with asyncio.timeout(10):
            replies = await asyncio.gather(*futures)
    assert [r.reply_to for r in replies] == [f"c{i}" for i in range(10)]
    assert all(r.ok for r in replies)
    assert await upstream_calls(server, http, "AAPL.US") == 1


async def test_full_queue_rejects_and_counts_rejected(http: httpx.AsyncClient) -> None:
    bot = StockBot(
        make_provider("sim", "", http),
        workers=1,
        queue_size=2,
        timeout=1,
        cache_ttl=0,
    )
    before = commands("rejected")
    accepted = [bot.submit("AAPL.US", f"c{i}", lambda reply: True) for i in range(3)]
    assert accepted == [True, True, False]
    assert bot.queue_depth() == 2
    assert commands("rejected") - before == 1


async def test_worker_keeps_serving_after_a_failing_delivery(http: httpx.AsyncClient) -> None:
    def broken(reply: BotReply) -> bool:
        raise RuntimeError("recipient gone")

    async with running(make_provider("sim", "", http), workers=1) as bot:
        assert bot.submit("AAPL.US", "c1", broken)
        reply = await ask(bot, "MSFT.US", "c2")
    assert reply.ok


async def test_sim_bot_answers_offline(http: httpx.AsyncClient) -> None:
    async with running(make_provider("sim", "", http)) as bot:
        reply = await ask(bot, "^SPX")
    text = f"^SPX quote is ${sim_price('^SPX'):.2f} per share (simulated price, not a market quote)"
    assert reply == BotReply(text, True, "c1")


# --- the bot under a slow upstream ------------------------------------------------------


async def test_command_for_a_symbol_being_fetched_joins_that_call_without_slot_or_worker(
    quotes: TestServer, http: httpx.AsyncClient
) -> None:
    async with running(url_provider(quotes, http), workers=1, queue_size=1) as bot:
        first = submit(bot, "SLOW.US", "s0")
        await wait_until(lambda: bot.queue_depth() == 0)  # the only worker is calling
        joiners = [submit(bot, "SLOW.US", f"s{i}") for i in range(1, 6)]
        assert bot.queue_depth() == 0, "the joiners took queue slots"
        other = submit(bot, "AAPL.US", "a")  # the one slot: waits for the busy worker
        assert bot.queue_depth() == 1
        release_slow(quotes)
        async with asyncio.timeout(10):
            replies = await asyncio.gather(first, *joiners, other)
    assert [r.reply_to for r in replies] == [f"s{i}" for i in range(6)] + ["a"]
    assert all(r.ok for r in replies)
    assert len({r.text for r in replies[:6]}) == 1
    assert await upstream_calls(quotes, http, "SLOW.US") == 1


async def test_waiting_commands_for_one_symbol_share_one_call(
    quotes: TestServer, http: httpx.AsyncClient
) -> None:
    async with running(url_provider(quotes, http), workers=1) as bot:
        busy = submit(bot, "SLOW.US")
        await wait_until(lambda: bot.queue_depth() == 0)
        waiting = [submit(bot, "AAPL.US", f"a{i}") for i in range(3)]
        assert bot.queue_depth() == 3
        release_slow(quotes)
        async with asyncio.timeout(10):
            replies = await asyncio.gather(busy, *waiting)
    assert all(r.ok for r in replies)
    assert await upstream_calls(quotes, http, "AAPL.US") == 1


async def test_command_waiting_past_the_deadline_is_answered_unavailable_without_a_call(
    quotes: TestServer, http: httpx.AsyncClient
) -> None:
    before = commands("timeout")
    async with running(url_provider(quotes, http), workers=1, bot_timeout=0.5) as bot:
        # Submitted together: the worker takes SLOW.US after these deadlines were set, so the
        # AAPL.US commands' deadlines pass while it still waits on SLOW.US.
        slow = submit(bot, "SLOW.US")
        waiting = [submit(bot, "AAPL.US", f"a{i}") for i in range(2)]
        async with asyncio.timeout(10):
            replies = await asyncio.gather(*waiting, slow)
    assert replies[:2] == [
        BotReply(UNAVAILABLE.format("AAPL.US"), False, f"a{i}") for i in range(2)
    ]
    assert replies[2] == BotReply(UNAVAILABLE.format("SLOW.US"), False, "c1")
    assert commands("timeout") - before == 3
    assert await upstream_calls(quotes, http, "AAPL.US") == 0


async def test_reply_nobody_can_receive_counts_dropped_not_its_result(
    http: httpx.AsyncClient,
) -> None:
    before = {result: commands(result) for result in ("ok", "dropped")}
    latency_before = sample("chat_bot_latency_seconds_count")
    delivered = asyncio.Event()

    def room_gone(reply: BotReply) -> bool:
        delivered.set()
        return False

    async with running(make_provider("sim", "", http)) as bot:
        assert bot.submit("AAPL.US", "c1", room_gone)
        async with asyncio.timeout(10):
            await delivered.wait()
    assert commands("dropped") - before["dropped"] == 1
    assert commands("ok") == before["ok"]
    assert sample("chat_bot_latency_seconds_count") == latency_before


UPSTREAM_SECONDS = 4.0
BURST = 150
BURST_CLIENTS = 15


async def test_burst_for_one_symbol_against_a_slow_upstream_is_answered_within_twice_its_latency(
    aiohttp_server, aiohttp_client, http: httpx.AsyncClient
) -> None:
    quotes = await aiohttp_server(create_app(latency_ms=UPSTREAM_SECONDS * 1000))
    app = chat_app(
        chat_settings(
            quote_provider="url",
            quote_url=str(quotes.make_url("")),
            bot_cache_ttl=0,
            bot_timeout=2 * UPSTREAM_SECONDS,
            rate_limit=1000,
            rate_burst=1000,
        )
    )
    server = await aiohttp_client(app)
    clients = []
    for n in range(BURST_CLIENTS):
        ws = await server.ws_connect("/ws", params={"room": "market", "user": f"u{n}"})
        clients.append(Client(ws))
        await clients[-1].next_of("welcome")
    loop = asyncio.get_running_loop()
    sent: dict[str, float] = {}
    started = loop.time()
    for i in range(BURST):  # 150 commands spread over about one second
        reply_to = f"q{i}"
        sent[reply_to] = loop.time()
        await clients[i % BURST_CLIENTS].say("/stock=aapl", id=reply_to)
        await asyncio.sleep(1 / BURST)
    assert loop.time() - started < UPSTREAM_SECONDS, "the burst took longer than one call"
    listener = clients[0]
    answered: dict[str, float] = {}
    async with asyncio.timeout(3 * UPSTREAM_SECONDS):
        while len(answered) < BURST:
            reply = await listener.events.get()
            if reply["type"] == "bot":
                assert reply["ok"], reply
                answered[reply["reply_to"]] = loop.time() - sent[reply["reply_to"]]
    assert max(answered.values()) <= 2 * UPSTREAM_SECONDS, sorted(answered.values())[-5:]
    assert await upstream_calls(quotes, http, "AAPL.US") == 1
    for client in clients:
        await client.close()


async def test_reply_for_a_room_reaped_meanwhile_counts_dropped(
    aiohttp_client, quotes: TestServer
) -> None:
    app = chat_app(
        chat_settings(
            quote_provider="url", quote_url=str(quotes.make_url("")), bot_timeout=30, room_grace=0.1
        )
    )
    server = await aiohttp_client(app)
    before = {result: commands(result) for result in ("ok", "dropped")}
    client = Client(await server.ws_connect("/ws", params={"room": "gone", "user": "ann"}))
    await client.next_of("welcome")
    await client.say("/stock=slow.us", id="late")
    await wait_until(lambda: app[bot_key].queue_depth() == 0)  # the bot is calling
    await client.close()
    await wait_until(lambda: app[hubs_key].room_count() == 0)
    release_slow(quotes)
    await wait_until(lambda: commands("dropped") == before["dropped"] + 1)
    assert commands("ok") == before["ok"]


def test_an_unresolvable_quote_host_logs_how_to_run_offline(tmp_path: Path) -> None:
    """Start-up resolves the quote host in the background; the warning comes as a JSON log
    line naming ``ROOMHUB_QUOTE_PROVIDER=sim``, and the server serves meanwhile (run_server
    waits for it to answer /healthz)."""
    with run_server(tmp_path, quote_provider="stooq", quote_url="https://nonexistent.invalid") as s:
        deadline = time.monotonic() + 10
        while '"quote_host_unresolved"' not in s.output():
            assert time.monotonic() < deadline, "no quote_host_unresolved warning"
            time.sleep(0.05)
        (line,) = [
            json.loads(line)
            for line in s.output().splitlines()
            if '"quote_host_unresolved"' in line
        ]
    assert (line["level"], line["logger"], line["host"]) == (
        "warning",
        "roomhub.bot",
        "nonexistent.invalid",
    )
    assert "ROOMHUB_QUOTE_PROVIDER=sim" in line["hint"]
