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

from bench.server import PYTHONMALLOC
from server.ops.config import Settings, env_name
from tests.support.processes import require_binary
from tests.support.promql import ROOT

COMPOSE = ROOT / "docker-compose.yml"
SETTINGS = {env_name(field.name): field.default for field in dataclasses.fields(Settings)}
# Settings the stack fixes: the published, scraped and health-checked port, and the bundled
# quote service (load tests must never reach Stooq).
FIXED = {
    "ROOMHUB_HOST": "0.0.0.0",
    "ROOMHUB_PORT": "8080",
    "ROOMHUB_QUOTE_PROVIDER": "url",
    "ROOMHUB_QUOTE_URL": "http://stockapi:8081",
    "ROOMHUB_METRICS_PORT": "9100",
}
# Settings compose defaults itself (to the server's default) rather than leaving unset.
DEFAULTED = {"ROOMHUB_HUB_MODE", "ROOMHUB_LOG_LEVEL"}
# Settings compose defaults to a value of the stack's own: replicas share rooms through Redis.
STACK_DEFAULTS = {"ROOMHUB_BROKER": "redis://redis:6379/0"}
NGINX_CONF = ROOT / "nginx" / "nginx.conf"


def shell_env(**env: str) -> dict[str, str]:
    """This process's environment without the variables the compose file reads, plus ``env``."""
    own = {k: v for k, v in os.environ.items() if k not in SETTINGS and k != "RESULTS_DIR"}
    return {**own, **env}


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
        env=shell_env(**env),
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
            if source.startswith("./"):
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


def test_the_chat_environment_names_every_server_setting() -> None:
    assert set(services()["chat"]["environment"]) == set(SETTINGS)


def test_every_setting_the_stack_does_not_fix_passes_through_from_the_shell() -> None:
    shell = {name: f"from-shell-{n}" for n, name in enumerate(SETTINGS)}
    chat = resolved(**shell)["services"]["chat"]["environment"]
    assert {name for name in shell if chat[name] == shell[name]} == set(SETTINGS) - set(FIXED)


def test_the_stack_fixes_the_address_port_and_quote_service() -> None:
    chat = resolved(**dict.fromkeys(FIXED, "from-shell"))["services"]["chat"]["environment"]
    assert {name: chat[name] for name in FIXED} == FIXED


def test_the_image_listens_on_every_interface_while_the_server_default_is_loopback() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^\s*ROOMHUB_HOST=0\.0\.0\.0\b", dockerfile, re.M)
    assert SETTINGS["ROOMHUB_HOST"] == "127.0.0.1"


def test_settings_unset_in_the_shell_are_left_to_the_server_defaults() -> None:
    chat = resolved()["services"]["chat"]["environment"]
    expected = {
        name: str(default) if name in DEFAULTED else STACK_DEFAULTS.get(name)
        for name, default in SETTINGS.items()
        if name not in FIXED
    }
    assert {name: chat[name] for name in expected} == expected


def test_redis_runs_without_persistence_and_chat_waits_until_it_is_healthy() -> None:
    redis, chat = services()["redis"], services()["chat"]
    assert redis["command"] == ["redis-server", "--save", "", "--appendonly", "no"]
    assert "ping" in redis["healthcheck"]["test"]
    assert chat["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_the_load_balancer_alone_publishes_8080_with_its_config_from_the_repo() -> None:
    lb = services()["lb"]
    assert lb["ports"] == ["8080:8080"]
    assert lb["volumes"] == ["./nginx/nginx.conf:/etc/nginx/nginx.conf:ro"]
    assert "ports" not in services()["chat"]


def test_nginx_accepts_the_load_balancer_config(tmp_path) -> None:
    result = subprocess.run(
        [require_binary("nginx"), "-t", "-c", str(NGINX_CONF), "-p", str(tmp_path), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_the_load_balancer_upgrades_websockets_and_outwaits_the_heartbeat() -> None:
    conf = NGINX_CONF.read_text()
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_set_header Connection $connection_upgrade;" in conf
    assert "proxy_http_version 1.1;" in conf
    assert "proxy_set_header Host $http_host;" in conf  # the origin check compares hosts
    (read_timeout,) = re.findall(r"proxy_read_timeout (\d+)s;", conf)
    assert int(read_timeout) > 2 * Settings().heartbeat


def test_make_up_starts_the_chosen_number_of_replicas() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "CHAT_REPLICAS ?= 2" in makefile
    assert "--scale chat=$(CHAT_REPLICAS)" in makefile


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
        ("WS_URL", "ws://lb:8080/ws"),
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


def test_k6_results_go_to_the_results_folder_by_default() -> None:
    k6 = resolved()["services"]["k6"]
    assert f"{ROOT / 'results'}:/results:rw" in k6["volumes"]


def test_k6_results_go_to_the_chosen_results_dir() -> None:
    k6 = resolved(RESULTS_DIR="/tmp/lab-results")["services"]["k6"]
    assert "/tmp/lab-results:/results:rw" in k6["volumes"]
    assert k6["environment"]["RESULTS_DIR"] == "/results"


def test_the_image_runs_python_on_the_allocator_the_benchmarks_measure() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ENV PYTHONMALLOC={PYTHONMALLOC}\n" in dockerfile
