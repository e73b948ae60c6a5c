"""Load-lab results a person can judge: one folder per run, an HTML summary whose PASS/FAIL
rows are k6's own threshold verdicts, and a text summary that ends with the paths written."""

from __future__ import annotations

import base64
import gzip
import html
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import k6run
from bench.server import free_port
from tests.support.k6 import ROOT, K6Run, run_k6
from tests.support.processes import Process, require_binary

pytestmark = pytest.mark.k6

ROW = re.compile(
    r'<tr class="(pass|fail)"><td class="verdict">(PASS|FAIL)</td><td>([^<]*)</td><td>([^<]*)</td>'
)
TALLY = "count>=0"  # k6/lib/health.js: keeps a sub-metric for the counts, not a real threshold


def html_rows(page: str) -> dict[str, bool]:
    """``{"metric: expression": passed}`` from the HTML summary's threshold rows."""
    rows = {}
    for cls, verdict, metric, expression in ROW.findall(page):
        assert (cls == "pass") == (verdict == "PASS")
        rows[f"{html.unescape(metric)}: {html.unescape(expression)}"] = verdict == "PASS"
    return rows


def json_rows(run: K6Run) -> dict[str, bool]:
    return {key: ok for key, ok in run.thresholds().items() if not key.endswith(f": {TALLY}")}


