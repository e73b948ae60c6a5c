"""Run the real k6 against a live server and read what it reports.

k6 facts relied on (k6 1.1): exit code 0 when every threshold passed, 99 when one failed;
``handleSummary`` data holds ``metrics[name] = {type, contains, values, thresholds:
{expression: {ok}}}``; ``k6 inspect --execution-requirements`` prints the options with
``maxVUs`` and ``totalDuration`` (a Go duration such as ``1m5s``) without running anything.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import Process

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "k6" / "scenarios"
CHECKS = ROOT / "k6" / "checks"
RUN_TIMEOUT = 120.0


@dataclass
class K6Run:
    """One finished ``k6 run``: its exit code, output and ``handleSummary`` JSON."""

    returncode: int
    output: str
    summary: dict

    def values(self, metric: str) -> dict[str, float]:
        """The summary values of ``metric`` (e.g. ``count``, ``rate``, ``p(95)``); {} if absent."""
        return self.summary["metrics"].get(metric, {}).get("values", {})

    def count(self, metric: str) -> float:
        return self.values(metric).get("count", 0)

    def thresholds(self) -> dict[str, bool]:
        """``{"metric: expression": passed}`` for every threshold of the run."""
        return {
            f"{name}: {expression}": result["ok"]
            for name, metric in self.summary["metrics"].items()
            for expression, result in metric.get("thresholds", {}).items()
        }

    def failures(self) -> list[str]:
        """Failed thresholds with the observed values, for assertion messages."""
        failed = []
        for key, ok in self.thresholds().items():
            if not ok:
                name = key.split(": ")[0]
                failed.append(f"{key} (observed {self.values(name)})")
        return failed


def run_k6(
    k6_bin: str,
    script: Path,
    ws_url: str,
    results: Path,
    env: dict[str, str] | None = None,
    timeout: float = RUN_TIMEOUT,
) -> K6Run:
    """``k6 run`` ``script`` (cwd and RESULTS_DIR: ``results``) in the smoke profile.

    ``env`` adds ``-e`` variables; the shell environment is not passed to the script, so a
    developer's own PROFILE or VUS can't change what a test runs. Raises
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds and ``AssertionError`` when k6
    wrote no summary (the output is in the message).
    """
    variables = {"PROFILE": "smoke", "WS_URL": ws_url, "RESULTS_DIR": str(results), **(env or {})}
    command = [k6_bin, "run", "--quiet", "--no-color", "--address", ""]
    command += ["--include-system-env-vars=false"]
    for name, value in variables.items():
        command += ["-e", f"{name}={value}"]
    command.append(str(script))
    done = subprocess.run(
        command, cwd=results, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    summary_file = results / f"{script.stem}-summary.json"
    assert summary_file.exists(), f"k6 exited {done.returncode} without a summary:\n{output}"
    return K6Run(done.returncode, output, json.loads(summary_file.read_text()))


def inspect(k6_bin: str, script: Path, **env: str) -> dict:
    """``k6 inspect --execution-requirements`` with ``-e`` variables.

    Returns the options with ``maxVUs`` and ``totalDuration`` added.
    """
    command = [k6_bin, "inspect", "--execution-requirements"]
    for name, value in env.items():
        command += ["-e", f"{name}={value}"]
    done = subprocess.run(
        [*command, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)


@dataclass
class Samples:
    """Values of one server metric, polled from a background thread (see :func:`sampling`)."""

    values: list[float] = field(default_factory=list)


@contextmanager
def sampling(
    server: Process, metric: str = "chat_connections", every: float = 0.2, limit: float = 180.0
) -> Iterator[Samples]:
    """Poll ``metric`` on ``server`` every ``every`` seconds while the block runs.

    The loop stops when the block ends or after ``limit`` seconds, whichever comes first.
    """
    samples = Samples()
    stop = threading.Event()

    def poll() -> None:
        deadline = time.monotonic() + limit
        while not stop.is_set() and time.monotonic() < deadline:
            with suppress(OSError):
                samples.values.append(server.metrics()[metric])
            stop.wait(every)

    thread = threading.Thread(target=poll, name=f"sample-{metric}", daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(timeout=10)


def wait_for_metrics(
    server: Process, condition, timeout: float = 20.0, every: float = 0.2
) -> dict[str, float]:
    """Scrape ``server`` until ``condition(metrics)`` holds; return those metrics.

    Raises ``TimeoutError`` with the last scrape after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        metrics = server.metrics()
        if condition(metrics):
            return metrics
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout} s; last scrape: {metrics}")
        time.sleep(every)
