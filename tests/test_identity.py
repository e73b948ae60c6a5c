"""Who is who (protocol v1, in process): distinct names per room, the online list, who asked."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.ops.config import Settings
from server.rooms.baseline import Room
from server.rooms.items import Join
from server.rooms.names import ONLINE_LIMIT, SUFFIX_LIMIT
from tests.chat import HUB_MODES, Client
from tests.support.promql import ROOT


@dataclass(eq=False)
class Member:
    """What a room needs of a connection to name it and welcome it."""

    user: str
    dispatcher: Any = field(default_factory=lambda: SimpleNamespace(settings=Settings()))

    def rename(self, user: str) -> None:
        self.user = user


async def welcomed(server: TestClient, room: str, user: str) -> tuple[Client, dict[str, Any]]:
    ws = await server.ws_connect("/ws", params={"room": room, "user": user})
    client = Client(ws)
    return client, await client.next_of("welcome")


@pytest.mark.parametrize("hub_mode", HUB_MODES)
async def test_a_name_already_in_the_room_gets_the_next_free_suffix(
    make_server: Any, hub_mode: str
) -> None:
    server = await make_server(hub_mode=hub_mode)
    names = [(await welcomed(server, "dup", want))[1]["user"] for want in ("alice",) * 3]
    assert names == ["alice", "alice-2", "alice-3"]


@pytest.mark.parametrize("hub_mode", HUB_MODES)
async def test_the_bots_name_and_the_api_senders_are_taken_in_every_room(
    make_server: Any, hub_mode: str
) -> None:
    server = await make_server(hub_mode=hub_mode)
    names = [(await welcomed(server, "new", want))[1]["user"] for want in ("StockBot", "server")]
    assert names == ["StockBot-2", "server-2"]


async def test_names_differing_only_in_case_or_width_are_the_same_name(make_server: Any) -> None:
    server = await make_server()
    await welcomed(server, "dup", "Alice")
    _, lower = await welcomed(server, "dup", "alice")
    fullwidth = "\uff41\uff4c\uff49\uff43\uff45"  # NFKC makes it "alice"
    _, wide = await welcomed(server, "dup", fullwidth)
    assert (lower["user"], wide["user"]) == ("alice-2", fullwidth + "-3")


async def test_the_same_name_in_another_room_is_free(make_server: Any) -> None:
    server = await make_server()
    await welcomed(server, "one", "alice")
    _, other = await welcomed(server, "two", "alice")
    assert other["user"] == "alice"


async def test_a_suffixed_name_is_cut_to_32_characters(make_server: Any) -> None:
    server = await make_server()
    await welcomed(server, "dup", "x" * 32)
    _, second = await welcomed(server, "dup", "x" * 32)
    assert second["user"] == "x" * 30 + "-2"


async def test_a_name_is_free_again_once_its_holder_left(make_server: Any) -> None:
    server = await make_server()
    first, _ = await welcomed(server, "dup", "alice")
    watcher, _ = await welcomed(server, "dup", "bob")
    await first.close()
    await watcher.next(lambda e: e["type"] == "leave" and e["user"] == "alice")
    _, again = await welcomed(server, "dup", "alice")
    assert again["user"] == "alice"


async def test_messages_and_presence_carry_the_name_the_server_gave(make_server: Any) -> None:
    server = await make_server()
    first, _ = await welcomed(server, "dup", "alice")
    second, _ = await welcomed(server, "dup", "alice")
    join = await first.next(lambda e: e["type"] == "join" and e["user"] != "alice")
    assert join["user"] == "alice-2"
    await second.say("hi", id="s-1")
    message = await first.next_of("message")
    assert (message["user"], message["id"]) == ("alice-2", "s-1")


@pytest.mark.parametrize("hub_mode", HUB_MODES)
async def test_welcome_lists_the_members_online_in_join_order(
    make_server: Any, hub_mode: str
) -> None:
    server = await make_server(hub_mode=hub_mode)
    for name in ("ann", "bob"):
        await welcomed(server, "who", name)
    _, welcome = await welcomed(server, "who", "cy")
    assert (welcome["online"], welcome["members"]) == (["ann", "bob", "cy"], 3)


async def test_welcome_lists_at_most_the_first_online_limit_names(
    make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "server.rooms.names.ONLINE_LIMIT", 3
    )  # the test client opens at most 100 sockets
    server = await make_server()
    for n in range(3):
        await welcomed(server, "big", f"u{n}")
    _, welcome = await welcomed(server, "big", "last")
    assert (welcome["online"], welcome["members"]) == (["u0", "u1", "u2"], 4)


async def test_bot_reply_names_the_asker_and_says_a_sim_price_is_simulated(
    make_server: Any,
) -> None:
    server = await make_server(quote_provider="sim")
    await welcomed(server, "market", "alice")
    asker, _ = await welcomed(server, "market", "alice")
    await asker.say("/stock=aapl", id="q1")
    reply = await asker.next_of("bot")
    assert (reply["asker"], reply["reply_to"], reply["ok"]) == ("alice-2", "q1", True)
    assert reply["text"].endswith(" per share (simulated price, not a market quote)")


def test_docs_state_the_online_limit_the_server_uses() -> None:
    assert ONLINE_LIMIT == 100
    assert f"at most the first {ONLINE_LIMIT} " in (ROOT / "docs" / "protocol.md").read_text()
    assert f"(the first {ONLINE_LIMIT} names" in (ROOT / "README.md").read_text()


def test_past_the_suffix_limit_a_taken_name_gets_a_random_suffix() -> None:
    full = Room("r", 1)
    for _ in range(SUFFIX_LIMIT):
        full.join(Join(Member("alice")))  # type: ignore[arg-type]
    assert "alice-100" in {member.user for member in full.members}
    late = Member("alice")
    full.join(Join(late))  # type: ignore[arg-type]
    assert re.fullmatch(r"alice-[0-9a-f]{6}", late.user)
    assert f"`NAME-{SUFFIX_LIMIT}`" in (ROOT / "docs" / "protocol.md").read_text()
