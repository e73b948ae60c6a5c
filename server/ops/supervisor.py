"""``roomhub serve --workers N``: N server processes on one port, and the parent that keeps them.

Each worker is a forked child that runs the whole server with ``SO_REUSEPORT`` on the same
``host:port`` (the kernel spreads new connections over them) and serves its own ``/metrics``
on ``metrics_port + index`` (docs/metrics.md says why). Rooms span the workers through the
Redis broker, which ``N > 1`` requires (checked in ``config``).

The parent prints ``roomhub listening on …`` once, when the first worker listens, and
otherwise only supervises: a worker that dies is started again after ``RESTART_DELAY``
seconds; SIGTERM or SIGINT is forwarded to every worker, each drains as a single server does
(1001 to its clients), and the parent exits 0 once all have exited. A worker that exits with
code 2 (a setting it cannot use, e.g. the port taken by a process without ``SO_REUSEPORT``)
stops them all with exit code 2.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

from .config import Settings

log = logging.getLogger("roomhub.supervisor")

RESTART_DELAY = 1.0
"""Seconds between a worker's death and its replacement (no crash loop at full speed)."""

Announce = Callable[[str], None]
"""Where a worker sends its ``roomhub listening on …`` line once it listens."""

Worker = Callable[[Settings, int, Announce], None]


def print_line(line: str) -> None:
    """Print ``line`` on stdout at once (stdout may be a file or a pipe)."""
    print(line, flush=True)


def supervise(settings: Settings, worker: Worker) -> int:
    """Run ``worker(settings, index, announce)`` in ``settings.workers`` forked processes until
    SIGTERM or SIGINT; return the exit code (0 after a clean drain, 2 if a worker refused to
    start). The first line a worker announces is printed, once: the rest say the same."""
    context = multiprocessing.get_context("fork")
    lines, announce = context.Pipe(duplex=False)
    announced = False
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def start(index: int) -> BaseProcess:
        process = context.Process(
            target=worker, args=(settings, index, announce.send), name=f"worker-{index}"
        )
        process.start()
        log.info("worker_started", extra={"fields": {"worker": index, "pid": process.pid}})
        return process

    workers = {index: start(index) for index in range(settings.workers)}
    code = 0
    while not stopping:
        sentinels = {process.sentinel: index for index, process in workers.items()}
        ready = multiprocessing.connection.wait([*sentinels, lines], timeout=0.5)
        for handle in ready:
            if handle is lines:
                line = lines.recv()
                if not announced:
                    print_line(line)
                    announced = True
                continue
            assert isinstance(handle, int)  # every other handle is a worker's sentinel
            index = sentinels[handle]
            process = workers[index]
            process.join()
            log.warning(
                "worker_exited",
                extra={"fields": {"worker": index, "pid": process.pid, "code": process.exitcode}},
            )
            if process.exitcode == 2:
                stopping, code = True, 2
            elif not stopping:
                time.sleep(RESTART_DELAY)
                workers[index] = start(index)
    for process in workers.values():
        if process.is_alive() and process.pid is not None:
            process.terminate()  # SIGTERM: the worker drains
    for process in workers.values():
        process.join()
    log.info("stopped", extra={"fields": {"workers": len(workers)}})
    return code
