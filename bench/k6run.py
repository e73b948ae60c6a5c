"""``make k6``: one k6 scenario against a running server, in a folder of its own.

Before k6 starts, the scenario must accept its settings (``k6 inspect``; otherwise the run
stops at once, exit 2, with the scenario's own message) and every server of ``WS_URL`` (a
comma-separated list is allowed) must answer ``/readyz`` with 200; otherwise the run stops at
once (exit 2) naming the URL. k6's web
dashboard samples at a period sized to the scenario's planned duration (``k6 inspect``), so
that its charts have about :data:`POINTS` points; after the run, the exported report's title
and heading name the scenario and the verdict. The exit code is k6's, or 99 when the summary
failed a threshold k6 let pass (a trend threshold with no samples, k6/lib/summary.js).

    python -m bench.k6run SCENARIO --results-dir results --run-id 20260101-120000-mixed
        [--profile smoke] [--ws-url ws://127.0.0.1:8080/ws] [--compose "docker compose"]

Settings a scenario reads (VUS, DURATION, ...) come from the environment, as with ``k6 run``.
With ``--compose``, k6 runs in the compose stack's ``k6`` service (docker-compose.yml), which
reaches the chat through the load balancer; ``--ws-url`` is then the chat as the host sees it,
for the readiness check only.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .measure import K6, ROOT, duration_seconds

SCENARIOS = ROOT / "k6" / "scenarios"
POINTS = 60  # dashboard samples a run aims for; a short run gets one a second
CHECK_TIMEOUT = 3.0  # seconds a server has to answer /readyz
THRESHOLDS_FAILED = 99  # k6's own exit code for failed thresholds
TALLY = "count>=0"  # k6/lib/health.js: keeps a sub-metric for the counts, not a real threshold


class ServerNotReady(Exception):
    """No ready roomhub server at a URL derived from ``WS_URL``."""


def readiness_url(ws_url: str) -> str:
    """``ws://host:port/ws`` -> ``http://host:port/readyz`` (``wss`` -> ``https``)."""
    parts = urlsplit(ws_url.strip())
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ServerNotReady(f"WS_URL entry {ws_url!r} is not a ws:// or wss:// URL")
    return urlunsplit((scheme, parts.netloc, "/readyz", "", ""))


def check_servers(ws_urls: str, timeout: float = CHECK_TIMEOUT) -> None:
    """Raise :class:`ServerNotReady` naming the first server of ``ws_urls`` (comma-separated)
    whose ``/readyz`` does not answer 200 within ``timeout`` seconds."""
    for ws_url in ws_urls.split(","):
        url = readiness_url(ws_url)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                status, body = response.status, b""
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        except OSError as error:  # URLError is one
            reason = getattr(error, "reason", error)
            message = f"no server answers at {url} (WS_URL {ws_url}): {reason}"
            raise ServerNotReady(message) from None
        if status != 200:
            said = body.decode(errors="replace").strip()[:200]
            raise ServerNotReady(f"{url} (WS_URL {ws_url}) answers {status} {said}".rstrip())


def dashboard_period(planned: float, points: int = POINTS) -> str:
    """The web dashboard's sampling period for a run of ``planned`` seconds: ``points`` samples,
    at least one second apart (k6's default is 10 s, which leaves a short run's charts empty)."""
    return f"{max(1, math.ceil(planned / points))}s"


class BadSetting(Exception):
    """The scenario refused its settings; the message is the scenario's own (k6's error)."""


K6_MESSAGE = re.compile(r'msg="((?:[^"\\]|\\.)*)"')
"""The message of a k6 log line (``level=error msg="Error: ...\\n\\tat ..."``)."""


def k6_error(stderr: str) -> str:
    """The first line of the first error k6 logged in ``stderr`` (without ``Error: ``), or
    ``stderr`` itself when k6 logged none."""
    found = K6_MESSAGE.search(stderr)
    if found is None:
        return stderr.strip()
    message = json.loads(f'"{found[1]}"').split("\n")[0]
    return message.removeprefix("Error: ")


