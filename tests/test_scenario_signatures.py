"""Each k6 scenario's signature, seen where the dashboards show it.

One lab (bench/lab.py: real Prometheus from prometheus/prometheus.yml with the remote-write
receiver on, two server processes on a real redis-server as compose runs two replicas, the
stockapi) serves every scenario in turn. Each scenario runs its smoke profile, shortened, with
real k6 remote-writing as compose's k6 service does; then dashboards/render.py draws every
panel of dashboards/*.json over that run's window, and the test reads the data behind the
panel that should show the scenario's effect.

The quote service answers in 300 ms and the bot caches nothing and has one worker per
process here (as README suggests for watching backpressure), so the stock-bot scenario's
commands outrun it and its queue shows.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.lab import ROOT, Lab, LabSettings, compose_k6_env, k6_command, lab
from dashboards.render import PAGE, Panel, query
from tests.support.processes import require_binary

pytestmark = pytest.mark.k6

# Shortened smoke runs (each scenario's env settings; k6/scenarios/*.js headers).
RUNS = {
    # The hold spans at least two 5 s scrapes, so one lands at the peak.
    "connection-storm": {"VUS": "40", "RAMP": "3s", "HOLD": "12s", "DOWN": "3s"},
    "active-chat": {"VUS": "20", "DURATION": "10s"},
    # The bot queue panel shows a gauge at each 5 s scrape, and commands stop 4 s before the
    # end (the drain): 11 s of commands span two scrapes, and 40 VUs keep the queue from
    # emptying but for moments (at 10 s and 20 VUs one scrape in about ten found it empty).
    "stock-bot": {"VUS": "40", "DURATION": "15s"},
    "spike": {"BASE_VUS": "10", "PEAK_VUS": "60"},
    "soak": {"VUS": "20", "DURATION": "20s", "SESSION": "5s"},
    "mixed": {"VUS": "30", "DURATION": "12s"},
}
K6_TIMEOUT = 90.0
DRAW_TIMEOUT = 120.0
# README "Each scenario's signature": without these the bot answers from its cache and the
# stock-bot scenario's commands never wait for a worker.
BOT_BACKPRESSURE = {"ROOMHUB_BOT_CACHE_TTL": "0", "ROOMHUB_BOT_WORKERS": "1"}
NO_SCENARIO_DATA = {
    # Panels no scenario feeds in a healthy run, named so that one going dark is noticed.
    # k6 writes a counter only once it counted something; k6/checks/faults.js provokes these.
    "roomhub load (k6) / Unexpected closes and errors",
    # Only the api scenario calls the server API (tests/test_k6_scenarios.py runs it, and
    # tests/test_observability_live.py queries this panel after it).
    "roomhub server / API call latency p50 / p99",
}


@dataclass(frozen=True)
class Run:
    """One scenario's results folder and its panels, drawn into a page there in the
    background (``drawn``)."""

    out: Path
    panels: list[Panel]
    drawn: Future[Path]

    def panel(self, title: str) -> Panel:
        """The one panel called ``title``."""
        (found,) = [p for p in self.panels if p.title == title]
        return found


def run(running: Lab, scenario: str, out: Path, drawing: ThreadPoolExecutor) -> Run:
    """Run one scenario against the lab and read every panel over its window; the page is
    drawn on ``drawing``'s thread while the next scenario runs."""
    testid = f"signature-{scenario}-{int(time.time())}"
    out.mkdir()
    variables = {"PROFILE": "smoke", "WS_URL": running.ws_url, "RESULTS_DIR": str(out)}
    script = ROOT / "k6" / "scenarios" / f"{scenario}.js"
    start = time.time()
    done = subprocess.run(
        k6_command(script, testid, {**variables, **RUNS[scenario]}),
        env={**os.environ, **compose_k6_env(running.prometheus_url)},
        capture_output=True,
        text=True,
        timeout=K6_TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    # 99: a threshold failed (a loaded machine may); anything else is a broken run.
    assert done.returncode in (0, 99), output[-4000:]
    assert "Failed to send the time series data" not in output, output[-4000:]
    report = query(running.prometheus_url, start, time.time(), testid)
    return Run(out, report.panels, drawing.submit(report.write, out))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Every scenario's run, ``{scenario: run}``, from one shared lab."""
    require_binary("prometheus")
    require_binary("redis-server")
    require_binary("k6")
    tmp = tmp_path_factory.mktemp("signatures")
    settings = LabSettings(
        chat_port=0, prometheus_port=0, stockapi_port=0, metrics_port=0, redis_port=0,
        replicas=2, directory=tmp / "lab",
        server_env=BOT_BACKPRESSURE | {"ROOMHUB_LOG_LEVEL": "warning"},
        stockapi_flags=("--latency-ms", "300"),
    )  # fmt: skip
    # One drawing thread: matplotlib's pyplot is not thread-safe.
    with lab(settings) as running, ThreadPoolExecutor(max_workers=1) as drawing:
        yield {scenario: run(running, scenario, tmp / scenario, drawing) for scenario in RUNS}


def test_each_run_writes_one_page_with_every_panel(reports: dict[str, Run]) -> None:
    for report in reports.values():
        page = report.drawn.result(timeout=DRAW_TIMEOUT)
        assert page == report.out / PAGE
        assert page.read_text().count("<img ") == len(report.panels) > 30


def test_storm_connections_reach_the_vus_and_fall_back_to_zero(
    reports: dict[str, Run],
) -> None:
    connections = reports["connection-storm"].panel("Server connections").values()
    assert max(connections) >= int(RUNS["connection-storm"]["VUS"])
    assert connections[-1] == 0


def test_active_chat_fans_out_and_delivers_events(reports: dict[str, Run]) -> None:
    report = reports["active-chat"]
    assert max(report.panel("Fan-out time p50 / p95 / p99").values()) > 0
    assert max(report.panel("Events delivered/s").values()) > 0


def test_stock_bot_has_bot_latency_and_a_bot_queue(reports: dict[str, Run]) -> None:
    report = reports["stock-bot"]
    assert max(report.panel("Bot latency p50 / p95 / p99").values()) > 0
    assert max(report.panel("Bot queue depth").values()) > 0


def test_spike_connections_step_up_and_back_down(reports: dict[str, Run]) -> None:
    connections = reports["spike"].panel("Server connections").values()
    peak = connections.index(max(connections))
    base, top = int(RUNS["spike"]["BASE_VUS"]), int(RUNS["spike"]["PEAK_VUS"])
    assert max(connections) >= top
    assert any(base / 2 <= c < top / 2 for c in connections[:peak])  # the base before
    assert any(c < top / 2 for c in connections[peak:])  # and down after


def test_soak_resident_memory_levels_off(reports: dict[str, Run]) -> None:
    memory = reports["soak"].panel("Resident memory")
    assert memory.series
    for series in memory.series:
        values = series.finite()
        second_half = values[len(values) // 2 :]
        # Connections come and go all along; the heap may not keep growing with them.
        assert max(second_half) <= 1.1 * second_half[0], (series.legend, values)


def test_mixed_has_all_three_roles(reports: dict[str, Run]) -> None:
    # Every member reads deliveries, whatever its role: one line per role.
    lag = reports["mixed"].panel("Delivery lag (chat_delivery_lag)")
    assert {s.labels["scenario"] for s in lag.series if s.finite()} == {
        "lurkers",
        "chatters",
        "bot_users",
    }


def test_every_panel_has_data_in_some_scenario(reports: dict[str, Run]) -> None:
    titles = [f"{p.dashboard} / {p.title}" for p in next(iter(reports.values())).panels]
    fed = {f"{p.dashboard} / {p.title}" for r in reports.values() for p in r.panels if p.has_data}
    assert sorted(t for t in titles if t not in fed) == sorted(NO_SCENARIO_DATA)
