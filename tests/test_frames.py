"""Inbound frames (RFC 6455 section 5.2): the splitter alone, and a connection reading a
client's stream however it is cut, the common frame taken at once and every other frame
judged by the ``websockets`` protocol."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import socket
from collections.abc import AsyncIterator, Iterable

from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side
from websockets.speedups import apply_mask

from server.transport.connection import READ_LIMIT_FACTOR, Connection
from server.transport.frames import split
from server.wire.protocol import CloseReason
from tests.chat import WAIT, settings

KEY = b"\x0f\x1e\x2d\x3c"
LIMIT = READ_LIMIT_FACTOR * settings().max_msg_size
"""The connection's read limit: the longest payload a frame may announce (bytes)."""


def wire(head: int, payload: bytes, *, mask: bool = True, length: int | None = None) -> bytes:
    """A client frame with byte 0 ``head``, its length in the shortest form, masked with
    ``KEY`` unless ``mask`` is False; ``length`` overrides the announced length."""
    size = len(payload) if length is None else length
    if size < 126:
        lengths = bytes([size])
    elif size < 65536:
        lengths = bytes([126]) + size.to_bytes(2, "big")
    else:
        lengths = bytes([127]) + size.to_bytes(8, "big")
    if not mask:
        return bytes([head]) + lengths + payload
    return bytes([head, lengths[0] | 0x80]) + lengths[1:] + KEY + apply_mask(payload, KEY)


def close_payload(code: int) -> bytes:
    return code.to_bytes(2, "big")


def split_all(chunks: Iterable[bytes], limit: int = LIMIT) -> list[bytes]:
    """The whole frames in ``chunks`` (each as its bytes), read as a connection reads them:
    a partial frame is kept and the next chunk appended to it."""
    found: list[bytes] = []
    held = b""
    for chunk in chunks:
        held += chunk
        frames, rest, refused = split(held, limit)
        assert not refused
        found += [held[start:end] for _, start, _, end in frames]
        held = held[rest:]
    assert held == b""
    return found


frame_specs = st.lists(
    st.tuples(
        st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA]),
        st.booleans(),  # FIN
        st.sampled_from([0, 0x40]),  # RSV1: the splitter leaves it to the protocol
        st.sampled_from([0, 1, 125, 126, 127, 65535, 65536]),
    ),
    max_size=5,
)


