"""dashboards/render.py without a Prometheus: Grafana's variables, legends, units, pictures."""

from __future__ import annotations

import json
import re

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import pytest

from dashboards.render import (
    DASHBOARDS,
    Panel,
    Series,
    draw,
    expand,
    figure,
    format_value,
    html_page,
    interval_values,
    legend,
    panels,
    regex_literal,
)

PNG = b"\x89PNG\r\n\x1a\n"


def test_rate_interval_is_four_scrapes_for_a_short_window() -> None:
    step, values = interval_values(0, 60, scrape=5)
    assert step == 5
    assert values["__rate_interval"] == "20s"


def test_rate_interval_grows_with_the_step_of_a_long_window() -> None:
    step, values = interval_values(0, 3600, scrape=5)
    assert step == 15  # 3600 s over 240 points
    assert values["__rate_interval"] == "20s"
    step, values = interval_values(0, 36000, scrape=5)
    assert values["__rate_interval"] == f"{step + 5}s"


def test_expand_replaces_every_variable_form() -> None:
    values = {"testid": "abc", "__rate_interval": "20s"}
    assert expand('x{t=~"$testid"}[$__rate_interval] ${testid} [[testid]]', values) == (
        'x{t=~"abc"}[20s] abc abc'
    )


def test_expand_refuses_an_unknown_variable() -> None:
    with pytest.raises(KeyError):
        expand("x{a=~'$nope'}", {})


def test_a_testid_is_matched_literally() -> None:
    assert regex_literal("20261207-0038.mixed") == r"20261207-0038\\.mixed"


def test_legend_fills_labels_and_falls_back_to_the_series_name() -> None:
    assert legend("p99 {{instance}}", {"instance": "a:1"}) == "p99 a:1"
    assert legend("", {"__name__": "up", "job": "chat"}) == 'up{job="chat"}'


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        (0.0123, "s", "12.3 ms"),
        (2.5, "s", "2.5 s"),
        (3 * 1024 * 1024, "bytes", "3 MiB"),
        (0.5, "percentunit", "50%"),
        (12500, "ops", "12.5k ops/s"),
        (1500, "short", "1.5k"),
    ],
)
def test_values_are_shown_in_the_panel_unit(value: float, unit: str, shown: str) -> None:
    assert format_value(value, unit) == shown


def test_every_dashboard_panel_is_found_including_rows_panels() -> None:
    for path in DASHBOARDS:
        model = json.loads(path.read_text())
        found = [spec["title"] for _, spec in panels(model)]
        expected = [p["title"] for p in model["panels"] if p["type"] != "row"]
        expected += [inner["title"] for p in model["panels"] for inner in p.get("panels", [])]
        assert sorted(found) == sorted(expected)


def _panel(kind: str, series: list[Series], unit: str = "s") -> Panel:
    return Panel("d", "row", f"a {kind}", kind, unit, "", ["q"], series)


def _series(name: str, values: list[float], **labels: str) -> Series:
    return Series(name, labels, [1000.0 + 5 * i for i in range(len(values))], values)


@pytest.mark.parametrize("kind", ["timeseries", "stat", "heatmap", "bargauge"])
def test_each_panel_type_draws_a_picture(kind: str) -> None:
    series = [_series("0.1", [1, 2, 3], le="0.1"), _series("+Inf", [2, 4, 6], le="+Inf")]
    assert draw(_panel(kind, series)).startswith(PNG)


def test_a_panel_without_data_still_gets_a_picture() -> None:
    panel = _panel("timeseries", [_series("x", [float("nan")])])
    assert not panel.has_data
    assert draw(panel).startswith(PNG)


def test_the_page_embeds_one_picture_per_panel_and_needs_nothing_else() -> None:
    found = [_panel("timeseries", [_series("x", [1, 2])]), _panel("stat", [_series("y", [3])])]
    html = html_page([({"title": "board", "panels": []}, found)], "run")
    assert html.count("<img ") == 2
    assert html.count("src='data:image/png;base64,") == 2
    assert not re.search(r"(src|href)=['\"]https?:", html)


def _limits(panel: Panel) -> tuple[tuple[float, float], tuple[float, float]]:
    """The drawn panel's (x limits as epoch seconds, y limits)."""
    fig = figure(panel)
    try:
        ax = fig.axes[0]
        left, right = (mdates.num2date(x).timestamp() for x in ax.get_xlim())
        return (left, right), ax.get_ylim()
    finally:
        plt.close(fig)


@pytest.mark.parametrize("kind", ["timeseries", "heatmap"])
def test_a_panel_spans_the_runs_window_not_only_its_data(kind: str) -> None:
    panel = _panel(kind, [_series("0.1", [1, 2, 3], le="0.1"), _series("+Inf", [2, 4, 6])])
    panel.window = (990.0, 1100.0)  # the data: 1000 to 1010
    (left, right), _ = _limits(panel)
    assert (round(left), round(right)) == (990, 1100)


def test_an_all_zero_panel_draws_no_axis_below_zero() -> None:
    (_, (bottom, top)) = _limits(_panel("timeseries", [_series("x", [0, 0, 0])], unit="ops"))
    assert bottom == 0 < top


def test_a_panel_of_counts_starts_its_axis_at_zero() -> None:
    (_, (bottom, _)) = _limits(_panel("timeseries", [_series("x", [0, 5, 9])], unit="short"))
    assert bottom == 0
