"""The observability stack end to end, without Docker: real Prometheus, server, stockapi and k6.

A Prometheus started from prometheus/prometheus.yml (targets rewritten to this test's ports,
1 s scrape and rule evaluation, the project's rule files) scrapes a real chat server while
the mixed and soak k6 scenarios (smoke profile, 15 s, side by side) talk to it and
remote-write their own metrics (native histograms, a ``testid`` tag). Then every variable and
every panel query of both dashboards is run through Prometheus's HTTP API, as Grafana would.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support.processes import (
    Process,
    free_port,
    require_binary,
    run_server,
    serve_redis,
    wait_http_ok,
)
from tests.support.promql import (
    DASHBOARD_FILES,
    ROOT,
    PanelQuery,
    load_dashboard,
    panel_queries,
    recorded_names,
    substitute,
)

pytestmark = pytest.mark.k6

K6_DURATION = "15s"
# mixed: chatters, lurkers and bot users that stay connected; soak: users that reconnect
# every few seconds (new sessions and handshakes all along the run); faults: users that
# flood past the rate limit, so error events and 1008 closes are on the dashboards too;
# api: a backend publishing through the server API.
API_KEY = "live-api-key-0123456789abcdef"
K6_RUNS = {
    "mixed": ("scenarios/mixed.js", {"VUS": "30"}),
    "api": ("scenarios/api.js", {"VUS": "10", "ROOMS": "5", "RATE": "20", "API_KEY": API_KEY}),
    "soak": ("scenarios/soak.js", {"VUS": "10", "SESSION": "6s"}),
    "faults": ("checks/faults.js", {"VUS": "2"}),
}
K6_TIMEOUT = 90.0
DATA_TIMEOUT = 20.0
RATE_INTERVAL = "5s"  # Grafana's $__rate_interval for a 1 s scrape and a 1 s step


@dataclass(frozen=True)
class Observed:
    """A Prometheus that watched the k6 runs: its URL, their window (epoch seconds) and the
    testid prefix of their tags."""

    url: str
    start: float
    end: float
    testid: str

    def api(self, path: str, **params: str) -> list | dict:
        """``data`` of a Prometheus HTTP API answer; raises AssertionError on an error."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            answer = json.load(resp)
        assert answer["status"] == "success", answer
        return answer["data"]

    def range_query(self, expr: str) -> list[dict]:
        data = self.api(
            "query_range", query=expr, start=str(self.start), end=str(self.end), step="1s"
        )
        return data["result"]

    def label_values(self, label: str, selector: str) -> list[str]:
        return self.api(
            f"label/{label}/values",
            **{"match[]": selector, "start": str(self.start), "end": str(self.end)},
        )


def live_config(prometheus: int, chat: Process, stockapi: Process) -> dict:
    """prometheus.yml with static targets on this test's ports and a 1 s scrape."""
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ROOT / "prometheus" / "rules" / "*.yml")]
    targets = {
        "chat": f"127.0.0.1:{chat.port}",
        "stockapi": f"127.0.0.1:{stockapi.port}",
        "prometheus": f"127.0.0.1:{prometheus}",
    }
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return config


