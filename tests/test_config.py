"""Settings: defaults, env vars, flags, and bad values that stop start-up."""

from __future__ import annotations

import dataclasses
import json
import re
import select
import signal
import socket
import subprocess
import sys

import pytest

from server.ops.config import ConfigError, Settings, env_name, flag_name, load_settings
from tests.support.docs import ROOT, table


def start_up(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m server serve`` with only ``env`` (and no PATH) set, run to its exit."""
    return subprocess.run(
        [sys.executable, "-m", "server", "serve"],
        env={**env, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_defaults_serve_sharded_on_8080() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert (settings.port, settings.hub_mode, settings.history_size) == (8080, "sharded", 50)


def test_env_vars_are_parsed_and_validated() -> None:
    settings = load_settings(
        {
            "ROOMHUB_PORT": "9000",
            "ROOMHUB_HUB_MODE": "GLOBAL",
            "ROOMHUB_ALLOWED_ORIGINS": "http://a.example, http://b.example/",
            "ROOMHUB_BOT_TIMEOUT": "1.5",
        }
    )
    assert settings.port == 9000
    assert settings.hub_mode == "global"
    assert settings.allowed_origins == ("http://a.example", "http://b.example")
    assert settings.bot_timeout == 1.5


def test_empty_value_counts_as_unset() -> None:
    assert load_settings({"ROOMHUB_PORT": "", "ROOMHUB_HISTORY_SIZE": " "}) == Settings()


def test_allowed_origins_are_compared_in_lower_case() -> None:
    settings = load_settings({"ROOMHUB_ALLOWED_ORIGINS": "HTTPS://Chat.Example"})
    assert settings.allowed_origins == ("https://chat.example",)


def test_flag_wins_over_env_var() -> None:
    settings = load_settings({"ROOMHUB_PORT": "9000"}, {"port": "9001"})
    assert settings.port == 9001


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ROOMHUB_PORT": "eighty"}, "ROOMHUB_PORT"),
        ({"ROOMHUB_PORT": "70000"}, "ROOMHUB_PORT"),
        ({"ROOMHUB_HUB_MODE": "sideways"}, "ROOMHUB_HUB_MODE"),
        ({"ROOMHUB_HISTORY_SIZE": "0"}, "ROOMHUB_HISTORY_SIZE"),
        ({"ROOMHUB_RATE_LIMIT": "-1"}, "ROOMHUB_RATE_LIMIT"),
        ({"ROOMHUB_BOT_TIMEOUT": "nan"}, "ROOMHUB_BOT_TIMEOUT"),
        ({"ROOMHUB_QUOTE_URL": "ftp://x"}, "ROOMHUB_QUOTE_URL"),
        ({"ROOMHUB_LOG_LEVEL": "loud"}, "ROOMHUB_LOG_LEVEL"),
        ({"ROOMHUB_PORT": "\u0668\u0660\u0668\u0660"}, "ROOMHUB_PORT"),
        ({"ROOMHUB_OUTBOX_LIMIT": "1_000"}, "ROOMHUB_OUTBOX_LIMIT"),
        ({"ROOMHUB_FANOUT_INTERVAL": "1e9"}, "ROOMHUB_FANOUT_INTERVAL"),
        ({"ROOMHUB_FANOUT_INTERVAL": "2"}, "ROOMHUB_FANOUT_INTERVAL"),
        ({"ROOMHUB_BROKER": "postgres://db"}, "ROOMHUB_BROKER"),
        ({"ROOMHUB_PRESENCE_TTL": "0"}, "ROOMHUB_PRESENCE_TTL"),
        ({"ROOMHUB_WORKERS": "0"}, "ROOMHUB_WORKERS"),
        ({"ROOMHUB_METRICS_PORT": "70000"}, "ROOMHUB_METRICS_PORT"),
        ({"ROOMHUB_EVENT_LOOP": "trio"}, "ROOMHUB_EVENT_LOOP"),
    ],
)
def test_bad_value_raises_config_error_naming_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(env)


def test_uvloop_chosen_where_it_is_not_installed_stops_start_up_saying_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what import finds when it is absent
    with pytest.raises(ConfigError, match=r"ROOMHUB_EVENT_LOOP='uvloop': uvloop is not installed"):
        load_settings({"ROOMHUB_EVENT_LOOP": "uvloop"})


def test_broker_is_memory_by_default_or_a_redis_url() -> None:
    assert load_settings({}).broker == "memory"
    assert not load_settings({}).redis
    for url in ("redis://127.0.0.1:6379/0", "rediss://cache.example:6380/1"):
        settings = load_settings({"ROOMHUB_BROKER": url})
        assert settings.redis
        assert settings.broker == url


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"ROOMHUB_HUB_MODE": "global", "ROOMHUB_BROKER": "redis://127.0.0.1:6379/0"},
            ("ROOMHUB_HUB_MODE", "ROOMHUB_BROKER"),
        ),
        ({"ROOMHUB_WORKERS": "2"}, ("ROOMHUB_WORKERS", "ROOMHUB_BROKER")),
        (
            {"ROOMHUB_WORKERS": "2", "ROOMHUB_BROKER": "redis://127.0.0.1:6379/0"},
            ("ROOMHUB_WORKERS", "ROOMHUB_METRICS_PORT"),
        ),
    ],
)
def test_settings_refused_together_stop_start_up_naming_both(
    env: dict[str, str], named: tuple[str, str]
) -> None:
    result = start_up(env)
    assert result.returncode == 2
    assert all(name in result.stderr for name in named)


def test_broker_password_is_never_shown() -> None:
    env = {"ROOMHUB_HUB_MODE": "global", "ROOMHUB_BROKER": "redis://:s3cret@db:6379/0"}
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    assert "s3cret" not in str(raised.value)


def test_several_redis_urls_are_the_shards_in_their_order() -> None:
    settings = load_settings(
        {"ROOMHUB_BROKER": " redis://a.example:6379/0 , rediss://:pw@b.example:6380/2"}
    )
    assert settings.broker_urls == ("redis://a.example:6379/0", "rediss://:pw@b.example:6380/2")
    assert (settings.redis, settings.broker_cluster) == (True, False)
    assert load_settings({"ROOMHUB_BROKER": "redis://a:6379/0"}).broker_urls == (
        "redis://a:6379/0",
    )
    assert load_settings({}).broker_urls == ()


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (
            "redis://a:6379/0,redis://:s3cret@b:port/0",
            "item 2 'redis://:***@b:port/0' does not parse",
        ),
        ("redis://a:6379/0,,redis://b:6379/0", "item 2 is empty"),
        ("redis://a:6379/0,postgres://b/0", "item 2 'postgres://b/0' is not a redis://"),
        ("redis://a:6379/0,redis://u:s3cret@b:6379/x", "the database after the host"),
        ("redis://a:6379/0,redis://A:6379/1", "names the same Redis server as 'redis://a:6379/0'"),
        ("redis://a/0,redis://:s3cret@a:6379/0", "same Redis server"),
        (
            "redis://a:6379/0,redis://u:s3c,ret@b:6379/0",
            "'redis://u:***@b:6379/0' has a ',' in its password",
        ),
        ("redis://a:6379/0,redis://:s3c/ret@b:6379/0", "must be percent-encoded"),
        ("redis://a:6379/x?password=s3cret", "password=***"),
        ("redis://a:6379/0?db=x", "Invalid value for 'db'"),
        ("redis://a:6379/0,redis://:s3cret@b:6379/0?socket_timeout=abc", "item 2 'redis://:***@b"),
        ("redis://a:6379/0?password=s3cret&socket_timeout=abc", "'socket_timeout'"),
        ("redis://a:6379/0?colour=1", "redis-py takes no 'colour' option"),
        ("redis://a:6379/0?protocol=3", "the protocol option is not taken"),
        ("redis://a:6379/0?db=1&db=2", "the option 'db' is given more than once"),
        ("redis://a:6379/0?socket_timeout=-1", "socket_timeout must be a number of seconds above"),
        ("redis://a:6379/0?socket_connect_timeout=0", "socket_connect_timeout must be"),
        ("redis://a:6379/0?socket_timeout=nan", "socket_timeout must be"),
        ("redis://a:6379/0?socket_timeout=inf", "socket_timeout must be"),
    ],
)
def test_a_bad_or_repeated_redis_url_is_refused_naming_it_without_its_password(
    raw: str, says: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"ROOMHUB_BROKER": raw})
    assert str(raised.value).startswith("ROOMHUB_BROKER=")
    assert says in str(raised.value)
    assert "s3c" not in str(raised.value)
    assert "ret@" not in str(raised.value)


def test_a_bad_redis_url_among_several_stops_start_up_with_exit_code_2() -> None:
    result = start_up({"ROOMHUB_BROKER": "redis://a:6379/0,redis://:s3cret@b:99999/0"})
    assert result.returncode == 2
    assert "ROOMHUB_BROKER" in result.stderr
    assert "item 2 'redis://:***@b:99999/0'" in result.stderr
    assert "s3cret" not in result.stderr


def test_a_redis_url_option_redis_py_refuses_stops_start_up_with_exit_code_2() -> None:
    result = start_up({"ROOMHUB_BROKER": "redis://127.0.0.1:6379/0?db=x"})
    assert (result.returncode, result.stdout) == (2, "")
    assert "ROOMHUB_BROKER='redis://127.0.0.1:6379/0?db=x': the URL: Invalid" in result.stderr
    assert "Traceback" not in result.stderr


def test_redis_url_options_redis_py_takes_are_kept() -> None:
    raw = "redis://a:6379/0?health_check_interval=5,rediss://b:6379/0?ssl_cert_reqs=none"
    assert load_settings({"ROOMHUB_BROKER": raw}).broker == raw


def test_redis_cluster_seeds_are_parsed_into_one_url_each() -> None:
    settings = Settings(broker="rediss+cluster://u:pw@a:7000,b:7001")
    assert settings.broker_cluster
    assert settings.broker_urls == ("rediss://u:pw@a:7000", "rediss://u:pw@b:7001")


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("redis+cluster://a:7000/0", "a Redis Cluster has one database"),
        ("redis+cluster://", "must be redis+cluster://[user:password@]host:port"),
        ("redis+cluster://a:7000,a:7000", "names the same Redis server"),
        ("redis+cluster://a:7000,redis://b:7001", "each seed after the first is host:port"),
    ],
)
def test_a_bad_redis_cluster_setting_is_refused_saying_why(raw: str, says: str) -> None:
    with pytest.raises(ConfigError, match="ROOMHUB_BROKER") as raised:
        load_settings({"ROOMHUB_BROKER": raw})
    assert says in str(raised.value)


def test_bad_env_var_stops_start_up_with_exit_code_2() -> None:
    result = start_up({"ROOMHUB_OUTBOX_LIMIT": "lots"})
    assert result.returncode == 2
    assert "ROOMHUB_OUTBOX_LIMIT" in result.stderr


URL_RULE = "an http:// or https:// URL with a host and no spaces"


@pytest.mark.parametrize(
    ("name", "raw", "says"),
    [
        ("ROOMHUB_HEARTBEAT", "0.001", "0 (off) or a plain decimal number >= 1"),
        ("ROOMHUB_QUOTE_URL", "http://x/ y", URL_RULE),
        ("ROOMHUB_QUOTE_URL", "http://", URL_RULE),
        ("ROOMHUB_CLOSE_TIMEOUT", "1e-9", "a plain decimal number > 0, like 2 or 0.5"),
        ("ROOMHUB_RATE_LIMIT", "0", "a plain decimal number > 0, like 2 or 0.5"),
        ("ROOMHUB_REDIS_BATCH_WINDOW", "-1", "a whole number of microseconds from 0 to 100000"),
    ],
)
def test_bad_value_stops_start_up_stating_what_is_accepted(name: str, raw: str, says: str) -> None:
    result = start_up({name: raw})
    assert result.returncode == 2
    assert f"{name}={raw!r}: must be {says}" in result.stderr


@pytest.mark.parametrize(
    ("name", "raw", "says"),
    [
        ("ROOMHUB_REDIS_BATCH_WINDOW", "100001", "a whole number of microseconds from 0 to 100000"),
        ("ROOMHUB_HISTORY_SIZE", "0", "a whole number >= 1, like 5"),
        ("ROOMHUB_HISTORY_SIZE", "-3", "a whole number >= 1, like 5"),
        ("ROOMHUB_NEW_ROOMS_PER_MINUTE", "-1", "a whole number >= 0, like 5"),
        ("ROOMHUB_PORT", "70000", "a port number from 0 to 65535"),
        ("ROOMHUB_PORT", "http", "a port number from 0 to 65535"),
    ],
)
def test_a_bad_whole_number_is_refused_stating_the_range(name: str, raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({name: raw})
    assert str(raised.value) == f"{name}={raw!r}: must be {says}"


def test_documented_example_of_a_bad_value_is_the_message_start_up_prints() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    example = re.search(r"`roomhub: invalid setting (ROOMHUB_\w+)='(.*?)': (.*?)`", text)
    assert example is not None
    with pytest.raises(ConfigError) as raised:
        load_settings({example[1]: example[2]})
    assert str(raised.value) == f"{example[1]}={example[2]!r}: {example[3]}"


def test_heartbeat_is_off_at_0_and_otherwise_at_least_1_second() -> None:
    assert load_settings({"ROOMHUB_HEARTBEAT": "0"}).heartbeat == 0
    assert load_settings({"ROOMHUB_HEARTBEAT": "1"}).heartbeat == 1
    with pytest.raises(ConfigError, match="ROOMHUB_HEARTBEAT"):
        load_settings({"ROOMHUB_HEARTBEAT": "0.99"})


def test_bad_flag_stops_start_up_with_exit_code_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--heartbeat", "soon"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--heartbeat" in result.stderr


def test_port_in_use_stops_start_up_with_exit_code_2_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert "ROOMHUB_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_configuration_page_lists_every_setting_with_its_env_var_flag_and_default() -> None:
    rows = table("docs/configuration.md", "# Configuration")
    documented = [(r["environment variable"], r["flag"], r["default"]) for r in rows]
    assert documented == [
        (f"`{env_name(f.name)}`", f"`{flag_name(f.name)}`", _documented_default(f.default))
        for f in dataclasses.fields(Settings)
    ]


def _documented_default(default: object) -> str:
    return "(empty)" if default in ((), "") else f"`{default}`"


def test_defaults_listen_on_loopback_only() -> None:
    assert Settings().host == "127.0.0.1"


def test_start_prints_the_url_and_warns_once_per_unknown_roomhub_variable() -> None:
    env = {"ROOMHUB_PORTT": "9000", "ROOMHUB_QUOTE_PROVIDER": "sim", "PATH": ""}
    with subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "no start-up line within 30 s"
            line = proc.stdout.readline()  # type: ignore[union-attr]
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
    assert re.fullmatch(r"roomhub listening on http://127\.0\.0\.1:[0-9]+\n", line)
    warnings = [json.loads(entry) for entry in stderr.splitlines() if '"unknown_setting"' in entry]
    assert [(w["level"], w["env"], w["did_you_mean"]) for w in warnings] == [
        ("warning", "ROOMHUB_PORTT", "ROOMHUB_PORT")
    ]


@pytest.mark.parametrize(
    ("flags", "missing", "given"),
    [
        ({"port": "8090"}, "ROOMHUB_METRICS_PORT (--metrics-port)", "ROOMHUB_PORT"),
        ({"port": "0", "metrics_port": "9100"}, "ROOMHUB_PORT (--port)", "ROOMHUB_METRICS_PORT"),
    ],
)
def test_workers_without_a_fixed_port_name_only_the_port_missing(
    flags: dict[str, str], missing: str, given: str
) -> None:
    env = {"ROOMHUB_WORKERS": "2", "ROOMHUB_BROKER": "redis://127.0.0.1:6379/0"}
    with pytest.raises(ConfigError) as raised:
        load_settings(env, flags)
    message = str(raised.value)
    assert f"needs a fixed {missing}:" in message
    assert f"{given} (" not in message
