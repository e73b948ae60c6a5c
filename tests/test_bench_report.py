"""bench.report: the idle-connection probes, their allocation sites, the capacity steps and
their targets."""

from __future__ import annotations

import pytest

from bench import capacity
from bench.idle import IdleMemory, Site
from bench.measure import Run
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


def chat_run(users: int, *, sent_share: float, p99: float, server_cpu: float, k6_cpu: float) -> Run:
    """An active-chat run of 30 s with every member reading every message that was sent."""
    sent = users * 2 * 28 * sent_share
    planned = users * 2 * 28
    events = sent * users
    summary = {
        "state": {"testRunDurationMs": 30_000},
        "metrics": {
            "chat_messages_sent": {"values": {"count": sent}},
            "chat_messages_unsent": {"values": {"count": planned - sent}},
            "chat_messages_received": {"values": {"count": events}},
            "chat_rtt": {"values": {"med": 20.0, "p(99)": p99, "count": sent}},
        },
    }
    return Run(
        "active-chat", 0, summary, {}, {"chat_events_delivered_total": events},
        users, 0, 0, server_cpu, k6_cpu,
    )  # fmt: skip


def test_capacity_steps_come_from_a_list_of_user_counts() -> None:
    assert capacity.steps("200 300 400 600") == [200, 300, 400, 600]
    assert capacity.steps("0") == []
    with pytest.raises(ValueError, match="BENCH_CAPACITY"):
        capacity.steps("200 lots")


def test_a_step_is_sustained_only_with_everything_sent_and_delivered_in_time() -> None:
    ok = capacity.Step(400, chat_run(400, sent_share=1.0, p99=60, server_cpu=9, k6_cpu=30), 2)
    assert ok.sustained and ok.limit == "—"
    assert ok.sent_share == 1.0 and ok.delivered_share == 1.0
    late = capacity.Step(400, chat_run(400, sent_share=1.0, p99=100, server_cpu=9, k6_cpu=30), 2)
    assert not late.sustained
    behind = capacity.Step(400, chat_run(400, sent_share=0.98, p99=60, server_cpu=9, k6_cpu=30), 2)
    assert not behind.sustained


def test_a_step_not_sustained_names_what_ran_out() -> None:
    server = capacity.Step(600, chat_run(600, sent_share=1.0, p99=900, server_cpu=28, k6_cpu=20), 2)
    assert server.limit == "server"
    k6 = capacity.Step(600, chat_run(600, sent_share=0.9, p99=300, server_cpu=15, k6_cpu=42), 2)
    assert k6.limit == "k6"
    assert k6.k6_share == pytest.approx(0.7)
    # k6 holding most of the machine is the limit even with cores to spare
    heavy = capacity.Step(400, chat_run(400, sent_share=1.0, p99=150, server_cpu=6, k6_cpu=33), 2)
    assert heavy.limit == "k6"
    light = capacity.Step(400, chat_run(400, sent_share=1.0, p99=150, server_cpu=6, k6_cpu=20), 2)
    assert light.limit == "neither saturated (other load on the machine?)"


def test_capacity_table_and_targets_in_the_report() -> None:
    steps = (
        capacity.Step(200, chat_run(200, sent_share=1.0, p99=30, server_cpu=2.0, k6_cpu=20), 2),
        capacity.Step(400, chat_run(400, sent_share=1.0, p99=80, server_cpu=8.0, k6_cpu=40), 2),
        capacity.Step(600, chat_run(600, sent_share=0.8, p99=900, server_cpu=28, k6_cpu=25), 2),
    )
    text = render([ModeResult("sharded", [], None, [], steps)], {"profile": "full"})
    # 400 users x 2 msg/s x 28 s x 400 members = 8,960,000 events in 8 s of CPU.
    assert (
        "| 400 | 800 | 320,000 | 100.0 | 100.0 | 20 / 80 | 0.89 | 26.7 | 66.7 | yes | — |" in text
    )
    assert "| 600 | 1,200 | 720,000 | 80.0 | 100.0 | 20 / 900 |" in text
    assert "| **no** | server |" in text
    assert "Largest load sustained: **400 users** in one room" in text
    assert (
        "| capacity: 400 users x 2 msg/s in one room sustained | largest sustained: 400 | met |"
        in text
    )
    assert "| server CPU <= 1.0 ms per 1000 events at 400 users | 0.89 | met |" in text


def test_capacity_defaults_are_the_documented_ones() -> None:
    # README "Benchmark": 200, 300, 400 and 600 users, a message every 500 ms, 30 s each.
    assert capacity.steps(capacity.STEPS) == [200, 300, 400, 600]
    assert (capacity.SEND_EVERY_MS, capacity.DURATION) == (500, "30s")
    assert (capacity.MIN_SHARE, capacity.MAX_P99_MS, capacity.SATURATED) == (0.99, 100.0, 0.9)


def test_capacity_steps_run_k6_with_gogc_300_unless_the_environment_sets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GOGC", raising=False)
    assert capacity.k6_gogc() == "300"
    step = capacity.Step(200, chat_run(200, sent_share=1.0, p99=30, server_cpu=2, k6_cpu=20), 2)
    assert "k6 runs with GOGC=300." in "\n".join(capacity.section([step]))
    monkeypatch.setenv("GOGC", "150")
    assert capacity.k6_gogc() == "150"
