"""prometheus/: the scrape config, recording and alerting rules, and their promtool unit tests."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.support.docs import redis_only_metrics
from tests.support.processes import Process, require_binary
from tests.support.promql import ROOT, RULE_FILES, metric_names, recorded_names, rules

PROMETHEUS = ROOT / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_binary("promtool"), *args], capture_output=True, text=True, timeout=120
    )


def alerts() -> list[dict]:
    return [rule for rule in rules() if "alert" in rule]


def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_promtool_accepts_the_config() -> None:
    result = promtool("check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_rule_files() -> None:
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing, quiet = set(), set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set(), "alerts without a test where they fire"
    assert names - quiet == set(), "alerts without a test where they stay quiet"


def test_the_required_alerts_exist() -> None:
    assert {rule["alert"] for rule in alerts()} == {
        "RoomhubFanoutP99High",
        "RoomhubEventLoopLagHigh",
        "RoomhubSlowConsumersDisconnected",
        "RoomhubBotBacklog",
        "RoomhubBotTimeouts",
        "RoomhubConnectionChurn",
        "RoomhubTargetDown",
        "RoomhubBrokerDown",
    }


@pytest.mark.parametrize("alert", alerts(), ids=lambda rule: rule["alert"])
def test_alert_has_runbook_style_annotations(alert: dict) -> None:
    assert set(alert["annotations"]) == {"summary", "description", "runbook"}
    assert alert["labels"]["severity"] in {"info", "warning", "critical"}
    assert re.match(r"1\. .+ 2\. .+", alert["annotations"]["runbook"], re.S)


def test_recording_rules_are_named_level_metric_operations() -> None:
    for name in recorded_names():
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", name), name


def test_recording_rules_cover_rates_and_quantiles() -> None:
    assert {
        "instance:chat_messages_received:rate1m",
        "instance:chat_events_delivered:rate1m",
        "instance:chat_broadcast_fanout_seconds:quantile_rate1m",
        "instance:chat_bot_latency_seconds:quantile_rate1m",
        "instance:chat_event_loop_lag_seconds:quantile_rate1m",
    } <= recorded_names()


def test_chat_replicas_are_discovered_by_dns() -> None:
    (chat,) = [job for job in config()["scrape_configs"] if job["job_name"] == "chat"]
    assert chat["dns_sd_configs"] == [
        {"names": ["chat"], "type": "A", "port": 9100, "refresh_interval": "5s"}
    ]


def test_chat_stockapi_and_prometheus_are_scraped_every_5s() -> None:
    loaded = config()
    assert loaded["global"]["scrape_interval"] == "5s"
    jobs = {job["job_name"]: job for job in loaded["scrape_configs"]}
    assert set(jobs) == {"chat", "stockapi", "prometheus"}
    assert all("scrape_interval" not in job for job in jobs.values())
    assert jobs["stockapi"]["static_configs"] == [{"targets": ["stockapi:8081"]}]


def test_rules_read_only_metrics_the_server_exports(live_server: Process) -> None:
    exported = {key.split("{")[0] for key in live_server.metrics()} | {"up"}
    exported |= redis_only_metrics()  # exported with a Redis broker (test_metrics), not here
    read = set().union(*(metric_names(rule["expr"]) for rule in rules()))
    assert read - exported - recorded_names() == set()
