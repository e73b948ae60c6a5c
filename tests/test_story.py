"""bench/story.py's reading of a run: phases, crossings, the CSV, the text."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from bench.story import Point, crossing, phases, summary, write_csv

FACTS = {"date": "2026-12-07", "commit": "abc", "machine": "2 CPUs", "command": "make story"}


def point(mode: str, t: float, phase: str, connections: float, p99: float) -> Point:
    return Point(mode, t, phase, connections, p99 / 2, p99, 0, 0.001, 0.5, 0.2, 0.7, "—")


def test_phases_follow_the_open_connections() -> None:
    assert phases([0, 400, 970, 1000, 995, 500, 0]) == [
        "ramp", "ramp", "ramp", "hold", "hold", "down", "down",
    ]  # fmt: skip


def test_a_crossing_is_the_first_ramp_or_hold_point_at_the_threshold() -> None:
    points = [
        point("global", 3, "ramp", 100, 0.05),
        point("global", 6, "ramp", 300, math.nan),
        point("global", 9, "ramp", 500, 0.2),
        point("global", 12, "down", 600, 3.0),
    ]
    assert crossing(points, 0.1) == points[2]
    assert crossing(points, 1.0) is None


def test_the_text_says_where_each_mode_crossed_or_that_it_never_did() -> None:
    points = [point("global", 3, "ramp", 480, 1.5), point("sharded", 3, "ramp", 1000, 0.05)]
    text = summary(points, FACTS)
    assert "**global** (peak 480 connections): crossed 100 ms at **480 connections**" in text
    assert "**sharded** (peak 1,000 connections): never crossed 100 ms (highest p99 50 ms)" in text


def test_the_csv_has_one_row_per_step_and_mode(tmp_path: Path) -> None:
    points = [point("global", 3, "ramp", 1, 0.1), point("sharded", 3, "ramp", 1, 0.1)]
    write_csv(points, tmp_path / "story.csv")
    with (tmp_path / "story.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["mode"], row["t"]) for row in rows] == [("global", "3"), ("sharded", "3")]
