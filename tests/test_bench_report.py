"""bench.report: the idle-connection probes, their allocation sites and the memory target."""

from __future__ import annotations

from bench.idle import IdleMemory, Site
from bench.report import ModeResult, render

KIB, MIB = 1024, 1024 * 1024


def report(*per_connection_kib: float) -> str:
    idle = [
        IdleMemory(n, 40 * MIB, 40 * MIB + int(n * kib * KIB))
        for n, kib in zip((1000, 10_000), per_connection_kib, strict=False)
    ]
    sites = (16_000.0, [Site("server/connection.py:96", "self.outbox = deque()", 760.0, 2.0)])
    return render([ModeResult("sharded", idle, sites, [])], {"profile": "full"})


def test_each_idle_count_has_its_line_and_target() -> None:
    text = report(11.5, 12.5)
    assert "**11.5 KiB per idle connection**" in text
    assert "| RSS per idle connection <= 12 KiB at 1,000 | 11.5 | met |" in text
    assert "| RSS per idle connection <= 12 KiB at 10,000 | 12.5 | **missed** |" in text


def test_allocation_sites_are_listed_per_connection() -> None:
    text = report(18.0)
    assert "16,000 traced bytes each" in text
    assert "| `server/connection.py:96` | `self.outbox = deque()` | 760 | 2.00 |" in text
