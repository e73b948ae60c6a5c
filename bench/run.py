"""``make bench``: run k6 scenarios against roomhub in each hub mode; write results/bench.md.

For every mode a fresh server (``python -m server serve``, quote provider ``sim``) is
started per step: an idle-connection memory probe, then each scenario. Server CPU time and
peak RSS come from ``/proc/<pid>``; traffic figures from ``/metrics`` before and after.

Environment (``make bench NAME=value`` works too):

    BENCH_MODES       hub modes to compare (default "sharded global")
    BENCH_SCENARIOS   k6 scenarios (default "connection-storm active-chat")
    BENCH_PROFILE     k6 PROFILE, full or smoke (default full)
    BENCH_STORM_VUS   connection-storm VUs (default: the profile's)
    BENCH_CHAT_VUS    active-chat VUs (default: the profile's)
    BENCH_DURATION    active-chat DURATION, e.g. 30s (default: the profile's)
    BENCH_IDLE        idle connections for the memory probe, one probe per count
                      (default "1000 10000"; 0 skips it)
    BENCH_SITES       idle connections in a tracemalloc-traced server, for the allocation
                      sites per connection (default 300; 0 skips it)
    BENCH_BACKPLANE   backplane rows to run (default "memory redis redis-workers"; "" skips
                      the table): full active-chat on the memory broker, on Redis, and
                      with --workers 2 on Redis (needs Debian's redis-server)
    BENCH_SCALEOUT    Redis shard counts of the scale-out table (default "1 2 4"; "" skips
                      it): 100 rooms of 2 users sending 20 messages/s each against
                      --workers 2 on that many fresh redis-server shards
    BENCH_SCALEOUT_DURATION  k6 DURATION of each scale-out row (default 30s)
    BENCH_SCALEOUT_SEND_EVERY_MS  milliseconds between a scale-out user's messages (default 50)
    BENCH_CAPACITY    users per capacity step, all in one room sending 2 messages/s each
                      (default "200 300 400 600"; 0 skips the steps)
    BENCH_CAPACITY_MODES  hub modes that run the capacity steps (default "sharded")
    BENCH_CAPACITY_DURATION  active-chat DURATION of each step (default 30s)
    BENCH_RESULTS     output directory (default results)

``BENCH_MODES="" BENCH_BACKPLANE="" make bench`` runs only the scale-out table.

Other ``ROOMHUB_*`` variables in the environment reach every server started.
"""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from . import backplane, capacity, idle, scaleout
from .measure import K6, ROOT, run_scenario
from .report import ModeResult, render
from .server import serve

SERVER_SETTINGS = {"quote_provider": "sim", "log_level": "warning"}
SCENARIO_ENV = {
    "connection-storm": {"VUS": "BENCH_STORM_VUS"},
    "active-chat": {"VUS": "BENCH_CHAT_VUS", "DURATION": "BENCH_DURATION"},
}


def scenario_env(scenario: str, environ: dict[str, str]) -> dict[str, str]:
    """k6 ``-e`` variables for ``scenario``: the profile plus any BENCH_* override."""
    env = {"PROFILE": environ.get("BENCH_PROFILE", "full")}
    for name, source in SCENARIO_ENV.get(scenario, {}).items():
        if environ.get(source):
            env[name] = environ[source]
    return env


