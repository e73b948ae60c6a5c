"""Refusals before the upgrade: the order in code, the table in docs/protocol.md, the wire."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import jwt
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, make_mocked_request

from server.ops.metrics import REJECT_REASONS
from server.web.app import create_app
from server.web.handshake import CHECKS, Check, query_params
from server.web.keys import broker_key, registry_key
from tests.chat import UPGRADE_HEADERS, WAIT, Client, sample, settings
from tests.support.docs import code, table

SECRET = "s" * 32
REFUSALS = table("docs/protocol.md", "### Refusals before the upgrade")
COUNTED = "counted in `chat_handshakes_rejected_total{reason}`"
METRIC_REASONS = table("docs/metrics.md", "**`chat_handshakes_rejected_total{reason}`**")


def counted(row: dict[str, str]) -> str | None:
    """The documented ``reason`` label of a refusal, None for "(not counted...)"."""
    cell = row[COUNTED]
    return None if cell.startswith("(not counted") else code(cell)


def rejected() -> dict[str, float]:
    return {r: sample("chat_handshakes_rejected_total", reason=r) for r in REJECT_REASONS}


@pytest.fixture
def make_server(aiohttp_client: Any):
    async def make(**overrides: Any) -> TestClient:
        return await aiohttp_client(create_app(settings(**overrides)))

    return make


def check(name: str) -> Check:
    """The check whose function is ``_<name>``."""
    (found,) = (c for c in CHECKS if c.run.__name__ == f"_{name}")
    return found


async def request_failing(make_server: Any, failing: Collection[Check]) -> ClientResponse:
    """One ``GET /ws`` to a fresh server that fails exactly the checks in ``failing``."""
    names = {c.run.__name__.removeprefix("_") for c in failing}
    known = {"upgrade", "version", "room", "user", "since", "epoch", "origin", "not_draining"}
    tokens = {"token_present", "token_valid", "token_fresh", "token_room"}
    door = {"upgrade_rate", "address_below_cap", "new_room_rate"}
    allowed = known | tokens | door | {"below_capacity", "broker_ready", "room_limit"}
    assert names <= allowed, "teach request_failing"
    full, rooms_full = "below_capacity" in names, "room_limit" in names
    server: TestClient = await make_server(
        max_connections=1 if full else 10,
        max_rooms=1 if rooms_full else 10,
        # The first connection below takes the one upgrade, slot or new room there is.
        upgrade_rate=0.01,
        upgrade_burst=1 if "upgrade_rate" in names else 10,
        max_connections_per_address=1 if "address_below_cap" in names else 10,
        new_rooms_per_minute=1 if "new_room_rate" in names else 10,
        **({"auth": "token", "token_secret": SECRET} if names & tokens else {}),
    )
    if full or rooms_full or names & door:
        first = {"room": "other", "user": "first"}
        if names & tokens:
            first["token"] = jwt.encode({"sub": "first"}, SECRET, algorithm="HS256")
        ws = await server.ws_connect("/ws", params=first)
        assert (await Client(ws).next())["type"] == "welcome"
    server.app[registry_key].draining = "not_draining" in names
    # The in-process broker stands for one that lost Redis.
    server.app[broker_key].ready = "broker_ready" not in names
    params = {
        "room": "bad room" if "room" in names else "r1",
        "user": "ann\x1f" if "user" in names else "ann",
        "since": "-1" if "since" in names else "0",
        "epoch": "a b" if "epoch" in names else "",
    }
    if names & tokens and "token_present" not in names:
        # With tokens on, the name comes from the token.
        claims = {"sub": "ann", "name": params.pop("user")}
        if "token_fresh" in names:
            claims["exp"] = 1_000_000_000
        if "token_room" in names:
            claims["rooms"] = ["elsewhere"]
        key = "x" * 32 if "token_valid" in names else SECRET
        params["token"] = jwt.encode(claims, key, algorithm="HS256")
    headers = {} if "upgrade" in names else dict(UPGRADE_HEADERS)
    if "version" in names:
        headers["Sec-WebSocket-Version"] = "8"
    if "origin" in names:
        headers["Origin"] = "http://evil.example"
    return await server.get("/ws", params=params, headers=headers)


def test_docs_list_the_refusals_in_the_order_the_server_checks_them() -> None:
    documented = [(int(r["status"]), code(r["`error`"]), counted(r)) for r in REFUSALS]
    assert documented == [(c.status, c.error, c.counted) for c in CHECKS]


def test_metrics_doc_lists_exactly_the_counted_refusals() -> None:
    documented = {code(row["`reason`"]) for row in METRIC_REASONS}
    # The ban check runs after CHECKS (it asks the broker: server/web/views.py).
    counted = {c.counted for c in CHECKS if c.counted} | {"banned"}
    assert documented == counted == set(REJECT_REASONS)


@pytest.mark.parametrize("at", range(len(REFUSALS)), ids=[code(r["`error`"]) for r in REFUSALS])
async def test_each_documented_refusal_is_what_the_server_answers(
    make_server: Any, at: int
) -> None:
    row = REFUSALS[at]  # the rows follow CHECKS (the test above)
    error = code(row["`error`"])
    before = rejected()
    response = await request_failing(make_server, {CHECKS[at]})
    assert response.status == int(row["status"])
    assert await response.json() == {"error": error, "detail": code(row["`detail`"])}
    moved = {r: n - before[r] for r, n in rejected().items() if n != before[r]}
    reason = counted(row)
    assert moved == ({reason: 1} if reason else {})


@pytest.mark.parametrize("first", range(len(CHECKS)), ids=[c.error for c in CHECKS])
async def test_only_the_first_failing_check_answers(make_server: Any, first: int) -> None:
    # The request fails this check and every later one.
    response = await request_failing(make_server, CHECKS[first:])
    assert (await response.json())["error"] == CHECKS[first].error


async def test_plain_get_at_the_connection_cap_is_not_websocket_and_not_counted(
    make_server: Any,
) -> None:
    before = rejected()
    response = await request_failing(make_server, {check("upgrade"), check("below_capacity")})
    assert response.status == 400
    assert (await response.json())["error"] == "not_websocket"
    assert rejected() == before


@pytest.mark.parametrize("version", ["7", "8", "12", "14", None])
async def test_a_version_other_than_13_gets_426_naming_13(make_server: Any, version: Any) -> None:
    headers = {**UPGRADE_HEADERS, "Sec-WebSocket-Version": version}
    if version is None:
        del headers["Sec-WebSocket-Version"]
    server = await make_server()
    response = await server.get("/ws", params={"room": "r1", "user": "ann"}, headers=headers)
    assert response.status == 426
    assert response.headers["Sec-WebSocket-Version"] == "13"
    assert (await response.json())["error"] == "bad_version"


@pytest.mark.parametrize(
    "change",
    [
        {"Upgrade": "h2c"},
        {"Connection": "keep-alive"},
        {"Connection": "upgrades"},
        {"Sec-WebSocket-Key": "c2hvcnQ="},  # base64 of 5 bytes
        {"Sec-WebSocket-Key": "not base64 at all!!!!!=="},
    ],
    ids=["upgrade-h2c", "connection-keep-alive", "connection-upgrades", "short-key", "bad-key"],
)
async def test_an_upgrade_without_its_headers_is_not_websocket(
    make_server: Any, change: dict[str, str]
) -> None:
    server = await make_server()
    headers = {**UPGRADE_HEADERS, **change}
    response = await server.get("/ws", params={"room": "r1", "user": "ann"}, headers=headers)
    assert response.status == 400
    assert (await response.json())["error"] == "not_websocket"


async def test_header_tokens_match_in_any_case_among_others(make_server: Any) -> None:
    server = await make_server()
    headers = {**UPGRADE_HEADERS, "Upgrade": "WebSocket", "Connection": "keep-alive, UPGRADE"}
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(f"GET /ws?room=r1&user=ann HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    writer.close()
    assert head.startswith(b"HTTP/1.1 101 ")


@pytest.mark.parametrize(
    "query",
    [
        "room=a&user=b+c&since=3",
        "room=a%2Fb&user=%F0%9F%98%80",
        "room=&user",
        "user=%ff&room=%C3",
        "room=a&room=b",
        "room=x;user=y",
        "user=a%2Bb%2526&room=a%zz",
        "&&room=%E2%80%AE",
    ],
)
def test_query_parameters_decode_as_aiohttp_decodes_them(query: str) -> None:
    request = make_mocked_request("GET", f"/ws?{query}")
    params = query_params(request)
    for name in ("room", "user", "since", "missing"):
        assert params.get(name) == request.query.get(name), name
