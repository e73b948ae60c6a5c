"""Read the tables of the project's Markdown docs, so tests can assert what they state."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def table(doc: str, anchor: str, index: int = 0) -> list[dict[str, str]]:
    """Rows of the ``index``-th table after the first line of ``ROOT/doc`` that starts with
    ``anchor`` (a heading, say), before the next heading.

    Each row maps a column's header text to the cell's text, both stripped; raises
    ``LookupError`` when the anchor or the table is missing.
    """
    lines = (ROOT / doc).read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(anchor)), None)
    if start is None:
        raise LookupError(f"{doc}: no line starting {anchor!r}")
    tables: list[list[list[str]]] = []
    inside = fenced = False
    for line in lines[start + 1 :]:
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        if line.startswith("#") and line.lstrip("#").startswith(" "):
            break
        if line.startswith("|"):
            if not inside:
                tables.append([])
                inside = True
            tables[-1].append([cell.strip() for cell in line.strip().strip("|").split("|")])
        else:
            inside = False
    if len(tables) <= index:
        raise LookupError(f"{doc}: fewer than {index + 1} tables after {anchor!r}")
    header, _rule, *rows = tables[index]
    return [dict(zip(header, row, strict=True)) for row in rows]


def code(cell: str) -> str:
    """The text of a cell written as one code span: ``"`bad_room`"`` → ``"bad_room"``."""
    return cell.strip().removeprefix("`").removesuffix("`")


def redis_only_metrics() -> set[str]:
    """Metrics the overview table of docs/metrics.md marks "Redis broker only": a server on
    the memory broker does not export them."""
    rows = table("docs/metrics.md", "## Overview")
    return {row["metric"].split("`")[1] for row in rows if "Redis broker only" in row["type"]}
