"""Run roomhub processes (``python -m server serve``, ``python -m server.stockapi``) and a
throwaway ``redis-server`` (or a Redis Cluster of them) on free loopback ports, for benchmarks and
for tests that drive them from outside.

Each process writes its output to a log file; :func:`spawn` waits (with a deadline) until
its health endpoint answers 200 and stops it with SIGTERM (SIGKILL after a grace period).
On Linux every process started here also gets SIGTERM when the process that started it dies,
even by SIGKILL (``prctl(PR_SET_PDEATHSIG)``, prctl(2)), so no orphan keeps a port.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

PYTHONMALLOC = "malloc"
"""The allocator the container image runs the server with (Dockerfile, docs/memory.md): every
Python object in glibc's heap, which the server trims. An outer ``PYTHONMALLOC`` wins."""
START_TIMEOUT = 20.0  # seconds a process may take to answer its health endpoint
STOP_TIMEOUT = 15.0  # seconds between SIGTERM and SIGKILL


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with(parent: int) -> None:
    """In a child before it execs: SIGTERM once ``parent`` dies. The kernel ties this to the
    thread that forked, so start long-lived processes from a thread that outlives them (the
    main thread). A parent already gone: the child ends at once."""
    if LIBC is None:
        return
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def dies_with_this_process() -> functools.partial[None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets SIGTERM when this process
    dies (Linux; elsewhere it does nothing)."""
    return functools.partial(_die_with, os.getpid())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http_ok(
    url: str,
    timeout: float = START_TIMEOUT,
    proc: subprocess.Popen | None = None,
    context: ssl.SSLContext | None = None,
) -> None:
    """Poll ``url`` until it answers 200; ``TimeoutError`` after ``timeout`` seconds,
    ``RuntimeError`` if ``proc`` exits first. ``context``: how an ``https`` URL's certificate
    is checked (default: the system's trusted authorities)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=1, context=context) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


def scrape(url: str) -> dict[str, float]:
    """Scrape a Prometheus text endpoint into ``{'name{label="v"}': value}``."""
    with urllib.request.urlopen(url, timeout=10) as response:
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
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{'name{label="v"}': value}``."""
        return scrape(f"{self.url}/metrics")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout`` seconds, SIGKILL if still alive; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def launch(
    args: list[str],
    port: int,
    log: Path,
    env: dict[str, str] | None = None,
    program: str = sys.executable,
    cwd: Path | None = None,
) -> Process:
    """Start ``program <args>`` (default: this Python) in ``cwd`` (default: this one) with
    ``env`` added to the environment, its output to ``log``, without waiting for it to serve."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [program, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            preexec_fn=dies_with_this_process(),
        )
    return Process(proc, port, log)


@contextlib.contextmanager
def spawn(
    args: list[str],
    port: int,
    health: str,
    log: Path,
    env: dict[str, str] | None = None,
    program: str = sys.executable,
    cwd: Path | None = None,
) -> Iterator[Process]:
    """Run ``program <args>`` (default: this Python) in ``cwd`` (default: this one), wait
    until ``health`` answers 200, stop it on exit.

    On a failure inside the block the last 4000 characters of its output go to stderr.
    """
    running = launch(args, port, log, env, program, cwd)
    try:
        wait_http_ok(f"{running.url}{health}", proc=running.proc)
        yield running
    except BaseException:
        running.stop()
        sys.stderr.write(running.output()[-4000:])
        raise
    running.stop()


LAB_UNLIMITED = (
    "ROOMHUB_MAX_CONNECTIONS_PER_ADDRESS",
    "ROOMHUB_UPGRADE_RATE",
    "ROOMHUB_NEW_ROOMS_PER_MINUTE",
)
"""Per-address limits turned off (0) unless set: every load client here is one address."""


@contextlib.contextmanager
def serve(
    log: Path,
    module: str = "server",
    env: dict[str, str] | None = None,
    port: int = 0,
    **settings: object,
) -> Iterator[Process]:
    """``python -m <module> serve`` on ``port`` (0: a free one); ``settings`` become
    ``ROOMHUB_*`` vars, ``env`` is added to the environment (the :data:`LAB_UNLIMITED` limits
    are off unless set). Output goes to ``log``; ready once ``/readyz`` answers 200. Runs with
    ``PYTHONMALLOC``.
    """
    port = port or free_port()
    with spawn(
        ["-m", module, "serve"], port, "/readyz", log, server_env(port, env, **settings)
    ) as process:
        yield process


def server_env(port: int, env: dict[str, str] | None = None, **settings: object) -> dict[str, str]:
    """The environment :func:`serve` adds for a server on ``port``: ``env``, ``settings`` as
    ``ROOMHUB_*`` vars, the :data:`LAB_UNLIMITED` limits off unless set, ``PYTHONMALLOC``."""
    env = {**(env or {}), **{f"ROOMHUB_{k.upper()}": str(v) for k, v in settings.items()}}
    env["PYTHONMALLOC"] = os.environ.get("PYTHONMALLOC") or PYTHONMALLOC
    env.setdefault("ROOMHUB_HOST", "127.0.0.1")
    for name in LAB_UNLIMITED:
        env.setdefault(name, "0")
    env["ROOMHUB_PORT"] = str(port)
    return env


@contextlib.contextmanager
def serve_stockapi(log: Path, *flags: str, port: int = 0) -> Iterator[Process]:
    """The bundled Stooq-compatible quote service on ``port`` (0: a free one; ``flags`` as on
    its CLI)."""
    port = port or free_port()
    args = ["-m", "server.stockapi", "--host", "127.0.0.1", "--port", str(port), *flags]
    with spawn(args, port, "/healthz", log) as process:
        yield process


REDIS_START_TIMEOUT = 10.0  # seconds redis-server may take to accept connections


class RedisServer:
    """A ``redis-server`` (Debian's package) on ``127.0.0.1:port`` without persistence
    (``--save '' --appendonly no``); its log goes to ``directory/redis.log``.

    :meth:`stop` and :meth:`start` take it away and bring it back, empty, on the same port.
    ``cluster``: a Redis Cluster node (``--cluster-enabled yes``) whose cluster bus listens on
    ``bus_port`` (a free port, not ``port + 10000``) and whose node table is kept in
    ``directory/nodes.conf``, so a restarted node rejoins with its slots (and no data).
    """

    def __init__(self, binary: str, directory: Path, port: int = 0, cluster: bool = False) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.bus_port = free_port() if cluster else 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        """Start and wait (``REDIS_START_TIMEOUT``) until it answers PING."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.directory)]
        args += ["--logfile", str(self.directory / "redis.log")]
        if self.bus_port:
            args += ["--cluster-enabled", "yes", "--cluster-port", str(self.bus_port)]
            args += ["--cluster-config-file", str(self.directory / "nodes.conf")]
            args += ["--cluster-require-full-coverage", "no"]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=dies_with_this_process(),
        )
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise TimeoutError(f"redis-server did not answer on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: gone at once, without a word to its clients, its data with it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """SIGTERM, SIGKILL after ``STOP_TIMEOUT`` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def serve_redis(binary: str, directory: Path, port: int = 0) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` on ``port`` (0: a free one), stopped on exit."""
    server = RedisServer(binary, directory, port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


CLUSTER_START_TIMEOUT = 20.0  # seconds a new cluster may take until every node says ok


@dataclass
class RedisCluster:
    """A Redis Cluster of ``nodes`` (one master each, no replicas) on loopback ports."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        """The ``ROOMHUB_BROKER`` value naming every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def wait_ok(self, timeout: float = CLUSTER_START_TIMEOUT) -> None:
        """Wait until ``CLUSTER INFO`` says ``cluster_state:ok`` on every running node."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while node.proc is not None and _cluster_state(node.port) != "ok":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis cluster node {node.port} is not ok")
                time.sleep(0.05)


def _cluster_state(port: int) -> str:
    """The ``cluster_state`` field of ``CLUSTER INFO`` on ``port`` ('' when unreadable)."""
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=1) as sock,
    ):
        sock.sendall(b"CLUSTER INFO\r\n")
        reply = sock.recv(4096).decode(errors="replace")
        for line in reply.splitlines():
            if line.startswith("cluster_state:"):
                return line.partition(":")[2]
    return ""


@contextlib.contextmanager
def serve_redis_cluster(
    binary: str, cli: str, directory: Path, masters: int = 3
) -> Iterator[RedisCluster]:
    """A started :class:`RedisCluster` of ``masters`` masters, stopped on exit: each node a
    :class:`RedisServer` with ``cluster=True`` (``--cluster-require-full-coverage no``: a
    node that is down fails only its own slots), joined by ``redis-cli --cluster create
    --cluster-replicas 0 --cluster-yes`` (``cli``: Debian's ``redis-cli``, which takes about
    3 s to see the nodes join), then waited on until every node says ``cluster_state:ok``."""
    with contextlib.ExitStack() as stack:
        nodes = []
        for index in range(masters):
            home = directory / f"node{index}"
            home.mkdir(parents=True, exist_ok=True)
            node = RedisServer(binary, home, cluster=True)
            node.start()
            stack.callback(node.stop)
            nodes.append(node)
        create = [cli, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in nodes)]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(create, check=True, stdout=subprocess.DEVNULL, timeout=CLUSTER_START_TIMEOUT)
        cluster = RedisCluster(nodes)
        cluster.wait_ok()
        yield cluster