@contextlib.contextmanager
def run_prometheus(tmp: Path, config: dict, port: int) -> Iterator[str]:
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                require_binary("prometheus"),
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-remote-write-receiver",
                "--enable-feature=native-histograms",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/-/ready", proc=proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(observed: Observed, expr: str, timeout: float = DATA_TIMEOUT) -> None:
    """Poll an instant query until it returns a series; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if observed.api("query", query=expr)["result"]:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{expr} returned nothing within {timeout} s")


def run_k6(k6: str, tmp: Path, prometheus: str, server: Process, testid: str) -> None:
    """Run the K6_RUNS scenarios side by side, remote-writing to ``prometheus``.

    Each run is tagged ``testid=<testid>-<scenario>``: two runs with one testid would write
    the same series (k6_vus) twice, which Prometheus refuses.

    Raises AssertionError when a run fails or k6 could not deliver its metrics.
    """
    env = {
        **os.environ,
        "PROFILE": "smoke",
        "DURATION": K6_DURATION,
        "WS_URL": server.ws_url,
        "RESULTS_DIR": str(tmp),
        "K6_PROMETHEUS_RW_SERVER_URL": f"{prometheus}/api/v1/write",
        "K6_PROMETHEUS_RW_TREND_AS_NATIVE_HISTOGRAM": "true",
        "K6_PROMETHEUS_RW_STALE_MARKERS": "true",
        "K6_PROMETHEUS_RW_PUSH_INTERVAL": "1s",
    }
    runs = {}
    with contextlib.ExitStack() as stack:
        for scenario, (script, settings) in K6_RUNS.items():
            log = stack.enter_context((tmp / f"k6-{scenario}.log").open("w+"))
            proc = subprocess.Popen(
                [k6, "run", "--quiet", "--no-color", "-o", "experimental-prometheus-rw",
                 "--tag", f"testid={testid}-{scenario}", str(ROOT / "k6" / script)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**env, **settings},
            )  # fmt: skip
            stack.callback(proc.kill)
            runs[scenario] = (proc, log)
        deadline = time.monotonic() + K6_TIMEOUT
        for scenario, (proc, log) in runs.items():
            returncode = proc.wait(max(deadline - time.monotonic(), 0.1))
            log.seek(0)
            output = log.read()
            assert returncode == 0, f"{scenario}: {output[-4000:]}"
            assert "Failed to send the time series data" not in output, f"{scenario}: {output}"


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, stockapi: Process, k6_bin: str
) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("observability")
    testid = f"live-{int(time.time())}"
    # On the Redis broker, so the backplane panels and rules have data too.
    with (
        serve_redis(require_binary("redis-server"), tmp) as redis,
        run_server(
            tmp,
            quote_provider="url",
            quote_url=stockapi.url,
            room_grace=1,
            broker=redis.url,
            api_key=API_KEY,
        ) as server,
    ):
        port = free_port()
        with run_prometheus(tmp, live_config(port, server, stockapi), port) as url:
            start = time.time()
            watching = Observed(url, start, start, testid)
            wait_for(watching, 'up{job="chat"} == 1')
            run_k6(k6_bin, tmp, url, server, testid)
            wait_for(watching, "instance:chat_bot_latency_seconds:quantile_rate1m")
            # One more scrape after k6 left, so the window ends with the server idle again.
            wait_for(watching, f"timestamp(chat_connections) > {time.time() + 1}")
            yield Observed(url, start, time.time(), testid)


def variable_values(observed: Observed, name: str) -> dict[str, str]:
    """Each variable of a dashboard resolved as Grafana's "All" would: ``(a|b|c)``."""
    values = {"__rate_interval": RATE_INTERVAL}
    for variable in load_dashboard(name)["templating"]["list"]:
        selector, label = variable["query"].removeprefix("label_values(")[:-1].rsplit(",", 1)
        found = observed.label_values(label.strip(), substitute(selector, values))
        values[variable["name"]] = "(" + "|".join(found) + ")" if found else ""
    return values


def has_data(result: list[dict]) -> bool:
    """True when any sample of a range query result is a finite number."""
    return any(math.isfinite(float(value)) for series in result for _, value in series["values"])


@pytest.mark.parametrize("name", list(DASHBOARD_FILES))
def test_every_dashboard_variable_has_values(observed: Observed, name: str) -> None:
    values = variable_values(observed, name)
    assert all(values.values()), values
    if name == "roomhub-load":
        runs = sorted(f"{observed.testid}-{s}" for s in K6_RUNS)  # Prometheus sorts values
        assert values["testid"] == "(" + "|".join(runs) + ")"


@pytest.mark.parametrize("name", list(DASHBOARD_FILES))
def test_every_panel_query_returns_data(observed: Observed, name: str) -> None:
    values = variable_values(observed, name)
    empty: list[PanelQuery] = []
    for query in panel_queries(name):
        result = observed.range_query(substitute(query.expr, values))
        if not has_data(result):
            empty.append(query)
    assert [str(q) for q in empty] == []


def test_every_recording_rule_records_from_the_live_server(observed: Observed) -> None:
    missing = [
        name for name in sorted(recorded_names()) if not has_data(observed.range_query(name))
    ]
    assert missing == []
