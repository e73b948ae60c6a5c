"""dashboards/: the two Grafana dashboards and their provisioning, checked without Grafana."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.docs import redis_only_metrics
from tests.support.processes import Process, require_binary
from tests.support.promql import (
    DASHBOARD_FILES,
    OFFLINE_VALUES,
    ROOT,
    all_panel_queries,
    k6_remote_write_names,
    load_dashboard,
    metric_names,
    panels,
    promtool_check_exprs,
    recorded_names,
    rules,
    substitute,
    variable_selectors,
)

PROVISIONING = ROOT / "dashboards" / "provisioning"
DASHBOARDS = list(DASHBOARD_FILES)


def panel_titles() -> set[str]:
    """Titles of every panel and row of both dashboards."""
    return {panel["title"] for name in DASHBOARDS for panel in panels(load_dashboard(name))}


def observe_section() -> str:
    """docs/loadlab.md from "Observe a load test" on: what each scenario shows on which panel."""
    doc = (ROOT / "docs" / "loadlab.md").read_text()
    return doc.split("\n## Observe a load test\n", 1)[1]


def datasource_uid() -> str:
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    return source["uid"]


def test_committed_json_is_what_the_generator_writes() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "dashboards" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DASHBOARDS)
def test_uid_is_the_file_name(name: str) -> None:
    assert load_dashboard(name)["uid"] == name


@pytest.mark.parametrize("name", DASHBOARDS)
def test_panel_ids_are_unique(name: str) -> None:
    ids = [panel["id"] for panel in panels(load_dashboard(name))]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", DASHBOARDS)
def test_ref_ids_are_unique_within_each_panel(name: str) -> None:
    for panel in panels(load_dashboard(name)):
        ref_ids = [target["refId"] for target in panel.get("targets", [])]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(ref_ids), panel["title"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_panels_fit_the_24_column_grid_without_overlapping(name: str) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(load_dashboard(name)):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_and_query_uses_the_provisioned_datasource(name: str) -> None:
    uid = datasource_uid()
    model = load_dashboard(name)
    for panel in panels(model):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
    for variable in model["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid, variable["name"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_says_what_it_shows(name: str) -> None:
    for panel in panels(load_dashboard(name)):
        if panel["type"] != "row":
            assert len(panel.get("description", "")) > 20, panel["title"]


def test_fan_out_time_description_states_what_a_storm_measured() -> None:
    (panel,) = [
        p
        for p in panels(load_dashboard("roomhub-server"))
        if p["title"] == "Fan-out time p50 / p95 / p99"
    ]
    assert "sub-millisecond" not in panel["description"]
    assert "p95 10-21 ms" in panel["description"]


def test_every_expression_parses(tmp_path: Path) -> None:
    exprs = {str(q): substitute(q.expr, OFFLINE_VALUES) for q in all_panel_queries()}
    for name in DASHBOARDS:
        for variable, selector in variable_selectors(name).items():
            exprs[f"{name} / ${variable}"] = substitute(selector, OFFLINE_VALUES)
    promtool_check_exprs(require_binary("promtool"), exprs, tmp_path)


def test_every_metric_a_dashboard_reads_is_exported(live_server: Process) -> None:
    known = (
        {key.split("{")[0] for key in live_server.metrics()}
        | redis_only_metrics()  # exported with a Redis broker (test_metrics), not here
        | recorded_names()
        | k6_remote_write_names()
    )
    exprs = [q.expr for q in all_panel_queries()]
    exprs += [s for name in DASHBOARDS for s in variable_selectors(name).values()]
    unknown = set().union(*(metric_names(expr) for expr in exprs)) - known
    assert unknown == set()


def test_server_dashboard_filters_by_hub_mode_and_instance() -> None:
    selectors = variable_selectors("roomhub-server")
    assert selectors == {
        "hub_mode": "chat_build_info",
        "instance": 'chat_build_info{hub_mode=~"$hub_mode"}',
    }
    for query in all_panel_queries():
        if query.dashboard == "roomhub-server":
            assert "$instance" in query.expr or "$hub_mode" in query.expr, query


def test_load_dashboard_filters_by_testid_and_scenario() -> None:
    assert set(variable_selectors("roomhub-load")) == {"testid", "scenario"}
    k6_queries = [q for q in all_panel_queries() if "k6_" in q.expr]
    assert k6_queries
    for query in k6_queries:
        assert "$testid" in query.expr, query


def test_the_dashboards_link_to_each_other() -> None:
    server_links = [link["url"] for link in load_dashboard("roomhub-server")["links"]]
    load_links = [link["url"] for link in load_dashboard("roomhub-load")["links"]]
    assert server_links == ["/d/roomhub-load"]
    assert load_links == ["/d/roomhub-server"]


def test_datasource_is_the_compose_prometheus_at_its_scrape_interval() -> None:
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    scrape = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())["global"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose["prometheus"]["ports"]
    assert source["jsonData"]["timeInterval"] == scrape["scrape_interval"]


def test_provider_loads_dashboards_from_the_compose_mount() -> None:
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "roomhub.yml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    targets = [volume.split(":")[1] for volume in compose["services"]["grafana"]["volumes"]]
    for path in DASHBOARD_FILES.values():
        assert f"{provider['options']['path']}/{path.name}" in targets


def test_every_panel_the_load_lab_page_names_in_italics_exists() -> None:
    italics = re.findall(r"(?<![*\w])\*([^*\s][^*]*?)\*(?![*\w])", observe_section())
    assert italics
    assert {" ".join(name.split()) for name in italics} - panel_titles() == set()


def test_every_panel_an_alert_runbook_quotes_exists() -> None:
    runbooks = [rule["annotations"]["runbook"] for rule in rules() if "alert" in rule]
    quoted = {name for runbook in runbooks for name in re.findall(r'"([^"]+)"', runbook)}
    assert quoted
    assert quoted - panel_titles() == set()
