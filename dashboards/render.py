"""Draw every panel of dashboards/*.json over one run's time window: ``dashboards.html``.

What Grafana would have shown for a run, without Grafana: each panel's own PromQL (its
targets, as the JSON holds them) goes to Prometheus's HTTP API (``/api/v1/query_range``,
``/api/v1/labels``-style ``label/<name>/values``), and matplotlib draws the answer with the
panel's title, unit and legend format into one self-contained HTML page (PNG data URIs), one
picture per panel, readable offline.

Grafana's variables are expanded as Grafana would for that window: ``$testid`` is pinned to the
run's testid where a dashboard has that variable; every other ``label_values(...)`` variable
is "All" (the values seen in the window, as a regex alternation); ``$__interval`` is the step
(the window over ``MAX_POINTS`` points, at least the datasource's ``timeInterval``) and
``$__rate_interval`` is ``max($__interval + timeInterval, 4 * timeInterval)`` (Grafana's
definition, https://grafana.com/docs/grafana/latest/datasources/prometheus/template-variables/).

Panel types drawn: ``timeseries`` (lines), ``stat`` (a big number: the reduced value, or the
legend for ``textMode: name``, over a sparkline when ``graphMode: area``) and ``heatmap``
(``format: heatmap`` bucket series, de-accumulated per ``le`` as Grafana does); ``row`` panels
become section headings. Any other type is drawn as a time series.

Usage: ``python -m dashboards.render [--prometheus URL] [--testid ID] --start EPOCH
[--end EPOCH] OUT_DIR``; without a Prometheus answering it says so and exits 0.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

HERE = Path(__file__).resolve().parent
DASHBOARDS = sorted(HERE.glob("*.json"))
DATASOURCES = HERE / "provisioning" / "datasources"
MAX_POINTS = 240
"""Points per series at most (Grafana asks for about one per pixel of panel width)."""
SETTLE_SECONDS = 6.0
"""How far the drawn window runs past the run's end (and how long the page waits for it):
one scrape interval (prometheus.yml: 5 s) and a second, so the scrape after the run, the
server back at rest, is in."""
TIMEOUT = 30.0
PAGE = "dashboards.html"
FIGURE = (7.2, 2.6)  # inches; at DPI a 648 x 234 px picture
DPI = 90


@dataclass(frozen=True, slots=True)
class Series:
    """One answer series of a panel: its legend, times (epoch seconds) and values."""

    legend: str
    labels: dict[str, str]
    times: list[float]
    values: list[float]

    def finite(self) -> list[float]:
        return [v for v in self.values if math.isfinite(v)]


@dataclass(slots=True)
class Panel:
    """A panel of a dashboard with the data behind it (``series``, all targets together)."""

    dashboard: str
    row: str
    title: str
    type: str
    unit: str
    description: str
    queries: list[str] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    window: tuple[float, float] | None = None
    """The run's window (epoch seconds) every time axis spans; None: the data's own."""

    @property
    def has_data(self) -> bool:
        """Whether any sample of any series is a finite number."""
        return any(s.finite() for s in self.series)

    def values(self, legend: str | None = None) -> list[float]:
        """Finite values of every series (whose legend starts with ``legend``, if given)."""
        chosen = [s for s in self.series if legend is None or s.legend.startswith(legend)]
        return [v for s in chosen for v in s.finite()]


class Prometheus:
    """Prometheus's HTTP API (``/api/v1``) at ``url`` through httpx.

    Raises ``httpx.HTTPError`` when it cannot be reached, ``ValueError`` with Prometheus's
    message when it answers with an error.
    """

    def __init__(self, url: str, timeout: float = TIMEOUT) -> None:
        self.client = httpx.Client(base_url=f"{url.rstrip('/')}/api/v1", timeout=timeout)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def _data(self, path: str, **form: str) -> list | dict:
        answer = self.client.post(path, data=form)
        body = answer.json()
        if body.get("status") != "success":
            raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def ready(self) -> bool:
        """Whether Prometheus answers its build info."""
        try:
            return self.client.get("status/buildinfo").json().get("status") == "success"
        except (httpx.HTTPError, ValueError):
            return False

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        data = self._data(
            "query_range", query=expr, start=str(start), end=str(end), step=f"{step:g}"
        )
        return data["result"]

    def label_values(self, label: str, selector: str, start: float, end: float) -> list[str]:
        answer = self.client.get(
            f"label/{label}/values",
            params={"match[]": selector, "start": str(start), "end": str(end)},
        ).json()
        if answer.get("status") != "success":
            raise ValueError(f"{answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]


def scrape_interval() -> float:
    """The datasource's ``timeInterval`` (provisioning), in seconds; 15 (Grafana's default)
    when none is set."""
    for path in sorted(DATASOURCES.glob("*.y*ml")):
        for source in yaml.safe_load(path.read_text()).get("datasources", []):
            raw = source.get("jsonData", {}).get("timeInterval")
            if raw:
                return duration_seconds(raw)
    return 15.0


def duration_seconds(text: str) -> float:
    """``"5s"``, ``"1m"``, ``"500ms"``, ``"1h"`` -> seconds; ``ValueError`` on anything else."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def interval_values(start: float, end: float, scrape: float) -> tuple[float, dict[str, str]]:
    """The step (seconds) and the ``$__interval``/``$__rate_interval``/``$__range`` values of a
    window, as Grafana computes them."""
    step = max(scrape, math.ceil((end - start) / MAX_POINTS))
    rate = max(step + scrape, 4 * scrape)
    values = {
        "__interval": f"{step:g}s",
        "__rate_interval": f"{rate:g}s",
        "__range": f"{max(end - start, 1):.0f}s",
    }
    return step, values


