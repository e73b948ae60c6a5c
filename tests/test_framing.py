"""RFC 6455 framing of the frames roomhub writes itself, read back by an independent strict
parser: the sans-I/O protocol of the ``websockets`` library, on the client side (RFC 6455
section 5: no mask, known opcodes, minimal-or-valid lengths, UTF-8 text, valid close codes).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

from server.web.app import create_app
from server.wire.protocol import frame_header
from tests.chat import WAIT, Client, sample, settings, upgrade_request, wait_until
from tests.support.docs import ROOT

PROTOCOL_DOC = (ROOT / "docs/protocol.md").read_text()

HEADER_BOUNDARIES = (0, 125, 126, 127, 65535, 65536, 1 << 20)
"""Payload sizes on each side of the 7-bit, 16-bit and 64-bit length forms (section 5.2)."""


def strict_read(chunks: Iterable[bytes]) -> list[Frame]:
    """The frames in ``chunks`` of a server's byte stream; fails on any framing violation."""
    client = Protocol(Side.CLIENT, max_size=None)
    for chunk in chunks:
        client.receive_data(chunk)
    assert client.parser_exc is None, client.parser_exc
    return [event for event in client.events_received() if isinstance(event, Frame)]


def length_form(size: int) -> int:
    """Bytes of the header's length fields for a payload of ``size`` bytes: 0, 2 or 8."""
    return 0 if size < 126 else 2 if size < 65536 else 8


@pytest.mark.parametrize("size", HEADER_BOUNDARIES)
def test_a_frame_of_each_boundary_size_parses_split_anywhere_in_its_header(size: int) -> None:
    payload = b"x" * size
    wire = frame_header(size) + payload
    for cut in range(0, 2 + length_form(size) + 2):
        (frame,) = strict_read([wire[:cut], wire[cut:]])
        assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, payload)


