"""The bundled Stooq-compatible quote service, in process over real HTTP and as a process."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import httpx
import pytest
from aiohttp import ClientTimeout
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from server.bot.commands import parse_stock_command
from server.bot.providers import CSV_HEADER, UnknownSymbol, make_provider, sim_price
from server.stockapi import HTML_PAGE, QUOTA_TEXT, create_app, main
from tests.support.processes import run_stockapi

ND_ROW = "{},N/D,N/D,N/D,N/D,N/D,N/D,N/D"


@pytest.fixture
async def api(aiohttp_client) -> TestClient:
    return await aiohttp_client(create_app(latency_ms=0, unknown=["DELISTED.US"]))


async def get_quote(client: TestClient, symbol: str) -> tuple[int, str, str]:
    """Status, content type and body of a Stooq-style quote request."""
    response = await client.get(f"/q/l/?s={symbol}&f=sd2t2ohlcv&h&e=csv")
    return response.status, response.content_type, await response.text()


async def test_quote_is_stooq_csv_header_and_one_row(api: TestClient) -> None:
    status, content_type, body = await get_quote(api, "aapl.us")
    header, row = body.strip().split("\n")
    fields = row.split(",")
    assert (status, content_type, header) == (200, "text/csv", CSV_HEADER)
    assert fields[0] == "AAPL.US"
    assert fields[6] == f"{sim_price('AAPL.US'):.2f}"
    assert len(fields) == 8
    assert float(fields[5]) <= float(fields[6]) <= float(fields[4])
    assert fields[7].isdigit()


async def test_price_is_deterministic_per_symbol(api: TestClient) -> None:
    first = (await get_quote(api, "msft.us"))[2].split("\n")[1].split(",")[6]
    second = (await get_quote(api, "MSFT.US"))[2].split("\n")[1].split(",")[6]
    assert first == second == f"{sim_price('MSFT.US'):.2f}"


async def test_unknown_symbol_is_http_200_with_nd_in_every_field(api: TestClient) -> None:
    assert await get_quote(api, "zzzz.us") == (
        200,
        "text/csv",
        f"{CSV_HEADER}\n{ND_ROW.format('ZZZZ.US')}\n",
    )


async def test_unknown_flag_symbols_answer_nd(api: TestClient) -> None:
    body = (await get_quote(api, "delisted.us"))[2]
    assert body.split("\n")[1] == ND_ROW.format("DELISTED.US")


@pytest.mark.parametrize("typed", ["foo", "FOO.US", " foo.us "])
def test_unknown_flag_takes_symbols_the_way_the_bot_asks_for_them(
    tmp_path: Path, typed: str
) -> None:
    # The process, with the flag as typed, answers the symbol the bot sends for /stock=foo.
    symbol = parse_stock_command("/stock=foo")
    with run_stockapi(tmp_path, "--latency-ms", "0", "--unknown", f"{typed},bar") as process:
        with pytest.raises(UnknownSymbol):
            asyncio.run(fetch(process.url, symbol))
        assert httpx.get(f"{process.url}/stats").json()["requests"] == {"FOO.US": 1}


async def fetch(base_url: str, symbol: str) -> float:
    """One quote through the bot's own ``url`` provider."""
    async with httpx.AsyncClient(timeout=5) as client:
        return await make_provider("url", base_url, client).fetch(symbol)


def test_a_malformed_unknown_symbol_exits_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--unknown", "ok,not a symbol"])
    assert exit_info.value.code == 2
    assert "--unknown 'not a symbol'" in capsys.readouterr().err


async def test_html_symbol_serves_an_html_page_with_http_200(api: TestClient) -> None:
    assert await get_quote(api, "html.us") == (200, "text/html", HTML_PAGE)


async def test_quota_symbol_serves_the_plain_text_quota_message(api: TestClient) -> None:
    assert await get_quote(api, "quota.us") == (200, "text/plain", QUOTA_TEXT)


async def test_fail_symbol_answers_http_500(api: TestClient) -> None:
    assert (await get_quote(api, "fail.us"))[0] == 500


async def test_slow_symbol_outlasts_a_client_deadline(api: TestClient) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await api.get("/q/l/?s=slow.us", timeout=ClientTimeout(total=0.3))


async def test_error_rate_one_answers_every_quote_with_500(aiohttp_client) -> None:
    client = await aiohttp_client(create_app(latency_ms=0, error_rate=1))
    statuses = [(await get_quote(client, f"T{i}.US"))[0] for i in range(20)]
    assert statuses == [500] * 20


async def test_error_rate_zero_answers_every_quote(aiohttp_client) -> None:
    client = await aiohttp_client(create_app(latency_ms=0, error_rate=0))
    statuses = [(await get_quote(client, f"T{i}.US"))[0] for i in range(20)]
    assert statuses == [200] * 20


async def test_stats_count_quote_requests_per_symbol(api: TestClient) -> None:
    for symbol in ("aapl.us", "AAPL.US", "fail.us"):
        await get_quote(api, symbol)
    response = await api.get("/stats")
    assert await response.json() == {"requests": {"AAPL.US": 2, "FAIL.US": 1}}


async def test_metrics_count_requests_by_outcome_and_time_them(api: TestClient) -> None:
    for symbol in ("aapl.us", "zzzz.us", "html.us", "quota.us", "fail.us"):
        await get_quote(api, symbol)
    response = await api.get("/metrics")
    samples = {
        (sample.name, sample.labels.get("outcome")): sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
    }
    for outcome in ("ok", "unknown", "html", "quota", "error"):
        assert samples["stockapi_requests_total", outcome] == 1
    assert samples["stockapi_requests_total", "slow"] == 0
    assert samples["stockapi_request_duration_seconds_count", None] == 5


async def test_healthz_answers_200(api: TestClient) -> None:
    response = await api.get("/healthz")
    assert response.status == 200


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--error-rate", "1.5"], "--error-rate"),
        (["--latency-ms", "-1"], "--latency-ms"),
        (["--jitter-ms", "nan"], "--jitter-ms"),
        (["--latency-ms", "fast"], "--latency-ms"),
        (["--port", "70000"], "--port"),
    ],
)
def test_bad_flag_exits_2_naming_the_flag(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(flags)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def test_process_serves_quotes_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    with run_stockapi(tmp_path, "--latency-ms", "0") as process:
        with urllib.request.urlopen(f"{process.url}/q/l/?s=aapl.us", timeout=5) as response:
            assert response.read().decode().startswith(CSV_HEADER)
        assert process.stop() == 0