def regex_literal(value: str) -> str:
    """``value`` as an RE2 regex matching it exactly, escaped for a PromQL string."""
    return re.sub(r"([.*+?^${}()|\[\]\\])", r"\\\\\1", value)


def expand(expr: str, values: Mapping[str, str]) -> str:
    """Replace ``$name``, ``${name}`` and ``[[name]]`` by ``values[name]``; ``KeyError`` for a
    name without a value."""
    pattern = r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]"
    return re.sub(pattern, lambda m: values[next(g for g in m.groups() if g)], expr)


def variables(
    model: Mapping,
    prometheus: Prometheus,
    start: float,
    end: float,
    base: Mapping[str, str],
    testid: str | None,
) -> dict[str, str]:
    """Each template variable's value for the window: ``testid`` pinned when given, every
    ``label_values(selector, label)`` query variable "All" (``(a|b)`` of the values seen)."""
    values = dict(base)
    for variable in model.get("templating", {}).get("list", []):
        name = variable["name"]
        if name == "testid" and testid:
            values[name] = regex_literal(testid)
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", str(variable.get("query", "")))
        if not match:
            values[name] = ".*"
            continue
        found = prometheus.label_values(match.group(2), expand(match.group(1), values), start, end)
        values[name] = "(" + "|".join(regex_literal(v) for v in found) + ")" if found else ""
    return values


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    """A Grafana legend format (``"p99 {{instance}}"``) filled from a series' labels; without
    a format, the labels as ``{a="b"}``."""
    if fmt and fmt != "__auto":
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{labels.get('__name__', '')}{{{inner}}}"


def panels(model: Mapping) -> Iterator[tuple[str, dict]]:
    """``(row title, panel)`` for every panel of a dashboard, collapsed rows' panels too."""
    row = ""
    for panel in model.get("panels", []):
        if panel.get("type") == "row":
            row = panel.get("title", "")
            yield from ((row, inner) for inner in panel.get("panels", []))
            continue
        yield row, panel


def unit_of(panel: Mapping) -> str:
    if panel.get("type") == "heatmap":
        return panel.get("options", {}).get("yAxis", {}).get("unit") or "short"
    return panel.get("fieldConfig", {}).get("defaults", {}).get("unit") or "short"


def collect(
    model: Mapping, prometheus: Prometheus, start: float, end: float, testid: str | None
) -> list[Panel]:
    """Query every panel of one dashboard model over ``start``..``end`` (epoch seconds)."""
    step, base = interval_values(start, end, scrape_interval())
    start = end - math.ceil((end - start) / step) * step  # the last point falls on ``end``
    values = variables(model, prometheus, start, end, base, testid)
    found = []
    for row, spec in panels(model):
        panel = Panel(
            dashboard=model.get("title", ""),
            row=row,
            title=spec.get("title", ""),
            type=spec.get("type", "timeseries"),
            unit=unit_of(spec),
            description=spec.get("description", ""),
            window=(start, end),
        )
        for target in spec.get("targets", []):
            if target.get("hide") or not target.get("expr"):
                continue
            expr = expand(target["expr"], values)
            panel.queries.append(expr)
            try:
                result = prometheus.query_range(expr, start, end, step)
            except (httpx.HTTPError, ValueError) as error:
                panel.errors.append(f"{target.get('refId', '')}: {error}")
                continue
            for answer in result:
                points = answer.get("values", [])
                panel.series.append(
                    Series(
                        legend=legend(target.get("legendFormat", ""), answer["metric"]),
                        labels=answer["metric"],
                        times=[float(t) for t, _ in points],
                        values=[float(v) for _, v in points],
                    )
                )
        found.append(panel)
    return found


