"""The backplane table of ``make bench``: full active-chat against (a) one process on the
memory broker, (b) one process on a Redis broker, (c) ``--workers 2`` on Redis.

For each row a fresh ``redis-server`` (Debian's, no persistence) and fresh servers are
started. CPU is summed over every roomhub process (the supervisor and its workers) and Redis,
from ``/proc``; traffic and pub/sub lag from each process's ``/metrics`` before and after;
Redis's own CPU per published message gives the one-Redis capacity estimate.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from redis import Redis

from .measure import GRACE_SECONDS, K6, ROOT, _k6_args, planned_seconds
from .procstat import usage
from .server import (
    LAB_UNLIMITED,
    PYTHONMALLOC,
    RedisServer,
    free_port,
    scrape,
    serve,
    serve_redis,
    spawn,
    wait_http_ok,
)

SETTINGS = {"quote_provider": "sim", "log_level": "warning"}
MESSAGES_IN = 'chat_messages_received_total{kind="message"}'
ROWS = ("memory", "redis", "redis-workers")
LABELS = {
    "memory": "(a) one process, memory broker",
    "redis": "(b) one process, Redis broker",
    "redis-workers": "(c) `--workers 2`, Redis broker",
}


@dataclass(frozen=True, slots=True)
class Row:
    """One configuration under full active-chat; CPU in seconds, lag in seconds."""

    name: str
    returncode: int
    seconds: float
    events: float
    frames: float
    messages: float
    rtt_p99: float | None
    roomhub_cpu: float
    redis_cpu: float | None
    k6_cpu: float
    lag_p99: float | None

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_per_1000(self) -> float:
        return (self.roomhub_cpu + (self.redis_cpu or 0.0)) / self.events * 1000

    @property
    def redis_cpu_per_message(self) -> float | None:
        """Redis CPU seconds per message published (sequenced, stored and sent out)."""
        if self.redis_cpu is None or not self.messages:
            return None
        return self.redis_cpu / self.messages


@dataclass
class Target:
    """What one row measures: the k6 endpoint, every metrics URL, every roomhub process and
    every Redis to time."""

    ws_url: str
    metrics: list[str]
    pids: list[int]
    redis: list[RedisServer]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


@contextlib.contextmanager
def redis_servers(count: int, out: Path) -> Iterator[list[RedisServer]]:
    """``count`` fresh ``redis-server`` processes on free ports, in ``out/redis-<i>``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
    with contextlib.ExitStack() as stack:
        servers = []
        for index in range(count):
            directory = out / f"redis-{index}"
            directory.mkdir(parents=True, exist_ok=True)
            servers.append(stack.enter_context(serve_redis(binary, directory)))
        yield servers


@contextlib.contextmanager
def workers(
    redis: list[RedisServer], log: Path, env: dict[str, str] | None = None
) -> Iterator[Target]:
    """``--workers 2`` on ``redis`` (several: one shard each, ``ROOMHUB_BROKER`` their URLs
    joined by commas); ``env`` is added to the servers' environment (the per-address limits of
    :data:`~bench.server.LAB_UNLIMITED` are off unless set there)."""
    port, metrics_port = free_port(), free_port()
    server_env = {f"ROOMHUB_{k.upper()}": str(v) for k, v in SETTINGS.items()}
    server_env |= {name: "0" for name in LAB_UNLIMITED}
    server_env |= {"PYTHONMALLOC": os.environ.get("PYTHONMALLOC") or PYTHONMALLOC}
    server_env |= env or {}
    server_env |= {
        "ROOMHUB_HOST": "127.0.0.1",
        "ROOMHUB_PORT": str(port),
        "ROOMHUB_WORKERS": "2",
        "ROOMHUB_METRICS_PORT": str(metrics_port),
        "ROOMHUB_BROKER": ",".join(server.url for server in redis),
    }
    with spawn(["-m", "server", "serve"], port, "/readyz", log, server_env) as parent:
        metrics = [f"http://127.0.0.1:{metrics_port + i}/metrics" for i in range(2)]
        for url in metrics:  # /readyz answered from one worker; the other may still start
            wait_http_ok(url, proc=parent.proc)
        yield Target(parent.ws_url, metrics, [parent.pid, *_children(parent.pid)], redis)


