"""``make story``: the seed's before/after as one chart, from a real run.

The connection storm (k6/scenarios/connection-storm.js) ramps from 0 to ``STORY_VUS`` open
connections in one room, once against a server in ``global`` hub mode (one hub for every
room: the "before") and once in ``sharded`` mode (one hub per room: the fix), each in a fresh
lab (bench/lab.py: Prometheus scraping the server, k6 remote-writing into it). For every time
step of ``STEP_SECONDS`` the story reads from Prometheus the open connections, the probe
users' message round trip (``chat_rtt``, p50 and p99), the hub queue depth and the fan-out
time p99, and from ``/proc`` the CPU the server and k6 used, and draws latency against open
connections for both modes on the same axes, queue depth and fan-out time beneath.

Writes to ``STORY_DIR`` (default results/story): story.png, story.svg, story.csv (one row per
time step and mode) and story.md (where each mode crossed 100 ms and 1 s, and which process
limited it: bench/capacity.py's rule).

Environment:

    STORY_VUS    peak connections (default 1000)
    STORY_RAMP   time from 0 to the peak (default 60s; the storm's own ramp is 10 s, too
                 short to read latency against connections at a few seconds per point)
    STORY_HOLD   time at the peak (default 10s)
    STORY_MODES  hub modes, in order (default "global sharded")
    STORY_DIR    output folder (default results/story)
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dashboards.render import Prometheus

from . import capacity
from .lab import ROOT, LabSettings, compose_k6_env, k6_command, lab
from .measure import GRACE_SECONDS, GaugeSampler, duration_seconds, planned_seconds
from .procstat import CLOCK_TICKS, usage

STEP_SECONDS = 3
"""One point of the story: Prometheus scrapes every second and k6 pushes every second here,
so each step holds three samples of every series."""
SCRAPE = "1s"
THRESHOLDS = (0.1, 1.0)  # seconds: where the seed's users noticed, and where they gave up
MODES = "global sharded"
DOWN = "5s"
COLOURS = {"global": "tab:red", "sharded": "tab:blue"}
SERVER_ENV = {"ROOMHUB_LOG_LEVEL": "warning"}
QUERIES = {
    "connections": "sum(chat_connections)",
    # Two steps: k6's pushes, due every second, come late when the machine is busy.
    "p50": 'histogram_quantile(0.5, sum(rate(k6_chat_rtt_seconds{{testid="{testid}", '
    'role="probe"}}[{window}s])))',
    "p99": 'histogram_quantile(0.99, sum(rate(k6_chat_rtt_seconds{{testid="{testid}", '
    'role="probe"}}[{window}s])))',
    "hub_queue": "max_over_time(sum(chat_hub_queue_depth)[{step}s:1s])",
    "fanout_p99": "histogram_quantile(0.99, sum by (le) "
    "(rate(chat_broadcast_fanout_seconds_bucket[{step}s])))",
}


@dataclass(frozen=True, slots=True)
class Point:
    """One time step of one mode. Times in seconds since the run's start; latencies in
    seconds (NaN: no sample); CPU shares in CPU seconds per second (the server: of one core;
    k6 and the whole machine, every process on it: of all cores)."""

    mode: str
    t: float
    phase: str
    connections: float
    p50: float
    p99: float
    hub_queue: float
    fanout_p99: float
    server_cpu: float
    k6_cpu: float
    machine_cpu: float
    limit: str


def machine_cpu_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``'s first line less idle and
    iowait; proc(5))."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLOCK_TICKS


def cpu_sample(pids: Sequence[int]) -> tuple[float, list[float]]:
    """``(epoch, [CPU seconds of each pid..., of the whole machine])``; ``OSError`` when a
    process is gone (or a zombie, whose status has no memory lines)."""
    try:
        cpu = [usage(pid).cpu_seconds for pid in pids]
    except KeyError:
        raise ProcessLookupError("a zombie") from None
    return time.time(), [*cpu, machine_cpu_seconds()]


def share(
    samples: Sequence[tuple[float, list[float]]], index: int, start: float, end: float
) -> float:
    """CPU seconds per second of entry ``index`` of :func:`cpu_sample` between ``start`` and
    ``end`` (epoch seconds); NaN without two samples there."""
    inside = [(t, cpu[index]) for t, cpu in samples if start - 1 <= t <= end + 1]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return math.nan
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def _series(prometheus: Prometheus, expr: str, start: float, end: float) -> dict[float, float]:
    result = prometheus.query_range(expr, start, end, STEP_SECONDS)
    return {float(t): float(v) for t, v in result[0]["values"]} if result else {}


def run_mode(mode: str, environ: Mapping[str, str], out: Path) -> list[Point]:
    """One storm against a fresh lab in hub ``mode``; its points in time order."""
    vus = int(environ.get("STORY_VUS", "1000"))
    ramp = environ.get("STORY_RAMP", "60s")
    hold = environ.get("STORY_HOLD", "10s")
    settings = LabSettings(
        chat_port=0, prometheus_port=0, stockapi_port=0, metrics_port=0, redis_port=0,
        hub_mode=mode, directory=out / mode, scrape_interval=SCRAPE, server_env=SERVER_ENV,
    )  # fmt: skip
    testid = f"story-{mode}-{int(time.time())}"
    stages = {"VUS": str(vus), "RAMP": ramp, "HOLD": hold, "DOWN": DOWN}
    with lab(settings) as running:
        script = ROOT / "k6" / "scenarios" / "connection-storm.js"
        variables = {**stages, "WS_URL": running.ws_url, "RESULTS_DIR": str(out / mode)}
        command = k6_command(script, testid, variables)
        env = {**os.environ, **compose_k6_env(running.prometheus_url)}
        env["K6_PROMETHEUS_RW_PUSH_INTERVAL"] = SCRAPE
        timeout = planned_seconds(script, stages) + GRACE_SECONDS
        server_pid = running.processes[1].pid
        start = time.time()
        with (out / mode / "k6.log").open("w") as log:
            k6 = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
            with GaugeSampler(lambda: cpu_sample([server_pid, k6.pid]), timeout, 1.0) as cpu:
                try:
                    returncode = k6.wait(timeout)
                except subprocess.TimeoutExpired:
                    k6.kill()
                    returncode = k6.wait()
        end = time.time()
        print(f"[story] {mode}: k6 exit {returncode}", flush=True)
        time.sleep(2 * duration_seconds(SCRAPE) + 1)  # the last scrape and push are in
        with Prometheus(running.prometheus_url) as prometheus:
            columns = {
                name: _series(
                    prometheus,
                    expr.format(testid=testid, step=STEP_SECONDS, window=2 * STEP_SECONDS),
                    start,
                    end,
                )
                for name, expr in QUERIES.items()
            }
    cores = os.cpu_count() or 1
    times = sorted(columns["connections"])
    points = []
    for t, phase in zip(times, phases([columns["connections"][t] for t in times]), strict=True):
        server = share(cpu.values, 0, t - STEP_SECONDS, t)
        k6_share = share(cpu.values, 1, t - STEP_SECONDS, t) / cores
        p99 = columns["p99"].get(t, math.nan)
        slow = math.isfinite(p99) and p99 >= THRESHOLDS[0]
        points.append(
            Point(
                mode=mode,
                t=round(t - start, 1),
                phase=phase,
                connections=columns["connections"][t],
                p50=columns["p50"].get(t, math.nan),
                p99=p99,
                hub_queue=columns["hub_queue"].get(t, math.nan),
                fanout_p99=columns["fanout_p99"].get(t, math.nan),
                server_cpu=server,
                k6_cpu=k6_share,
                machine_cpu=share(cpu.values, 2, t - STEP_SECONDS, t) / cores,
                limit=capacity.limit(server, k6_share, (server + k6_share * cores) / cores)
                if slow
                else "—",
            )
        )
    return points


def phases(connections: Sequence[float], near: float = 0.98) -> list[str]:
    """``ramp``, ``hold`` or ``down`` for each step: the hold runs from the first to the last
    step with at least ``near`` of the peak connections open (k6 takes a while to start
    1000 VUs, so the stages' clock says less than the server's gauge)."""
    top = near * max(connections, default=0)
    at_peak = [i for i, c in enumerate(connections) if c >= top]
    first, last = (at_peak[0], at_peak[-1]) if at_peak else (len(connections), len(connections))
    return [
        "ramp" if i < first else "hold" if i <= last else "down" for i in range(len(connections))
    ]


def crossing(points: Sequence[Point], threshold: float) -> Point | None:
    """The first point of the ramp or hold whose p99 reached ``threshold`` seconds."""
    return next(
        (p for p in points if p.phase != "down" and math.isfinite(p.p99) and p.p99 >= threshold),
        None,
    )


def draw(points: Sequence[Point], vus: int, heading: str) -> plt.Figure:
    """Latency (log scale), hub queue depth and fan-out p99 against open connections; the ramp
    and hold of each mode, on shared axes."""
    fig, (top, middle, bottom) = plt.subplots(
        3, 1, sharex=True, figsize=(8, 8), height_ratios=(3, 1.2, 1.2), dpi=90
    )
    for mode in dict.fromkeys(p.mode for p in points):
        shown = [p for p in points if p.mode == mode and p.phase != "down"]
        x = [p.connections for p in shown]
        colour = COLOURS.get(mode)
        top.plot(x, [p.p99 * 1000 for p in shown], "o-", ms=3, color=colour, label=f"{mode} p99")
        top.plot(x, [p.p50 * 1000 for p in shown], "--", color=colour, alpha=0.7,
                 label=f"{mode} p50")  # fmt: skip
        middle.plot(x, [p.hub_queue for p in shown], "o-", ms=2, color=colour, label=mode)
        bottom.plot(x, [p.fanout_p99 * 1000 for p in shown], "o-", ms=2, color=colour,
                    label=mode)  # fmt: skip
    for threshold in THRESHOLDS:
        top.axhline(threshold * 1000, color="gray", linestyle=":", linewidth=1)
    top.set_yscale("log")
    top.set_ylabel("probe message round trip (ms)")
    top.set_title(heading, fontsize=10)
    top.legend(fontsize=8, loc="upper left")
    middle.set_ylabel("hub queue depth\n(events)")
    bottom.set_ylabel("fan-out p99 (ms)")
    bottom.set_xlabel(f"open connections (ramp 0 → {vus:,}, then hold)")
    for ax in (top, middle, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _at(point: Point | None, threshold: float, points: Sequence[Point]) -> str:
    if point is None:
        highest = max((p.p99 for p in points if math.isfinite(p.p99)), default=math.nan)
        return f"never crossed {threshold * 1000:g} ms (highest p99 {highest * 1000:,.0f} ms)"
    return (
        f"crossed {threshold * 1000:g} ms at **{point.connections:,.0f} connections** "
        f"(p99 {point.p99 * 1000:,.0f} ms; limit: {point.limit}; server CPU "
        f"{point.server_cpu:.0%} of a core, k6 {point.k6_cpu:.0%} of the cores, the machine "
        f"{point.machine_cpu:.0%} busy)"
    )


def summary(points: Sequence[Point], facts: Mapping[str, str]) -> str:
    """story.md: where each mode crossed 100 ms and 1 s, and what limited it there."""
    lines = [
        "# The story: one hub for every room vs one hub per room",
        "",
        f"{facts['date']}, commit {facts['commit']}, {facts['machine']}; `{facts['command']}`.",
        "Probe users' message round trip (k6 `chat_rtt`, p99 per "
        f"{STEP_SECONDS} s) while the connection storm ramps up. Limit rule: bench/capacity.py "
        f"(server: its thread >= {capacity.SATURATED:.0%} busy; k6: the cores >= "
        f"{capacity.SATURATED:.0%} busy or k6 >= {capacity.K6_HEAVY:.0%} of them).",
        "",
    ]
    for mode in dict.fromkeys(p.mode for p in points):
        mine = [p for p in points if p.mode == mode]
        peak = max((p.connections for p in mine), default=0)
        crossings = [_at(crossing(mine, t), t, mine) for t in THRESHOLDS]
        lines.append(f"- **{mode}** (peak {peak:,.0f} connections): " + "; ".join(crossings) + ".")
    return "\n".join(lines) + "\n"


def write_csv(points: Sequence[Point], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, [f.name for f in fields(Point)])
        writer.writeheader()
        for point in points:
            writer.writerow(
                {k: f"{v:.6g}" if isinstance(v, float) else v for k, v in asdict(point).items()}
            )


def main() -> int:
    from .run import context

    environ = dict(os.environ)
    out = Path(environ.get("STORY_DIR") or ROOT / "results" / "story")
    out.mkdir(parents=True, exist_ok=True)
    vus = int(environ.get("STORY_VUS", "1000"))
    facts = context(environ)
    facts["command"] = "make story" + (f" STORY_VUS={vus}" if vus != 1000 else "")
    modes = environ.get("STORY_MODES", MODES).split()
    points = [point for mode in modes for point in run_mode(mode, environ, out)]
    write_csv(points, out / "story.csv")
    fig = draw(points, vus, f"Connection storm, one room: {facts['date']}, {facts['machine']}")
    for suffix in ("png", "svg"):
        fig.savefig(out / f"story.{suffix}")
    plt.close(fig)
    (out / "story.md").write_text(summary(points, facts))
    print((out / "story.md").read_text(), end="")
    print(f"wrote {out}/story.png, story.svg, story.csv, story.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