def _si(value: float, suffixes: Sequence[str], base: float) -> str:
    magnitude = 0
    while abs(value) >= base and magnitude < len(suffixes) - 1:
        value /= base
        magnitude += 1
    return f"{value:.3g}{suffixes[magnitude]}"


def format_value(value: float, unit: str) -> str:
    """A value as Grafana shows it in ``unit`` (s, bytes, percentunit, ops, short, none)."""
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if unit == "s":
        if value == 0:
            return "0 s"
        for scale, name in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {name}"
        return f"{value * 1e9:.3g} ns"
    if unit == "bytes":
        return _si(value, [" B", " KiB", " MiB", " GiB", " TiB"], 1024)
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "ops":
        return _si(value, [" ops/s", "k ops/s", "M ops/s"], 1000)
    if unit == "none":
        return f"{value:.4g}"
    return _si(value, ["", "k", "M", "G"], 1000)


def _time_axis(ax: plt.Axes, window: tuple[float, float] | None) -> None:
    if window is not None:
        ax.set_xlim(*_dates(window))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _dates(times: Sequence[float]) -> list[datetime]:
    return [datetime.fromtimestamp(t, UTC) for t in times]


def _draw_timeseries(ax: plt.Axes, panel: Panel) -> None:
    for series in panel.series:
        ax.plot(_dates(series.times), series.values, linewidth=1.2, label=series.legend)
    values = panel.values()
    if min(values) >= 0:  # a count or a rate: no axis below 0, and 0 to 1 when all are 0
        ax.set_ylim(bottom=0, top=None if max(values) > 0 else 1)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, panel.unit)))
    _time_axis(ax, panel.window)
    if panel.series:
        ax.legend(fontsize=6, loc="upper left", ncol=min(3, len(panel.series)), framealpha=0.6)


def _draw_heatmap(ax: plt.Axes, panel: Panel) -> None:
    """Cumulative ``le`` buckets -> counts per bucket (Grafana's heatmap of format heatmap)."""
    buckets = sorted(panel.series, key=lambda s: float(s.labels.get("le", "inf")))
    times = sorted({t for s in buckets for t in s.times})
    index = {t: i for i, t in enumerate(times)}
    grid = [[0.0] * len(times) for _ in buckets]
    for row, series in enumerate(buckets):
        for t, v in zip(series.times, series.values, strict=True):
            grid[row][index[t]] = v if math.isfinite(v) else 0.0
    for row in range(len(buckets) - 1, 0, -1):
        grid[row] = [max(a - b, 0.0) for a, b in zip(grid[row], grid[row - 1], strict=True)]
    edges = [*times, times[-1] + (times[-1] - times[-2] if len(times) > 1 else 1)]
    mesh = ax.pcolormesh(
        mdates.date2num(_dates(edges)), range(len(buckets) + 1), grid, cmap="Oranges",
        norm=matplotlib.colors.PowerNorm(0.5),
    )  # fmt: skip
    labels = [format_value(float(s.labels.get("le", "inf")), panel.unit) for s in buckets]
    ax.set_yticks([i + 0.5 for i in range(len(buckets))], labels, fontsize=6)
    ax.xaxis_date()
    _time_axis(ax, panel.window)
    ax.figure.colorbar(mesh, ax=ax, pad=0.01).ax.tick_params(labelsize=6)


def _draw_stat(fig: plt.Figure, panel: Panel, spec_text_mode: str) -> None:
    count = max(len(panel.series), 1)
    for i, series in enumerate(panel.series):
        ax = fig.add_axes((i / count, 0, 1 / count, 1))
        ax.set_axis_off()
        finite = series.finite()
        if spec_text_mode != "name" and len(finite) > 1:
            ax.fill_between(_dates(series.times), series.values, alpha=0.15, color="tab:blue")
            ax.set_ylim(bottom=0)
        value = finite[-1] if finite else math.nan
        text = series.legend if spec_text_mode == "name" else format_value(value, panel.unit)
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=26)
        if count > 1:
            ax.text(0.5, 0.1, series.legend, transform=ax.transAxes, ha="center", fontsize=8)


def figure(panel: Panel, spec: Mapping | None = None) -> plt.Figure:
    """The panel drawn on a new matplotlib figure (the caller closes it); a panel without
    data says "No data"."""
    stat = panel.type == "stat"
    fig = plt.figure(figsize=(FIGURE[0] / 2, 1.6) if stat else FIGURE, dpi=DPI)
    if not panel.has_data:
        fig.text(0.5, 0.5, "No data", ha="center", va="center", fontsize=14, color="gray")
    elif stat:
        _draw_stat(fig, panel, (spec or {}).get("options", {}).get("textMode", "auto"))
    elif panel.type == "heatmap":
        _draw_heatmap(fig.add_subplot(), panel)
    else:
        _draw_timeseries(fig.add_subplot(), panel)
    fig.suptitle(panel.title, x=0.01, ha="left", fontsize=9, fontweight="bold")
    if not stat:
        fig.tight_layout()
    return fig


