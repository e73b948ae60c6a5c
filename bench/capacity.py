"""The capacity table of ``make bench``: one room, users stepped up, 2 messages/s each.

Each step runs the ``active-chat`` scenario against a fresh server with every user in one room
sending a message every ``SEND_EVERY_MS``. A step is *sustained* when k6 sent at least
``MIN_SHARE`` of the messages its schedule planned, the members read at least ``MIN_SHARE`` of
the deliveries owed (every message to every member) and ``chat_rtt`` p99 is below
``MAX_P99_MS``. k6 shares the cores with the server, so a step that is not sustained names what
ran out: the server (its one thread busy ``SATURATED`` of the time) or k6 (the cores full,
or k6 holding ``K6_HEAVY`` of them or more, without the server being saturated). Users send
from ``WARMUP_MS`` into a step on."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .measure import Run

STEPS = "200 300 400 600"
SEND_EVERY_MS = 500
WARMUP_MS = 3000
"""Users send from this long into a step on: the row measures the room once everyone has
joined, not the join burst (400 k6 VUs starting and 400 welcomes)."""
DURATION = "30s"
MIN_SHARE = 0.99
MAX_P99_MS = 100.0
SATURATED = 0.9
K6_GOGC = "300"
"""Go's ``GOGC`` for k6 in the steps (an outer ``GOGC`` wins). At Go's default (100) k6's
garbage collector took about a quarter of its CPU in a 400-user room (a sampling profile), on
the cores the server needs; at 300 it runs a third as often, and k6 holds about 0.9 GB of RSS
there instead of 0.4 GB. The other scenarios keep the default: in the connection storm, whose
1,000 VUs start at once, it made the probes' p99 worse."""
K6_HEAVY = 0.5
"""k6's share of all cores from which it is named the limit of a step the server kept up with
(its thread below ``SATURATED``): k6 then holds more of the machine than the server and its
VUs read their sockets late (frames wait in the socket buffers, which ``chat_rtt`` and
``chat_delivery_lag`` count)."""


def k6_gogc() -> str:
    """The ``GOGC`` k6 runs the steps with."""
    return os.environ.get("GOGC", K6_GOGC)


def steps(raw: str) -> list[int]:
    """User counts from a space-separated list (``"200 300"``); ``"0"`` or ``""`` -> none.

    Raises ``ValueError`` naming the list when an entry is not a whole number.
    """
    try:
        return [users for users in (int(word) for word in raw.split()) if users > 0]
    except ValueError:
        raise ValueError(f"BENCH_CAPACITY must list user counts, got {raw!r}") from None


def scenario_env(users: int, profile: str, duration: str) -> dict[str, str]:
    """k6 ``-e`` variables for the ``active-chat`` run of one step."""
    return {
        "PROFILE": profile,
        "VUS": str(users),
        "SEND_EVERY_MS": str(SEND_EVERY_MS),
        "WARMUP_MS": str(WARMUP_MS),
        "DURATION": duration,
    }


@dataclass(frozen=True, slots=True)
class Step:
    """One capacity step: ``users`` in one room, its k6 run, the machine's ``cpus``."""

    users: int
    run: Run
    cpus: int

    def _count(self, metric: str) -> float:
        return self.run.k6(metric).get("count", 0.0)

    @property
    def events_planned(self) -> int:
        """Message events per second the step asks for: users x rate x members."""
        return self.users * self.users * 1000 // SEND_EVERY_MS

    @property
    def sent_share(self) -> float:
        """k6 ``chat_messages_sent`` / (sent + ``chat_messages_unsent``), 0 when none."""
        sent = self._count("chat_messages_sent")
        planned = sent + self._count("chat_messages_unsent")
        return sent / planned if planned else 0.0

    @property
    def delivered_share(self) -> float:
        """``chat_messages_received`` / (messages sent x users): the deliveries owed had every
        member been there for every message (a member joining late or closing first lowers it
        a little)."""
        owed = self._count("chat_messages_sent") * self.users
        return self._count("chat_messages_received") / owed if owed else 0.0

    @property
    def p99(self) -> float | None:
        return self.run.k6("chat_rtt").get("p(99)")

    @property
    def cpu_ms_per_1000(self) -> float | None:
        """Server CPU milliseconds per 1000 events handed to members
        (``chat_events_delivered_total``)."""
        delivered = self.run.grew("chat_events_delivered_total")
        return self.run.server_cpu / delivered * 1e6 if delivered else None

    @property
    def server_share(self) -> float:
        """Server CPU seconds per second of run: the share of its one thread's core."""
        return self.run.server_cpu / self.run.seconds

    @property
    def k6_share(self) -> float:
        """k6 CPU seconds per second of run, over all ``cpus``."""
        return self.run.k6_cpu / (self.run.seconds * self.cpus)

    @property
    def sustained(self) -> bool:
        p99 = self.p99
        return (
            self.sent_share >= MIN_SHARE
            and self.delivered_share >= MIN_SHARE
            and p99 is not None
            and p99 < MAX_P99_MS
        )

    @property
    def limit(self) -> str:
        """What ran out in a step not sustained: ``server``, ``k6`` or neither (other load)."""
        if self.sustained:
            return "—"
        machine = (self.run.server_cpu + self.run.k6_cpu) / (self.run.seconds * self.cpus)
        return limit(self.server_share, self.k6_share, machine)


