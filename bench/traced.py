"""``python -m bench.traced [serve flags]``: the chat server with tracemalloc on, for
:func:`bench.idle.allocation_sites`. Each SIGUSR1 writes a snapshot to
``$BENCH_TRACE_DIR/<n>.snap`` (n = 1, 2, ...; written to a temporary name, then renamed).
``BENCH_TRACE_FRAMES`` frames are kept per allocation (default 1: the allocating line)."""

from __future__ import annotations

import os
import signal
import tracemalloc
from pathlib import Path

from server.__main__ import main


def _snapshot_on_signal(directory: Path) -> None:
    taken = 0

    def write(signum: int, frame: object) -> None:
        nonlocal taken
        taken += 1
        partial = directory / f"{taken}.snap.partial"
        tracemalloc.take_snapshot().dump(str(partial))
        partial.rename(directory / f"{taken}.snap")

    signal.signal(signal.SIGUSR1, write)


if __name__ == "__main__":
    tracemalloc.start(int(os.environ.get("BENCH_TRACE_FRAMES", "1")))
    _snapshot_on_signal(Path(os.environ["BENCH_TRACE_DIR"]))
    main()