def make_k6(
    scenario: str, ws_url: str, results: Path, profile: str = "smoke", **env: str
) -> subprocess.CompletedProcess:
    """``make k6-local`` in ``profile`` with the venv running these tests, ``env`` added."""
    return subprocess.run(
        [
            require_binary("make"),
            "--no-print-directory",
            "-o",
            ".venv/.installed-lab",  # the venv running these tests is the one to use
            "k6-local",
            f"BIN={Path(sys.executable).parent}",
            f"SCENARIO={scenario}",
            f"PROFILE={profile}",
            f"WS_URL={ws_url}",
            f"RESULTS_DIR={results}",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def dashboard_snapshots(report: Path) -> list[dict[str, list]]:
    """The web dashboard report's samples: one ``{metric: values}`` per period.

    The report embeds its events as gzipped, base64 JSON lines (xk6-dashboard, k6 1.1):
    ``metric`` events name new metrics; each ``snapshot`` lists values for every metric
    known so far, in the order of their sorted names (an empty list: no sample that period).
    """
    page = report.read_text()
    data = re.search(r'<script id="data" type="[^"]*gzip; base64">([^<]*)</script>', page)[1]
    lines = gzip.decompress(base64.b64decode(data)).decode().splitlines()
    names: list[str] = []
    snapshots = []
    for event in (json.loads(line) for line in lines if line.strip()):
        if event["event"] == "metric":
            names += list(event["data"])
        elif event["event"] == "snapshot":
            snapshots.append(dict(zip(sorted(names), event["data"], strict=True)))
    return snapshots


def test_make_k6_writes_a_timestamped_folder_with_latest_and_an_html_summary(
    live_server: Process, k6_bin: str, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    done = make_k6("stock-bot", live_server.ws_url, results)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (folder,) = [p for p in results.iterdir() if p.name != "latest"]
    assert re.fullmatch(r"[0-9]{8}-[0-9]{6}-stock-bot", folder.name)
    assert (results / "latest").resolve() == folder.resolve()
    summary = json.loads((folder / "stock-bot-summary.json").read_text())
    run = K6Run(done.returncode, done.stdout, summary)
    page = (folder / "stock-bot-summary.html").read_text()
    assert html_rows(page) == json_rows(run) != {}
    title = re.search(r"<title>(.*)</title>", page)[1]
    assert title.startswith(f"roomhub load lab: stock-bot: PASS ({len(json_rows(run))} thresholds)")
    assert "profile smoke" in title and "20 VUs max" in title
    assert (folder / "stock-bot-report.html").exists()
    written = [str(folder / f"stock-bot-summary.{ext}") for ext in ("json", "txt", "html")]
    written.append(str(folder / "stock-bot-report.html"))
    ending = f"written: {' '.join(written)}"
    assert (folder / "stock-bot-summary.txt").read_text().rstrip().endswith(ending)
    assert ending in done.stdout  # printed too (k6's progress line may follow)


PROBE = """
import { Counter } from 'k6/metrics';
import { summaryWriter } from 'file://%s';
const probe = new Counter('probe_count');
export const options = {
  vus: 1, iterations: 1,
  thresholds: { probe_count: ['count>5', 'count<5'], chat_messages_lost: ['count==0'] },
};
export default function () { probe.add(2); }
export const handleSummary = summaryWriter('probe');
"""


def test_html_summary_marks_a_failed_threshold_fail_with_its_value(
    k6_bin: str, tmp_path: Path
) -> None:
    script = tmp_path / "probe.js"
    script.write_text(PROBE % (ROOT / "k6" / "lib" / "summary.js"))
    run = run_k6(k6_bin, script, "ws://127.0.0.1:9/ws", tmp_path)
    page = (tmp_path / "probe-summary.html").read_text()

    assert run.returncode == 99
    assert (
        html_rows(page)
        == json_rows(run)
        == {
            "chat_messages_lost: count==0": True,
            "probe_count: count>5": False,
            "probe_count: count<5": True,
        }
    )
    assert "<td>count&gt;5</td><td>count=2</td>" in page
    assert "FAIL (1 of 3 thresholds failed)" in re.search(r"<title>(.*)</title>", page)[1]
    assert '<tr class="zero"><td>chat_messages_lost</td><td>0</td>' in page


def test_make_k6_without_a_server_stops_at_once_naming_the_url(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    results = tmp_path / "results"
    started = time.monotonic()
    done = make_k6("active-chat", f"ws://127.0.0.1:{port}/ws", results)
    assert done.returncode != 0
    assert f"no server answers at http://127.0.0.1:{port}/readyz" in done.stderr
    assert time.monotonic() - started < 15  # k6 would run its 20 s smoke
    assert not results.exists()  # no run folder for a run that never started


@pytest.mark.parametrize(
    ("profile", "env", "message"),
    [
        ("tiny", {}, 'PROFILE must be one of full, smoke, got "tiny"'),
        ("smoke", {"VUS": "abc"}, 'VUS must be a positive integer, got "abc"'),
    ],
)
def test_make_k6_with_a_bad_setting_prints_the_scenarios_message_and_writes_nothing(
    k6_bin: str, tmp_path: Path, profile: str, env: dict[str, str], message: str
) -> None:
    results = tmp_path / "results"
    done = make_k6("connection-storm", "ws://127.0.0.1:9/ws", results, profile, **env)
    assert done.returncode == 2
    assert f"k6 not started: {message}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not results.exists()


EMPTY_TREND = """
import { Counter, Trend } from 'k6/metrics';
import { summaryWriter, TREND_STATS } from 'file://%s';
const rtt = new Trend('probe_rtt', true);
const probe = new Counter('probe_count');
export const options = {
  vus: 1, iterations: 1, summaryTrendStats: TREND_STATS,
  thresholds: { probe_rtt: ['p(95)<100'], probe_count: ['count>0'] },
};
export default function () { probe.add(1); }
export const handleSummary = summaryWriter('probe');
"""


def write_empty_trend_probe(directory: Path) -> Path:
    script = directory / "probe.js"
    script.write_text(EMPTY_TREND % (ROOT / "k6" / "lib" / "summary.js"))
    return script


def test_a_trend_threshold_without_samples_is_a_fail_in_every_summary(
    k6_bin: str, tmp_path: Path
) -> None:
    run = run_k6(k6_bin, write_empty_trend_probe(tmp_path), "ws://127.0.0.1:9/ws", tmp_path)
    page = (tmp_path / "probe-summary.html").read_text()
    text = (tmp_path / "probe-summary.txt").read_text()

    assert json_rows(run) == {"probe_rtt: p(95)<100": False, "probe_count: count>0": True}
    assert html_rows(page) == json_rows(run)
    assert "FAIL  probe_rtt  p(95)<100  (p(95)=no samples)" in text
    assert "thresholds: 1 passed, 1 failed" in text


def test_make_k6_exits_99_when_only_a_trend_without_samples_failed(
    live_server: Process, k6_bin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_empty_trend_probe(tmp_path)
    monkeypatch.setattr(k6run, "SCENARIOS", tmp_path)  # the probe as a scenario
    results = tmp_path / "results"
    argv = ["probe", "--profile", "smoke", "--ws-url", live_server.ws_url]
    status = k6run.main([*argv, "--results-dir", str(results), "--run-id", "run-1"])
    summary = json.loads((results / "run-1" / "probe-summary.json").read_text())
    assert summary["metrics"]["probe_rtt"]["thresholds"] == {"p(95)<100": {"ok": False}}
    assert status == 99  # k6 itself exited 0


DASHBOARD_CHARTS = ("ws_connecting", "ws_sessions", "iteration_duration")
"""Charts that fill from the first seconds of a connection-storm run, so have a point in many
snapshots. ``ws_session_duration`` is recorded only as sessions end, and every session of
connection-storm lasts to the scenario's end: it has a point in the last snapshot (also in
the one before only when the sessions' ends came before that snapshot was taken)."""


def test_smoke_report_charts_have_points_and_its_title_names_scenario_and_verdict(
    live_server: Process, k6_bin: str, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    done = make_k6("connection-storm", live_server.ws_url, results)
    report = results / "latest" / "connection-storm-report.html"
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    # The verdict is the run's own (a busy shared machine may cross a latency threshold).
    summary = json.loads((results / "latest" / "connection-storm-summary.json").read_text())
    verdict = "FAIL" if K6Run(done.returncode, "", summary).failures() else "PASS"
    assert (done.returncode == 0) == (verdict == "PASS")
    snapshots = dashboard_snapshots(report)

    assert len(snapshots) >= 10  # a 25 s run sampled every second, not every 10 s
    for metric in DASHBOARD_CHARTS:
        points = [s for s in snapshots if s.get(metric)]
        assert len(points) >= 2, f"{metric}: {len(points)} points, a chart needs 2"
    assert snapshots[-1].get("ws_session_duration"), "no session duration in the last snapshot"
    page = report.read_text()
    title = re.search(r"<title>(.*)</title>", page)[1]
    assert title == f"roomhub load lab: connection-storm: {verdict} (k6 web dashboard)"
    assert f'"connection-storm: {verdict} \\u00b7 "' in page  # the heading, was "Report: <date>"
    assert f"written: {results}" in done.stdout and str(report.resolve()) in done.stdout
