"""results/bench.md: one table per hub mode, the idle-connection memory probe, the targets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import capacity
from .idle import IdleMemory, Site
from .measure import Run

KIB, MIB = 1024, 1024 * 1024
SLOW_CONSUMER = 'chat_connections_closed_total{reason="slow_consumer"}'
MAX_IDLE_KIB = 12
CAPACITY_USERS = 400
MAX_CPU_MS_PER_1000 = 1.0
MESSAGES_IN = 'chat_messages_received_total{kind="message"}'


@dataclass(frozen=True, slots=True)
class ModeResult:
    mode: str
    idle: list[IdleMemory]
    sites: tuple[float, list[Site]] | None  # traced bytes per idle connection, top lines
    runs: list[Run]
    capacity_steps: tuple[capacity.Step, ...] = ()

    def run(self, scenario: str) -> Run | None:
        return next((r for r in self.runs if r.scenario == scenario), None)


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _per_second(run: Run, metric: str) -> float:
    return run.grew(metric) / run.seconds


def _trend(run: Run, metric: str) -> str:
    values = run.k6(metric)
    if not values.get("count"):
        return "—"
    return " / ".join(_num(values[key]) for key in ("med", "p(95)", "p(99)"))


def _verdict(run: Run) -> str:
    failed = run.failed_thresholds()
    if run.returncode == 0:
        return "pass"
    return f"fail (exit {run.returncode}{': ' + '; '.join(failed) if failed else ''})"


def _cpu_per_1000(run: Run) -> float | None:
    delivered = run.grew("chat_events_delivered_total")
    return run.server_cpu / delivered * 1000 if delivered else None


def _rss_per_connection(run: Run) -> float | None:
    """KiB: (peak RSS - RSS before the run) / peak connections."""
    if not run.peak_connections:
        return None
    return (run.peak_rss - run.rss_before) / run.peak_connections / KIB


def _frames_ratio(run: Run) -> float | None:
    frames = run.grew("chat_frames_sent_total")
    return run.grew("chat_events_delivered_total") / frames if frames else None


ROWS: list[tuple[str, Callable[[Run], str]]] = [
    ("k6 thresholds", _verdict),
    ("run (s)", lambda r: _num(r.seconds)),
    ("peak connections", lambda r: _num(r.peak_connections, 0)),
    ("messages/s in", lambda r: _num(_per_second(r, MESSAGES_IN))),
    ("events/s delivered", lambda r: _num(_per_second(r, "chat_events_delivered_total"), 0)),
    ("frames/s sent", lambda r: _num(_per_second(r, "chat_frames_sent_total"), 0)),
    ("events per frame", lambda r: _num(_frames_ratio(r))),
    ("chat_rtt p50 / p95 / p99 (ms)", lambda r: _trend(r, "chat_rtt")),
    ("chat_rtt samples", lambda r: _num(r.k6("chat_rtt").get("count"), 0)),
    ("own messages lost", lambda r: _num(r.k6("chat_messages_lost").get("count", 0), 0)),
    ("chat_bot_rtt p50 / p95 / p99 (ms)", lambda r: _trend(r, "chat_bot_rtt")),
    ("slow-consumer closes", lambda r: _num(r.grew(SLOW_CONSUMER), 0)),
    ("server CPU (s)", lambda r: _num(r.server_cpu)),
    ("server CPU s per 1000 events", lambda r: _num(_cpu_per_1000(r), 4)),
    ("k6 CPU (s)", lambda r: _num(r.k6_cpu)),
    ("server peak RSS (MiB)", lambda r: _num(r.peak_rss / MIB)),
    ("RSS per connection under load (KiB)", lambda r: _num(_rss_per_connection(r))),
]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _mode_section(result: ModeResult) -> list[str]:
    lines = [f"## Hub mode `{result.mode}`", ""]
    if result.runs:
        header = ["", *(f"`{run.scenario}`" for run in result.runs)]
        rows = [[label, *(cell(run) for run in result.runs)] for label, cell in ROWS]
        lines += [
            *_table(header, rows),
            "",
            "RSS per connection under load = (server peak RSS, the process's high-water mark,",
            "- its RSS when the run started) / peak connections. It counts all the traffic made",
            "the server allocate (frames, queues, history), not only the connections: it is not",
            "the per idle connection figure.",
            "",
        ]
    for idle in result.idle:
        lines += [
            f"Idle connections: {idle.connections:,} in one room, only listening: RSS rose from "
            f"{_num(idle.rss_before / MIB)} to {_num(idle.rss_after / MIB)} MiB once they "
            f"settled, (after - before) / {idle.connections:,} = "
            f"**{_num(idle.per_connection / KIB)} KiB per idle connection**.",
            "",
        ]
    lines += capacity.section(list(result.capacity_steps))
    if result.sites:
        total, sites = result.sites
        rows = [
            [f"`{site.where}`", f"`{site.code[:60]}`", _num(site.size, 0), _num(site.blocks, 2)]
            for site in sites
        ]
        lines += [
            f"Where an idle connection's memory comes from: tracemalloc in a traced server, "
            f"the lines whose allocations were still alive with the connections open, per "
            f"connection ({_num(total, 0)} traced bytes each in all; RSS adds the allocator's "
            f"overhead, see docs/memory.md).",
            "",
            *_table(["allocated at", "code", "bytes", "blocks"], rows),
            "",
        ]
    return lines


def _check(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**missed**")


def _capacity_targets(steps: tuple[capacity.Step, ...]) -> list[list[str]]:
    """The capacity targets: 400 users sustained, <= 1.0 ms server CPU per 1000 events there."""
    if not steps:
        return []
    best = capacity.largest(list(steps))
    at_target = next((s for s in steps if s.users == CAPACITY_USERS), None)
    cpu = at_target.cpu_ms_per_1000 if at_target else None
    return [
        [
            f"capacity: {CAPACITY_USERS} users x 2 msg/s in one room sustained",
            f"largest sustained: {best.users if best else 'none'}",
            _check(best is not None and best.users >= CAPACITY_USERS),
        ],
        [
            f"server CPU <= {MAX_CPU_MS_PER_1000} ms per 1000 events at {CAPACITY_USERS} users",
            _num(cpu, 2),
            _check(None if cpu is None else cpu <= MAX_CPU_MS_PER_1000),
        ],
    ]


def _targets(results: list[ModeResult], profile: str) -> list[str]:
    sharded = next((r for r in results if r.mode == "sharded"), None)
    if sharded is None:
        return []
    rows = []
    chat = sharded.run("active-chat")
    if chat:
        p99 = chat.k6("chat_rtt").get("p(99)")
        slow = chat.grew(SLOW_CONSUMER)
        rows.append(["active-chat chat_rtt p99 < 100 ms", _num(p99), _check(p99 and p99 < 100)])
        rows.append(["active-chat: no slow-consumer closes", _num(slow, 0), _check(slow == 0)])
    storm = sharded.run("connection-storm")
    if storm:
        upgrades = storm.k6("chat_ws_upgrade_ok")
        vus = storm.k6("vus_max").get("value", 0)
        connected = storm.peak_connections
        all_in = upgrades.get("fails", 1) == 0 and connected == vus
        rows.append(["storm: every VU connects", f"{_num(connected, 0)} of {vus}", _check(all_in)])
        p99 = storm.k6("chat_rtt").get("p(99)")
        rows.append(["storm: probe chat_rtt p99 < 100 ms", _num(p99), _check(p99 and p99 < 100)])
    rows += _capacity_targets(sharded.capacity_steps)
    for idle in sharded.idle:
        kib = idle.per_connection / KIB
        target = f"RSS per idle connection <= {MAX_IDLE_KIB} KiB at {idle.connections:,}"
        rows.append([target, _num(kib), _check(kib <= MAX_IDLE_KIB)])
    note = "" if profile == "full" else f" (this run used PROFILE={profile}; targets are for full)"
    return [
        f"## Targets, sharded mode{note}",
        "",
        *_table(["target", "measured", "result"], rows),
        "",
    ]


def render(results: list[ModeResult], context: dict[str, str]) -> str:
    """The whole report as Markdown; ``context``: facts about the run (profile, machine...)."""
    lines = ["# roomhub benchmark", ""]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += [
        "",
        "k6 runs on the same machine as the server: its CPU is shown, and what it spends is",
        "not available to the server. Each scenario runs against a fresh server process.",
        "Figures are per second of k6 run time; RTTs are in milliseconds.",
        "",
    ]
    lines += _targets(results, context.get("profile", "full"))
    for result in results:
        lines += _mode_section(result)
    return "\n".join(lines)