def draw(panel: Panel, spec: Mapping | None = None) -> bytes:
    """The panel as a PNG picture (bytes), as :func:`figure` draws it."""
    fig = figure(panel, spec)
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


STYLE = """body{font-family:sans-serif;margin:1em 2em;color:#222}
figure{display:inline-block;margin:.5em;vertical-align:top;border:1px solid #ddd;padding:.4em}
figcaption{font-size:.85em;max-width:648px}figcaption b{font-size:1.1em}
details{font-size:.75em;color:#555}code{white-space:pre-wrap}.err{color:#b00}"""


def html_page(dashboards: Sequence[tuple[Mapping, list[Panel]]], heading: str) -> str:
    """The HTML page: each dashboard, its rows, one picture per panel (PNG data URIs)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(heading)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(heading)}</h1>",
    ]
    for model, found in dashboards:
        parts.append(f"<h2>{html.escape(model.get('title', ''))}</h2>")
        specs = {spec.get("title"): spec for _, spec in panels(model)}
        row = None
        for panel in found:
            if panel.row != row:
                row = panel.row
                parts.append(f"<h3>{html.escape(row)}</h3>")
            image = base64.b64encode(draw(panel, specs.get(panel.title))).decode()
            queries = "\n".join(html.escape(q) for q in panel.queries)
            errors = "".join(f"<div class='err'>{html.escape(e)}</div>" for e in panel.errors)
            parts.append(
                f"<figure><img alt='{html.escape(panel.title, quote=True)}' "
                f"src='data:image/png;base64,{image}'><figcaption><b>"
                f"{html.escape(panel.title)}</b> {html.escape(panel.description)}{errors}"
                f"<details><summary>PromQL</summary><code>{queries}</code></details>"
                "</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True, slots=True)
class Report:
    """Every dashboard's model and panels (with their data) over one run's window."""

    heading: str
    dashboards: list[tuple[dict, list[Panel]]]

    @property
    def panels(self) -> list[Panel]:
        """Every panel, in page order."""
        return [panel for _, found in self.dashboards for panel in found]

    def write(self, out: Path, page: str = PAGE) -> Path:
        """Draw the page into ``out/page``; its path."""
        out.mkdir(parents=True, exist_ok=True)
        (out / page).write_text(html_page(self.dashboards, self.heading))
        return out / page


def query(
    prometheus_url: str,
    start: float,
    end: float,
    testid: str | None = None,
    dashboards: Sequence[Path] = DASHBOARDS,
) -> Report:
    """Every panel of ``dashboards`` with its data over the run from ``start`` to ``end``
    (epoch seconds) and ``SETTLE_SECONDS`` past it (waiting for that).

    Raises ``httpx.HTTPError`` when Prometheus cannot be reached.
    """
    end += SETTLE_SECONDS
    time.sleep(max(0.0, end - time.time()))
    found = []
    with Prometheus(prometheus_url) as prometheus:
        for path in dashboards:
            model = json.loads(path.read_text())
            found.append((model, collect(model, prometheus, start, end, testid)))
    return Report(f"{testid or 'run'}: {_clock(start)} to {_clock(end)}", found)


def render(
    prometheus_url: str,
    out: Path,
    start: float,
    end: float,
    testid: str | None = None,
    page: str = PAGE,
) -> list[Panel]:
    """:func:`query`, then the page drawn into ``out/page``; the panels, in page order."""
    report = query(prometheus_url, start, end, testid)
    report.write(out, page)
    return report.panels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for dashboards.html (the run's results)")
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--testid", default=None, help="the run's k6 testid tag")
    parser.add_argument("--start", type=float, required=True, help="epoch seconds")
    parser.add_argument("--end", type=float, default=None, help="epoch seconds (default: now)")
    args = parser.parse_args(argv)
    end = time.time() if args.end is None else args.end
    with Prometheus(args.prometheus) as prometheus:
        if not prometheus.ready():
            print(f"dashboards: no Prometheus at {args.prometheus}; {PAGE} not written")
            return 0
    found = render(args.prometheus, args.out, args.start, end, args.testid)
    empty = sum(not panel.has_data for panel in found)
    print(f"dashboards: wrote {args.out / PAGE} ({len(found)} panels, {empty} without data)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
