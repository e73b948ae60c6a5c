"""The Redis broker's published payloads: each shape decodes to what was encoded, and the Lua
scripts, run by a real redis-server, write the shapes the reader decodes. The scripts
themselves ship as package data."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import orjson
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from server.rooms.broker import MESSAGE_PREFIX, Control, Event, scripts
from server.rooms.broker import payload as p
from server.rooms.broker.redis import candidate_names, pack
from server.wire.protocol import ChatMessage, message_event, presence_event
from tests.support.processes import RedisServer

ROOT = Path(__file__).parents[1]
events = st.builds(
    orjson.dumps, st.fixed_dictionaries({"type": st.sampled_from(["message", "bot"])})
) | st.text(min_size=1).map(lambda text: orjson.dumps({"type": "message", "text": text}))
names = st.text(max_size=32)


@given(
    kind=st.sampled_from([p.MESSAGE, p.BOT, p.PRESENCE]),
    seq=st.integers(0, 2**53),
    published=st.floats(0, 4e9),
    event=events,
)
def test_an_event_payload_decodes_to_its_event(
    kind: bytes, seq: int, published: float, event: bytes
) -> None:
    data = p.encode_event(kind, seq, published, event)
    assert p.decode_event(data) == Event(event, seq, kind != p.PRESENCE, published)


@given(
    welcome=st.builds(
        p.WelcomePayload,
        token=st.integers(0, 2**53),
        seq=st.integers(0, 2**53),
        members=st.integers(0, 10**6),
        reset=st.booleans(),
        epoch=st.from_regex(r"[0-9a-f]{12}", fullmatch=True),
        room=st.from_regex(r"[a-z0-9_-]{1,40}", fullmatch=True),
        name=names.map(orjson.dumps),
        online=st.lists(names, max_size=5),
        history=st.lists(events, max_size=5),
    )
)
def test_a_welcome_payload_decodes_to_its_welcome(welcome: p.WelcomePayload) -> None:
    assert p.decode_welcome(p.encode_welcome(welcome)) == welcome


@given(order=st.builds(Control, action=st.text(), user=names, room=st.none() | st.text(min_size=1)))
def test_a_control_payload_decodes_to_its_order(order: Control) -> None:
    assert p.decode_control(p.encode_control(order)) == order


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"action": "kick"}'])
def test_an_unreadable_control_payload_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        p.decode_control(data)


class _Int(int):
    """An int subclass: packed by the general path, as redis-py packs it."""


@given(
    args=st.lists(
        st.binary()
        | st.text()
        | st.integers()
        | st.integers().map(_Int)
        | st.floats(allow_nan=False),
        max_size=60,
    )
)
def test_a_command_is_packed_as_redis_py_packs_it(args: list[object]) -> None:
    reference = redis.connection.Connection().pack_command("ECHO", *args)
    assert pack("ECHO", *args) == b"".join(reference)


@pytest.mark.parametrize("arg", [True, None, [b"x"]])
def test_packing_an_argument_redis_cannot_take_raises_type_error(arg: object) -> None:
    with pytest.raises(TypeError, match="cannot send"):
        pack("ECHO", arg)


def test_every_script_is_package_data_found_by_importlib_resources() -> None:
    folder = resources.files("server.rooms.broker").joinpath("lua")
    shipped = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".lua"))
    assert shipped == sorted([f"{scripts.COMMON}.lua", *(f"{n}.lua" for n in scripts.SCRIPTS)])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["server.rooms.broker"]
    assert all(any(fnmatch(f"lua/{name}", glob) for glob in globs) for name in shipped)
    for name, common in scripts.SCRIPTS.items():
        assert ("local function total" in scripts.source(name)) == common


def test_the_lua_scripts_write_the_payloads_the_reader_decodes(
    redis_server: RedisServer,
) -> None:
    """JOIN into a new room publishes its epoch's notice, a welcome and a join event, SAY a
    message: each decodes to its parts."""
    client = redis.Redis(port=redis_server.port)
    listener = client.pubsub()
    listener.subscribe("roomhub:instance:i1", scripts.channel("lobby"))
    for _ in range(2):
        assert listener.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]

    join_tail = presence_event("join", "", 0).partition(b'"members":0')[2]
    join = scripts.Join(
        "lobby",
        "i1",
        7,
        30,
        join_tail,
        "1700000000.25",
        None,
        None,
        "e1",
        "roomhub:instance:i1",
        50,
        30,
        50,
        tuple(candidate_names("ann")),
    )
    assert client.register_script(scripts.source("join"))(keys=join.keys(), args=join.args()) == 1
    say_tail = message_event(0, "lobby", "ann", ChatMessage("hi", "c1"))[len(MESSAGE_PREFIX) + 1 :]
    say = scripts.Say("lobby", say_tail, "1700000001.5", 50, 30)
    assert client.register_script(scripts.source("say"))(keys=say.keys(), args=say.args()) == [1]

    published = [listener.get_message(timeout=5) for _ in range(4)]
    assert [m["channel"] for m in published] == [  # type: ignore[index]
        b"roomhub:{lobby}",
        b"roomhub:instance:i1",
        b"roomhub:{lobby}",
        b"roomhub:{lobby}",
    ]
    notice, welcome, joined, said = (m["data"] for m in published)  # type: ignore[index]
    assert p.decode_epoch(notice) == ("e1", b"roomhub:instance:i1")
    assert p.decode_welcome(welcome) == p.WelcomePayload(
        7, 0, 1, False, "e1", "lobby", b'"ann"', ["ann"], []
    )
    join_event = b'{"type":"join","user":"ann","members":1' + join_tail
    assert p.decode_event(joined) == Event(join_event, 0, False, 1700000000.25)
    assert p.decode_event(said) == Event(MESSAGE_PREFIX + b"1" + say_tail, 1, True, 1700000001.5)
    listener.close()
    client.close()


@pytest.mark.parametrize(
    ("data", "decoded"),
    [
        (b"e 0 0 Ab_9 roomhub:instance:i1", ("Ab_9", b"roomhub:instance:i1")),
        (b"e 0 0 Ab_9", ("Ab_9", b"")),  # a server API publish made it
    ],
)
def test_a_new_epoch_notice_decodes_to_its_epoch_and_channel(
    data: bytes, decoded: tuple[str, bytes]
) -> None:
    assert p.decode_epoch(data) == decoded


@pytest.mark.parametrize("data", [b"e 0 0 ", b"e 0 0", b"m 1 0 Ab_9"])
def test_a_malformed_new_epoch_notice_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        p.decode_epoch(data)
