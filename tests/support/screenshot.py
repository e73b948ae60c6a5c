"""Draw docs/screenshot.png, the README's picture of the chat page, from a real run.

Starts ``python -m server serve`` (quote provider ``sim``) on a free port, opens the page in
Debian's Chromium as two users of one room, has them chat and ask the stock bot, and saves
what the first user sees. Needs the test extra (Playwright) and ``/usr/bin/chromium``:

    .venv/bin/python -m tests.support.screenshot [--out docs/screenshot.png]
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from bench.server import serve
from tests.support.docs import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 900, "height": 560}
TIMEOUT_MS = 15_000
ROOM = "general"


def say(page: Page, text: str) -> None:
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_role("button", name="Send").click()


def draw(out: Path) -> None:
    """Write the screenshot to ``out`` (PNG). Raises Playwright's ``TimeoutError`` when the
    page does not reach the expected state within :data:`TIMEOUT_MS`."""
    expect.set_options(timeout=TIMEOUT_MS)
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve(Path(tmp) / "server.log", quote_provider="sim") as server,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        alice, bob = (browser.new_page(viewport=VIEWPORT) for _ in range(2))
        for page, user in ((alice, "alice"), (bob, "bob")):
            page.goto(f"{server.url}/rooms/{ROOM}?user={user}")
            expect(page.locator("#status")).to_have_attribute("data-state", "online")
        say(alice, "Hi bob, the load test is green again")
        expect(bob.locator("#log li.msg .text")).to_have_count(1)
        say(bob, "Nice. What is Apple at?")
        say(bob, "/stock=AAPL")
        expect(alice.locator("#log li.bot .text")).to_have_text([re.compile(r"^AAPL\.US quote")])
        say(alice, "Thanks!")
        expect(alice.locator("#log li.msg .text")).to_have_count(3)
        alice.screenshot(path=str(out))
        browser.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.screenshot", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    args = parser.parse_args(argv)
    draw(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
