"""Splitting a client's byte stream into whole WebSocket frames (RFC 6455 section 5.2).

:func:`split` reads frame headers only, so that a connection can take the common frame, one
whole masked text or binary message, off the stream itself and hand every other frame to the
``websockets`` Sans-I/O protocol whole (:mod:`.connection`). It stops at a header that
protocol fails the connection on as soon as it has read it: an opcode RFC 6455 does not
define (section 5.2), a frame without a mask (section 5.1: a client masks every frame), or
a payload longer than the reader's limit; from there on the protocol reads the stream.

The header (section 5.2): byte 0 holds FIN (0x80), RSV1-3 (0x70) and the opcode (0x0F);
byte 1 the MASK bit (0x80) and a 7-bit payload length, where 126 means a 16-bit length
follows and 127 a 64-bit one (network byte order); then the 4-byte masking key.
"""

from __future__ import annotations

__all__ = ["BINARY_MESSAGE", "TEXT_MESSAGE", "Span", "split"]

TEXT_MESSAGE = 0x81
"""Byte 0 of a whole text message in one frame: FIN set, RSV1-3 clear, opcode 0x1."""

BINARY_MESSAGE = 0x82
"""Byte 0 of a whole binary message in one frame: FIN set, RSV1-3 clear, opcode 0x2."""

OPCODES = frozenset((0x0, 0x1, 0x2, 0x8, 0x9, 0xA))
"""The opcodes RFC 6455 section 5.2 defines: continuation, text, binary, close, ping, pong."""

Span = tuple[int, int, int, int]
"""One whole frame in a buffer: its byte 0 (FIN, RSV1-3, opcode), the offset where it starts,
the offset of its payload (after the masking key) and the offset just past it."""


def split(data: bytes | bytearray, max_size: int) -> tuple[list[Span], int, bool]:
    """The whole client frames at the start of ``data``, the offset where the bytes after them
    start, and whether those bytes start with a refused header.

    ``max_size`` is the longest payload (bytes) a frame may announce. Splitting stops at the
    first frame that is not whole yet (the bytes after the whole frames are its start, possibly
    none) and at the first refused header: an unknown opcode, no mask, or a payload over
    ``max_size``, which the protocol fails on at sight and which it is handed with everything
    after it. A frame with RSV bits set, or a control frame that breaks section 5.5, is whole
    like any other: judging it is the protocol's job. Never raises. (A plain tuple, not a
    NamedTuple: making one of those costs about 0.3 µs, a quarter of this whole function.)
    """
    frames: list[Span] = []
    size = len(data)
    at = 0
    while size - at >= 2:
        head, second = data[at], data[at + 1]
        if head & 0x0F not in OPCODES or not second & 0x80:
            return frames, at, True
        length = second & 0x7F
        if length < 126:
            body = at + 6
        elif length == 126:
            if size - at < 4:
                break
            length = int.from_bytes(data[at + 2 : at + 4], "big")
            body = at + 8
        else:
            if size - at < 10:
                break
            length = int.from_bytes(data[at + 2 : at + 10], "big")
            body = at + 14
        if length > max_size:
            return frames, at, True
        end = body + length
        if end > size:
            break
        frames.append((head, at, body, end))
        at = end
    return frames, at, False
