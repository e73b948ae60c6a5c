"""bench.soak_report: the moments, the slope after warm-up and the soak targets."""

from __future__ import annotations

import pytest

from bench.soak import SETTLE_SECONDS
from bench.soak_report import (
    MAX_END_RATIO,
    MAX_GONE_RATIO,
    MAX_SLOPE,
    WARMUP_RECONNECTS,
    Sample,
    SoakResult,
    moments,
    render,
    slope,
)
from tests.support.docs import ROOT

MIB = 1024 * 1024
ENV = {"VUS": "200", "DURATION": "4m", "SESSION": "10s"}


def sample(seconds: float, reconnects: int, connections: int, rss: int, rooms: int = 10) -> Sample:
    return Sample(seconds, reconnects, connections, rooms, rss, 30 * MIB, 1 * MIB)


def soak(per_reconnect: float, gone_rss: int) -> SoakResult:
    """Idle at 40 MiB, 200 users from 2 s, 20 reconnects per second for 240 s, RSS 55 MiB
    at 2,000 reconnects then ``per_reconnect`` bytes more per reconnect; gone at 260 s."""
    samples = [sample(0, 0, 0, 40 * MIB, rooms=0)]
    for t in range(2, 242, 2):
        reconnects = 200 + 20 * (t - 2)
        grown = max(reconnects - 2000, 0) * per_reconnect
        samples.append(sample(t, reconnects, 200, int(55 * MIB + grown)))
    samples.append(sample(250, 5000, 0, 50 * MIB, rooms=0))
    samples.append(sample(275, 5000, 0, gone_rss, rooms=0))
    return SoakResult(ENV, "PYTHONMALLOC=malloc", samples, 200, 250.0, 0, [])


def test_slope_is_bytes_of_rss_per_reconnect() -> None:
    points = [sample(t, 1000 * t, 200, 50 * MIB + 300 * 1000 * t) for t in range(5)]
    assert slope(points) == pytest.approx(300)


def test_slope_needs_three_samples_with_reconnects_between_them() -> None:
    assert slope([sample(0, 0, 0, MIB), sample(1, 10, 0, 2 * MIB)]) is None
    assert slope([sample(t, 7, 0, t * MIB) for t in range(3)]) is None


def test_moments_pick_connected_after_30_s_and_warm_up_at_2000_reconnects() -> None:
    m = moments(soak(0, 50 * MIB))
    assert m.idle.seconds == 0
    assert m.connected is not None and m.connected.seconds == 32
    assert m.warmup is not None and m.warmup.reconnects >= 2000 > m.warmup.reconnects - 40
    assert [label for label, _ in m.marks] == ["1 min", "2 min", "3 min"]
    assert m.gone.seconds == 275


def test_a_flat_soak_meets_both_targets() -> None:
    report = render(soak(100, 50 * MIB))
    assert "0.10 KiB" in report
    assert "**missed**" not in report
    assert report.count("| met |") == 2


def test_creep_after_warm_up_and_memory_kept_after_everyone_left_are_missed() -> None:
    report = render(soak(1024, 70 * MIB))
    assert "1.00 KiB" in report
    assert report.count("**missed**") == 2


def test_the_memory_doc_states_the_targets_and_moments_the_report_uses() -> None:
    text = " ".join((ROOT / "docs" / "memory.md").read_text().split())
    assert f"at warm-up ({WARMUP_RECONNECTS:,} connections)" in text
    assert f"rooms reaped, then {SETTLE_SECONDS:g} s" in text
    assert f"less than {MAX_SLOPE / 1024:g} KiB per further reconnect" in text
    assert f"within {round((MAX_GONE_RATIO - 1) * 100)}% of RSS with every user" in text
    assert f"within {round((MAX_END_RATIO - 1) * 100)}% of its 10-minute RSS" in text