@contextlib.contextmanager
def _target(name: str, out: Path) -> Iterator[Target]:
    """Start what row ``name`` needs and describe it."""
    with contextlib.ExitStack() as stack:
        if name == "memory":
            server = stack.enter_context(serve(out / f"{name}-server.log", **SETTINGS))
            yield Target(server.ws_url, [f"{server.url}/metrics"], [server.pid], [])
            return
        redis = stack.enter_context(redis_servers(1, out / f"{name}-redis"))
        if name == "redis":
            server = stack.enter_context(
                serve(out / f"{name}-server.log", broker=redis[0].url, **SETTINGS)
            )
            yield Target(server.ws_url, [f"{server.url}/metrics"], [server.pid], redis)
            return
        yield stack.enter_context(workers(redis, out / f"{name}-server.log"))


def grew(before: list[dict[str, float]], after: list[dict[str, float]], name: str) -> float:
    """How much metric ``name`` grew, summed over every process's scrape."""
    pairs = zip(before, after, strict=True)
    return sum(new.get(name, 0.0) - old.get(name, 0.0) for old, new in pairs)


def lag_p99(before: list[dict[str, float]], after: list[dict[str, float]]) -> float | None:
    """p99 of ``chat_broker_lag_seconds`` over the run, all processes together (the upper
    bound of the bucket holding the 99th percentile)."""
    buckets: dict[float, float] = {}
    for old, new in zip(before, after, strict=True):
        for key, value in new.items():
            if key.startswith("chat_broker_lag_seconds_bucket{"):
                le = float(key.split('le="')[1].split('"')[0])
                buckets[le] = buckets.get(le, 0.0) + value - old.get(key, 0.0)
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return None
    for le in sorted(buckets):
        if buckets[le] >= 0.99 * total:
            return le
    return None


@dataclass(frozen=True, slots=True)
class RedisCounts:
    """What a Redis has done so far, from ``INFO``: ``messages`` sequenced (the message
    script's ``INCR`` calls: Redis counts a script's commands in ``commandstats``),
    ``script_calls`` (``EVALSHA``: each one carries a batch of messages) and ``network_bytes``
    read and written on its connections (``total_net_input_bytes`` + ``_output_bytes``)."""

    messages: int
    script_calls: int
    network_bytes: int

    @classmethod
    def read(cls, redis: RedisServer) -> RedisCounts:
        with contextlib.closing(Redis.from_url(redis.url)) as client:
            commands = client.info("commandstats")
            stats = client.info("stats")
        return cls(
            int(commands.get("cmdstat_incr", {}).get("calls", 0)),
            int(commands.get("cmdstat_evalsha", {}).get("calls", 0)),
            int(stats["total_net_input_bytes"]) + int(stats["total_net_output_bytes"]),
        )

    def __sub__(self, other: RedisCounts) -> RedisCounts:
        return RedisCounts(
            self.messages - other.messages,
            self.script_calls - other.script_calls,
            self.network_bytes - other.network_bytes,
        )


@dataclass(frozen=True, slots=True)
class Observed:
    """One k6 active-chat run against a :class:`Target`: k6's summary and exit code, every
    process's scrape before and after; CPU in seconds over the run (roomhub summed, Redis
    per server); what each Redis did in the run."""

    returncode: int
    summary: dict
    before: list[dict[str, float]]
    after: list[dict[str, float]]
    roomhub_cpu: float
    redis_cpu: list[float]
    redis_counts: list[RedisCounts]
    k6_cpu: float

    @property
    def seconds(self) -> float:
        return float(self.summary["state"]["testRunDurationMs"]) / 1000

    @property
    def rtt_p99(self) -> float | None:
        """chat_rtt p99 in milliseconds (None without samples)."""
        p99 = self.summary["metrics"].get("chat_rtt", {}).get("values", {}).get("p(99)")
        return None if p99 is None else float(p99)


