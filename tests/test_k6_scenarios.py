"""The seven k6 load scenarios: their full specs, and each one run for real (smoke profile)
against a live server, checking k6's verdict and the effect the scenario exists to cause."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.measure import duration_seconds as seconds
from server.ops.metrics import BOT_RESULTS
from tests.support.k6 import SCENARIOS, K6Run, inspect, run_k6, sampling, wait_for_metrics
from tests.support.processes import Process, run_server

pytestmark = pytest.mark.k6

NAMES = ("connection-storm", "active-chat", "stock-bot", "spike", "soak", "mixed", "api")
SMOKE_MAX_VUS = 100
SMOKE_MAX_SECONDS = 40
SPIKE_BASE, SPIKE_PEAK = 20, 100  # the spike's smoke shape
API_KEY = "k6-api-key-0123456789abcdef"  # the api scenario stops at once without one


def run_scenario(k6_bin: str, server: Process, tmp_path: Path, name: str) -> K6Run:
    return run_k6(k6_bin, SCENARIOS / f"{name}.js", server.ws_url, tmp_path)


def assert_healthy(run: K6Run) -> None:
    """k6 passed, and did so on real thresholds (none failed, none missing)."""
    assert run.thresholds(), "the scenario defines no thresholds"
    assert not run.failures(), "thresholds failed:\n" + "\n".join(run.failures())
    assert run.returncode == 0, run.output[-4000:]


def vus(run: K6Run) -> int:
    return int(run.values("vus_max")["value"])


def grew(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after[name] - before[name]


def idle(metrics: dict[str, float]) -> bool:
    return metrics["chat_connections"] == 0


# -- full specs (k6 inspect; nothing runs) -----------------------------------------------


def full(k6_bin: str, name: str, **env: str) -> dict:
    return inspect(k6_bin, SCENARIOS / f"{name}.js", PROFILE="full", API_KEY=API_KEY, **env)


def test_connection_storm_full_spec_ramps_to_1000_in_10s_holds_30s_and_drains_in_10s(k6_bin):
    spec = full(k6_bin, "connection-storm")
    storm, probes = spec["scenarios"]["storm"], spec["scenarios"]["probes"]
    assert storm["executor"] == "ramping-vus"
    assert [(seconds(s["duration"]), s["target"]) for s in storm["stages"]] == [
        (10, 1000),
        (30, 1000),
        (10, 0),
    ]
    assert probes["executor"] == "constant-vus"
    assert 1 <= probes["vus"] <= 10
    assert seconds(probes["duration"]) == 50
    assert spec["maxVUs"] == 1000 + probes["vus"]


def test_active_chat_full_spec_is_200_users_for_a_minute(k6_bin):
    spec = full(k6_bin, "active-chat")
    chat = spec["scenarios"]["chat"]
    assert (chat["executor"], chat["vus"], seconds(chat["duration"])) == ("constant-vus", 200, 60)
    assert spec["maxVUs"] == 200


def test_stock_bot_full_spec_is_50_users(k6_bin):
    spec = full(k6_bin, "stock-bot")
    assert spec["scenarios"]["bot"]["vus"] == 50
    assert spec["maxVUs"] == 50


def test_spike_full_spec_jumps_from_100_to_500_for_a_minute_and_back(k6_bin):
    spec = full(k6_bin, "spike")
    stages = [(seconds(s["duration"]), s["target"]) for s in spec["scenarios"]["spike"]["stages"]]
    targets = [target for _, target in stages]
    assert targets == [100, 100, 500, 500, 100, 100]
    assert stages[2][0] <= 5, "the jump to 500 is sudden"
    assert stages[3][0] == 60
    assert spec["maxVUs"] == 500


def test_soak_full_spec_is_200_users_for_30_minutes(k6_bin):
    soak = full(k6_bin, "soak")["scenarios"]["soak"]
    assert (soak["vus"], seconds(soak["duration"])) == (200, 30 * 60)


def test_soak_duration_env_overrides_the_length(k6_bin):
    soak = full(k6_bin, "soak", DURATION="45m")["scenarios"]["soak"]
    assert seconds(soak["duration"]) == 45 * 60


def test_mixed_full_spec_splits_users_60_30_10_by_tagged_role(k6_bin):
    scenarios = full(k6_bin, "mixed")["scenarios"]
    roles = {s["tags"]["role"]: s["vus"] for s in scenarios.values()}
    assert roles == {"lurker": 300, "chatter": 150, "bot": 50}


def test_api_full_spec_publishes_200_a_second_into_100_rooms_with_200_listeners(k6_bin):
    spec = full(k6_bin, "api")
    listeners, backend = spec["scenarios"]["listeners"], spec["scenarios"]["backend"]
    assert (listeners["vus"], backend["rate"], backend["executor"]) == (
        200,
        200,
        "constant-arrival-rate",
    )
    assert seconds(backend["startTime"]) > 0, "members join before the backend publishes"


@pytest.mark.parametrize("name", NAMES)
def test_smoke_profile_keeps_the_shape_within_40s_and_100_vus(k6_bin, name):
    spec = inspect(k6_bin, SCENARIOS / f"{name}.js", PROFILE="smoke", API_KEY=API_KEY)
    assert spec["maxVUs"] <= SMOKE_MAX_VUS
    assert seconds(spec["totalDuration"]) <= SMOKE_MAX_SECONDS
    assert spec["scenarios"].keys() == full(k6_bin, name)["scenarios"].keys()


# -- real runs (smoke profile) ----------------------------------------------------------


def test_connection_storm_connects_every_user_and_lets_them_all_go(live_server, k6_bin, tmp_path):
    with sampling(live_server) as connections:
        run = run_scenario(k6_bin, live_server, tmp_path, "connection-storm")
    assert_healthy(run)
    assert max(connections.values) == vus(run)
    wait_for_metrics(live_server, idle)


def test_active_chat_delivers_every_message_to_every_member(live_server, k6_bin, tmp_path):
    before = live_server.metrics()
    run = run_scenario(k6_bin, live_server, tmp_path, "active-chat")
    after = wait_for_metrics(live_server, idle)
    assert_healthy(run)
    sent, members = run.count("chat_messages_sent"), vus(run)
    assert grew(before, after, 'chat_messages_received_total{kind="message"}') == sent
    # Counted by the clients: each member read every message of the room from its welcome on,
    # with no gap in seq (chat_messages_missed), and every sender read its own back.
    assert run.count("chat_messages_missed") == 0
    assert run.count("chat_messages_echoed") == sent
    assert run.count("chat_messages_lost") == 0
    received = run.count("chat_messages_received")
    # All members are in the room from the start and stop sending together, so each reads
    # nearly every message: at least all but those sent before it joined or after it left.
    assert sent * (members - 1) <= received <= sent * members
    # Sent plus never sent (k6 a whole interval behind) is the schedule: a message every
    # 500 ms from the welcome (within the first 2 s) until the drain, 18 s into the 20 s run.
    planned = sent + run.count("chat_messages_unsent")
    assert members * 16 * 2 <= planned <= members * 18 * 2


def test_stock_bot_answers_every_command_it_was_sent(live_server, k6_bin, tmp_path):
    before = live_server.metrics()
    run = run_scenario(k6_bin, live_server, tmp_path, "stock-bot")
    sent = run.count("chat_commands_sent")

    def answered(metrics: dict[str, float]) -> float:
        return sum(
            grew(before, metrics, f'chat_bot_commands_total{{result="{r}"}}') for r in BOT_RESULTS
        )

    after = wait_for_metrics(live_server, lambda m: idle(m) and answered(m) >= sent)
    assert_healthy(run)
    assert grew(before, after, 'chat_messages_received_total{kind="command"}') == sent
    assert answered(after) == sent


def test_spike_connections_follow_the_vu_curve_up_and_back(live_server, k6_bin, tmp_path):
    with sampling(live_server) as connections:
        run = run_scenario(k6_bin, live_server, tmp_path, "spike")
    assert_healthy(run)
    seen = connections.values
    assert max(seen) == SPIKE_PEAK
    first_peak = seen.index(SPIKE_PEAK)
    last_peak = len(seen) - 1 - seen[::-1].index(SPIKE_PEAK)
    assert SPIKE_BASE in seen[:first_peak], "the base load held before the spike"
    assert SPIKE_BASE in seen[last_peak:], "connections fell back to the base after the spike"
    wait_for_metrics(live_server, idle)


def test_soak_leaves_connections_and_tasks_at_their_idle_values(live_server, k6_bin, tmp_path):
    before = live_server.metrics()
    run = run_scenario(k6_bin, live_server, tmp_path, "soak")
    assert_healthy(run)
    assert run.count("ws_sessions") > vus(run), "users reconnected during the soak"
    wait_for_metrics(
        live_server,
        lambda m: idle(m) and m["chat_asyncio_tasks"] == before["chat_asyncio_tasks"],
    )


def test_mixed_measures_every_role(live_server, k6_bin, tmp_path):
    before = live_server.metrics()
    with sampling(live_server) as connections:
        run = run_scenario(k6_bin, live_server, tmp_path, "mixed")
    after = wait_for_metrics(live_server, idle)
    assert_healthy(run)
    assert run.count("chat_events_received{role:lurker}") > 0
    assert run.count("chat_rtt{role:chatter}") > 0
    assert run.count("chat_bot_rtt{role:bot}") > 0
    assert max(connections.values) == vus(run)
    chat_sent = run.count("chat_messages_sent")
    commands_sent = run.count("chat_commands_sent")
    assert grew(before, after, 'chat_messages_received_total{kind="message"}') == chat_sent
    assert grew(before, after, 'chat_messages_received_total{kind="command"}') == commands_sent
    assert grew(before, after, 'chat_bot_commands_total{result="ok"}') > 0


def k6_api(k6_bin: str, ws_url: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """``k6 run`` of the api scenario (smoke) with ``-e`` ``env`` only; k6's output in stdout."""
    variables = {"PROFILE": "smoke", "WS_URL": ws_url, "RESULTS_DIR": str(tmp_path), **env}
    command = [k6_bin, "run", "--quiet", "--no-color", "--address", ""]
    command += ["--include-system-env-vars=false"]
    for name, value in variables.items():
        command += ["-e", f"{name}={value}"]
    return subprocess.run(
        [*command, str(SCENARIOS / "api.js")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )


def test_api_without_api_key_stops_before_anything_runs(k6_bin, tmp_path):
    done = k6_api(k6_bin, "ws://127.0.0.1:9/ws", tmp_path)
    assert done.returncode == 107  # a script exception, in the init context
    assert "API_KEY must be set to the server's ROOMHUB_API_KEY" in done.stdout
    assert "http_reqs" not in done.stdout


UNAUTHORIZED = 'chat_api_requests_total{method="publish",result="unauthorized"}'


def test_api_with_a_wrong_key_stops_after_one_call_naming_it(k6_bin, tmp_path):
    with run_server(tmp_path, quote_provider="sim", api_key=API_KEY) as server:
        done = k6_api(k6_bin, server.ws_url, tmp_path, API_KEY="not-the-servers-key-0123")
        refused = server.metrics()[
            'chat_api_requests_total{method="publish",result="unauthorized"}'
        ]
    assert done.returncode == 107  # a script exception, in setup()
    assert "API_KEY is not the server's ROOMHUB_API_KEY" in done.stdout
    assert refused == 1


def test_api_delivers_every_published_message_to_every_listener_of_its_room(k6_bin, tmp_path):
    with run_server(tmp_path, quote_provider="sim", api_key=API_KEY) as server:
        before = server.metrics()
        run = run_k6(
            k6_bin, SCENARIOS / "api.js", server.ws_url, tmp_path, env={"API_KEY": API_KEY}
        )
        after = wait_for_metrics(server, idle)
    assert_healthy(run)
    published = run.count("chat_api_published")
    assert grew(before, after, 'chat_api_requests_total{method="publish",result="ok"}') == published
    # Smoke: 80 listeners over 40 rooms, two in each, there from before the first publish
    # to after the last.
    assert run.count("chat_api_delivered") == 2 * published
    assert run.values("chat_api_delivery")["p(99)"] < 500