def limit(server_share: float, k6_share: float, machine_share: float) -> str:
    """What ran out while the load was not carried: ``server`` when its one thread was busy
    ``SATURATED`` of the time, else ``k6`` when the cores were (``machine_share``, all
    processes over all cores) or k6 held ``K6_HEAVY`` of them (``k6_share``), else neither
    (other load on the machine). Shares are CPU seconds per second (over all cores for k6 and
    the machine)."""
    if server_share >= SATURATED:
        return "server"
    if machine_share >= SATURATED or k6_share >= K6_HEAVY:
        return "k6"
    return "neither saturated (other load on the machine?)"


def _pct(share: float) -> str:
    return f"{100 * share:.1f}"


def _ms(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def largest(results: list[Step]) -> Step | None:
    """The step with the most users that was sustained."""
    return max((s for s in results if s.sustained), key=lambda s: s.users, default=None)


def section(results: list[Step]) -> list[str]:
    """The capacity table and its verdict as Markdown lines."""
    if not results:
        return []
    header = [
        "users",
        "msgs/s planned",
        "events/s planned",
        "sent %",
        "delivered %",
        "chat_rtt p50 / p99 (ms)",
        "server CPU ms / 1000 events",
        "server CPU % of a core",
        f"k6 CPU % of {results[0].cpus} cores",
        "sustained",
        "limit",
    ]
    rows = [
        [
            f"{s.users:,}",
            f"{s.users * 1000 // SEND_EVERY_MS:,}",
            f"{s.events_planned:,}",
            _pct(s.sent_share),
            _pct(s.delivered_share),
            f"{_ms(s.run.k6('chat_rtt').get('med'))} / {_ms(s.p99)}",
            _ms(s.cpu_ms_per_1000, 2),
            _pct(s.server_share),
            _pct(s.k6_share),
            "yes" if s.sustained else "**no**",
            s.limit,
        ]
        for s in results
    ]
    best = largest(results)
    verdict = (
        f"Largest load sustained: **{best.users:,} users** in one room "
        f"({best.events_planned:,} message events/s planned)."
        if best
        else "Largest load sustained: **none** of the steps."
    )
    return [
        "### Capacity: one room, every user sending 2 messages/s",
        "",
        f"Sustained = sent and delivered >= {MIN_SHARE:.0%} and chat_rtt p99 < "
        f"{MAX_P99_MS:.0f} ms. Sent % = k6's messages sent / those its schedule planned (below "
        "100 % k6 fell behind its own timers); delivered % = messages read / (messages sent x "
        "users). Users send from "
        f"{WARMUP_MS / 1000:g} s into a step on; k6 runs with GOGC={k6_gogc()}. Limit: "
        "`server` when its thread was busy >= "
        f"{SATURATED:.0%} of the run; `k6`, without that, when the cores were >= "
        f"{SATURATED:.0%} busy or k6 alone held >= {K6_HEAVY:.0%} of them (its VUs then read "
        "their sockets late: frames wait in the socket buffers, and chat_rtt counts that).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        verdict,
        "",
    ]