def observe(target: Target, env: dict[str, str], out: Path) -> Observed:
    """Run k6 ``active-chat`` (``env``: its ``-e`` variables) against ``target``; k6's files
    go to ``out``. The run is bounded by its planned duration plus ``GRACE_SECONDS``."""
    script = ROOT / "k6" / "scenarios" / "active-chat.js"
    env = {**env, "WS_URL": target.ws_url, "RESULTS_DIR": str(out)}
    timeout = planned_seconds(script, env) + GRACE_SECONDS
    before = [scrape(url) for url in target.metrics]
    cpu = [usage(pid).cpu_seconds for pid in target.pids]
    redis_cpu = [usage(redis.pid).cpu_seconds for redis in target.redis]
    counts = [RedisCounts.read(redis) for redis in target.redis]
    command = [str(K6), "run", "--quiet", "--no-color", "--address", "", *_k6_args(env)]
    with (out / "k6.log").open("w") as log:
        started = usage_self()
        done = subprocess.run(
            [*command, str(script)], cwd=ROOT, stdout=log, stderr=log, timeout=timeout
        )
        k6_cpu = usage_self() - started
    after = [scrape(url) for url in target.metrics]
    return Observed(
        returncode=done.returncode,
        summary=json.loads((out / "active-chat-summary.json").read_text()),
        before=before,
        after=after,
        roomhub_cpu=sum(
            usage(pid).cpu_seconds - c for pid, c in zip(target.pids, cpu, strict=True)
        ),
        redis_cpu=[
            usage(redis.pid).cpu_seconds - c
            for redis, c in zip(target.redis, redis_cpu, strict=True)
        ],
        redis_counts=[
            RedisCounts.read(redis) - old for redis, old in zip(target.redis, counts, strict=True)
        ],
        k6_cpu=k6_cpu,
    )


def measure(name: str, env: dict[str, str], out: Path) -> Row:
    """Run k6 active-chat (``env``: PROFILE, VUS, DURATION) against row ``name``."""
    out.mkdir(parents=True, exist_ok=True)
    with _target(name, out) as target:
        run = observe(target, env, out)
    return Row(
        name=name,
        returncode=run.returncode,
        seconds=run.seconds,
        events=grew(run.before, run.after, "chat_events_delivered_total"),
        frames=grew(run.before, run.after, "chat_frames_sent_total"),
        messages=grew(run.before, run.after, MESSAGES_IN),
        rtt_p99=run.rtt_p99,
        roomhub_cpu=run.roomhub_cpu,
        redis_cpu=sum(run.redis_cpu) if run.redis_cpu else None,
        k6_cpu=run.k6_cpu,
        lag_p99=lag_p99(run.before, run.after),
    )


def usage_self() -> float:
    """CPU seconds of this process's finished children (k6 runs as one)."""
    rusage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return rusage.ru_utime + rusage.ru_stime


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:,.1f}"


def render(rows: list[Row]) -> list[str]:
    """The backplane section of results/bench.md: the table and the one-Redis estimate."""
    lines = [
        "## Backplane: full active-chat, memory vs Redis vs `--workers 2`",
        "",
        "| | events/s | events per frame | chat_rtt p99 (ms) | CPU ms per 1000 events "
        "(roomhub + Redis) | Redis CPU µs per message | pub/sub lag p99 (ms, ≤) | k6 CPU (s) "
        "| k6 exit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        per_message = row.redis_cpu_per_message
        lines.append(
            f"| {LABELS[row.name]} | {row.events_per_second:,.0f} | "
            f"{row.events / row.frames if row.frames else 0:,.1f} | "
            f"{'—' if row.rtt_p99 is None else f'{row.rtt_p99:,.1f}'} | "
            f"{row.cpu_per_1000 * 1000:,.2f} | "
            f"{'—' if per_message is None else f'{per_message * 1e6:,.1f}'} | "
            f"{_ms(row.lag_p99)} | {row.k6_cpu:,.1f} | {row.returncode} |"
        )
    lines += [
        "",
        "Pub/sub lag p99 is the upper bound of the `chat_broker_lag_seconds` bucket holding the",
        "99th percentile, over every process; it includes the room's fan-out interval (10 ms).",
        "k6 shares the machine's cores with the servers and Redis: where k6 CPU nears the run",
        "time, the load generator, not the server, limits the row.",
        "",
    ]
    redis_row = next((r for r in rows if r.name == "redis"), None)
    if redis_row is not None and redis_row.redis_cpu_per_message:
        per_message = redis_row.redis_cpu_per_message
        capacity = 1 / per_message
        rate = redis_row.messages / redis_row.seconds
        lines += [
            "One Redis (one core for commands): "
            f"{per_message * 1e6:,.1f} µs of Redis CPU per published message "
            f"→ at most 1 / {per_message * 1e6:,.1f} µs ≈ **{capacity:,.0f} messages/s**. "
            f"This run sent {rate:,.0f} messages/s, so Redis was "
            f"{rate / capacity:.1%} busy (docs/scaling.md carries the estimate on).",
            "",
        ]
    return lines
