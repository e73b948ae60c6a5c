"""The project's PromQL as data: dashboard queries, rule expressions and the names they read.

Dashboards are the committed JSON models under dashboards/; rules are prometheus/rules/*.yml.
Grafana variables (``$instance``, ``$__rate_interval``, ...) are replaced by
:func:`substitute` before an expression goes to Prometheus or promtool.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_FILES = {
    "roomhub-server": ROOT / "dashboards" / "roomhub-server.json",
    "roomhub-load": ROOT / "dashboards" / "roomhub-load.json",
}
RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))

# Offline stand-ins for Grafana's variables: any value that keeps the expression valid.
OFFLINE_VALUES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "instance": ".+",
    "hub_mode": ".+",
    "testid": ".+",
    "scenario": ".+",
}

# k6 1.1 built-in metrics a WebSocket test can emit, with their k6 metric type.
K6_BUILTINS = {
    "vus": "gauge",
    "vus_max": "gauge",
    "iterations": "counter",
    "iteration_duration": "time",
    "dropped_iterations": "counter",
    "data_sent": "counter",
    "data_received": "counter",
    "checks": "rate",
    "ws_connecting": "time",
    "ws_session_duration": "time",
    "ws_ping": "time",
    "ws_sessions": "counter",
    "ws_msgs_sent": "counter",
    "ws_msgs_received": "counter",
}
# Remote-write series name per k6 metric type (experimental-prometheus-rw, trends as native
# histograms): counters k6_<m>_total, rates k6_<m>_rate, gauges k6_<m>, time trends
# k6_<m>_seconds, other trends k6_<m>.
K6_SUFFIX = {"counter": "_total", "rate": "_rate", "gauge": "", "time": "_seconds", "trend": ""}

_PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2",
}  # fmt: skip


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel: where it is and its raw expression."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}"


def load_dashboard(name: str) -> dict:
    return json.loads(DASHBOARD_FILES[name].read_text())


def panels(model: Mapping) -> Iterator[dict]:
    """Every panel of a dashboard model, rows and the panels of collapsed rows included."""
    for panel in model.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(name: str) -> list[PanelQuery]:
    found = []
    for panel in panels(load_dashboard(name)):
        for target in panel.get("targets", []):
            found.append(PanelQuery(name, panel["title"], target["refId"], target["expr"]))
    return found


def all_panel_queries() -> list[PanelQuery]:
    return [q for name in DASHBOARD_FILES for q in panel_queries(name)]


def variable_selectors(name: str) -> dict[str, str]:
    """``{variable: series selector}`` of each ``label_values(selector, label)`` variable."""
    selectors = {}
    for variable in load_dashboard(name)["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"])
        assert match, f"{name}: variable {variable['name']} is not a label_values() query"
        selectors[variable["name"]] = match.group(1)
    return selectors


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace ``$name`` and ``${name}`` by ``values[name]``; an unknown name raises KeyError."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (label matchers, ranges and grouping stripped)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in _PROMQL_WORDS:
            names.add(word)
    return names


def rules() -> list[dict]:
    """Every rule (recording and alerting) of prometheus/rules/*.yml."""
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def k6_remote_write_names(metrics_js: Path = ROOT / "k6" / "lib" / "metrics.js") -> set[str]:
    """Series names k6 remote-writes for its built-ins and the custom metrics of metrics.js."""
    kinds = dict(K6_BUILTINS)
    pattern = r"new (Trend|Counter|Rate|Gauge)\(\s*'(\w+)'\s*(,\s*true)?\s*\)"
    for kind, name, is_time in re.findall(pattern, metrics_js.read_text()):
        kinds[name] = "time" if kind == "Trend" and is_time else kind.lower()
    return {f"k6_{name}{K6_SUFFIX[kind]}" for name, kind in kinds.items()}


def promtool_check_exprs(promtool: str, exprs: Mapping[str, str], tmp: Path) -> None:
    """Parse every expression with promtool (as recording rules of one rule file).

    Raises ``AssertionError`` with promtool's message when any expression does not parse.
    """
    rules_file = tmp / "exprs.yml"
    group = {
        "name": "parse",
        "rules": [{"record": f"parse:check:q{n}", "expr": e} for n, e in enumerate(exprs.values())],
    }
    rules_file.write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    labels = "\n".join(f"q{n}: {label}" for n, label in enumerate(exprs))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{labels}"
