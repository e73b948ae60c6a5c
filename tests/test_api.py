"""The server API (``POST /api/v1/<method>``, docs/api.md): the key, the body rules, and
each method's effect on members — with the memory broker (one instance) and through a real
``redis-server`` (two instances, the call made on one, members on both)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from server.ops.config import ConfigError, load_settings
from server.rooms.broker.memory import MemoryBroker
from server.web.app import create_app
from server.web.keys import broker_key, hubs_key
from server.wire.api import ERRORS, FIELDS, METHODS
from tests.chat import UPGRADE_HEADERS, Client, sample, settings, wait_until
from tests.support.docs import code, table

KEY = "test-key-0123456789abcdef"
HEADERS = {"X-API-Key": KEY}


async def call(instance: TestClient, method: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    response = await instance.post(f"/api/v1/{method}", json=fields, headers=HEADERS)
    return response.status, await response.json()


async def ok(instance: TestClient, method: str, **fields: Any) -> dict[str, Any]:
    status, answer = await call(instance, method, **fields)
    assert status == 200, answer
    return answer


async def joined(instance: TestClient, room: str, user: str, **query: Any) -> Client:
    client = Client(await instance.ws_connect("/ws", params={"room": room, "user": user, **query}))
    await client.next_of("welcome")
    await client.next(lambda e: e["type"] == "join" and e["user"] == user)
    return client


@pytest.fixture(params=["memory", "redis"])
def pair(request: pytest.FixtureRequest, aiohttp_client: Any):
    """Two instances to call and to join: the same one with the memory broker, two on one
    real ``redis-server`` with Redis."""

    async def make(**overrides: Any) -> tuple[TestClient, TestClient]:
        common = {"api_key": KEY, **overrides}
        if request.param == "memory":
            one = await aiohttp_client(create_app(settings(**common)))
            return one, one
        redis_server = request.getfixturevalue("redis_server")
        instances = []
        for _ in range(2):
            instance = await aiohttp_client(create_app(settings(broker=redis_server.url, **common)))
            await wait_until(lambda i=instance: i.app[broker_key].ready)
            instances.append(instance)
        return instances[0], instances[1]

    return make


@pytest.fixture
async def server(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_app(settings(api_key=KEY)))


# -- the door -------------------------------------------------------------------------------


async def test_the_api_is_off_without_a_key_setting(aiohttp_client: Any) -> None:
    instance = await aiohttp_client(create_app(settings()))
    response = await instance.post("/api/v1/rooms", json={}, headers=HEADERS)
    assert response.status == 404
    assert (await response.json())["error"] == "api_disabled"


@pytest.mark.parametrize("given", [None, "", "wrong-key-0123456789abcdef", KEY[:-1], KEY + "x"])
async def test_a_call_without_the_right_key_gets_401_and_is_counted(
    server: TestClient, given: str | None
) -> None:
    before = sample("chat_api_requests_total", method="rooms", result="unauthorized")
    headers = {} if given is None else {"X-API-Key": given}
    response = await server.post("/api/v1/rooms", json={}, headers=headers)
    assert response.status == 401
    assert await response.json() == {
        "error": "unauthorized",
        "detail": "X-API-Key is missing or wrong",
    }
    after = sample("chat_api_requests_total", method="rooms", result="unauthorized")
    assert after == before + 1


async def test_the_key_is_not_in_the_metrics(server: TestClient) -> None:
    await server.post("/api/v1/rooms", json={}, headers={"X-API-Key": KEY})
    text = await (await server.get("/metrics")).text()
    assert KEY not in text
    assert hashlib.sha256(KEY.encode()).hexdigest() not in text


async def test_an_unknown_method_gets_404_naming_it(server: TestClient) -> None:
    status, answer = await call(server, "shout")
    assert (status, answer["error"]) == (404, "unknown_method")
    assert "shout" in answer["detail"]


async def test_a_get_gets_405(server: TestClient) -> None:
    response = await server.get("/api/v1/publish", headers=HEADERS)
    assert response.status == 405
    assert (await response.json())["error"] == "method_not_allowed"


async def test_a_body_over_the_limit_is_refused_before_it_is_sent(
    aiohttp_client: Any,
) -> None:
    instance = await aiohttp_client(create_app(settings(api_key=KEY, api_max_body=1000)))
    reader, writer = await asyncio.open_connection(instance.host, instance.port)
    writer.write(
        b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-API-Key: {KEY}\r\nContent-Length: 1000000000\r\n\r\n".encode()
        + b'{"room": "a", "text": "'
    )
    await writer.drain()
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    writer.close()


async def test_a_chunked_body_over_the_limit_is_refused(aiohttp_client: Any) -> None:
    instance = await aiohttp_client(create_app(settings(api_key=KEY, api_max_body=1000)))

    async def chunks() -> Any:
        for _ in range(100):
            yield b" " * 100

    response = await instance.post("/api/v1/rooms", data=chunks(), headers=HEADERS)
    assert response.status == 413
    assert (await response.json())["error"] == "too_large"


@pytest.mark.parametrize(
    ("method", "body", "error", "field"),
    [
        ("publish", b"{", "bad_json", None),
        ("publish", b"[1]", "bad_json", None),
        ("publish", b'{"room": "a"}', "missing_field", "text"),
        ("publish", b'{"room": "a", "text": "x", "colour": 1}', "unknown_field", "colour"),
        ("publish", b'{"room": "a b", "text": "x"}', "bad_field", "room"),
        ("publish", b'{"room": "a", "text": "  "}', "bad_field", "text"),
        ("publish", b'{"room": "a", "text": 5}', "bad_field", "text"),
        ("publish", b'{"room": "a", "text": "x", "user": "a\\u0000b"}', "bad_field", "user"),
        ("publish", b'{"room": "a", "text": "x", "user": "a\\u200bb"}', "bad_field", "user"),
        ("publish", b'{"room": "a", "text": "\\u0001\\u0001"}', "bad_field", "text"),
        ("broadcast", b'{"rooms": [], "text": "x"}', "bad_field", "rooms"),
        ("broadcast", b'{"rooms": ["a", "a"], "text": "x"}', "bad_field", "rooms"),
        ("delete", b'{"room": "a", "seq": 0}', "bad_field", "seq"),
        ("delete", b'{"room": "a", "seq": true}', "bad_field", "seq"),
        ("ban", b'{"room": "a", "user": "x", "duration": -1}', "bad_field", "duration"),
        ("history", b'{"room": "a", "limit": 1001}', "bad_field", "limit"),
        ("disconnect", b'{"user": "x", "reconnect": "yes"}', "bad_field", "reconnect"),
    ],
)
async def test_a_bad_body_gets_a_json_error_naming_the_field(
    server: TestClient, method: str, body: bytes, error: str, field: str | None
) -> None:
    response = await server.post(f"/api/v1/{method}", data=body, headers=HEADERS)
    assert response.status == 400
    answer = await response.json()
    assert answer["error"] == error
    assert answer.get("field") == field
    if field is not None:
        assert field in answer["detail"]


async def test_delete_of_a_seq_not_in_the_history_gets_404(server: TestClient) -> None:
    status, answer = await call(server, "delete", room="a", seq=7)
    assert (status, answer["error"]) == (404, "not_found")


# -- the document ---------------------------------------------------------------------------


async def test_the_openapi_document_is_valid_openapi_3(server: TestClient) -> None:
    response = await server.get("/api/v1/openapi.json")
    assert response.status == 200
    validate(await response.json())


async def test_the_openapi_document_has_every_method_and_error(server: TestClient) -> None:
    document = await (await server.get("/api/v1/openapi.json")).json()
    assert set(document["paths"]) == {f"/api/v1/{name}" for name in METHODS}
    enum = document["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
    assert enum == list(ERRORS)
    for path in document["paths"].values():
        statuses = set(path["post"]["responses"])
        assert statuses == {"200"} | {str(status) for status, _ in ERRORS.values()}


def test_docs_api_md_lists_every_error_code_with_its_status() -> None:
    rows = table("docs/api.md", "## Errors")
    assert {code(row["error"]): int(row["status"]) for row in rows} == {
        name: status for name, (status, _) in ERRORS.items()
    }


def test_docs_api_md_lists_every_method_with_its_fields() -> None:
    rows = table("docs/api.md", "## Methods")
    assert [code(row["method"]) for row in rows] == list(METHODS)
    for row in rows:
        method = METHODS[code(row["method"])]
        for name in (*method.required, *method.optional):
            assert f"`{name}`" in row["fields"], (row["method"], name)
    assert set(FIELDS) <= {name for m in METHODS.values() for name in (*m.required, *m.optional)}


# -- the methods, on every instance ---------------------------------------------------------


async def test_publish_reaches_members_on_every_instance_marked_as_from_the_server(
    pair: Any,
) -> None:
    a, b = await pair()
    ann, bob = await joined(a, "ops", "ann"), await joined(b, "ops", "bob")
    answer = await ok(a, "publish", room="ops", text="deploy at 18:00", data={"k": [1]})
    for client in (ann, bob):
        event = await client.next_of("message")
        assert event["seq"] == answer["seq"]
        assert (event["user"], event["text"]) == ("server", "deploy at 18:00")
        assert (event["server"], event["data"]) == (True, {"k": [1]})


async def test_publish_continues_the_rooms_sequence_and_stays_in_history(pair: Any) -> None:
    a, b = await pair()
    ann = await joined(b, "ops", "ann")
    await ann.say("first")
    first = await ann.next_of("message")
    answer = await ok(a, "publish", room="ops", text="second", user="deploybot")
    assert answer == {"room": "ops", "seq": first["seq"] + 1}
    history = await ok(b, "history", room="ops", since=first["seq"])
    assert [(m["user"], m["text"]) for m in history["messages"]] == [("deploybot", "second")]


async def test_publish_to_a_room_nobody_joined_is_in_the_first_joiners_welcome(
    pair: Any,
) -> None:
    a, b = await pair()
    answer = await ok(a, "publish", room="quiet", text="hello later")
    client = Client(await b.ws_connect("/ws", params={"room": "quiet", "user": "ann"}))
    welcome = await client.next_of("welcome")
    assert [(m["seq"], m["text"]) for m in welcome["history"]] == [(answer["seq"], "hello later")]


async def test_rooms_published_into_that_nobody_joins_are_dropped_after_the_grace(
    request: pytest.FixtureRequest, pair: Any
) -> None:
    a, _ = await pair(room_grace=0.5, presence_ttl=1.0)
    orders = [f"order-{n}" for n in range(50)]
    for room in orders:
        await ok(a, "publish", room=room, text="shipped")
    hubs, broker = a.app[hubs_key], a.app[broker_key]
    assert hubs.room_count() == len(orders)
    assert len((await ok(a, "history", room="order-7"))["messages"]) == 1  # kept for the grace

    await wait_until(lambda: hubs.room_count() == 0)
    if isinstance(broker, MemoryBroker):
        assert not broker._rooms
    else:  # the keys expire after the retention: max(room grace, presence TTL)
        store = redis.Redis.from_url(request.getfixturevalue("redis_server").url)
        await wait_until(lambda: not store.keys("roomhub:{order-*"), timeout=10)
        store.close()
    assert (await ok(a, "history", room="order-7"))["messages"] == []


async def test_a_publish_that_would_open_a_room_past_the_limit_gets_503_capacity(
    pair: Any,
) -> None:
    a, _ = await pair(max_rooms=2)
    await ok(a, "publish", room="r1", text="one")
    await ok(a, "publish", room="r2", text="two")
    status, answer = await call(a, "publish", room="r3", text="three")
    assert (status, answer["error"]) == (503, "capacity")
    await ok(a, "publish", room="r1", text="an open room takes more")
    answer = await ok(a, "broadcast", rooms=["r1", "r3"], text="all")
    assert "seq" in answer["results"][0]
    assert answer["results"][1]["error"] == "capacity"


async def test_broadcast_publishes_to_each_room_with_a_result_per_room(pair: Any) -> None:
    a, b = await pair()
    ann, bob = await joined(a, "r1", "ann"), await joined(b, "r2", "bob")
    answer = await ok(a, "broadcast", rooms=["r1", "r2"], text="all hands")
    assert [r["room"] for r in answer["results"]] == ["r1", "r2"]
    for client, result in zip((ann, bob), answer["results"], strict=True):
        assert (await client.next_of("message"))["seq"] == result["seq"]


async def test_delete_tells_every_member_and_leaves_the_history_for_good(pair: Any) -> None:
    a, b = await pair()
    ann, bob = await joined(a, "ops", "ann"), await joined(b, "ops", "bob")
    await ann.say("oops")
    seq = (await ann.next_of("message"))["seq"]
    await bob.next_of("message")
    await ann.say("fine")
    # A message is in the history once it comes back (on Redis it may wait a batch window).
    assert (await ann.next_of("message"))["text"] == "fine"
    await ok(b, "delete", room="ops", seq=seq)
    for client in (ann, bob):
        event = await client.next_of("deleted")
        assert (event["room"], event["seq"]) == ("ops", seq)
    history = await ok(a, "history", room="ops")
    assert [m["text"] for m in history["messages"]] == ["fine"]
    replay = Client(
        await a.ws_connect("/ws", params={"room": "ops", "user": "cid", "since": seq - 1})
    )
    welcome = await replay.next_of("welcome")
    assert [m["text"] for m in welcome["history"]] == ["fine"]
    assert sample("chat_moderation_total", action="delete") >= 1


async def test_kick_closes_the_user_and_members_on_every_instance_see_them_leave(
    pair: Any,
) -> None:
    a, b = await pair()
    ann, eve = await joined(a, "ops", "ann"), await joined(b, "ops", "eve")
    elsewhere = await joined(a, "hall", "eve")
    answer = await ok(a, "kick", room="ops", user="EVE")
    assert answer["code"] == 4501
    assert await eve.closed() == 4501
    assert (await ann.next_of("leave"))["user"] == "eve"
    await ok(b, "publish", room="hall", text="still here")
    assert (await elsewhere.next_of("message"))["text"] == "still here"


async def test_a_kicked_user_may_join_again(pair: Any) -> None:
    a, b = await pair()
    ann, eve = await joined(b, "ops", "ann"), await joined(a, "ops", "eve")
    await ok(b, "kick", room="ops", user="eve")
    assert await eve.closed() == 4501
    await ann.next_of("leave")
    await joined(b, "ops", "eve")


async def test_disconnect_closes_the_user_in_every_room_telling_the_page_to_reconnect(
    pair: Any,
) -> None:
    a, b = await pair()
    clients = [await joined(a, "r1", "eve"), await joined(b, "r2", "eve")]
    answer = await ok(b, "disconnect", user="eve", reconnect=True, reason="new permissions")
    assert answer == {"user": "eve", "room": None, "code": 4100}
    assert [await c.closed() for c in clients] == [4100, 4100]


async def test_disconnect_in_one_room_leaves_the_others(pair: Any) -> None:
    a, b = await pair()
    gone, kept = await joined(a, "r1", "eve"), await joined(b, "r2", "eve")
    await ok(a, "disconnect", user="eve", room="r1")
    assert await gone.closed() == 4500
    await ok(a, "publish", room="r2", text="hi")
    assert (await kept.next_of("message"))["text"] == "hi"


async def upgrade_status(instance: TestClient, room: str, user: str) -> tuple[int, str]:
    response = await instance.get(
        "/ws", params={"room": room, "user": user}, headers=UPGRADE_HEADERS
    )
    body = await response.json() if response.status != 101 else {}
    response.close()
    return response.status, body.get("error", "")


async def test_ban_closes_the_user_and_refuses_joins_on_every_instance_until_it_expires(
    pair: Any,
) -> None:
    a, b = await pair()
    eve = await joined(b, "ops", "eve")
    started = time.monotonic()
    answer = await ok(a, "ban", room="ops", user="eve", duration=1.5)
    assert answer["code"] == 4502
    assert await eve.closed() == 4502
    assert await upgrade_status(a, "ops", "eve") == (403, "banned")
    assert await upgrade_status(b, "ops", "Eve") == (403, "banned")
    await joined(a, "hall", "eve")  # another room is fine
    async with asyncio.timeout(5):
        while await upgrade_status(b, "ops", "eve") == (403, "banned"):
            await asyncio.sleep(0.1)
    assert time.monotonic() - started >= 1.5
    # The probe that got its 101 joined as eve on b and leaves in the background, so the name
    # may still be held when eve comes back on a: her welcome is what shows she is let in.
    back = Client(await a.ws_connect("/ws", params={"room": "ops", "user": "eve"}))
    assert (await back.next_of("welcome"))["room"] == "ops"


async def test_unban_lifts_a_ban_without_an_end(pair: Any) -> None:
    a, b = await pair()
    await ok(a, "ban", room="ops", user="eve")
    assert await upgrade_status(b, "ops", "eve") == (403, "banned")
    assert (await ok(b, "unban", room="ops", user="eve"))["lifted"] is True
    await joined(a, "ops", "eve")
    assert (await ok(b, "unban", room="ops", user="eve"))["lifted"] is False


async def test_presence_and_rooms_count_members_over_every_instance(pair: Any) -> None:
    a, b = await pair()
    await joined(a, "ops", "ann")
    await joined(b, "ops", "bob")
    presence = await ok(b, "presence", room="ops")
    assert presence["members"] == 2
    assert sorted(presence["users"]) == ["ann", "bob"]
    assert (await ok(a, "rooms"))["rooms"] == [{"name": "ops", "members": 2}]


async def test_history_returns_the_newest_limit_above_since_oldest_first(pair: Any) -> None:
    a, b = await pair()
    seqs = [(await ok(a, "publish", room="log", text=f"m{i}"))["seq"] for i in range(5)]
    history = await ok(b, "history", room="log", since=seqs[0], limit=3)
    assert [m["text"] for m in history["messages"]] == ["m2", "m3", "m4"]


async def test_every_call_is_counted_by_method_and_result_and_timed(server: TestClient) -> None:
    before = sample("chat_api_requests_total", method="publish", result="ok")
    timed = sample("chat_api_request_seconds_count")
    await ok(server, "publish", room="a", text="x")
    assert sample("chat_api_requests_total", method="publish", result="ok") == before + 1
    assert sample("chat_api_request_seconds_count") == timed + 1


# -- the settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["short", "has a space in it 0123456789", "x" * 257])
def test_a_bad_api_key_stops_start_up_without_showing_it(raw: str) -> None:
    with pytest.raises(ConfigError, match="ROOMHUB_API_KEY") as raised:
        load_settings({"ROOMHUB_API_KEY": raw})
    assert raw not in str(raised.value)


def test_the_api_needs_the_sharded_hubs() -> None:
    with pytest.raises(ConfigError, match="ROOMHUB_HUB_MODE=global"):
        load_settings({"ROOMHUB_API_KEY": KEY, "ROOMHUB_HUB_MODE": "global"})