def test_frames_back_to_back_parse_from_one_stream() -> None:
    payloads = [b"[" + b"1," * (size // 2) + b"1]" for size in HEADER_BOUNDARIES]
    wire = b"".join(frame_header(len(p)) + p for p in payloads)
    frames = strict_read(chunks(wire, random.Random(0), max_chunk=70_000))
    assert [f.data for f in frames] == payloads


def chunks(data: bytes, rng: random.Random, max_chunk: int) -> list[bytes]:
    """``data`` cut at random offsets into pieces of 1..``max_chunk`` bytes."""
    out, at = [], 0
    while at < len(data):
        step = rng.randint(1, max_chunk)
        out.append(data[at : at + step])
        at += step
    return out


async def read_until(reader: asyncio.StreamReader, wire: bytearray, done: Any) -> None:
    """Append what the server sends to ``wire`` until ``done(frames)`` or EOF."""
    async with asyncio.timeout(WAIT):
        while not done(strict_read([bytes(wire)])):
            data = await reader.read(65536)
            if not data:
                return
            wire.extend(data)


def events_of(frames: list[Frame]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for frame in frames:
        if frame.opcode == Opcode.TEXT:
            data = orjson.loads(frame.data)
            events.extend(data if isinstance(data, list) else [data])
    return events


async def test_what_the_server_writes_parses_strictly_in_every_length_form_and_batched(
    aiohttp_client: Any,
) -> None:
    server: TestClient = await aiohttp_client(
        create_app(settings(rate_limit=1000.0, rate_burst=1000, fanout_interval=0.2))
    )
    ann = Client(await server.ws_connect("/ws", params={"room": "wire", "user": "ann"}))
    # 30 messages of 2000 JSON-escaped characters: a welcome over 64 KiB for the next joiner.
    for i in range(30):
        await ann.say('"' * 2000, id=f"h{i}")
    await ann.next(lambda e: e.get("id") == "h29")

    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(upgrade_request("wire", "bob"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert head.startswith(b"HTTP/1.1 101 ")
    wire = bytearray()
    await read_until(reader, wire, lambda f: any(e["type"] == "join" for e in events_of(f)))

    await ann.say("hi", id="small")
    await ann.say("m" * 300, id="medium")
    for i in range(20):  # sent together: they leave together, in array frames
        await ann.say(f"b{i}", id=f"b{i}")
    await read_until(reader, wire, lambda f: any(e.get("id") == "b19" for e in events_of(f)))

    bob = Protocol(Side.CLIENT)
    bob.send_close(1000)
    writer.write(b"".join(bob.data_to_send()))
    await read_until(reader, wire, lambda f: f and f[-1].opcode == Opcode.CLOSE)
    writer.close()
    await ann.close()

    frames = strict_read([bytes(wire)])
    assert all(f.fin and f.opcode in (Opcode.TEXT, Opcode.CLOSE) for f in frames)
    assert {length_form(len(f.data)) for f in frames} == {0, 2, 8}
    assert any(f.data.startswith(b"[") for f in frames)
    events = events_of(frames)
    welcome = events[0]
    seqs = [e["seq"] for e in welcome["history"]]
    seqs += [e["seq"] for e in events if e["type"] == "message"]
    assert seqs == list(range(1, 53))
    assert frames[-1].opcode == Opcode.CLOSE
    # The same bytes, cut at random offsets (inside headers too), read the same.
    for seed in range(3):
        again = strict_read(chunks(bytes(wire), random.Random(seed), max_chunk=9))
        assert [(f.opcode, f.data) for f in again] == [(f.opcode, f.data) for f in frames]


async def test_an_unmasked_client_frame_closes_with_1002_and_is_not_handled(
    aiohttp_client: Any,
) -> None:
    """RFC 6455 section 5.1: a server closes the connection on a frame without a mask."""
    server: TestClient = await aiohttp_client(create_app(settings()))
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(upgrade_request("masking", "u"))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    wire = bytearray()
    await read_until(reader, wire, lambda f: any(e["type"] == "welcome" for e in events_of(f)))
    body = orjson.dumps({"type": "message", "text": "unmasked", "id": "u1"})
    writer.write(frame_header(len(body)) + body)  # a server-style frame: mask bit clear
    await read_until(reader, wire, lambda f: False)  # to the server's end of the stream
    frames = strict_read([bytes(wire)])
    assert not [e for e in events_of(frames) if e.get("id") == "u1"]
    assert frames[-1].opcode == Opcode.CLOSE
    assert int.from_bytes(frames[-1].data[:2], "big") == 1002
    writer.close()


async def joined_raw(server: TestClient, room: str) -> tuple[Any, Any, bytearray]:
    """A raw TCP client upgraded into ``room`` with its welcome read; reader, writer, wire."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(upgrade_request(room, "raw"))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    wire = bytearray()
    await read_until(reader, wire, lambda f: any(e["type"] == "welcome" for e in events_of(f)))
    return reader, writer, wire


def client_frame(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=True, extensions=[])


async def test_text_that_is_not_utf8_closes_with_1007(aiohttp_client: Any) -> None:
    server: TestClient = await aiohttp_client(create_app(settings()))
    reader, writer, wire = await joined_raw(server, "utf8")
    writer.write(client_frame(Opcode.TEXT, b'{"type":"message","text":"\xff"}'))
    await read_until(reader, wire, lambda f: False)  # to the server's end of the stream
    close = strict_read([bytes(wire)])[-1]
    assert (close.opcode, int.from_bytes(close.data[:2], "big")) == (Opcode.CLOSE, 1007)
    writer.close()


async def test_a_message_in_fragments_is_handled_as_one(aiohttp_client: Any) -> None:
    server: TestClient = await aiohttp_client(create_app(settings()))
    reader, writer, wire = await joined_raw(server, "fragments")
    body = orjson.dumps({"type": "message", "text": "in three parts", "id": "f1"})
    writer.write(
        client_frame(Opcode.TEXT, body[:5], fin=False)
        + client_frame(Opcode.PING, b"between")  # control frames may come between fragments
        + client_frame(Opcode.CONT, body[5:20], fin=False)
        + client_frame(Opcode.CONT, body[20:])
    )
    await read_until(reader, wire, lambda f: any(e.get("id") == "f1" for e in events_of(f)))
    frames = strict_read([bytes(wire)])
    (echo,) = [e for e in events_of(frames) if e.get("id") == "f1"]
    assert echo["text"] == "in three parts"
    assert (Opcode.PONG, b"between") in [(f.opcode, f.data) for f in frames]
    writer.close()


async def test_a_message_sent_with_the_upgrade_request_is_broadcast_after_the_welcome(
    aiohttp_client: Any,
) -> None:
    server: TestClient = await aiohttp_client(create_app(settings()))
    reader, writer = await asyncio.open_connection(server.host, server.port)
    early = [
        orjson.dumps({"type": "message", "text": f"early {i}", "id": f"e{i}"}) for i in range(3)
    ]
    writer.write(
        upgrade_request("early", "eve") + b"".join(client_frame(Opcode.TEXT, m) for m in early)
    )
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    wire = bytearray()
    await read_until(reader, wire, lambda f: any(e.get("id") == "e2" for e in events_of(f)))
    events = events_of(strict_read([bytes(wire)]))
    assert events[0]["type"] == "welcome"
    assert [e["text"] for e in events if e["type"] == "message"] == [
        "early 0",
        "early 1",
        "early 2",
    ]
    writer.close()


async def test_a_close_frame_between_fragments_is_answered_1002_and_counted_as_protocol_error(
    aiohttp_client: Any,
) -> None:
    """RFC 6455 section 5.4: a fragmented message may be interleaved with control frames, but
    a close frame before its last fragment leaves it incomplete: a protocol error."""
    server: TestClient = await aiohttp_client(create_app(settings()))
    reader, writer, wire = await joined_raw(server, "interrupted")
    closed = "chat_connections_closed_total"
    before = {label: sample(closed, reason=label) for label in ("normal", "protocol_error")}
    writer.write(
        client_frame(Opcode.TEXT, b'{"type":"mess', fin=False)
        + client_frame(Opcode.CLOSE, (1000).to_bytes(2, "big"))
    )
    await read_until(reader, wire, lambda f: False)  # to the server's end of the stream
    close = strict_read([bytes(wire)])[-1]
    assert (close.opcode, int.from_bytes(close.data[:2], "big")) == (Opcode.CLOSE, 1002)
    await wait_until(lambda: sample(closed, reason="protocol_error") > before["protocol_error"])
    assert sample(closed, reason="protocol_error") == before["protocol_error"] + 1
    assert sample(closed, reason="normal") == before["normal"]
    writer.close()
