"""Panel builders shared by roomhub's two Grafana dashboards (grafana-foundation-sdk 0.0.21).

Every panel and query points at the provisioned Prometheus datasource (uid
:data:`DATASOURCE_UID`, see provisioning/datasources/prometheus.yml). Query refIds are given
here (A, B, C, ... in order); panel ids and grid positions are given by
:func:`finish`, so a dashboard module only lists its rows and panels.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    Dashboard,
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    GridPos,
    Panel,
    RowPanel,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode, HeatmapColorScale
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE_UID = "roomhub-prometheus"
DATASOURCE = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
MAY_BE_EMPTY = "May be empty"
"""Descriptions of panels that can rightly show no data start a sentence with this."""

Query = prometheus.Dataquery


def query(expr: str, legend: str = "__auto") -> Query:
    """A Prometheus range query; ``legend`` is a Grafana legend template."""
    return Query().expr(expr).legend_format(legend).range().datasource(DATASOURCE)


def _targets(panel, queries: Sequence[Query]):
    """Add ``queries`` to any SDK panel builder with refIds A, B, C, ...; returns the panel."""
    for ref_id, target in zip(string.ascii_uppercase, queries, strict=False):
        panel.with_target(target.ref_id(ref_id))
    return panel


def _legend(table: bool) -> common_builders.VizLegendOptions:
    legend = (
        common_builders.VizLegendOptions()
        .show_legend(True)
        .placement(common.LegendPlacement.BOTTOM)
        .display_mode(common.LegendDisplayMode.LIST)
    )
    if table:
        legend.display_mode(common.LegendDisplayMode.TABLE).calcs(["mean", "max"])
        legend.sort_by("Max").sort_desc(True)
    return legend


def graph(
    title: str,
    description: str,
    unit: str,
    *queries: Query,
    width: int = 8,
    height: int = 8,
    table: bool = False,
) -> timeseries.Panel:
    """A time-series panel; ``table`` shows the legend as a table sorted by max."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .legend(_legend(table))
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .grid_pos(GridPos(h=height, w=width))
    )
    return _targets(panel, queries)


def single(
    title: str, description: str, unit: str, target: Query, *, name: bool = False
) -> stat.Panel:
    """A stat panel (4 wide); ``name`` shows the series name (a label) instead of the value."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .graph_mode(common.BigValueGraphMode.NONE if name else common.BigValueGraphMode.AREA)
        .text_mode(common.BigValueTextMode.NAME if name else common.BigValueTextMode.VALUE)
        .color_mode(common.BigValueColorMode.NONE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .grid_pos(GridPos(h=4, w=4))
    )
    return _targets(panel, [target])


def bucket_heatmap(title: str, description: str, target: Query) -> heatmap.Panel:
    """A heatmap of classic histogram buckets (``le`` series, Prometheus heatmap format)."""
    panel = (
        heatmap.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .color(
            heatmap.HeatmapColorOptions()
            .mode(HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .fill("dark-orange")
            .scale(HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
        )
        .cell_gap(1)
        .grid_pos(GridPos(h=8, w=8))
    )
    return _targets(panel, [target.format(PromQueryFormat.HEATMAP).legend_format("{{le}}")])


def row(title: str) -> dashboard.Row:
    return dashboard.Row(title)


def variable(
    name: str, label: str, definition: str, *, sort: VariableSort
) -> dashboard.QueryVariable:
    """A multi-value query variable with "All", refreshed when the time range changes."""
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(definition)
        .definition(definition)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(sort)
        .multi(True)
        .include_all(True)
    )


def link(title: str, uid: str) -> dashboard.DashboardLink:
    """A link to another dashboard that keeps the time range."""
    return (
        dashboard.DashboardLink(title)
        .type(DashboardLinkType.LINK)
        .url(f"/d/{uid}")
        .icon("dashboard")
        .keep_time(True)
        .target_blank(False)
    )


def new_dashboard(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["roomhub"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("5s")
        .time("now-15m", "now")
        .timezone("browser")
    )


def finish(built: Dashboard) -> Dashboard:
    """Number the panels 1, 2, ... in order (rows included) and return the dashboard.

    Links lose the SDK's default placement (``inControlsMenu``, a dropdown) so Grafana shows
    them above the panels.
    """
    panels: list[Panel | RowPanel] = built.panels or []
    for number, panel in enumerate(panels, start=1):
        panel.id_val = number
    for dashboard_link in built.links or []:
        dashboard_link.placement = None
    return built
