"""Load-lab results a person can judge: one folder per run, an HTML summary whose PASS/FAIL
rows are k6's own threshold verdicts, and a text summary that ends with the paths written."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_make_k6_writes_a_timestamped_folder_with_latest_and_an_html_summary(
    live_server: Process, k6_bin: str, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    done = subprocess.run(
        [
            require_binary("make"),
            "--no-print-directory",
            "-o",
            ".venv/.installed",  # the venv running these tests is the one to use
            "k6-local",
            f"BIN={Path(sys.executable).parent}",
            "SCENARIO=stock-bot",
            "PROFILE=smoke",
            f"WS_URL={live_server.ws_url}",
            f"RESULTS_DIR={results}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
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
