"""The scale-out table of ``make bench``: many small rooms against ``--workers 2`` on 1, 2 and
4 Redis shards.

The load is the peer harness's many-small-rooms run (``../shared/peers``, ``ROOMS=100
INTERVAL_MS=50``) played by the project's own ``k6/scenarios/active-chat.js`` in the same
shape: 200 users in 100 rooms of 2, each sending a message every 50 ms (4,000 messages/s
offered). Each row starts fresh ``redis-server`` shards and a fresh ``--workers 2`` server
with ``ROOMHUB_BROKER`` set to the shards' URLs joined by commas, the per-address limits off
and the rate limit above 20 frames/s. Redis CPU per shard comes from ``/proc/<pid>/stat``,
the messages each shard sequenced from its ``INFO commandstats``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from server.ops.metrics import FAST_BUCKETS

from . import backplane
from .procstat import usage

SHARDS = "1 2 4"
DURATION = "30s"
USERS, ROOMS = 200, 100  # user n joins room n mod 100: 100 rooms of 2
SEND_EVERY_MS = 50  # each user sends 20 messages/s
SERVER_ENV = {"ROOMHUB_RATE_LIMIT": "100", "ROOMHUB_RATE_BURST": "100"}
"""Room for 20 frames/s per connection (default 5), as in the peer harness runs."""


def shard_counts(text: str) -> list[int]:
    """``BENCH_SCALEOUT`` ("1 2 4") -> [1, 2, 4]; "" -> []. ``ValueError`` naming the
    variable on anything but positive whole numbers."""
    try:
        counts = [int(word) for word in text.split()]
    except ValueError:
        counts = [0]
    if any(count < 1 for count in counts):
        raise ValueError(f"BENCH_SCALEOUT must list shard counts like '1 2 4', got {text!r}")
    return counts


@dataclass(frozen=True, slots=True)
class Row:
    """One shard count under the load, each user sending every ``send_every_ms``.
    ``seconds``: the k6 run; ``messages``, ``events``: what every process received and
    delivered; CPU in seconds, each shard's less ``idle_cpu`` (what a ``redis-server``
    without clients used meanwhile: its timers); ``shard_messages``: messages each shard
    sequenced, ``shard_bytes``: bytes each read and wrote, ``script_calls``: message script
    calls on every shard (each a batch); lag in seconds, RTT in milliseconds;
    ``sent_share``: the messages k6 sent over those it planned (below 1: k6 fell behind);
    ``load``: the machine's 1-minute load average when the run ended."""

    shards: int
    send_every_ms: int
    returncode: int
    seconds: float
    messages: float
    events: float
    roomhub_cpu: float
    shard_cpu: tuple[float, ...]
    idle_cpu: float
    shard_messages: tuple[int, ...]
    shard_bytes: tuple[int, ...]
    script_calls: int
    lag_p99: float | None
    rtt_p99: float | None
    sent_share: float | None
    k6_cpu: float
    load: float

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.seconds

    @property
    def shard_us_per_message(self) -> list[float | None]:
        """Each shard's CPU over the messages it sequenced, in µs (None: it sequenced none)."""
        return [
            cpu / count * 1e6 if count else None
            for cpu, count in zip(self.shard_cpu, self.shard_messages, strict=True)
        ]

    @property
    def redis_us_per_message(self) -> float | None:
        """CPU of every shard together over every message sequenced, in µs."""
        total = sum(self.shard_messages)
        return sum(self.shard_cpu) / total * 1e6 if total else None

    @property
    def messages_per_call(self) -> float | None:
        """Messages per message script call: how much each shard's batches held."""
        return sum(self.shard_messages) / self.script_calls if self.script_calls else None

    @property
    def redis_bytes_per_message(self) -> float | None:
        """Bytes every shard read and wrote together over every message sequenced."""
        total = sum(self.shard_messages)
        return sum(self.shard_bytes) / total if total else None

    @property
    def roomhub_ms_per_1000(self) -> float | None:
        """roomhub CPU (every process) per 1000 events delivered, in ms."""
        return self.roomhub_cpu / self.events * 1e6 if self.events else None


def _sent_share(summary: dict) -> float | None:
    """k6's ``chat_messages_sent`` over sent + ``chat_messages_unsent`` (None: none planned)."""
    metrics = summary["metrics"]
    sent = metrics.get("chat_messages_sent", {}).get("values", {}).get("count", 0)
    unsent = metrics.get("chat_messages_unsent", {}).get("values", {}).get("count", 0)
    return sent / (sent + unsent) if sent + unsent else None


