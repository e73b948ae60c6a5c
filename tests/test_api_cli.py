"""``roomhub api METHOD --flags``: the server API from the command line, against real server
processes (two on one real ``redis-server``, so the call lands on one and the members sit on
the other)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.chat import member
from tests.support.processes import Process, RedisServer, free_port, run_server

KEY = "cli-key-0123456789abcdef"


def roomhub_api(url: str | None, *args: str, key: str = KEY) -> subprocess.CompletedProcess[str]:
    """Run ``roomhub api ARGS`` with ``ROOMHUB_API_URL=url`` and ``ROOMHUB_API_KEY=key``."""
    env = {"PATH": os.environ.get("PATH", ""), "ROOMHUB_API_KEY": key}
    if url is not None:
        env["ROOMHUB_API_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "server", "api", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def two(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[Process, Process]]:
    common = {"broker": redis_server.url, "api_key": KEY, "quote_provider": "sim"}
    with run_server(tmp_path, **common) as a, run_server(tmp_path, **common) as b:
        yield a, b


async def test_publish_from_the_command_line_reaches_a_member_on_the_other_instance(
    two: tuple[Process, Process],
) -> None:
    a, b = two
    async with aiohttp.ClientSession() as session:
        bob = await member(session, b.ws_url, "ops", "bob")
        result = await asyncio.to_thread(
            roomhub_api, a.url, "publish", "--room", "ops", "--text", "deploy at 18:00",
            "--data", '{"build": 7}',
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        event = await bob.next_of("message")
        assert (event["seq"], event["text"], event["data"]) == (
            answer["seq"],
            "deploy at 18:00",
            {"build": 7},
        )


async def test_a_ban_from_the_command_line_holds_on_both_instances(
    two: tuple[Process, Process],
) -> None:
    a, b = two
    async with aiohttp.ClientSession() as session:
        eve = await member(session, b.ws_url, "ops", "eve")
        result = await asyncio.to_thread(
            roomhub_api, a.url, "ban", "--room", "ops", "--user", "eve", "--duration", "60"
        )
        assert result.returncode == 0, result.stderr
        assert await eve.closed() == 4502
        for server in (a, b):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(server.ws_url, params={"room": "ops", "user": "eve"})
            assert refused.value.status == 403


def test_an_error_answer_is_printed_and_exits_1(two: tuple[Process, Process]) -> None:
    result = roomhub_api(two[0].url, "publish", "--room", "a b", "--text", "x")
    assert result.returncode == 1
    assert json.loads(result.stdout)["field"] == "room"


def test_a_wrong_key_exits_1_with_the_401_answer(two: tuple[Process, Process]) -> None:
    result = roomhub_api(two[0].url, "rooms", key="not-the-key-0123456789")
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"] == "unauthorized"


def test_without_a_key_it_exits_2_naming_the_variable() -> None:
    result = roomhub_api(None, "rooms", key="")
    assert result.returncode == 2
    assert "ROOMHUB_API_KEY" in result.stderr


def test_bad_json_in_data_exits_2_naming_the_flag() -> None:
    result = roomhub_api(None, "publish", "--room", "a", "--text", "x", "--data", "{")
    assert result.returncode == 2
    assert "--data" in result.stderr


def test_no_server_exits_1_saying_so() -> None:
    result = roomhub_api(f"http://127.0.0.1:{free_port()}", "rooms")
    assert result.returncode == 1
    assert "no answer" in result.stderr
