"""Memory that closed connections leave behind, and the C heap (glibc malloc) it lives in.

A closed connection's objects are not all freed when it closes: on Python 3.11 each asyncio
socket transport references itself through a bound method (CPython gh-100348, fixed in 3.12),
and so does anything else caught in a reference cycle. Only the cyclic garbage collector
frees them, and its full collections come rarely when the number of objects stays flat, as
it does while users come and go. So :func:`release` collects, then trims.

Run with ``PYTHONMALLOC=malloc`` (as the container image does, docs/memory.md), every Python
object lives in glibc's heap. Freed memory stays in glibc's free lists, scattered between
the survivors where glibc's own trimming (top of the heap only) never reaches it.
``malloc_trim(0)`` hands back every whole free page anywhere in the heap (glibc 2.8+,
malloc_trim(3)).

``mallinfo2()`` (glibc 2.33+, mallinfo(3)) gives ``chat_heap_bytes``: ``in_use`` is
``uordblks + hblkhd`` (chunks handed out, including mmapped ones), ``kept`` is ``fordblks``
(free chunks still mapped). Python's default small-object allocator (pymalloc) takes its
1 MiB arenas from ``mmap`` directly: they are in neither figure, and never trimmed.

Elsewhere (musl, macOS) ``AVAILABLE`` is False and none of this runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HeapStats:
    """``in_use``: bytes allocated and not freed; ``kept``: bytes free but still mapped."""

    in_use: int
    kept: int


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "mallinfo2") or not hasattr(libc, "malloc_trim"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


_LIBC = _libc()
AVAILABLE = _LIBC is not None
"""True where malloc is glibc's (2.33+): the stats and the trim work."""


def heap_stats() -> HeapStats:
    """The C heap now. Raises ``RuntimeError`` when not ``AVAILABLE``."""
    if _LIBC is None:
        raise RuntimeError("glibc malloc statistics are not available here")
    info = _LIBC.mallinfo2()
    return HeapStats(info.uordblks + info.hblkhd, info.fordblks)


def trim() -> bool:
    """``malloc_trim(0)``: give every whole free page back to the OS; True if any was.

    Raises ``RuntimeError`` when not ``AVAILABLE``.
    """
    if _LIBC is None:
        raise RuntimeError("glibc malloc_trim is not available here")
    return bool(_LIBC.malloc_trim(0))


def release() -> int:
    """Free the cyclic garbage that closed connections leave (``gc.collect()``), then give the
    heap's whole free pages back (:func:`trim`, where ``AVAILABLE``). Returns the number of
    unreachable objects found. Takes the event loop for ~20-50 ns per tracked object alive.
    """
    found = gc.collect()
    if AVAILABLE:
        trim()
    return found
