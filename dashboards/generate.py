"""Write (or check) the dashboard JSON files from their Python sources.

``python dashboards/generate.py`` rewrites roomhub-server.json and roomhub-load.json next to
this file; ``--check`` writes nothing and exits 1 naming each file that differs from what the
sources generate. Needs ``grafana-foundation-sdk==0.0.21`` (the project's test extra).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import load_dashboard
import server_dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

HERE = Path(__file__).resolve().parent
DASHBOARDS = {
    "roomhub-server.json": server_dashboard.build,
    "roomhub-load.json": load_dashboard.build,
}


def render(build: Callable[[], Dashboard]) -> str:
    """The dashboard as stable, readable JSON text (sorted keys, 2-space indent)."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path, text = HERE / name, render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    for name in stale:
        print(f"dashboards/{name} is not what the sources generate: run make dashboards")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
