"""The README a new user reads first: what it is, a picture of the page, the two commands, a
table of contents, and a recipe for two instances on one Redis that works as written."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, connect

from bench.server import free_port, wait_http_ok
from tests.support.docs import ROOT
from tests.support.processes import require_binary

README = ROOT / "README.md"
SCREENSHOT = ROOT / "docs" / "screenshot.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_SCREENSHOT_BYTES = 200_000
FIRST_SCREEN = 40  # lines


def readme() -> str:
    return README.read_text()


def section(title: str) -> str:
    return readme().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data.startswith(PNG_SIGNATURE)
    return struct.unpack(">II", data[16:24])


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_the_first_screen_shows_the_page_and_the_two_commands() -> None:
    first = "\n".join(readme().splitlines()[:FIRST_SCREEN])
    assert "![" in first and "](docs/screenshot.png)" in first
    assert "tests/support/screenshot.py" in first  # the script that draws it
    block = re.search(r"```sh\n(.*?)```", first, re.S)[1]
    assert [line.split()[:2] for line in block.splitlines()] == [["make", "run"], ["make", "test"]]


def test_the_first_screen_says_how_to_choose_the_python() -> None:
    first = "\n".join(readme().splitlines()[:FIRST_SCREEN])
    assert "make run PYTHON=python3.13" in first


def test_the_committed_screenshot_is_a_small_png() -> None:
    data = SCREENSHOT.read_bytes()
    assert png_size(data) == (900, 560)
    assert len(data) < MAX_SCREENSHOT_BYTES


def test_the_contents_link_every_section_in_order() -> None:
    headings = re.findall(r"^## (.+)$", readme(), re.M)
    after = headings[headings.index("Contents") + 1 :]
    links = re.findall(r"^- \[(.+?)\]\(#(.+?)\)$", section("Contents"), re.M)
    assert links == [(heading, slug(heading)) for heading in after]


def test_protocol_and_settings_detail_live_in_docs() -> None:
    assert len(readme().splitlines()) < 260
    assert "| `ROOMHUB_" not in readme()  # the settings table is docs/configuration.md
    for page in ("configuration", "protocol", "loadlab"):
        assert f"(docs/{page}.md)" in readme()


@pytest.mark.browser
def test_the_screenshot_script_draws_the_chat_page_from_a_real_run(tmp_path: Path) -> None:
    require_binary("chromium")
    from tests.support.screenshot import draw

    draw(tmp_path / "page.png")
    data = (tmp_path / "page.png").read_bytes()
    assert png_size(data) == png_size(SCREENSHOT.read_bytes())
    assert len(data) < MAX_SCREENSHOT_BYTES


def recipe(venv_bin: str, ports: dict[str, int]) -> str:
    """The README's two-instance recipe as a script: ``make venv`` left out (the tests' venv
    is installed), ``.venv/bin`` pointed at it, the ports replaced by free ones."""
    block = re.search(r"```sh\n(.*?)```", section("Two instances on one Redis"), re.S)[1]
    lines = block.splitlines()
    assert lines[0] == "make venv"
    script = "\n".join(lines[1:]).replace(".venv/bin/", f"{venv_bin}/")
    for port, free in ports.items():
        assert port in script
        script = script.replace(port, str(free))
    return script + "\nwait\n"


def events(connection: ClientConnection) -> list[dict]:
    frame = json.loads(connection.recv(timeout=10))
    return frame if isinstance(frame, list) else [frame]


def wait_for(
    connection: ClientConnection, wanted: Callable[[dict], bool], timeout: float = 10
) -> dict:
    """The first event read from ``connection`` for which ``wanted`` holds; ``TimeoutError``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events(connection):
            if wanted(event):
                return event
    raise TimeoutError(f"no such event within {timeout} s")


def test_the_two_instance_recipe_shares_a_room_across_both_servers(tmp_path: Path) -> None:
    redis_dir = str(Path(require_binary("redis-server")).parent)
    ports = {"6379": free_port(), "8080": free_port(), "8081": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMHUB_")}
    env["PATH"] = f"{redis_dir}{os.pathsep}{env.get('PATH', '')}"
    venv_bin = str(Path(require_binary("roomhub")).parent)
    shell = subprocess.Popen(
        ["bash", "-c", recipe(venv_bin, ports)],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        first, second = (f"http://127.0.0.1:{ports[p]}" for p in ("8080", "8081"))
        wait_http_ok(f"{first}/readyz", proc=shell)
        wait_http_ok(f"{second}/readyz", proc=shell)
        ws = "ws://127.0.0.1:{}/ws?room=general&user={}"
        with (
            connect(ws.format(ports["8080"], "alice")) as alice,
            connect(ws.format(ports["8081"], "bob")) as bob,
        ):
            assert events(alice)[0]["type"] == "welcome"
            assert events(bob)[0]["type"] == "welcome"
            alice.send(json.dumps({"type": "message", "text": "hello from the first"}))
            said = wait_for(bob, lambda e: e.get("text") == "hello from the first")
            assert (said["type"], said["user"]) == ("message", "alice")
            bob.send(json.dumps({"type": "message", "text": "hello from the second"}))
            said = wait_for(alice, lambda e: e.get("text") == "hello from the second")
            assert (said["type"], said["user"]) == ("message", "bob")
    finally:
        os.killpg(shell.pid, signal.SIGTERM)
        shell.wait(timeout=30)
