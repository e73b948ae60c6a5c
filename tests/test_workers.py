"""``roomhub serve --workers 2`` on a real Redis: connections land on both workers, one room
spans them, every worker is its own metrics target, a dead worker is replaced, and SIGTERM
drains both and exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.chat import Client, wait_until
from tests.support.processes import RedisServer, free_port, scrape, wait_http_ok

WORKERS = 2


@dataclass
class Workers:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log: Path

    def targets(self) -> list[str]:
        return [f"http://127.0.0.1:{self.metrics_port + i}/metrics" for i in range(WORKERS)]

    def listening_lines(self) -> list[str]:
        """The plain ``roomhub listening on …`` lines printed (once, by the parent)."""
        lines = self.log.read_text().splitlines()
        return [line for line in lines if line.startswith("roomhub listening on")]

    def started(self) -> list[dict[str, object]]:
        """The parent's ``worker_started`` log lines, oldest first."""
        lines = self.log.read_text().splitlines()
        events = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in events if e.get("event") == "worker_started"]


def _free_pair() -> int:
    """A port whose next port is free too."""
    while True:
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


@contextlib.contextmanager
def workers(tmp_path: Path, redis: RedisServer) -> Iterator[Workers]:
    port, metrics_port = free_port(), _free_pair()
    env = {
        **os.environ,
        "ROOMHUB_HOST": "127.0.0.1",
        "ROOMHUB_PORT": str(port),
        "ROOMHUB_WORKERS": str(WORKERS),
        "ROOMHUB_METRICS_PORT": str(metrics_port),
        "ROOMHUB_BROKER": redis.url,
        "ROOMHUB_QUOTE_PROVIDER": "sim",
    }
    log = tmp_path / "workers.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve"],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,  # its workers are killed with it, whatever the test did
        )
    running = Workers(proc, port, metrics_port, log)
    try:
        for target in [*running.targets(), f"http://127.0.0.1:{port}/readyz"]:
            wait_http_ok(target, 20.0, proc)
        # /readyz on the shared port answers from whichever worker takes the connection:
        # every worker's own broker must be up before a join may land on it.
        deadline = time.monotonic() + 20.0
        while any(scrape(t).get('chat_broker_up{shard="0"}') != 1 for t in running.targets()):
            assert time.monotonic() < deadline, "a worker's broker did not come up within 20 s"
            time.sleep(0.05)
        yield running
    except BaseException:
        sys.stderr.write(log.read_text()[-4000:])
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def counters(samples: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in samples.items() if k.split("{")[0].endswith(("_total", "_count"))}


async def test_two_workers_share_the_port_and_the_rooms_and_drain_on_sigterm(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with workers(tmp_path, redis_server) as running:
        targets = running.targets()
        async with aiohttp.ClientSession() as session:
            url = f"ws://127.0.0.1:{running.port}/ws"
            clients = []
            for i in range(40):
                ws = await session.ws_connect(url, params={"room": "lobby", "user": f"u{i}"})
                clients.append(Client(ws))
                await clients[-1].next_of("welcome")
            per_worker = [scrape(t)["chat_connections"] for t in targets]
            assert sum(per_worker) == 40
            assert all(n > 0 for n in per_worker), per_worker

            await clients[0].say("across", id="x1")
            for client in clients:
                assert (await client.next_of("message"))["id"] == "x1"

            async with session.get(f"http://127.0.0.1:{running.port}/metrics") as response:
                assert response.status == 404
                assert (await response.json())["error"] == "per_worker_metrics"
            previous = [counters(scrape(t)) for t in targets]
            for _ in range(20):
                await clients[1].say("tick")
                for i, target in enumerate(targets):
                    now = counters(scrape(target))
                    went_back = {k for k, v in previous[i].items() if now.get(k, 0) < v}
                    assert not went_back
                    previous[i] = now

            running.proc.send_signal(signal.SIGTERM)
            codes = await asyncio.gather(*(c.closed() for c in clients))
            assert set(codes) == {1001}
        assert await asyncio.to_thread(running.proc.wait, 30) == 0
        assert running.listening_lines() == [
            f"roomhub listening on http://127.0.0.1:{running.port}"
        ]


async def test_a_worker_that_dies_is_started_again(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with workers(tmp_path, redis_server) as running:
        (victim,) = [e["pid"] for e in running.started() if e["worker"] == 1]
        os.kill(int(str(victim)), signal.SIGKILL)
        await wait_until(lambda: len(running.started()) == WORKERS + 1, timeout=20)
        replacement = running.started()[-1]
        assert replacement["worker"] == 1
        assert replacement["pid"] != victim
        await asyncio.to_thread(wait_http_ok, running.targets()[1], 20.0, running.proc)
        running.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(running.proc.wait, 30) == 0
        assert len(running.listening_lines()) == 1