@given(frame_specs, st.lists(st.integers(0, 1 << 17), max_size=6))
def test_split_finds_the_same_whole_frames_however_the_stream_is_cut(
    specs: list[tuple[int, bool, int, int]], cuts: list[int]
) -> None:
    frames = [wire(op | (0x80 if fin else 0) | rsv, b"x" * size) for op, fin, rsv, size in specs]
    stream = b"".join(frames)
    bounds = [0, *sorted(min(cut, len(stream)) for cut in cuts), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    assert split_all(chunks) == frames


def test_split_reads_the_7_16_and_64_bit_length_forms() -> None:
    sizes = [125, 126, 65535, 65536]
    stream = b"".join(wire(0x81, b"y" * size) for size in sizes)
    frames, rest, refused = split(stream, LIMIT)
    assert [end - body for _, _, body, end in frames] == sizes
    assert [body - start for _, start, body, _ in frames] == [6, 8, 8, 14]
    assert (rest, refused) == (len(stream), False)


def test_split_refuses_a_header_over_the_limit_before_its_payload_arrives() -> None:
    before = wire(0x81, b"ok")
    stream = before + wire(0x81, b"", length=LIMIT + 1)
    frames, rest, refused = split(stream, LIMIT)
    assert ([end for *_, end in frames], rest, refused) == ([len(before)], len(before), True)


def test_split_refuses_an_unmasked_frame_and_an_unknown_opcode_at_their_first_two_bytes() -> None:
    assert split(wire(0x81, b"x" * 50, mask=False)[:2], LIMIT) == ([], 0, True)
    assert split(wire(0x83, b"x" * 50)[:2], LIMIT) == ([], 0, True)


class Recorder:
    """A dispatcher that records what a connection hands it."""

    def __init__(self) -> None:
        self.settings = settings()
        self.seen: list[tuple[str, str | None]] = []
        self.ends: list[CloseReason] = []

    def on_message(self, conn: Connection, text: str | None) -> None:
        self.seen.append(("message", text))

    def on_ping(self, conn: Connection) -> None:
        self.seen.append(("ping", None))

    def on_end(self, conn: Connection, reason: CloseReason, code: int | None) -> None:
        self.ends.append(reason)


@dataclasses.dataclass
class Read:
    """What a connection made of a client's stream: what it handled, the frames it answered
    with (opcode and payload, read by a client-side ``websockets`` protocol), why it ended."""

    seen: list[tuple[str, str | None]]
    answers: list[tuple[Opcode, bytes]]
    ends: list[CloseReason]


@contextlib.asynccontextmanager
async def opened() -> AsyncIterator[tuple[Connection, Recorder, socket.socket]]:
    """An open connection over a socket pair, its recorder and the client's end; lost after."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    recorder = Recorder()
    conn = Connection(recorder, transport, room="r", user="u")
    conn.connection_made(transport)
    try:
        yield conn, recorder, theirs
    finally:
        conn.connection_lost(None)
        transport.abort()
        theirs.close()


async def read(chunks: Iterable[bytes]) -> Read:
    """Feed ``chunks`` to a fresh connection and read its answers until it ends TCP."""
    loop = asyncio.get_running_loop()
    client = Protocol(Side.CLIENT, max_size=None)
    async with opened() as (conn, recorder, theirs):
        for chunk in chunks:
            conn.data_received(chunk)
        async with asyncio.timeout(WAIT):
            while data := await loop.sock_recv(theirs, 65536):
                client.receive_data(data)
    answers = [e for e in client.events_received() if isinstance(e, Frame)]
    return Read(recorder.seen, [(f.opcode, bytes(f.data)) for f in answers], recorder.ends)


MIXED = [
    wire(0x81, b"hello"),
    wire(0x82, b"\x00\x01"),
    wire(0x01, b"frag"),  # a text message in two fragments, a ping between them
    wire(0x89, b"p1"),
    wire(0x80, b"mented"),
    wire(0x81, "é".encode() * 70),  # a 16-bit length
    wire(0x8A, b"unsolicited pong"),
    wire(0x88, close_payload(1000)),
]
MIXED_READ = (
    [
        ("message", "hello"),
        ("message", None),
        ("ping", None),
        ("message", "fragmented"),
        ("message", "é" * 70),
    ],
    [(Opcode.PONG, b"p1"), (Opcode.CLOSE, close_payload(1000))],
)


async def test_a_mixed_stream_in_one_chunk_is_handled_in_order_and_answered() -> None:
    got = await read([b"".join(MIXED)])
    assert (got.seen, got.answers) == MIXED_READ
    assert got.ends == [CloseReason.NORMAL]


async def test_a_mixed_stream_cut_at_any_byte_reads_the_same_as_in_one_chunk() -> None:
    stream = b"".join(MIXED)
    for cut in range(1, len(stream)):
        got = await read([stream[:cut], stream[cut:]])
        assert (got.seen, got.answers) == MIXED_READ, cut


async def test_a_mixed_stream_sent_byte_by_byte_reads_the_same_as_in_one_chunk() -> None:
    stream = b"".join(MIXED)
    got = await read([stream[i : i + 1] for i in range(len(stream))])
    assert (got.seen, got.answers) == MIXED_READ


async def test_a_data_frame_after_a_close_frame_is_not_handled() -> None:
    got = await read(
        [wire(0x81, b"before") + wire(0x88, close_payload(1000)) + wire(0x81, b"after")]
    )
    assert got.seen == [("message", "before")]
    assert got.answers == [(Opcode.CLOSE, close_payload(1000))]


async def test_a_whole_message_between_fragments_closes_with_1002_and_is_not_handled() -> None:
    """RFC 6455 section 5.4: only control frames may come between a message's fragments."""
    got = await read([wire(0x01, b"frag") + wire(0x81, b"whole") + wire(0x80, b"ment")])
    assert got.seen == []
    assert [(op, data[:2]) for op, data in got.answers] == [(Opcode.CLOSE, close_payload(1002))]


async def test_a_header_over_the_read_limit_closes_with_1009_before_its_payload() -> None:
    got = await read([wire(0x81, b"first") + wire(0x81, b"", length=LIMIT + 1)])
    assert got.seen == [("message", "first")]
    assert [(op, data[:2]) for op, data in got.answers] == [(Opcode.CLOSE, close_payload(1009))]
    assert got.ends == [CloseReason.TOO_BIG]


async def test_after_a_refused_header_nothing_more_is_handled() -> None:
    refused = wire(0x81, b"", length=LIMIT + 1)
    got = await read([refused[:3], refused[3:], wire(0x81, b"late")])
    assert got.seen == []


async def test_an_unmasked_frame_closes_with_1002_and_is_not_handled() -> None:
    got = await read([wire(0x81, b"plain", mask=False)])
    assert got.seen == []
    assert [(op, data[:2]) for op, data in got.answers] == [(Opcode.CLOSE, close_payload(1002))]
    assert got.ends == [CloseReason.PROTOCOL_ERROR]


async def test_a_frame_with_a_reserved_bit_closes_with_1002_and_is_not_handled() -> None:
    got = await read([wire(0xC1, b"rsv1")])  # FIN, RSV1, text: no extension was agreed
    assert got.seen == []
    assert [(op, data[:2]) for op, data in got.answers] == [(Opcode.CLOSE, close_payload(1002))]


async def test_an_unknown_opcode_closes_with_1002_and_is_not_handled() -> None:
    got = await read([wire(0x83, b"three")])
    assert got.seen == []
    assert [(op, data[:2]) for op, data in got.answers] == [(Opcode.CLOSE, close_payload(1002))]


async def test_text_that_is_not_utf8_closes_with_1007_and_later_frames_are_not_handled() -> None:
    got = await read([wire(0x81, b"\xff") + wire(0x81, b"after")])
    assert got.seen == []
    assert [(op, data[:2]) for op, data in got.answers] == [(Opcode.CLOSE, close_payload(1007))]


async def test_a_partial_frame_is_held_until_the_rest_arrives() -> None:
    frame = wire(0x81, b"held")
    async with opened() as (conn, recorder, _):
        conn.data_received(frame[:-1])
        assert recorder.seen == []
        conn.data_received(frame[-1:])
        assert recorder.seen == [("message", "held")]
