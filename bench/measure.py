"""One benchmark run: a k6 scenario against a fresh server, with the server watched."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from . import lab
from .lab import K6, ROOT
from .procstat import usage
from .server import Process

GRACE_SECONDS = 120.0
DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Run:
    """What one scenario did: k6's summary, server scrapes around it, and process figures."""

    scenario: str
    returncode: int
    summary: dict
    before: dict[str, float]
    after: dict[str, float]
    peak_connections: float
    rss_before: int
    peak_rss: int
    server_cpu: float
    k6_cpu: float

    @property
    def seconds(self) -> float:
        return self.summary["state"]["testRunDurationMs"] / 1000

    def grew(self, metric: str) -> float:
        return self.after.get(metric, 0.0) - self.before.get(metric, 0.0)

    def k6(self, metric: str) -> dict[str, float]:
        """Summary values of a k6 metric ({} when it has no samples)."""
        return self.summary["metrics"].get(metric, {}).get("values", {})

    def failed_thresholds(self) -> list[str]:
        return [
            f"{name}: {expression}"
            for name, metric in self.summary["metrics"].items()
            for expression, result in metric.get("thresholds", {}).items()
            if not result["ok"]
        ]


def duration_seconds(duration: str) -> float:
    """A Go duration as k6 prints it (``"1m5s"``, ``"1800s"``, ``"500ms"``) -> seconds.

    Raises ``ValueError`` on anything else.
    """
    parts = GO_DURATION.findall(duration)
    if not parts or "".join(number + unit for number, unit in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(float(number) * DURATION_UNITS[unit] for number, unit in parts)


class GaugeSampler(Generic[T]):
    """Polls ``read()`` every ``every`` seconds on a thread while the ``with`` block runs
    (at most ``limit`` seconds); the values land in ``values`` (a read that raises
    ``OSError`` adds none)."""

    def __init__(self, read: Callable[[], T], limit: float, every: float = 0.5) -> None:
        self.read, self.limit, self.every = read, limit, every
        self.values: list[T] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-gauge", daemon=True)

    def _run(self) -> None:
        for _ in range(int(self.limit / self.every) + 1):
            with contextlib.suppress(OSError):
                self.values.append(self.read())
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> GaugeSampler[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _k6_args(env: dict[str, str]) -> list[str]:
    args = []
    for name, value in env.items():
        args += ["-e", f"{name}={value}"]
    return args


def planned_seconds(script: Path, env: dict[str, str]) -> float:
    """The scenario's longest possible run (k6 inspect's totalDuration), in seconds."""
    done = subprocess.run(
        [str(K6), "inspect", "--execution-requirements", *_k6_args(env), str(script)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return duration_seconds(json.loads(done.stdout)["totalDuration"])


def run_scenario(
    server: Process, scenario: str, env: dict[str, str], out: Path, gogc: str | None = None
) -> Run:
    """Run ``k6/scenarios/<scenario>.js`` against ``server``; k6's files go to ``out``.

    ``env``: extra ``-e`` variables (PROFILE, VUS, ...). ``gogc``: Go's ``GOGC`` for k6 when
    the environment sets none (else Go's default). The k6 run is bounded by its planned
    duration plus two minutes. With ``prometheus`` installed (and ``BENCH_DASHBOARDS`` not 0)
    the step has its own Prometheus scraping the server, k6 remote-writes into it (tagged
    ``testid=<out folder>-<scenario>``) and ``out/<scenario>-dashboards.html`` shows every
    dashboard panel over the step (bench/lab.py :func:`~bench.lab.observed`).
    """
    script = ROOT / "k6" / "scenarios" / f"{scenario}.js"
    env = {**env, "WS_URL": server.ws_url, "RESULTS_DIR": str(out)}
    timeout = planned_seconds(script, env) + GRACE_SECONDS
    before = server.metrics()
    start = usage(server.pid)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    testid = f"{out.name}-{scenario}"
    command = [str(K6), "run", "--quiet", "--no-color", "--address", "", *_k6_args(env)]
    with (
        lab.observed(f"127.0.0.1:{server.port}", out / f"{scenario}-dashboards.html", testid)
        if lab.dashboards_wanted(os.environ)
        else contextlib.nullcontext({}) as remote_write,
        (out / f"{scenario}-k6.log").open("w") as log,
        GaugeSampler(lambda: server.metrics()["chat_connections"], timeout) as connections,
    ):
        done = subprocess.run(
            [*command, "--tag", f"testid={testid}", str(script)],
            cwd=ROOT,
            env={**({"GOGC": gogc} if gogc else {}), **os.environ, **remote_write},
            stdout=log,
            stderr=log,
            timeout=timeout,
            check=False,
        )
    k6_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    end = usage(server.pid)
    return Run(
        scenario=scenario,
        returncode=done.returncode,
        summary=json.loads((out / f"{scenario}-summary.json").read_text()),
        before=before,
        after=server.metrics(),
        peak_connections=max(connections.values, default=0.0),
        rss_before=start.rss,
        peak_rss=end.peak_rss,
        server_cpu=end.cpu_seconds - start.cpu_seconds,
        k6_cpu=(k6_usage.ru_utime + k6_usage.ru_stime) - (children.ru_utime + children.ru_stime),
    )
