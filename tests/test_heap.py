"""server.ops.heap: glibc's heap statistics, the trim that gives free pages back, and the release
of what closed connections leave behind."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any

import pytest

from server.ops import heap
from server.web import app as app_module
from server.web.app import create_app
from tests.chat import Client, settings
from tests.support.docs import ROOT

MIB = 1024 * 1024


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_glibc_malloc_is_found_here() -> None:
    assert heap.AVAILABLE


def test_trim_gives_back_free_space_between_blocks_still_in_use() -> None:
    blocks = [bytes(4000) for _ in range(16_384)]  # 64 MiB of malloc chunks, one after another
    survivors = blocks[::64]  # one in 64 stays: the free space lies between them, not on top
    del blocks
    kept = heap.heap_stats().kept
    before = rss()
    heap.trim()
    assert kept >= 48 * MIB
    assert before - rss() >= 32 * MIB
    assert len(survivors) == 256


def test_release_frees_reference_cycles() -> None:
    class Node:
        pass

    gc.collect()
    for _ in range(100):
        a, b = Node(), Node()
        a.other, b.other = b, a
    del a, b
    assert heap.release() >= 200


async def test_a_closed_connection_leaves_garbage_that_the_app_releases(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app_module, "RELEASE_AFTER_CLOSES", 1)
    caplog.set_level(logging.DEBUG, logger="roomhub.app")
    server = await aiohttp_client(create_app(settings()))
    gc.disable()  # only the app's release may collect
    try:
        client = Client(await server.ws_connect("/ws", params={"room": "heap", "user": "ann"}))
        await client.next_of("welcome")
        await client.close()
        async with asyncio.timeout(10):
            while not (released := [r for r in caplog.records if r.msg == "heap_released"]):
                await asyncio.sleep(0.05)
    finally:
        gc.enable()
    assert released[0].fields["garbage"] > 0


def test_the_memory_doc_states_the_release_rule_the_app_follows() -> None:
    text = " ".join((ROOT / "docs" / "memory.md").read_text().split())
    rule = (
        f"once {app_module.RELEASE_AFTER_CLOSES} connections, or a quarter of those open if that"
        f" is more, have closed since the last release (it looks every"
        f" {app_module.RELEASE_CHECK:g} s), or {app_module.RELEASE_INTERVAL:g} s after any close"
    )
    assert rule in text
