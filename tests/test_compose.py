"""docker-compose.yml and the Dockerfile, validated without a Docker engine.

``docker-compose config`` (Debian's v1) resolves and validates the file; the resolved YAML is
then read to check what each service must do.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess

import pytest
import yaml

from server.config import Settings, env_name
from tests.support.processes import require_binary
from tests.support.promql import ROOT

COMPOSE = ROOT / "docker-compose.yml"


def compose_config(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_binary("docker-compose"), "--file", str(COMPOSE), *args, "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def resolved(**env: str) -> dict:
    """The compose model after interpolation (all profiles), as docker-compose prints it."""
    result = subprocess.run(
        [
            require_binary("docker-compose"),
            "--file",
            str(COMPOSE),
            "--profile",
            "loadtest",
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_docker_compose_accepts_the_file() -> None:
    result = compose_config()
    assert result.returncode == 0, result.stderr


def test_docker_compose_accepts_the_file_with_the_loadtest_profile() -> None:
    result = compose_config("--profile", "loadtest")
    assert result.returncode == 0, result.stderr


def test_every_mounted_file_exists() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and source != "./results":
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_every_build_context_has_its_dockerfile_and_copied_paths() -> None:
    contexts = {service["build"] for service in services().values() if "build" in service}
    assert contexts == {"."}
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source


def test_images_are_pinned() -> None:
    for name, service in services().items():
        if "build" not in service:
            image = service["image"]
            assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: {image}"


def test_hub_mode_is_passed_through_from_the_environment() -> None:
    assert resolved()["services"]["chat"]["environment"]["ROOMHUB_HUB_MODE"] == "sharded"
    chat = resolved(ROOMHUB_HUB_MODE="global")["services"]["chat"]
    assert chat["environment"]["ROOMHUB_HUB_MODE"] == "global"


def test_every_chat_variable_is_a_server_setting() -> None:
    settings = {env_name(field.name) for field in dataclasses.fields(Settings)}
    assert set(services()["chat"]["environment"]) <= settings


def test_unset_server_settings_keep_their_defaults_and_set_ones_pass_through() -> None:
    assert resolved()["services"]["chat"]["environment"]["ROOMHUB_BOT_CACHE_TTL"] is None
    chat = resolved(ROOMHUB_BOT_CACHE_TTL="0")["services"]["chat"]
    assert chat["environment"]["ROOMHUB_BOT_CACHE_TTL"] == "0"


def test_chat_has_a_raised_fd_limit_and_a_readiness_healthcheck() -> None:
    chat = services()["chat"]
    assert chat["ulimits"]["nofile"]["soft"] >= 65536
    assert "/readyz" in " ".join(chat["healthcheck"]["test"])
    assert "container_name" not in chat, "a fixed name would prevent --scale chat=N"


def test_stockapi_serves_on_8081_for_the_chat_service() -> None:
    stockapi, chat = services()["stockapi"], services()["chat"]
    assert stockapi["command"] == [
        "python", "-m", "server.stockapi", "--host", "0.0.0.0", "--port", "8081",
    ]  # fmt: skip
    assert chat["environment"]["ROOMHUB_QUOTE_URL"] == "http://stockapi:8081"


def test_prometheus_receives_remote_write_with_native_histograms() -> None:
    command = services()["prometheus"]["command"]
    assert "--web.enable-remote-write-receiver" in command
    assert "--enable-feature=native-histograms" in command


def test_grafana_is_anonymous_read_only_with_the_server_dashboard_home() -> None:
    grafana = services()["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert any(volume.split(":")[1] == home for volume in grafana["volumes"])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("K6_PROMETHEUS_RW_SERVER_URL", "http://prometheus:9090/api/v1/write"),
        ("K6_PROMETHEUS_RW_TREND_AS_NATIVE_HISTOGRAM", "true"),
        ("K6_PROMETHEUS_RW_STALE_MARKERS", "true"),
        ("WS_URL", "ws://chat:8080/ws"),
    ],
)
def test_k6_remote_writes_to_prometheus(name: str, value: str) -> None:
    assert services()["k6"]["environment"][name] == value


def test_every_setting_a_scenario_reads_reaches_the_k6_container() -> None:
    sources = [*(ROOT / "k6" / "scenarios").glob("*.js"), *(ROOT / "k6" / "lib").glob("*.js")]
    pattern = r"(?:intEnv|durationEnv)\('(\w+)'|__ENV\.(\w+)"
    read = {a or b for path in sources for a, b in re.findall(pattern, path.read_text())}
    assert read
    assert read <= set(services()["k6"]["environment"])


def test_k6_is_the_pinned_image_in_the_loadtest_profile() -> None:
    k6 = services()["k6"]
    assert k6["image"] == "grafana/k6:1.1.0"
    assert k6["profiles"] == ["loadtest"]


def test_k6_runs_the_chosen_scenario_with_a_testid_and_an_html_report() -> None:
    k6 = resolved(SCENARIO="spike", TESTID="t-1")["services"]["k6"]
    assert k6["command"][-1] == "/scripts/scenarios/spike.js"
    assert (ROOT / "k6" / "scenarios" / "spike.js").exists()
    assert k6["command"][:3] == ["run", "-o", "experimental-prometheus-rw"]
    assert "testid=t-1" in k6["command"]
    assert k6["environment"]["K6_WEB_DASHBOARD_EXPORT"] == "/results/spike-report.html"
