"""``make lab`` (bench/lab.py): compose's observability stack on localhost, without Docker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from bench.lab import (
    COMPOSE_YML,
    K6,
    PROMETHEUS_YML,
    ROOT,
    LabError,
    compose_k6_env,
    k6_env,
    prometheus_config,
    run_prometheus,
    settings_from_env,
)
from tests.support.processes import free_port, require_binary

TARGETS = {"chat": ["127.0.0.1:1"], "stockapi": ["127.0.0.1:2"], "prometheus": ["127.0.0.1:3"]}
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0  # seconds the lab's processes may take to stop


def test_prometheus_config_points_every_job_at_the_given_targets() -> None:
    config = prometheus_config(TARGETS)
    assert {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]} == {
        name: [{"targets": targets}] for name, targets in TARGETS.items()
    }
    assert not any(key.endswith("_sd_configs") for job in config["scrape_configs"] for key in job)


def test_prometheus_config_keeps_the_global_settings_and_the_rules() -> None:
    original = yaml.safe_load(PROMETHEUS_YML.read_text())
    config = prometheus_config(TARGETS)
    assert config["global"] == original["global"]
    assert config["rule_files"] == [str(ROOT / "prometheus" / "rules" / "*.yml")]


def test_prometheus_config_names_a_job_without_a_target() -> None:
    with pytest.raises(LabError, match="'stockapi'"):
        prometheus_config({"chat": ["127.0.0.1:1"], "prometheus": ["127.0.0.1:3"]})


def test_the_generated_config_passes_promtool(tmp_path: Path) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(prometheus_config(TARGETS)))
    done = subprocess.run(
        [require_binary("promtool"), "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 2 rule files found" in done.stdout + done.stderr


def test_k6_remote_write_environment_is_compose_k6_services() -> None:
    service = yaml.safe_load(COMPOSE_YML.read_text())["services"]["k6"]
    env = compose_k6_env("http://127.0.0.1:9999")
    assert env.pop("K6_OUT") == "experimental-prometheus-rw"
    assert env.pop("K6_PROMETHEUS_RW_SERVER_URL") == "http://127.0.0.1:9999/api/v1/write"
    assert env == {
        k: v
        for k, v in service["environment"].items()
        if k.startswith("K6_PROMETHEUS_RW_") and k != "K6_PROMETHEUS_RW_SERVER_URL"
    }


PUSH_PROBE = """
import { sleep } from 'k6';
export const options = { vus: 2, duration: '6s' };
export default function () { sleep(0.5); }
"""
SAMPLES = 'count_over_time(k6_iterations_total{testid="push"}[5m])'


def test_k6_remote_writes_the_first_seconds_of_a_run(tmp_path: Path) -> None:
    """With compose's k6 environment, a 6 s run reaches Prometheus as a sample a second or so,
    not one every 5 s (k6's default push interval), which drops a run's first seconds."""
    port = free_port()
    targets = {"chat": [], "stockapi": [], "prometheus": [f"127.0.0.1:{port}"]}
    script = tmp_path / "probe.js"
    script.write_text(PUSH_PROBE)
    binary = require_binary("prometheus")
    with run_prometheus(binary, prometheus_config(targets), tmp_path / "prom", port) as prom:
        env = {**os.environ, **compose_k6_env(prom.url)}
        command = [str(K6), "run", "--quiet", "-o", env.pop("K6_OUT"), "--tag", "testid=push"]
        done = subprocess.run(
            [*command, str(script)], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        query = urllib.parse.urlencode({"query": SAMPLES})
        with urllib.request.urlopen(f"{prom.url}/api/v1/query?{query}", timeout=10) as answer:
            (series,) = json.load(answer)["data"]["result"]
    assert int(series["value"][1]) >= 4  # 6 s at 1 s; 2 at k6's default of 5 s


def test_a_bad_port_variable_is_named() -> None:
    with pytest.raises(LabError, match="LAB_PROMETHEUS_PORT"):
        settings_from_env({"LAB_PROMETHEUS_PORT": "90x"})


def test_global_hub_mode_runs_one_server_as_make_up_does() -> None:
    settings = settings_from_env({"ROOMHUB_HUB_MODE": "global", "CHAT_REPLICAS": "3"})
    assert settings.replicas == 1


def test_no_remote_write_without_a_lab() -> None:
    assert k6_env({"LAB_PROMETHEUS_PORT": str(free_port())}) == ""


def test_missing_prometheus_is_named_with_its_debian_package(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.lab"],
        cwd=ROOT,
        env={**os.environ, "PATH": str(tmp_path), "LAB_DIR": str(tmp_path / "lab")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "apt-get install prometheus" in done.stderr


def _wait_for_line(proc: subprocess.Popen, prefix: str) -> list[str]:
    """Lines printed until one starts with ``prefix``; AssertionError on exit or timeout."""
    lines: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, f"lab exited: {lines}"
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"no {prefix!r} line within {START_TIMEOUT} s: {lines}")


def _group_members(pgid: int) -> list[int]:
    """Live processes (not zombies) of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, _, _, group = text[text.rindex(")") + 2 :].split()[:4]
        if int(group) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def _start_lab(env: dict[str, str]) -> subprocess.Popen:
    """``python -m bench.lab`` in a session of its own (its pid is its group), output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.lab"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _lab_env(tmp_path: Path, **ports: int) -> dict[str, str]:
    """The environment of a lab on free ports (``ports`` override them), its files in tmp."""
    chosen = {name: free_port() for name in ("LAB_CHAT_PORT", "LAB_PROMETHEUS_PORT")}
    chosen |= {"LAB_STOCKAPI_PORT": free_port(), **ports}
    return {**os.environ, **{k: str(v) for k, v in chosen.items()}, "LAB_DIR": str(tmp_path)}


def test_a_port_in_use_stops_the_lab_naming_the_port_and_its_variable(tmp_path: Path) -> None:
    require_binary("prometheus")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "bench.lab"],
            cwd=ROOT,
            env=_lab_env(tmp_path, LAB_PROMETHEUS_PORT=port),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert f"port {port} " in line and "LAB_PROMETHEUS_PORT" in line
    assert not (tmp_path / "stockapi.log").exists()  # nothing was started


def test_the_labs_processes_die_when_the_lab_is_killed(tmp_path: Path) -> None:
    require_binary("prometheus")
    with _start_lab(_lab_env(tmp_path)) as proc:
        try:
            _wait_for_line(proc, "load test")
            assert len(_group_members(proc.pid)) >= 4  # the lab, stockapi, chat, prometheus
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            deadline = time.monotonic() + STOP_TIMEOUT
            while _group_members(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _group_members(proc.pid) == []
        finally:
            if _group_members(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)


def test_k6_gets_the_labs_api_key(tmp_path: Path) -> None:
    require_binary("prometheus")
    env = _lab_env(tmp_path)
    with _start_lab(env) as proc:
        try:
            _wait_for_line(proc, "load test")
            given = k6_env({"LAB_PROMETHEUS_PORT": env["LAB_PROMETHEUS_PORT"]}).split()
            (key,) = [v.removeprefix("API_KEY=") for v in given if v.startswith("API_KEY=")]
            request = urllib.request.Request(
                f"http://127.0.0.1:{env['LAB_CHAT_PORT']}/api/v1/publish",
                data=json.dumps({"room": "lab", "text": "hello"}).encode(),
                headers={"Content-Type": "application/json", "X-API-Key": key},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


def test_lab_comes_up_turns_on_k6_remote_write_and_sigterm_leaves_nothing(
    tmp_path: Path,
) -> None:
    require_binary("prometheus")
    ports = {"LAB_CHAT_PORT": free_port(), "LAB_PROMETHEUS_PORT": free_port()}
    ports |= {"LAB_STOCKAPI_PORT": free_port()}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "LAB_DIR": str(tmp_path)}
    with _start_lab(env) as proc:
        try:
            printed = "".join(_wait_for_line(proc, "load test"))
            assert all(f":{port}" in printed for port in ports.values()), printed
            remote_write = k6_env({"LAB_PROMETHEUS_PORT": str(ports["LAB_PROMETHEUS_PORT"])})
            assert f"127.0.0.1:{ports['LAB_PROMETHEUS_PORT']}/api/v1/write" in remote_write
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert _group_members(proc.pid) == []