def measure(
    shards: int, duration: str, profile: str, out: Path, send_every_ms: int = SEND_EVERY_MS
) -> Row:
    """Run the load (each user sending every ``send_every_ms``) for ``duration`` (a k6
    duration) against ``--workers 2`` on ``shards``
    fresh Redis shards (and one more, left idle, whose CPU is each shard's baseline); files go
    to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    env = {"PROFILE": profile, "DURATION": duration, "VUS": str(USERS), "ROOMS": str(ROOMS)}
    env["SEND_EVERY_MS"] = str(send_every_ms)
    with (
        backplane.redis_servers(shards + 1, out) as redis,
        backplane.workers(redis[:shards], out / "server.log", SERVER_ENV) as target,
    ):
        idle = usage(redis[-1].pid).cpu_seconds
        run = backplane.observe(target, env, out)
        idle = usage(redis[-1].pid).cpu_seconds - idle
    return Row(
        shards=shards,
        send_every_ms=send_every_ms,
        returncode=run.returncode,
        seconds=run.seconds,
        messages=backplane.grew(run.before, run.after, backplane.MESSAGES_IN),
        events=backplane.grew(run.before, run.after, "chat_events_delivered_total"),
        roomhub_cpu=run.roomhub_cpu,
        shard_cpu=tuple(cpu - idle for cpu in run.redis_cpu),
        idle_cpu=idle,
        shard_messages=tuple(counts.messages for counts in run.redis_counts),
        shard_bytes=tuple(counts.network_bytes for counts in run.redis_counts),
        script_calls=sum(counts.script_calls for counts in run.redis_counts),
        lag_p99=backplane.lag_p99(run.before, run.after),
        rtt_p99=run.rtt_p99,
        sent_share=_sent_share(run.summary),
        k6_cpu=run.k6_cpu,
        load=os.getloadavg()[0],
    )


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _lag_ms(seconds: float | None) -> str:
    """A bucket bound in ms; past the largest finite bucket (+Inf): "> 1,000"."""
    if seconds == float("inf"):
        return f"> {_num(max(FAST_BUCKETS) * 1000, 0)}"
    return _num(None if seconds is None else seconds * 1000)


def _per_shard(row: Row) -> str:
    """Each shard's µs per message and its share of the messages: "21.0 (52%) / 23.1 (48%)"."""
    total = sum(row.shard_messages)
    return " / ".join(
        f"{_num(us)} ({count / total if total else 0:.0%})"
        for us, count in zip(row.shard_us_per_message, row.shard_messages, strict=True)
    )


def render(rows: list[Row]) -> list[str]:
    """The scale-out section of results/bench.md."""
    lines = [
        "## Scale-out: 100 rooms of 2 against `--workers 2` on Redis shards",
        "",
        "| Redis shards | messages/s | sent % of planned "
        "| Redis CPU µs per message, per shard (share of messages) "
        "| Redis CPU µs per message, all shards | idle Redis CPU (ms) | messages per script call "
        "| Redis network bytes per message "
        "| roomhub CPU ms per 1000 events "
        "| pub/sub lag p99 (ms, ≤) | chat_rtt p99 (ms) | k6 CPU (s) | k6 exit | load average |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.shards} | {row.messages_per_second:,.0f} | "
            f"{'—' if row.sent_share is None else f'{row.sent_share:.0%}'} | {_per_shard(row)} | "
            f"{_num(row.redis_us_per_message)} | {_num(row.idle_cpu * 1000, 0)} | "
            f"{_num(row.messages_per_call)} | "
            f"{_num(row.redis_bytes_per_message, 0)} | "
            f"{_num(row.roomhub_ms_per_1000, 2)} | "
            f"{_lag_ms(row.lag_p99)} | "
            f"{_num(row.rtt_p99)} | {row.k6_cpu:,.1f} | {row.returncode} | {row.load:.1f} |"
        )
    offered = ", ".join(
        f"{USERS * 1000 / every:,.0f} messages/s offered with SEND_EVERY_MS={every}"
        for every in sorted({row.send_every_ms for row in rows})
    )
    lines += [
        "",
        f"The load: k6 `active-chat` with VUS={USERS} ROOMS={ROOMS}, {offered} while it",
        "sends. Messages/s divides what the servers received by the whole k6 run (connects and",
        "the 2 s drain included); sent % of planned is k6's sent messages over those its users'",
        "schedules held (below 100 %, k6 fell behind: the load generator set the pace). A",
        "shard's messages are the `INCR` calls of the message script in its `INFO commandstats`;",
        "its CPU is utime + stime of its `redis-server` over the run less that of an idle one",
        "(no clients: its timers alone) started beside it; its network bytes are what",
        "it read and wrote (`INFO stats`), pub/sub deliveries to both workers included;",
        "messages per script call: messages over `EVALSHA` calls, every shard together. Pub/sub",
        "lag p99 is the upper bound of the `chat_broker_lag_seconds` bucket holding the 99th",
        "percentile, over both workers. Load average: the machine's 1-minute load average as",
        f"the row's k6 run ended ({os.cpu_count()} CPUs, which k6 shares with the servers).",
        "",
    ]
    return lines