def planned_seconds(script: Path, variables: dict[str, str]) -> float:
    """The scenario's longest run in seconds (``k6 inspect``, with the shell environment).

    Raises :class:`BadSetting` with the scenario's message when it refuses its settings.
    """
    command = [str(K6), "inspect", "--execution-requirements", "--include-system-env-vars"]
    for name, value in variables.items():
        command += ["-e", f"{name}={value}"]
    done = subprocess.run([*command, str(script)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise BadSetting(k6_error(done.stderr))
    return duration_seconds(json.loads(done.stdout)["totalDuration"])


def verdict(returncode: int, summary: Path) -> str:
    """``PASS`` when k6 exited 0 and the summary JSON failed no threshold, else ``FAIL``."""
    if returncode != 0 or not summary.exists():
        return "FAIL"
    metrics = json.loads(summary.read_text())["metrics"].values()
    failed = any(
        not result["ok"]
        for metric in metrics
        for expression, result in metric.get("thresholds", {}).items()
        if expression != TALLY
    )
    return "FAIL" if failed else "PASS"


def title_report(report: Path, scenario: str, result: str) -> None:
    """Put ``scenario`` and ``result`` in the exported dashboard's <title> and its heading
    (the dashboard writes "k6 report" and "Report: <start time>")."""
    page = report.read_text()
    title = html.escape(f"roomhub load lab: {scenario}: {result} (k6 web dashboard)")
    page = page.replace("<title>k6 report</title>", f"<title>{title}</title>", 1)
    page = page.replace('"Report: "', json.dumps(f"{scenario}: {result} \u00b7 "), 1)
    report.write_text(page)


def local_run(
    script: Path, variables: dict[str, str], report: Path, run_id: str
) -> tuple[list[str], dict[str, str]]:
    """The venv's ``k6 run`` of ``script`` tagged ``testid=<run_id>`` (as compose's k6 tags
    its runs), with ``-e`` ``variables``, exporting the web dashboard to ``report``:
    (command, environment to add)."""
    command = [str(K6), "run", "--tag", f"testid={run_id}"]
    for name, value in variables.items():
        command += ["-e", f"{name}={value}"]
    env = {
        "K6_WEB_DASHBOARD": "true",
        "K6_WEB_DASHBOARD_PORT": "-1",
        "K6_WEB_DASHBOARD_EXPORT": str(report),
    }
    return [*command, str(script)], env


def compose_run(
    compose: str, scenario: str, profile: str, out: Path, run_id: str
) -> tuple[list[str], dict[str, str]]:
    """``<compose> --profile loadtest run --rm k6`` and the variables docker-compose.yml reads
    for it (the k6 image's user is the caller, so ``out`` stays writable): (command, env)."""
    env = {
        "K6_USER": f"{os.getuid()}:{os.getgid()}",
        "SCENARIO": scenario,
        "PROFILE": profile,
        "RESULTS_DIR": str(out.resolve()),
        "TESTID": run_id,
    }
    return [*shlex.split(compose), "--profile", "loadtest", "run", "--rm", "k6"], env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.k6run", description=__doc__)
    parser.add_argument("scenario")
    parser.add_argument("--results-dir", type=Path, required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--profile", default="full")
    parser.add_argument("--ws-url", default="ws://localhost:8080/ws")
    parser.add_argument("--compose", help="the compose command: run k6 in the stack")
    args = parser.parse_args(argv)
    script = SCENARIOS / f"{args.scenario}.js"
    if not script.exists():
        names = " ".join(sorted(path.stem for path in SCENARIOS.glob("*.js")))
        print(f"SCENARIO must be one of: {names}", file=sys.stderr)
        return 2
    out = args.results_dir / args.run_id
    variables = {"PROFILE": args.profile, "WS_URL": args.ws_url, "RESULTS_DIR": str(out)}
    try:
        period = dashboard_period(planned_seconds(script, variables))
    except BadSetting as error:
        print(f"k6 not started: {error}", file=sys.stderr)
        return 2
    try:
        check_servers(args.ws_url)
    except ServerNotReady as error:
        print(
            f"k6 not started: {error}\n"
            "Start a server first (make run-lab, or make up), or point WS_URL at one.",
            file=sys.stderr,
        )
        return 2
    out.mkdir(parents=True)
    latest = args.results_dir / "latest"
    latest.unlink(missing_ok=True)
    latest.symlink_to(args.run_id)
    report = out / f"{args.scenario}-report.html"
    if args.compose:
        command, env = compose_run(args.compose, args.scenario, args.profile, out, args.run_id)
    else:
        command, env = local_run(script, variables, report, args.run_id)
    env["K6_WEB_DASHBOARD_PERIOD"] = period
    done = subprocess.run(command, env={**os.environ, **env}, check=False)
    result = verdict(done.returncode, out / f"{args.scenario}-summary.json")
    if report.exists():
        title_report(report, args.scenario, result)
    if args.compose:
        print(f"(/results in the paths above is {out})")
    if done.returncode == 0 and result == "FAIL":
        return THRESHOLDS_FAILED
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
