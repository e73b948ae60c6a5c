"""``make soak``: the k6 soak scenario against a fresh server, with the server's memory watched.

The accelerated soak (the default) keeps the full soak's shape, 200 users over 10 rooms and a
message every 3 s, with 10 s sessions (5-15 s each, about 20 reconnects per second) for four
minutes. Every ``SAMPLE_EVERY`` seconds it records the server's RSS (``/proc``), its C heap
(``chat_heap_bytes``) and the connections opened so far; once k6 is done and every room has
been reaped it waits ``SETTLE_SECONDS`` for the allocator to hand back what it keeps, then
writes results/soak.md (:mod:`bench.soak_report`).

Environment (``make soak NAME=value`` works too):

    SOAK_DURATION   k6 DURATION (default 4m; 30m with SOAK_SESSION=5m is the full soak)
    SOAK_SESSION    k6 SESSION, the mean connection lifetime (default 10s)
    SOAK_VUS        users (default 200)
    PYTHONMALLOC    the server's Python allocator (default malloc, as in the container image)
    BENCH_RESULTS   output directory (default results)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .measure import ROOT, GaugeSampler, duration_seconds, run_scenario
from .procstat import usage
from .server import PYTHONMALLOC, Process, serve
from .soak_report import Sample, SoakResult, render

SAMPLE_EVERY = 2.0
ROOM_GRACE = 5.0  # seconds an empty room keeps its hub in the soak server
SETTLE_SECONDS = 40.0  # after the last room is reaped: past the server's 30 s heap release
REAP_TIMEOUT = 120.0
SERVER_SETTINGS = {"quote_provider": "sim", "log_level": "warning", "room_grace": ROOM_GRACE}


def sample(server: Process, started: float) -> Sample:
    """One reading of the server: RSS from ``/proc``, the rest from ``/metrics``."""
    rss = usage(server.pid).rss
    m = server.metrics()
    return Sample(
        seconds=time.monotonic() - started,
        reconnects=int(m["chat_connections_opened_total"]),
        connections=int(m["chat_connections"]),
        rooms=int(m["chat_rooms"]),
        rss=rss,
        heap_in_use=int(m.get('chat_heap_bytes{state="in_use"}', 0)),
        heap_kept=int(m.get('chat_heap_bytes{state="kept"}', 0)),
    )


def soak(environ: dict[str, str], out: Path) -> SoakResult:
    """Run the soak scenario against a fresh server; the samples and k6's verdict.

    Raises ``TimeoutError`` when the rooms are not reaped within ``REAP_TIMEOUT`` seconds.
    """
    out.mkdir(parents=True, exist_ok=True)
    env = {
        "PROFILE": "full",
        "DURATION": environ.get("SOAK_DURATION", "4m"),
        "SESSION": environ.get("SOAK_SESSION", "10s"),
        "VUS": environ.get("SOAK_VUS", "200"),
    }
    limit = duration_seconds(env["DURATION"]) + REAP_TIMEOUT + SETTLE_SECONDS + 300
    with serve(out / "soak-server.log", **SERVER_SETTINGS) as server:
        started = time.monotonic()
        with GaugeSampler(lambda: sample(server, started), limit, SAMPLE_EVERY) as sampler:
            run = run_scenario(server, "soak", env, out)
            deadline = time.monotonic() + REAP_TIMEOUT
            while (now := sample(server, started)).rooms or now.connections:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rooms not reaped within {REAP_TIMEOUT} s")
                time.sleep(SAMPLE_EVERY)
            gone = time.monotonic() - started
            time.sleep(SETTLE_SECONDS)
    return SoakResult(
        env=env,
        allocator=f"PYTHONMALLOC={os.environ.get('PYTHONMALLOC') or PYTHONMALLOC}",
        samples=sampler.values,
        users=int(env["VUS"]),
        load_ended=gone,
        k6_returncode=run.returncode,
        k6_failed=run.failed_thresholds(),
    )


def main() -> int:
    environ = dict(os.environ)
    results = ROOT / environ.get("BENCH_RESULTS", "results")
    result = soak(environ, results / "soak")
    report = results / "soak.md"
    report.write_text(render(result))
    print(report.read_text())
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