def context(environ: dict[str, str]) -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    k6_version = subprocess.run(
        [str(K6), "version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split(" (")[0]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit or "unknown",
        "machine": f"{os.cpu_count()} CPUs, {cpu}",
        "python": platform.python_version(),
        "k6": k6_version,
        "profile": environ.get("BENCH_PROFILE", "full"),
    }


def bench_mode(mode: str, environ: dict[str, str], out: Path) -> ModeResult:
    out.mkdir(parents=True, exist_ok=True)
    memory = []
    for count in (int(n) for n in environ.get("BENCH_IDLE", "1000 10000").split() if n != "0"):
        with serve(out / f"idle-{count}-server.log", hub_mode=mode, **SERVER_SETTINGS) as server:
            memory.append(asyncio.run(idle.measure(server, count)))
        kib = memory[-1].per_connection / 1024
        print(f"[{mode}] idle: {kib:.1f} KiB per connection at {count}", flush=True)
    sites = None
    if count := int(environ.get("BENCH_SITES", "300")):
        sites = idle.allocation_sites(out, count, hub_mode=mode, **SERVER_SETTINGS)
    runs = []
    for scenario in environ.get("BENCH_SCENARIOS", "connection-storm active-chat").split():
        with serve(out / f"{scenario}-server.log", hub_mode=mode, **SERVER_SETTINGS) as server:
            run = run_scenario(server, scenario, scenario_env(scenario, environ), out)
        runs.append(run)
        print(f"[{mode}] {scenario}: k6 exit {run.returncode}", flush=True)
    steps = []
    if mode in environ.get("BENCH_CAPACITY_MODES", "sharded").split():
        steps = capacity_steps(mode, environ, out)
    return ModeResult(mode, memory, sites, runs, tuple(steps))


def capacity_steps(mode: str, environ: dict[str, str], out: Path) -> list[capacity.Step]:
    """Run active-chat once per BENCH_CAPACITY user count, each against a fresh server."""
    results = []
    for users in capacity.steps(environ.get("BENCH_CAPACITY", capacity.STEPS)):
        env = capacity.scenario_env(
            users,
            environ.get("BENCH_PROFILE", "full"),
            environ.get("BENCH_CAPACITY_DURATION", capacity.DURATION),
        )
        step_out = out / f"capacity-{users}"
        step_out.mkdir(parents=True, exist_ok=True)
        with serve(step_out / "server.log", hub_mode=mode, **SERVER_SETTINGS) as server:
            run = run_scenario(server, "active-chat", env, step_out, capacity.k6_gogc())
        results.append(capacity.Step(users, run, os.cpu_count() or 1))
        step = results[-1]
        print(
            f"[{mode}] capacity {users} users: sent {step.sent_share:.1%}, delivered "
            f"{step.delivered_share:.1%}, p99 {step.p99} ms, "
            f"sustained {step.sustained}",
            flush=True,
        )
    return results


def main() -> int:
    environ = dict(os.environ)
    results_dir = ROOT / environ.get("BENCH_RESULTS", "results")
    shards = scaleout.shard_counts(environ.get("BENCH_SCALEOUT", scaleout.SHARDS))
    facts = context(environ)
    results = [
        bench_mode(mode, environ, results_dir / "bench" / mode)
        for mode in environ.get("BENCH_MODES", "sharded global").split()
    ]
    rows = []
    for name in environ.get("BENCH_BACKPLANE", " ".join(backplane.ROWS)).split():
        env = scenario_env("active-chat", environ)
        rows.append(backplane.measure(name, env, results_dir / "bench" / f"backplane-{name}"))
        print(f"[backplane] {name}: k6 exit {rows[-1].returncode}", flush=True)
    scaled = []
    for count in shards:
        out = results_dir / "bench" / f"scaleout-{count}"
        duration = environ.get("BENCH_SCALEOUT_DURATION", scaleout.DURATION)
        profile = environ.get("BENCH_PROFILE", "full")
        every = int(environ.get("BENCH_SCALEOUT_SEND_EVERY_MS", scaleout.SEND_EVERY_MS))
        scaled.append(scaleout.measure(count, duration, profile, out, every))
        print(f"[scaleout] {count} shards: k6 exit {scaled[-1].returncode}", flush=True)
    sections = [render(results, facts)]
    sections += ["\n".join(backplane.render(rows))] if rows else []
    sections += ["\n".join(scaleout.render(scaled))] if scaled else []
    report = results_dir / "bench.md"
    report.write_text("\n".join(sections))
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
