"""CPU time and memory of a process, read from Linux ``/proc`` (see proc(5))."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Usage:
    """``cpu_seconds``: user + system time so far; ``rss``/``peak_rss``: bytes (VmRSS, VmHWM)."""

    cpu_seconds: float
    rss: int
    peak_rss: int


def usage(pid: int) -> Usage:
    """Read ``/proc/<pid>/stat`` (utime, stime: fields 14 and 15) and ``/proc/<pid>/status``.

    Raises ``FileNotFoundError`` when the process is gone.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    memory = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = int(value.split()[0]) * 1024  # reported in kB
    return Usage(cpu, memory["VmRSS"], memory["VmHWM"])
