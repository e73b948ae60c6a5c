"""``python -m bench.redis_cost``: Redis CPU per message in many small rooms.

k6 active-chat with 200 users in 100 rooms of 2, each sending a message every 50 ms (4,000
messages/s offered), against one roomhub process on one fresh ``redis-server`` (no
persistence), rate limit raised so that no message is refused. Reports per run: messages/s
(those roomhub received), Redis CPU µs per message (``/proc/<redis pid>/stat`` utime + stime
over the k6 run, less the idle Redis CPU measured for ``IDLE_SECONDS`` before it, divided by
the messages), roomhub CPU ms per 1000 events delivered, ``chat_rtt`` p99, SAY calls and
their ``usec_per_call`` from ``INFO commandstats``, and the 1-minute load average before and
after.

Env: ``BENCH_TREES`` space-separated ``name=directory`` source trees to compare, run in
turn each round (default ``this=.``; e.g. ``before=/tmp/roomhub-main this=.``: each runs
``python -m server`` from its directory with this Python), ``BENCH_ROUNDS`` (2),
``BENCH_DURATION`` (``30s``), ``BENCH_ROOMS`` (100), ``BENCH_VUS`` (200),
``BENCH_SEND_EVERY_MS`` (50), ``BENCH_K6_SCRIPT`` (default the project's active-chat; the
peer harness's ``../shared/peers/k6/active-chat.js``, which sends every interval whatever
comes back, gives the load docs/scaling.md quotes), ``BENCH_SERVER_ENV`` extra
``NAME=value`` settings for every server (e.g. ``ROOMHUB_REDIS_BATCH_WINDOW=500``) and
``BENCH_SERVER_ENV_<NAME>`` for tree ``name``'s alone (a tree may be listed twice under two
names to compare settings),
``BENCH_RESULTS`` (``results``). Writes
``<results>/redis-cost/<stamp>/results.md`` and prints the table.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from redis import Redis

from .measure import GRACE_SECONDS, K6, ROOT, _k6_args, planned_seconds
from .procstat import usage
from .server import LAB_UNLIMITED, free_port, scrape, serve_redis, spawn

IDLE_SECONDS = 3.0
MESSAGES_IN = 'chat_messages_received_total{kind="message"}'
EVENTS = "chat_events_delivered_total"
SETTINGS = {
    "ROOMHUB_RATE_LIMIT": "100",
    "ROOMHUB_RATE_BURST": "100",
    "ROOMHUB_QUOTE_PROVIDER": "sim",
    "ROOMHUB_LOG_LEVEL": "warning",
}


@dataclass(frozen=True, slots=True)
class Result:
    """One run: rates per second, CPU in seconds, ``rtt_p99`` in ms."""

    tree: str
    seconds: float
    messages: float
    events: float
    redis_cpu: float
    roomhub_cpu: float
    rtt_p99: float | None
    say_calls: int
    say_usec_per_call: float
    load: tuple[float, float]

    def row(self) -> str:
        per_message = self.redis_cpu / self.messages * 1e6 if self.messages else 0.0
        per_1000 = self.roomhub_cpu / self.events * 1e6 if self.events else 0.0
        p99 = "—" if self.rtt_p99 is None else f"{self.rtt_p99:,.0f}"
        per_call = self.messages / self.say_calls if self.say_calls else 0.0
        return (
            f"| {self.tree} | {self.messages / self.seconds:,.0f} | {per_message:.1f} | "
            f"{per_1000:.1f} | {p99} | {per_call:.1f} | {self.say_usec_per_call:.1f} | "
            f"{self.load[0]:.1f}-{self.load[1]:.1f} |"
        )


HEAD = [
    "| tree | msgs/s | Redis CPU µs / message | roomhub CPU ms / 1000 events | RTT p99 (ms) "
    "| messages per SAY call | SAY µs per call | load avg (1 min) |",
    "|---|---|---|---|---|---|---|---|",
]


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _commandstats(port: int) -> dict[str, dict[str, float]]:
    """``INFO commandstats`` as ``{command: {calls, usec, ...}}``."""
    with contextlib.closing(Redis(port=port, socket_timeout=5)) as client:
        stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): {k: float(v) for k, v in fields.items()}
        for name, fields in stats.items()
    }


def run_once(tree: str, directory: Path, out: Path, extra: dict[str, str]) -> Result:
    """One k6 run against ``python -m server`` from ``directory`` on a fresh Redis."""
    out.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
    script = Path(os.environ.get("BENCH_K6_SCRIPT", ROOT / "k6" / "scenarios" / "active-chat.js"))
    port = free_port()
    env = {**SETTINGS, **{name: "0" for name in LAB_UNLIMITED}, **extra}
    with serve_redis(binary, out) as redis:
        env |= {
            "ROOMHUB_BROKER": redis.url,
            "ROOMHUB_HOST": "127.0.0.1",
            "ROOMHUB_PORT": str(port),
        }
        args = ["-m", "server", "serve"]
        with spawn(args, port, "/readyz", out / "server.log", env, cwd=directory) as server:
            k6_env = {
                "PROFILE": "full",
                "VUS": os.environ.get("BENCH_VUS", "200"),
                "ROOMS": os.environ.get("BENCH_ROOMS", "100"),
                "SEND_EVERY_MS": os.environ.get("BENCH_SEND_EVERY_MS", "50"),
                "INTERVAL_MS": os.environ.get("BENCH_SEND_EVERY_MS", "50"),
                "SUMMARY": str(out / "active-chat-summary.json"),
                "DURATION": os.environ.get("BENCH_DURATION", "30s"),
                "WS_URL": server.ws_url,
                "RESULTS_DIR": str(out),
            }
            timeout = planned_seconds(script, k6_env) + GRACE_SECONDS
            command = [str(K6), "run", "--quiet", "--no-color", "--address", ""]
            idle_start = usage(redis.pid).cpu_seconds
            time.sleep(IDLE_SECONDS)
            idle_rate = (usage(redis.pid).cpu_seconds - idle_start) / IDLE_SECONDS
            stats_before = _commandstats(redis.port)
            before = scrape(f"{server.url}/metrics")
            redis_cpu = usage(redis.pid).cpu_seconds
            roomhub_cpu = usage(server.pid).cpu_seconds
            load_before = _load()
            started = time.monotonic()
            with (out / "k6.log").open("w") as log:
                subprocess.run(
                    [*command, *_k6_args(k6_env), str(script)],
                    cwd=ROOT,
                    stdout=log,
                    stderr=log,
                    timeout=timeout,
                )
            elapsed = time.monotonic() - started
            redis_cpu = usage(redis.pid).cpu_seconds - redis_cpu - idle_rate * elapsed
            roomhub_cpu = usage(server.pid).cpu_seconds - roomhub_cpu
            after = scrape(f"{server.url}/metrics")
            stats_after = _commandstats(redis.port)
    calls = {
        name: {k: v - stats_before.get(name, {}).get(k, 0.0) for k, v in stat.items()}
        for name, stat in stats_after.items()
    }
    (out / "commandstats.json").write_text(json.dumps(calls, indent=1))
    summary = json.loads((out / "active-chat-summary.json").read_text())
    if "rtt_ms" in summary:  # the peer harness's script: rates over its send window
        seconds, p99 = summary["send_window_s"], summary["rtt_ms"].get("p99")
    else:
        seconds = summary["state"]["testRunDurationMs"] / 1000
        p99 = summary["metrics"].get("chat_rtt", {}).get("values", {}).get("p(99)")
    say = {
        k: stats_after.get("evalsha", {}).get(k, 0.0) - stats_before.get("evalsha", {}).get(k, 0.0)
        for k in ("calls", "usec")
    }
    return Result(
        tree=tree,
        seconds=seconds,
        messages=after.get(MESSAGES_IN, 0.0) - before.get(MESSAGES_IN, 0.0),
        events=after.get(EVENTS, 0.0) - before.get(EVENTS, 0.0),
        redis_cpu=redis_cpu,
        roomhub_cpu=roomhub_cpu,
        rtt_p99=p99,
        say_calls=int(say["calls"]),
        say_usec_per_call=say["usec"] / say["calls"] if say["calls"] else 0.0,
        load=(load_before, _load()),
    )


def main() -> None:
    trees = [
        (name, Path(directory).resolve())
        for name, _, directory in (
            item.partition("=") for item in os.environ.get("BENCH_TREES", "this=.").split()
        )
    ]
    extra = dict(
        item.split("=", 1) for item in os.environ.get("BENCH_SERVER_ENV", "").split() if item
    )
    rounds = int(os.environ.get("BENCH_ROUNDS", "2"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / os.environ.get("BENCH_RESULTS", "results") / "redis-cost" / stamp
    lines = list(HEAD)
    print("\n".join(lines), flush=True)
    for round_ in range(1, rounds + 1):
        for name, directory in trees:
            own = os.environ.get(f"BENCH_SERVER_ENV_{name.upper()}", "").split()
            settings = extra | dict(item.split("=", 1) for item in own)
            result = run_once(name, directory, out / f"{round_}-{name}", settings)
            lines.append(result.row())
            print(lines[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"written: {out / 'results.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
