"""bench.scaleout: the scale-out table's arithmetic and rendering, and one short real run on
two Redis shards."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from bench import scaleout
from tests.support.processes import require_binary


def two_shards() -> scaleout.Row:
    """30 s, 100,000 messages: shard 0 sequenced 60,000 on 1.2 s of CPU, shard 1 40,000 on 1.0 s,
    100 MB of traffic and 4,000 script calls between them; 200,000 events delivered on 12 s
    of roomhub CPU."""
    return scaleout.Row(
        shards=2, send_every_ms=50, returncode=0, seconds=30.0, messages=100_000, events=200_000,
        roomhub_cpu=12.0, shard_cpu=(1.2, 1.0), idle_cpu=0.05, shard_messages=(60_000, 40_000),
        shard_bytes=(60_000_000, 40_000_000), script_calls=4_000,
        lag_p99=0.025, rtt_p99=123.4, sent_share=0.834, k6_cpu=20.0, load=3.5,
    )  # fmt: skip


def test_costs_are_per_message_per_shard_and_in_total() -> None:
    row = two_shards()
    assert row.messages_per_second == pytest.approx(3333.3, abs=0.1)
    assert row.shard_us_per_message == pytest.approx([20.0, 25.0])
    assert row.redis_us_per_message == pytest.approx(22.0)
    assert row.messages_per_call == pytest.approx(25.0)
    assert row.redis_bytes_per_message == pytest.approx(1000.0)
    assert row.roomhub_ms_per_1000 == pytest.approx(60.0)


def test_a_shard_that_sequenced_nothing_has_no_cost_per_message() -> None:
    row = scaleout.Row(
        shards=2, send_every_ms=50, returncode=0, seconds=30.0, messages=100, events=200,
        roomhub_cpu=1.0, shard_cpu=(0.1, 0.01), idle_cpu=0.0, shard_messages=(100, 0),
        shard_bytes=(1000, 0), script_calls=0, lag_p99=None, rtt_p99=None, sent_share=None,
        k6_cpu=1.0, load=1.0,
    )  # fmt: skip
    assert row.shard_us_per_message == [pytest.approx(1000.0), None]


def test_the_table_has_one_line_per_shard_count() -> None:
    text = "\n".join(scaleout.render([two_shards()]))
    cells = "2 | 3,333 | 83% | 20.0 (60%) / 25.0 (40%) | 22.0 | 50 | 25.0 | 1,000 | 60.00"
    cells += " | 25.0 | 123.4 | 20.0 | 0 | 3.5"
    assert f"| {cells} |" in text


def test_a_lag_past_the_largest_bucket_is_shown_as_beyond_it() -> None:
    row = scaleout.Row(**{**asdict(two_shards()), "lag_p99": float("inf")})
    assert "| > 1,000 |" in "\n".join(scaleout.render([row]))


def test_shard_counts_come_from_a_list_and_refuse_anything_else() -> None:
    assert scaleout.shard_counts("1 2 4") == [1, 2, 4]
    assert scaleout.shard_counts("") == []
    for bad in ("0", "2 many"):
        with pytest.raises(ValueError, match="BENCH_SCALEOUT"):
            scaleout.shard_counts(bad)


@pytest.mark.k6
def test_a_short_run_on_two_shards_spreads_the_rooms_and_fills_every_column(tmp_path) -> None:
    require_binary("k6")
    require_binary("redis-server")
    row = scaleout.measure(2, "6s", "smoke", tmp_path)
    assert row.messages > 0 and row.events >= row.messages
    assert all(count > 0 for count in row.shard_messages), row.shard_messages
    assert sum(row.shard_messages) == pytest.approx(row.messages, rel=0.05)
    assert row.lag_p99 is not None and row.rtt_p99 is not None
