"""docker-compose.yml and the Dockerfile, validated without a Docker engine.

``docker-compose config`` (Debian's v1) resolves and validates the file; the resolved YAML is
then read to check what each service must do.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess

import pytest
import yaml

from bench import k6run
from bench.server import PYTHONMALLOC, free_port
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
# Settings compose defaults to a value of the stack's own: replicas share rooms through Redis,
# and the per-address limits are off (every client comes through nginx; k6 is one address).
STACK_DEFAULTS = {
    "ROOMHUB_BROKER": "redis://redis:6379/0",
    "ROOMHUB_MAX_CONNECTIONS_PER_ADDRESS": "0",
    "ROOMHUB_UPGRADE_RATE": "0",
    "ROOMHUB_NEW_ROOMS_PER_MINUTE": "0",
}
NGINX_CONF = ROOT / "nginx" / "nginx.conf"
PROMETHEUS = ROOT / "prometheus"


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
    shell = {name: f"/from-shell-{n}" for n, name in enumerate(SETTINGS)}  # a path too
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
        ("K6_PROMETHEUS_RW_PUSH_INTERVAL", "1s"),
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


def test_services_that_build_the_image_tag_it_apart() -> None:
    images = [service["image"] for service in services().values() if "build" in service]
    assert len(images) == len(set(images)) == 2, images


def test_the_token_public_key_is_mounted_read_only_at_the_path_the_server_reads() -> None:
    chat = resolved(ROOMHUB_TOKEN_PUBLIC_KEY="/home/alice/keys/roomhub.pem")["services"]["chat"]
    assert chat["environment"]["ROOMHUB_TOKEN_PUBLIC_KEY"] == "/home/alice/keys/roomhub.pem"
    assert "/home/alice/keys/roomhub.pem:/home/alice/keys/roomhub.pem:ro" in chat["volumes"]


def test_without_a_token_public_key_nothing_is_mounted_where_the_server_would_read() -> None:
    chat = resolved()["services"]["chat"]
    assert chat["environment"]["ROOMHUB_TOKEN_PUBLIC_KEY"] is None
    assert "/dev/null:/run/roomhub/no-public-key:ro" in chat["volumes"]


def worker_config(tmp_path, workers: str) -> subprocess.CompletedProcess:
    """prometheus/workers.sh over the repo's prometheus.yml into ``tmp_path``, beside a copy
    of the rules (so promtool can check the result)."""
    shutil.copytree(PROMETHEUS / "rules", tmp_path / "rules", dirs_exist_ok=True)
    return subprocess.run(
        [
            "sh",
            str(PROMETHEUS / "workers.sh"),
            str(PROMETHEUS / "prometheus.yml"),
            str(tmp_path / "prometheus.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "ROOMHUB_WORKERS": workers},
    )


def chat_ports(config) -> list[int]:
    (job,) = [job for job in yaml.safe_load(config.read_text())["scrape_configs"]
              if job["job_name"] == "chat"]  # fmt: skip
    assert {entry["names"][0] for entry in job["dns_sd_configs"]} == {"chat"}
    return [entry["port"] for entry in job["dns_sd_configs"]]


@pytest.mark.parametrize(("workers", "ports"), [("1", [9100]), ("3", [9100, 9101, 9102])])
def test_prometheus_scrapes_the_metrics_port_of_every_worker(tmp_path, workers, ports) -> None:
    assert worker_config(tmp_path, workers).returncode == 0
    assert chat_ports(tmp_path / "prometheus.yml") == ports
    check = subprocess.run(
        [require_binary("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_prometheus_worker_ports_refuse_a_worker_count_that_is_no_whole_number(tmp_path) -> None:
    done = worker_config(tmp_path, "two")
    assert done.returncode == 2
    assert "ROOMHUB_WORKERS must be a whole number >= 1, got 'two'" in done.stderr


def test_prometheus_starts_on_the_config_with_every_workers_port() -> None:
    prometheus = resolved(ROOMHUB_WORKERS="4")["services"]["prometheus"]
    assert prometheus["environment"]["ROOMHUB_WORKERS"] == "4"
    script = " ".join(prometheus["entrypoint"])
    assert "workers.sh /etc/prometheus/prometheus.yml /tmp/prometheus.yml" in script
    assert "--config.file=/tmp/prometheus.yml" in prometheus["command"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in prometheus["volumes"]}
    assert mounts["/etc/prometheus/workers.sh"] == str(PROMETHEUS / "workers.sh")


def make_up(*urls: str, timeout: int) -> subprocess.CompletedProcess:
    """``make up`` with a no-op compose command: only its wait for ``urls`` runs."""
    return subprocess.run(
        [
            require_binary("make"),
            "--no-print-directory",
            "up",
            "COMPOSE=true",
            f"READY_URLS={' '.join(urls)}",
            f"UP_TIMEOUT={timeout}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )


def test_make_up_prints_the_urls_once_the_services_answer(live_server) -> None:
    done = make_up(f"{live_server.url}/readyz", f"{live_server.url}/healthz", timeout=20)
    assert done.returncode == 0, done.stderr
    assert "grafana     http://localhost:3000" in done.stdout


def test_make_up_fails_naming_a_service_that_does_not_answer_in_time(live_server) -> None:
    silent = f"http://127.0.0.1:{free_port()}/readyz"
    done = make_up(f"{live_server.url}/readyz", silent, timeout=3)
    assert done.returncode != 0
    assert f"make up: {silent} did not answer within 3 s" in done.stderr
    assert "http://localhost:3000" not in done.stdout


def test_make_k6_in_the_stack_hands_the_run_to_the_k6_service(tmp_path) -> None:
    out = tmp_path / "20260101-120000-spike"
    command, env = k6run.compose_run("docker compose", "spike", "smoke", out, out.name)
    assert command == ["docker", "compose", "--profile", "loadtest", "run", "--rm", "k6"]
    k6 = resolved(**env, K6_WEB_DASHBOARD_PERIOD="2s")["services"]["k6"]
    assert k6["command"][-1] == "/scripts/scenarios/spike.js"
    assert f"testid={out.name}" in k6["command"]
    assert f"{out}:/results:rw" in k6["volumes"]
    assert k6["user"] == env["K6_USER"]
    assert k6["environment"]["PROFILE"] == "smoke"
    assert k6["environment"]["K6_WEB_DASHBOARD_PERIOD"] == "2s"
    assert k6["environment"]["K6_WEB_DASHBOARD_EXPORT"] == "/results/spike-report.html"
