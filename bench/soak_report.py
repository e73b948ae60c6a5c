"""results/soak.md: the server's memory over a soak, at fixed moments, and the targets."""

from __future__ import annotations

from dataclasses import dataclass

KIB, MIB = 1024, 1024 * 1024
WARMUP_RECONNECTS = 2000
CONNECTED_AFTER = 30.0  # seconds after the first connection: "200 users connected"
MAX_SLOPE = 0.5 * KIB  # bytes of RSS per reconnect after warm-up
MAX_GONE_RATIO = 1.10  # RSS with everyone gone / RSS with every user connected
MAX_END_RATIO = 1.05  # RSS at the end of a 30-min soak / its 10-minute RSS


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading: ``seconds`` since the server started being watched, sizes in bytes,
    ``reconnects``: connections opened so far (``chat_connections_opened_total``)."""

    seconds: float
    reconnects: int
    connections: int
    rooms: int
    rss: int
    heap_in_use: int
    heap_kept: int


@dataclass(frozen=True, slots=True)
class SoakResult:
    env: dict[str, str]
    allocator: str
    samples: list[Sample]
    users: int
    load_ended: float  # seconds: when the last connection had gone and the last room was reaped
    k6_returncode: int
    k6_failed: list[str]


def slope(samples: list[Sample]) -> float | None:
    """Least-squares bytes of RSS per reconnect over ``samples``; None with under 3 of them
    or no reconnects between them."""
    if len(samples) < 3:
        return None
    xs = [float(s.reconnects) for s in samples]
    ys = [float(s.rss) for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def _first(samples: list[Sample], ok) -> Sample | None:
    return next((s for s in samples if ok(s)), None)


@dataclass(frozen=True, slots=True)
class Moments:
    """The samples the report is about, chosen from a soak's samples."""

    idle: Sample
    connected: Sample | None
    warmup: Sample | None
    marks: list[tuple[str, Sample]]
    load_end: Sample
    gone: Sample
    after_warmup: list[Sample]


def moments(result: SoakResult) -> Moments:
    samples = result.samples
    loaded = [s for s in samples if s.seconds < result.load_ended]
    start = _first(samples, lambda s: s.connections > 0)
    connected = start and _first(samples, lambda s: s.seconds >= start.seconds + CONNECTED_AFTER)
    warmup = _first(loaded, lambda s: s.reconnects >= WARMUP_RECONNECTS)
    marks = []
    if start is not None and loaded:
        length = loaded[-1].seconds - start.seconds
        step = 600.0 if length >= 1200 else 60.0
        at = step
        while at <= length:
            mark = _first(loaded, lambda s, at=at: s.seconds >= start.seconds + at)
            if mark is not None:
                marks.append((f"{at / 60:.0f} min", mark))
            at += step
    # The slope uses the samples while every user is still in (the last ones may be leaving).
    busy = [s for s in loaded if s.connections >= result.users * 0.9]
    after = [s for s in busy if warmup is not None and s.reconnects >= warmup.reconnects]
    return Moments(
        idle=samples[0],
        connected=connected,
        warmup=warmup,
        marks=marks,
        load_end=busy[-1] if busy else samples[-1],
        gone=samples[-1],
        after_warmup=after,
    )


def _mib(value: int) -> str:
    return f"{value / MIB:,.1f}"


def _row(label: str, s: Sample) -> str:
    return (
        f"| {label} | {s.seconds:,.0f} | {s.reconnects:,} | {s.connections:,} | {_mib(s.rss)} | "
        f"{_mib(s.heap_in_use)} | {_mib(s.heap_kept)} |"
    )


def _check(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**missed**")


def render(result: SoakResult) -> str:
    """The report as Markdown."""
    m = moments(result)
    rows = [("idle, before", m.idle)]
    if m.connected is not None:
        rows.append((f"{result.users} users connected ({CONNECTED_AFTER:.0f} s in)", m.connected))
    if m.warmup is not None:
        rows.append((f"warm-up ({WARMUP_RECONNECTS:,} connections)", m.warmup))
    rows += m.marks
    rows += [("end of load", m.load_end), ("everyone gone, rooms reaped", m.gone)]
    per_reconnect = slope(m.after_warmup)
    verdict = "pass" if result.k6_returncode == 0 else f"fail (exit {result.k6_returncode})"
    lines = [
        "# roomhub soak",
        "",
        f"- k6 soak: VUS={result.env['VUS']}, DURATION={result.env['DURATION']}, "
        f"SESSION={result.env['SESSION']}; thresholds: {verdict}",
        f"- allocator: {result.allocator}",
        "",
        "RSS is the server's resident memory (`/proc/<pid>/status` VmRSS). Heap in use and heap",
        "kept are `chat_heap_bytes`: bytes the server's C heap has handed out and not got back,",
        "and bytes the allocator holds free without returning them (docs/memory.md).",
        "",
        "| moment | s | connections opened | open now | RSS (MiB) | heap in use (MiB) "
        "| heap kept (MiB) |",
        "|---|---|---|---|---|---|---|",
        *(_row(label, s) for label, s in rows),
        "",
    ]
    if result.k6_failed:
        lines += ["k6 thresholds failed: " + "; ".join(result.k6_failed), ""]
    targets = []
    if per_reconnect is not None:
        targets.append(
            [
                f"RSS growth after {WARMUP_RECONNECTS:,} reconnects < 0.5 KiB per reconnect",
                f"{per_reconnect / KIB:,.2f} KiB ({per_reconnect * 1000 / MIB:,.2f} MiB per "
                f"1,000) over {len(m.after_warmup)} samples",
                _check(per_reconnect < MAX_SLOPE),
            ]
        )
    if m.connected is not None:
        ratio = m.gone.rss / m.connected.rss
        targets.append(
            [
                "RSS with everyone gone within 10% of RSS with every user connected",
                f"{ratio:.2f} x",
                _check(ratio <= MAX_GONE_RATIO),
            ]
        )
    ten = next((s for label, s in m.marks if label == "10 min"), None)
    if ten is not None and any(label == "30 min" for label, _ in m.marks):
        ratio = m.load_end.rss / ten.rss
        targets.append(
            [
                "RSS at the end within 5% of the 10-minute RSS",
                f"{ratio:.3f} x",
                _check(ratio <= MAX_END_RATIO),
            ]
        )
    lines += ["| target | measured | result |", "|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in targets]
    return "\n".join(lines) + "\n"
