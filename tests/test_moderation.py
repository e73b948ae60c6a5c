"""Moderators in the page: with token auth, a ``roles: ["mod"]`` claim lets a member delete any
message and kick or ban over the WebSocket (``delete``, ``kick``, ``ban`` frames, checked
server-side); everyone else may delete only their own messages. With the memory broker and
with two instances on a real ``redis-server``."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from server.web.app import create_app
from server.web.auth import mint_token
from server.web.keys import broker_key
from tests.chat import UPGRADE_HEADERS, Client, sample, settings, wait_until

SECRET = "moderation-test-secret-0123456789abcdef"


def token(sub: str, *roles: str) -> str:
    return mint_token(sub, 3600, secret=SECRET, roles=list(roles) or None)


@pytest.fixture(params=["memory", "redis"])
def pair(request: pytest.FixtureRequest, aiohttp_client: Any):
    """Two token-auth instances: the same one with the memory broker, two on one Redis."""

    async def make() -> tuple[TestClient, TestClient]:
        common: dict[str, Any] = {"auth": "token", "token_secret": SECRET}
        if request.param == "memory":
            one = await aiohttp_client(create_app(settings(**common)))
            return one, one
        url = request.getfixturevalue("redis_server").url
        instances = []
        for _ in range(2):
            instance = await aiohttp_client(create_app(settings(broker=url, **common)))
            await wait_until(lambda i=instance: i.app[broker_key].ready)
            instances.append(instance)
        return instances[0], instances[1]

    return make


async def joined(instance: TestClient, room: str, sub: str, *roles: str) -> Client:
    client = Client(
        await instance.ws_connect("/ws", params={"room": room, "token": token(sub, *roles)})
    )
    await client.next_of("welcome")
    await client.next(lambda e: e["type"] == "join" and e["user"] == sub)
    return client


async def send(client: Client, **frame: Any) -> None:
    await client.ws.send_json(frame)


async def said(client: Client, text: str) -> int:
    await client.say(text)
    return int((await client.next(lambda e: e.get("text") == text))["seq"])


async def test_a_moderator_deletes_anyones_message_for_members_on_every_instance(
    pair: Any,
) -> None:
    a, b = await pair()
    mod, ann = await joined(a, "ops", "mia", "mod"), await joined(b, "ops", "ann")
    seq = await said(ann, "spam")
    before = sample("chat_moderation_total", action="delete")
    await send(mod, type="delete", seq=seq)
    for client in (mod, ann):
        assert (await client.next_of("deleted"))["seq"] == seq
    assert sample("chat_moderation_total", action="delete") == before + 1


async def test_a_member_deletes_their_own_message(pair: Any) -> None:
    a, b = await pair()
    ann, bob = await joined(a, "ops", "ann"), await joined(b, "ops", "bob")
    seq = await said(ann, "typo")
    await send(ann, type="delete", seq=seq)
    assert (await bob.next_of("deleted"))["seq"] == seq


async def test_a_member_may_not_delete_someone_elses_message(pair: Any) -> None:
    a, b = await pair()
    ann, bob = await joined(a, "ops", "ann"), await joined(b, "ops", "bob")
    seq = await said(ann, "mine")
    await send(bob, type="delete", seq=seq, id="d1")
    error = await bob.next_of("error")
    assert (error["code"], error["detail"], error["reply_to"]) == (
        "not_allowed",
        "you may delete only your own messages",
        "d1",
    )


async def test_a_moderator_deleting_a_message_no_longer_kept_gets_not_found(pair: Any) -> None:
    a, _ = await pair()
    mod = await joined(a, "ops", "mia", "mod")
    await send(mod, type="delete", seq=999999, id="d2")
    error = await mod.next_of("error")
    assert (error["code"], error["detail"]) == (
        "not_found",
        "no message 999999 in this room's history",
    )


@pytest.mark.parametrize("action", ["kick", "ban"])
async def test_a_member_may_not_kick_or_ban(pair: Any, action: str) -> None:
    a, b = await pair()
    ann, bob = await joined(a, "ops", "ann"), await joined(b, "ops", "bob")
    await send(bob, type=action, user="ann")
    assert (await bob.next_of("error"))["code"] == "not_allowed"
    await bob.say("still here")
    assert (await ann.next_of("message"))["text"] == "still here"


async def test_a_moderator_kicks_a_member_on_another_instance(pair: Any) -> None:
    a, b = await pair()
    mod, eve = await joined(a, "ops", "mia", "mod"), await joined(b, "ops", "eve")
    await send(mod, type="kick", user="eve")
    assert await eve.closed() == 4501
    assert (await mod.next_of("leave"))["user"] == "eve"


async def test_a_moderators_ban_closes_and_refuses_the_member_on_both_instances(
    pair: Any,
) -> None:
    a, b = await pair()
    mod, eve = await joined(a, "ops", "mia", "mod"), await joined(b, "ops", "eve")
    await send(mod, type="ban", user="eve", duration=60)
    assert await eve.closed() == 4502
    for instance in (a, b):
        response = await instance.get(
            "/ws", params={"room": "ops", "token": token("eve")}, headers=UPGRADE_HEADERS
        )
        assert response.status == 403
        assert (await response.json())["error"] == "banned"


async def test_a_token_with_roles_that_are_not_a_list_is_refused(pair: Any) -> None:
    a, _ = await pair()
    claims = jwt.decode(token("eve"), SECRET, algorithms=["HS256"]) | {"roles": "mod"}
    response = await a.get(
        "/ws",
        params={"room": "ops", "token": jwt.encode(claims, SECRET, algorithm="HS256")},
        headers=UPGRADE_HEADERS,
    )
    assert response.status == 401
    assert (await response.json())["error"] == "token_invalid"
