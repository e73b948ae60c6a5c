"""The chat page in a real headless Chromium, against a real server process.

Debian's ``/usr/bin/chromium`` is driven by Playwright (sync API: these tests are plain
functions, so no event loop is running when Playwright starts its own). Every wait is one
of Playwright's auto-retrying expectations with a deadline.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import itertools
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Route,
    WebSocketRoute,
    expect,
    sync_playwright,
)

from server.web.auth import mint_token
from tests.support.docs import ROOT
from tests.support.processes import (
    Process,
    RedisServer,
    free_port,
    require_binary,
    run_server,
    wait_http_ok,
)
from tests.support.screenshot import CHROMIUM_ARGS

pytestmark = pytest.mark.browser

TIMEOUT_MS = 10_000
QUOTE = re.compile(r"^AAPL\.US quote is \$\d+\.\d\d per share$")
REFUSED_NAMES = [
    pytest.param("x" * 33, "at most 32 characters", id="33-characters"),
    pytest.param("alice\u202eevil", "invisible", id="bidi-override"),
    pytest.param("ali\u200bce", "invisible", id="zero-width-space"),
]

OpenRoom = Callable[[str, str], Page]

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = require_binary("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def contexts(browser: Browser) -> Iterator[Callable[[], BrowserContext]]:
    """A factory of fresh browser contexts (one per simulated user), closed after the test."""
    opened: list[BrowserContext] = []

    def new_context() -> BrowserContext:
        context = browser.new_context()
        context.set_default_timeout(TIMEOUT_MS)
        opened.append(context)
        return context

    yield new_context
    for context in opened:
        context.close()


@pytest.fixture
def open_room(live_server: Process, contexts: Callable[[], BrowserContext]) -> OpenRoom:
    """Open ``/rooms/<room>?user=<user>`` in a new context and wait until it is online."""

    def open_(room: str, user: str) -> Page:
        page = contexts().new_page()
        page.goto(f"{live_server.url}/rooms/{room}?user={user}")
        expect(page.locator("#status")).to_have_attribute("data-state", "online")
        return page

    return open_


def send(page: Page, text: str) -> None:
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_role("button", name="Send").click()


def message_texts(page: Page, text: str) -> Locator:
    """Chat messages (not notices or commands) whose text is exactly ``text``."""
    return page.locator("#log li.msg .text").filter(has_text=re.compile(f"^{re.escape(text)}$"))


class HeldReconnect:
    """Routes a page's WebSockets: the first goes through; after :meth:`drop`, reconnects
    wait until :meth:`reconnect`."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.sockets: list[WebSocketRoute] = []
        self.allowed = False
        page.route_web_socket(re.compile(r"/ws\?"), self._route)

    def _route(self, socket: WebSocketRoute) -> None:
        # The sync API runs this only while the test is inside a Playwright call, so
        # ``allowed`` cannot change between the append and the check.
        self.sockets.append(socket)
        if len(self.sockets) == 1 or self.allowed:
            socket.connect_to_server()

    def drop(self) -> None:
        """Close the page's connection and wait until the page sees it is offline."""
        self.sockets[0].close(code=4000, reason="dropped")
        expect(self.page.locator("#status")).not_to_have_attribute("data-state", "online")

    def reconnect(self) -> None:
        """Let the page's next connection (or the one it is holding) through."""
        self.allowed = True
        if len(self.sockets) > 1:
            self.sockets[1].connect_to_server()


def test_message_typed_in_one_page_appears_in_the_other(open_room: OpenRoom) -> None:
    alice = open_room("lounge", "alice")
    bob = open_room("lounge", "bob")

    send(alice, "hello bob")

    expect(message_texts(bob, "hello bob")).to_have_count(1)
    expect(bob.locator("#log li.msg").last.locator(".user")).to_have_text("alice")


def chat_at_the_domain(browser: Browser, port: int, scheme: str = "http") -> None:
    """Alice and Bob chat on ``{scheme}://chat.example.com/rooms/x``, which Chromium resolves
    to ``127.0.0.1:port``. The browser sends ``Host: chat.example.com`` (the scheme's default
    port left out) and ``Origin: {scheme}://chat.example.com``; over ``https`` it takes the
    test's self-signed certificate."""
    default_port = {"http": 80, "https": 443}[scheme]
    args = [
        *CHROMIUM_ARGS,
        f"--host-resolver-rules=MAP chat.example.com:{default_port} 127.0.0.1:{port}",
    ]
    if scheme == "https":
        args.append("--ignore-certificate-errors")
    domain = browser.browser_type.launch(
        executable_path=require_binary("chromium"), headless=True, args=args
    )
    ws_scheme = {"http": "ws", "https": "wss"}[scheme]
    try:
        pages = []
        for user in ("alice", "bob"):
            page = domain.new_context().new_page()
            page.set_default_timeout(TIMEOUT_MS)
            sockets = opened_websockets(page)
            page.goto(f"{scheme}://chat.example.com/rooms/x?user={user}")
            expect(page.locator("#status")).to_have_attribute("data-state", "online")
            assert sockets == [f"{ws_scheme}://chat.example.com/ws?room=x&user={user}"]
            pages.append(page)
        alice, bob = pages
        send(alice, "hello from chat.example.com")
        expect(message_texts(bob, "hello from chat.example.com")).to_have_count(1)
    finally:
        domain.close()


def test_a_page_on_a_standard_port_behind_a_domain_chats_with_default_settings(
    browser: Browser, live_server: Process
) -> None:
    chat_at_the_domain(browser, live_server.port)


def test_the_page_chats_through_nginx_set_up_as_docs_protocol_md_says(
    browser: Browser, tmp_path: Path
) -> None:
    with (
        run_server(tmp_path, quote_provider="sim", trusted_proxies="127.0.0.1") as server,
        run_nginx(tmp_path, documented_location(upstream=server.url)) as port,
    ):
        chat_at_the_domain(browser, port)


def test_an_https_page_chats_through_nginx_ending_tls_with_default_settings(
    browser: Browser, tmp_path: Path
) -> None:
    # nginx ends TLS and passes the browser's Host (chat.example.com) on over plain HTTP; the
    # page's Origin is https://chat.example.com. No trusted proxy, no allow-list.
    certificate = self_signed_certificate(tmp_path, "chat.example.com")
    with (
        run_server(tmp_path, quote_provider="sim") as server,
        run_nginx(tmp_path, documented_location(upstream=server.url), certificate) as port,
    ):
        chat_at_the_domain(browser, port, "https")


def self_signed_certificate(tmp: Path, host: str) -> tuple[Path, Path]:
    """A P-256 key and a self-signed certificate for ``host`` and 127.0.0.1, valid for a day,
    as PEM files ``(certificate, key)`` in ``tmp``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "tls.crt", tmp / "tls.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def documented_location(upstream: str) -> str:
    """The nginx ``location`` block of docs/protocol.md, proxying to ``upstream``."""
    doc = (ROOT / "docs/protocol.md").read_text()
    block = re.search(r"```nginx\n(.*?)```", doc, re.S)
    assert block, "docs/protocol.md shows no nginx configuration"
    return block.group(1).replace("http://roomhub:8080", upstream)


@contextlib.contextmanager
def run_nginx(tmp: Path, location: str, tls: tuple[Path, Path] | None = None) -> Iterator[int]:
    """nginx on a free loopback port serving ``location``, over TLS with the ``(certificate,
    key)`` files ``tls`` if given; yields the port."""
    port = free_port()
    listen = f"listen 127.0.0.1:{port};"
    context = None
    if tls is not None:
        listen = (
            f"listen 127.0.0.1:{port} ssl; ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]};"
        )
        context = ssl.create_default_context(cafile=tls[0])
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        {listen}
        {location}
    }}
}}
"""
    )
    proc = subprocess.Popen(
        [require_binary("nginx"), "-p", str(tmp), "-c", str(conf), "-e", f"{tmp}/nginx-error.log"]
    )
    try:
        scheme = "http" if tls is None else "https"
        wait_http_ok(f"{scheme}://127.0.0.1:{port}/healthz", proc=proc, context=context)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_own_messages_are_marked_as_own(open_room: OpenRoom) -> None:
    alice = open_room("mine", "alice")
    bob = open_room("mine", "bob")

    send(alice, "mine")

    expect(alice.locator("#log li.msg.own .text")).to_have_text(["mine"])
    expect(message_texts(bob, "mine")).to_have_count(1)
    expect(bob.locator("#log li.msg.own")).to_have_count(0)


def test_stock_command_shows_bot_reply_in_both_pages(open_room: OpenRoom) -> None:
    alice = open_room("market", "alice")
    bob = open_room("market", "bob")

    send(alice, "/stock=AAPL")

    for page in (alice, bob):
        expect(page.locator("#log li.bot .text")).to_have_text([QUOTE])
    expect(alice.locator("#log li.command.answered .text")).to_have_text(["/stock=AAPL"])
    expect(bob.locator("#log li.command")).to_have_count(0)


def test_own_help_and_unknown_commands_show_in_the_senders_log_like_stock(
    open_room: OpenRoom,
) -> None:
    alice = open_room("helpdesk", "alice")
    bob = open_room("helpdesk", "bob")

    send(alice, "/help")
    expect(alice.locator("#log li.command.answered .text")).to_have_text(["/help"])
    send(alice, "/nope")

    expect(alice.locator("#log li.command.failed .text")).to_have_text(["/nope"])
    expect(alice.locator("#log li.bot")).to_have_count(2)
    expect(bob.locator("#log li.command")).to_have_count(0)


def test_member_count_shows_unknown_while_disconnected(
    live_server: Process, open_room: OpenRoom, contexts: Callable[[], BrowserContext]
) -> None:
    open_room("headcount", "bob")
    alice = contexts().new_page()
    link = HeldReconnect(alice)
    alice.goto(f"{live_server.url}/rooms/headcount?user=alice")
    expect(alice.locator("#members")).to_have_text("2 online")

    link.drop()
    expect(alice.locator("#members")).to_have_text("\u2013")  # an en dash, as room.html starts
    link.reconnect()

    expect(alice.locator("#members")).to_have_text("2 online")


def test_markup_in_a_message_is_shown_as_literal_text(open_room: OpenRoom) -> None:
    alice = open_room("safe", "alice")
    bob = open_room("safe", "bob")
    markup = "<img src=x onerror=\"document.title='owned'\">"

    send(alice, markup)

    expect(message_texts(bob, markup)).to_have_count(1)
    for page in (alice, bob):
        expect(page.locator("#log img")).to_have_count(0)
        expect(page).not_to_have_title("owned")


def test_reload_shows_history_without_duplicates(open_room: OpenRoom) -> None:
    alice = open_room("history", "alice")
    bob = open_room("history", "bob")  # keeps the room (and its history) alive
    for text in ("one", "two", "three"):
        send(alice, text)
    expect(bob.locator("#log li.msg .text")).to_have_text(["one", "two", "three"])

    alice.reload()

    expect(alice.locator("#status")).to_have_attribute("data-state", "online")
    expect(alice.locator("#log li.msg .text")).to_have_text(["one", "two", "three"])
    send(bob, "four")
    expect(alice.locator("#log li.msg .text")).to_have_text(["one", "two", "three", "four"])


def test_lobby_lists_active_room_with_member_count(
    live_server: Process, open_room: OpenRoom, contexts: Callable[[], BrowserContext]
) -> None:
    open_room("busy", "alice")
    open_room("busy", "bob")
    lobby = contexts().new_page()

    lobby.goto(live_server.url)

    entry = lobby.locator("#rooms li").filter(has=lobby.get_by_role("link", name="busy"))
    expect(entry.locator(".count")).to_have_text("2 online")


def test_messages_missed_while_disconnected_arrive_once_after_reconnect(
    live_server: Process, open_room: OpenRoom, contexts: Callable[[], BrowserContext]
) -> None:
    bob = open_room("resume", "bob")
    alice = contexts().new_page()
    link = HeldReconnect(alice)
    alice.goto(f"{live_server.url}/rooms/resume?user=alice")
    expect(alice.locator("#status")).to_have_attribute("data-state", "online")
    send(bob, "before")
    expect(alice.locator("#log li.msg .text")).to_have_text(["before"])

    link.drop()
    send(bob, "while away")
    expect(bob.locator("#log li.msg .text")).to_have_text(["before", "while away"])
    link.reconnect()

    expect(alice.locator("#status")).to_have_attribute("data-state", "online")
    expect(alice.locator("#log li.msg .text")).to_have_text(["before", "while away"])
    assert re.search(r"&since=1&epoch=[A-Za-z0-9_-]+$", link.sockets[-1].url)


def test_resume_into_a_restarted_room_shows_its_messages_and_a_notice(
    live_server: Process, open_room: OpenRoom, contexts: Callable[[], BrowserContext]
) -> None:
    bob = open_room("epoch", "bob")
    alice = contexts().new_page()
    link = HeldReconnect(alice)
    alice.goto(f"{live_server.url}/rooms/epoch?user=alice")
    expect(alice.locator("#status")).to_have_attribute("data-state", "online")
    send(bob, "before")
    expect(alice.locator("#log li.msg .text")).to_have_text(["before"])

    link.drop()
    bob.close()
    deadline = time.monotonic() + 10  # the room is reaped 1 s after it empties
    while live_server.metrics()["chat_rooms"] != 0:
        assert time.monotonic() < deadline, "the empty room was never reaped"
        time.sleep(0.1)
    carol = open_room("epoch", "carol")
    send(carol, "after")  # seq 1 of the new epoch: a since=1 alone would hide it
    expect(carol.locator("#log li.msg .text")).to_have_text(["after"])
    link.reconnect()

    expect(alice.locator("#status")).to_have_attribute("data-state", "online")
    expect(alice.locator("#log li.msg .text")).to_have_text(["before", "after"])
    expect(alice.locator("#log li.notice").filter(has_text="The room restarted")).to_have_count(1)


def test_lobby_form_opens_the_room_and_remembers_the_name(
    live_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    page = contexts().new_page()
    page.goto(live_server.url)
    page.get_by_label("Your name", exact=True).fill("carol")
    page.get_by_label("Room", exact=True).fill("tea")
    page.get_by_role("button", name="Enter room").click()

    expect(page).to_have_url(f"{live_server.url}/rooms/tea?user=carol")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    page.goto(live_server.url)
    expect(page.get_by_label("Your name", exact=True)).to_have_value("carol")


def test_pages_run_under_the_content_security_policy_without_errors(
    live_server: Process, open_room: OpenRoom, contexts: Callable[[], BrowserContext]
) -> None:
    page = contexts().new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.goto(live_server.url)
    page.goto(f"{live_server.url}/rooms/clean?user=dave")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    send(page, "/stock=AAPL")
    expect(page.locator("#log li.bot")).to_have_count(1)

    assert errors == []


def opened_websockets(page: Page) -> list[str]:
    """URLs of every WebSocket the page creates from now on (refused ones included)."""
    urls: list[str] = []
    page.on("websocket", lambda socket: urls.append(socket.url))
    return urls


@pytest.mark.parametrize(("name", "reason"), REFUSED_NAMES)
def test_lobby_refuses_a_name_the_server_would_refuse_without_connecting(
    live_server: Process, contexts: Callable[[], BrowserContext], name: str, reason: str
) -> None:
    page = contexts().new_page()
    sockets = opened_websockets(page)
    page.goto(live_server.url)

    page.get_by_label("Your name", exact=True).fill(name)
    page.get_by_role("button", name="Enter room").click()

    expect(page.get_by_role("alert")).to_contain_text(reason)
    expect(page.get_by_label("Your name", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page).to_have_url(f"{live_server.url}/")
    assert sockets == []


def test_room_page_asks_for_another_name_when_the_url_name_would_be_refused(
    live_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    page = contexts().new_page()
    sockets = opened_websockets(page)

    page.goto(f"{live_server.url}/rooms/lounge?user={'x' * 33}")

    expect(page.get_by_role("alert")).to_contain_text("at most 32 characters")
    expect(page.get_by_label("Your name", exact=True)).to_have_value("x" * 33)
    expect(page.locator("#status")).to_have_text("choose a name")
    assert sockets == []


def test_room_page_joins_with_the_name_chosen_instead_of_a_refused_one(
    live_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    page = contexts().new_page()
    page.goto(f"{live_server.url}/rooms/lounge?user={'x' * 33}")

    page.get_by_label("Your name", exact=True).fill("erin")
    page.get_by_role("button", name="Join #lounge").click()

    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    expect(page.locator("#me")).to_have_text("as erin")
    expect(page).to_have_url(f"{live_server.url}/rooms/lounge?user=erin")


def test_room_page_stops_with_an_explanation_when_the_server_refuses_every_upgrade(
    tmp_path: Path, contexts: Callable[[], BrowserContext]
) -> None:
    # An origin outside the allow-list gets HTTP 403 before the upgrade: to the page this is
    # the same failed WebSocket (never opened, close code 1006) as a 400 for a refused name.
    with run_server(
        tmp_path, quote_provider="sim", allowed_origins="http://elsewhere.invalid"
    ) as server:
        page = contexts().new_page()
        sockets = opened_websockets(page)

        page.goto(f"{server.url}/rooms/lounge?user=alice")

        expect(page.locator("#status")).to_have_attribute("data-state", "offline")
        expect(page.locator("#log li.error .text")).to_have_text(
            re.compile(r"the server refused the connection\. Check the name and the room")
        )
        expect(page.get_by_role("button", name="Reconnect")).to_be_visible()
        assert len(sockets) == 3


def test_second_page_with_a_taken_name_gets_a_distinct_name_and_never_the_others_style(
    open_room: OpenRoom,
) -> None:
    first = open_room("dup", "alice")
    second = open_room("dup", "alice")

    expect(second.locator("#me")).to_have_text("as alice-2")
    send(second, "from the second")
    send(first, "from the first")

    for page, own, other in ((first, "from the first", "from the second"),
                             (second, "from the second", "from the first")):  # fmt: skip
        expect(page.locator("#log li.msg.own .text")).to_have_text([own])
        expect(message_texts(page, other)).to_have_count(1)
    expect(first.locator("#log li.msg:not(.own) .user")).to_have_text(["alice-2"])


def test_online_list_follows_joins_and_leaves(open_room: OpenRoom) -> None:
    alice = open_room("who", "alice")
    bob = open_room("who", "bob")
    alice.locator("#members").click()
    names = alice.locator("#online-list li")

    expect(names).to_have_text(["alice", "bob"])
    carol = open_room("who", "carol")
    expect(names).to_have_text(["alice", "bob", "carol"])
    expect(alice.locator("#members")).to_have_text("3 online")
    bob.close()
    expect(names).to_have_text(["alice", "carol"])
    carol.locator("#members").click()
    expect(carol.locator("#online-list li")).to_have_text(["alice", "carol"])


def test_a_stale_leave_naming_oneself_keeps_one_in_the_online_list(
    live_server: Process, open_room: OpenRoom, contexts: Callable[[], BrowserContext]
) -> None:
    """With a Redis broker an instance that stalled gets back the ``leave`` events another
    published for its members, then their ``join`` (docs/protocol.md): the page, whose own
    connection never ended, stays in its own list."""
    open_room("stall", "bob")
    alice = contexts().new_page()
    routes: list[WebSocketRoute] = []

    def route(socket: WebSocketRoute) -> None:
        socket.connect_to_server()
        routes.append(socket)

    alice.route_web_socket(re.compile(r"/ws\?"), route)
    alice.goto(f"{live_server.url}/rooms/stall?user=alice")
    expect(alice.locator("#log li.notice .text", has_text="alice joined")).to_have_count(1)
    alice.locator("#members").click()
    names = alice.locator("#online-list li")
    expect(names).to_have_text(["alice", "bob"])

    now = int(time.time() * 1000)
    for kind, members in (("leave", 1), ("join", 2)):
        event = {"type": kind, "user": "alice", "members": members, "ts": now}
        routes[0].send(orjson.dumps(event).decode())
    expect(alice.locator("#log li.notice .text", has_text="alice joined")).to_have_count(2)
    expect(names).to_have_text(["alice", "bob"])
    expect(alice.locator("#members")).to_have_text("2 online")


WAITING_NAME_LINES = """() => {
  const name = document.querySelector("#log li.waiting .meta .user");
  if (!name) return null;
  const range = document.createRange();
  range.selectNodeContents(name);
  return range.getClientRects().length;
}"""
"""Lines the sender's name takes in the first waiting message (null until one waits)."""


def test_text_refused_by_the_rate_limiter_waits_and_is_sent_later(open_room: OpenRoom) -> None:
    alice = open_room("fast", "alice")
    alice.set_viewport_size(PHONE)
    bob = open_room("fast", "bob")
    texts = [f"quick {n}" for n in range(1, 26)]
    box = alice.get_by_label("Message", exact=True)

    for text in texts:
        box.fill(text)
        box.press("Enter")

    # On a phone the "waiting" badge wraps below the name rather than breaking it.
    assert alice.wait_for_function(WAITING_NAME_LINES).json_value() == 1
    expect(bob.locator("#log li.msg .text")).to_have_count(len(texts), timeout=30_000)
    assert sorted(bob.locator("#log li.msg .text").all_text_contents()) == sorted(texts)
    expect(alice.locator("#log li.waiting")).to_have_count(0)
    expect(alice.locator("#log li.msg.own")).to_have_count(len(texts))
    expect(alice.locator("#log li.error")).to_have_count(0)


def test_send_is_disabled_while_the_box_is_blank(open_room: OpenRoom) -> None:
    page = open_room("blank", "alice")
    button = page.get_by_role("button", name="Send")
    box = page.get_by_label("Message", exact=True)

    expect(button).to_be_disabled()
    box.fill("   ")
    expect(button).to_be_disabled()
    box.fill("hi")
    expect(button).to_be_enabled()
    button.click()
    expect(button).to_be_disabled()


def test_bot_reply_shows_who_asked(open_room: OpenRoom) -> None:
    alice = open_room("asker", "alice")
    bob = open_room("asker", "bob")

    send(alice, "/stock=AAPL")

    expect(bob.locator("#log li.bot .asker")).to_have_text(["to alice"])


TOKEN_SECRET = "s" * 32


def token_for(sub: str, ttl: float = 3600) -> str:
    return mint_token(sub, ttl, secret=TOKEN_SECRET)


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[Process]:
    with run_server(
        tmp_path, quote_provider="sim", auth="token", token_secret=TOKEN_SECRET
    ) as server:
        yield server


def test_page_joins_with_a_token_from_the_address_and_hides_it(
    token_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    page = contexts().new_page()

    page.goto(f"{token_server.url}/rooms/vip?user=mallory&token={token_for('alice')}")

    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    expect(page.locator("#me")).to_have_text("as alice")
    assert "token=" not in page.url


def test_page_asks_for_a_token_and_uses_the_one_pasted(
    token_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    page = contexts().new_page()
    sockets = opened_websockets(page)
    page.goto(f"{token_server.url}/rooms/vip")
    expect(page.locator("#status")).to_have_text("token needed")
    assert sockets == []

    page.get_by_label("Access token", exact=True).fill(token_for("bob"))
    page.get_by_role("button", name="Join #vip").click()

    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    expect(page.locator("#me")).to_have_text("as bob")


def test_page_refuses_an_expired_token_without_connecting(
    token_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    page = contexts().new_page()
    sockets = opened_websockets(page)

    page.goto(f"{token_server.url}/rooms/vip?token={token_for('carol', ttl=-60)}")

    expect(page.get_by_role("alert")).to_contain_text("expired")
    assert sockets == []


def test_page_asks_for_a_new_token_once_the_server_closes_for_expiry(
    token_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    page = contexts().new_page()
    page.goto(f"{token_server.url}/rooms/vip?token={token_for('dave', ttl=5)}")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")

    expect(page.get_by_role("alert")).to_contain_text("Your token has expired")
    expect(page.locator("#status")).to_have_text("token needed")


API_KEY = "browser-api-key-0123456789"


@pytest.fixture
def moderated_server(tmp_path: Path) -> Iterator[Process]:
    """Token sign-in and the server API on."""
    with run_server(
        tmp_path,
        quote_provider="sim",
        auth="token",
        token_secret=TOKEN_SECRET,
        api_key=API_KEY,
    ) as server:
        yield server


def signed_in(
    server: Process, contexts: Callable[[], BrowserContext], sub: str, *roles: str
) -> Page:
    page = contexts().new_page()
    token = mint_token(sub, 3600, secret=TOKEN_SECRET, roles=list(roles) or None)
    page.goto(f"{server.url}/rooms/vip?token={token}")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    return page


def api(server: Process, method: str, **fields: object) -> dict[str, object]:
    request = urllib.request.Request(
        f"{server.url}/api/v1/{method}",
        data=orjson.dumps(fields),
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return orjson.loads(response.read())


def test_a_moderator_deletes_a_message_and_every_page_shows_message_deleted_in_place(
    moderated_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    mod = signed_in(moderated_server, contexts, "mia", "mod")
    ann = signed_in(moderated_server, contexts, "ann")
    send(ann, "spam")
    expect(message_texts(mod, "spam")).to_have_count(1)
    expect(ann.locator("#log li.msg .mod-action")).to_have_count(1)  # her own message only

    mod.locator("#log li.msg", has_text="spam").get_by_role("button", name="delete").click()

    for page in (mod, ann):
        deleted = page.locator("#log li.msg.deleted .text")
        expect(deleted).to_have_text("message deleted")
        expect(message_texts(page, "spam")).to_have_count(0)


def test_a_member_without_the_role_sees_no_kick_or_ban(
    moderated_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    signed_in(moderated_server, contexts, "mia", "mod")
    ann = signed_in(moderated_server, contexts, "ann")
    ann.locator("#members").click()
    expect(ann.locator("#online-list li", has_text="mia")).to_be_visible()
    expect(ann.locator("#online-list .mod-action")).to_have_count(0)


def test_a_member_kicked_from_the_online_list_is_told_why_and_does_not_reconnect(
    moderated_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    mod = signed_in(moderated_server, contexts, "mia", "mod")
    ann = signed_in(moderated_server, contexts, "ann")
    sockets = opened_websockets(ann)
    mod.locator("#members").click()

    mod.locator("#online-list li", has_text="ann").get_by_role("button", name="kick").click()

    expect(ann.locator("#log li.error")).to_contain_text("removed from this room by a moderator")
    expect(ann.locator("#status")).to_have_attribute("data-state", "offline")
    ann.wait_for_timeout(1500)  # three times the first reconnect's longest delay
    assert sockets == []


def test_a_page_banned_through_the_api_says_so_and_does_not_reconnect(
    moderated_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    eve = signed_in(moderated_server, contexts, "eve")
    sockets = opened_websockets(eve)

    api(moderated_server, "ban", room="vip", user="eve", duration=60)

    expect(eve.locator("#log li.error")).to_contain_text("banned from this room")
    expect(eve.locator("#status")).to_have_attribute("data-state", "offline")
    eve.wait_for_timeout(1500)
    assert sockets == []


def test_a_page_disconnected_with_reconnect_comes_back_by_itself(
    moderated_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    eve = signed_in(moderated_server, contexts, "eve")
    sockets = opened_websockets(eve)

    api(moderated_server, "disconnect", user="eve", reconnect=True)

    expect(eve.locator("#log li.notice", has_text="Connection lost")).to_have_count(1)
    expect(eve.locator("#status")).to_have_attribute("data-state", "online")
    assert len(sockets) == 1


def test_a_message_from_the_server_api_shows_with_a_server_badge(
    moderated_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    ann = signed_in(moderated_server, contexts, "ann")
    api(moderated_server, "publish", room="vip", text="deploy at 18:00")
    item = ann.locator("#log li.msg", has_text="deploy at 18:00")
    expect(item.locator(".badge")).to_have_text("server")
    expect(item.locator(".mod-action")).to_have_count(0)


PHONE = {"width": 375, "height": 740}
LONG_ROOM = "a_long_room_name_with_no_place_to_break_it_" + "x" * 21  # 64 characters


def horizontal_overflow(page: Page) -> int:
    """Pixels the page is wider than its viewport (0: no sideways scrolling)."""
    return page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )


@pytest.mark.parametrize(
    ("path", "status", "heading"),
    [
        ("/rooms/my%20room", 400, "400 Bad request"),
        ("/no/such/page", 404, "404 Page not found"),
        (f"/rooms/{LONG_ROOM}x", 400, "400 Bad request"),
    ],
    ids=["bad-room", "unknown-path", "room-name-too-long"],
)
def test_error_pages_fit_a_phone_and_lead_back_to_the_lobby(
    live_server: Process,
    contexts: Callable[[], BrowserContext],
    path: str,
    status: int,
    heading: str,
) -> None:
    page = contexts().new_page()
    page.set_viewport_size(PHONE)

    response = page.goto(f"{live_server.url}{path}")

    assert response is not None and response.status == status
    expect(page.get_by_role("heading", level=1)).to_have_text(heading)
    assert horizontal_overflow(page) == 0
    page.get_by_role("link", name="Back to the lobby").click()
    expect(page).to_have_url(f"{live_server.url}/")


def test_a_64_character_room_name_wraps_on_a_phone(
    live_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    page = contexts().new_page()
    page.set_viewport_size(PHONE)
    page.goto(f"{live_server.url}/rooms/{LONG_ROOM}")  # no name yet: the form joins the room
    expect(page.get_by_role("button", name=f"Join #{LONG_ROOM}")).to_be_visible()
    assert horizontal_overflow(page) == 0

    page.goto(f"{live_server.url}/rooms/{LONG_ROOM}?user=alice")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    send(page, "hello from a phone")
    expect(message_texts(page, "hello from a phone")).to_have_count(1)
    assert horizontal_overflow(page) == 0

    lobby = contexts().new_page()
    lobby.set_viewport_size(PHONE)
    lobby.goto(live_server.url)
    expect(lobby.get_by_role("link", name=LONG_ROOM)).to_be_visible()
    assert horizontal_overflow(lobby) == 0


def test_text_refused_for_another_reason_goes_back_into_the_box(open_room: OpenRoom) -> None:
    page = open_room("refused", "alice")
    command = "/stock=" + "X" * 30  # longer than a symbol may be: error bad_command

    send(page, command)

    expect(page.locator("#log li.error .badge")).to_have_text(["bad command"])
    expect(page.get_by_label("Message", exact=True)).to_have_value(command)
    expect(page.get_by_role("button", name="Send")).to_be_enabled()


def test_lobby_takes_a_token_instead_of_a_name_and_the_room_uses_it(
    token_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    page = contexts().new_page()
    page.goto(token_server.url)

    page.get_by_label("Access token", exact=True).fill(token_for("erin"))
    page.get_by_label("Room", exact=True).fill("vip")
    page.get_by_role("button", name="Enter room").click()

    expect(page).to_have_url(f"{token_server.url}/rooms/vip")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    expect(page.locator("#me")).to_have_text("as erin")


def test_text_lost_when_the_connection_drops_is_sent_again_after_reconnect(
    live_server: Process, open_room: OpenRoom, contexts: Callable[[], BrowserContext]
) -> None:
    bob = open_room("drop", "bob")
    alice = contexts().new_page()
    sockets: list[WebSocketRoute] = []

    def route(socket: WebSocketRoute) -> None:
        sockets.append(socket)
        server = socket.connect_to_server()
        if len(sockets) == 1:
            # The first connection loses "in transit" on its way to the server.
            socket.on_message(lambda m: None if "in transit" in str(m) else server.send(m))

    alice.route_web_socket(re.compile(r"/ws\?"), route)
    alice.goto(f"{live_server.url}/rooms/drop?user=alice")
    expect(alice.locator("#status")).to_have_attribute("data-state", "online")
    send(alice, "before")
    expect(message_texts(bob, "before")).to_have_count(1)
    send(alice, "in transit")
    sockets[0].close(code=4000, reason="dropped")

    expect(message_texts(bob, "in transit")).to_have_count(1)
    expect(alice.locator("#log li.msg.own .text")).to_have_text(["before", "in transit"])
    expect(alice.locator("#log li.waiting")).to_have_count(0)
    expect(bob.locator("#log li.msg .text")).to_have_text(["before", "in transit"])


def test_a_message_over_the_servers_byte_limit_stays_in_the_box_and_the_connection_stays_up(
    tmp_path: Path, contexts: Callable[[], BrowserContext]
) -> None:
    with run_server(tmp_path, quote_provider="sim", max_msg_size=1000) as server:
        page = contexts().new_page()
        sockets = opened_websockets(page)
        page.goto(f"{server.url}/rooms/big?user=alice")
        expect(page.locator("#status")).to_have_attribute("data-state", "online")
        text = "x" * 1500

        send(page, text)

        expect(page.locator("#log li.error .badge")).to_have_text(["too big"])
        expect(page.locator("#log li.error .text")).to_contain_text(["takes at most 1,000"])
        expect(page.get_by_label("Message", exact=True)).to_have_value(text)
        send(page, "short")  # still the first connection: its echo comes back on it
        expect(message_texts(page, "short")).to_have_count(1)
        assert len(sockets) == 1


def test_text_over_the_servers_character_limit_stays_whole_in_the_box(
    open_room: OpenRoom,
) -> None:
    page = open_room("long", "alice")
    text = "y" * 40_000  # pasted: the box cuts nothing

    send(page, text)

    expect(page.locator("#log li.error .badge")).to_have_text(["too long"])
    expect(page.locator("#log li.error .text")).to_contain_text(["40,000 characters"])
    expect(page.get_by_label("Message", exact=True)).to_have_value(text)
    expect(page.locator("#log li.msg")).to_have_count(0)


def raise_limit(frame: str | bytes) -> str | bytes:
    """``frame`` with any ``welcome.limits.max_message_bytes`` raised to 1 MB."""
    data = orjson.loads(frame)
    for event in data if isinstance(data, list) else [data]:
        if event.get("type") == "welcome":
            event.setdefault("limits", {})["max_message_bytes"] = 1_000_000
    return orjson.dumps(data).decode()


def test_a_message_the_server_closes_on_as_too_big_goes_back_to_the_box_and_is_not_resent(
    tmp_path: Path, contexts: Callable[[], BrowserContext]
) -> None:
    # The page is told a higher limit than the server applies (as behind a proxy that takes
    # less), so the message leaves and the server closes the connection with 1009.
    with run_server(tmp_path, quote_provider="sim", max_msg_size=1000) as server:
        page = contexts().new_page()
        closes: list[int | None] = []

        def route(socket: WebSocketRoute) -> None:
            upstream = socket.connect_to_server()
            upstream.on_message(lambda frame: socket.send(raise_limit(frame)))
            upstream.on_close(lambda code, reason: (closes.append(code), socket.close(code=code)))

        page.route_web_socket(re.compile(r"/ws\?"), route)
        page.goto(f"{server.url}/rooms/big?user=alice")
        expect(page.locator("#status")).to_have_attribute("data-state", "online")
        text = "z" * 1500

        send(page, text)

        expect(page.locator("#log li.error .badge")).to_have_text(["too big"])
        expect(page.get_by_label("Message", exact=True)).to_have_value(text)
        expect(page.locator("#status")).to_have_attribute("data-state", "online")
        send(page, "after")  # a resent big text would leave before it, and close again
        expect(message_texts(page, "after")).to_have_count(1)
        assert closes == [1009]
        send(page, text)  # and the page now knows not to send it
        expect(page.locator("#log li.error .badge")).to_have_text(["too big", "too big"])
        expect(page.get_by_label("Message", exact=True)).to_have_value(text)
        assert closes == [1009]


OPEN_TIMES = """
window.openTimes = [];
const Native = window.WebSocket;
window.WebSocket = class extends Native {
  constructor(...args) {
    super(...args);
    window.openTimes.push(performance.now());
  }
};
Math.random = () => 0.999;  // each reconnect waits the longest its attempt allows
"""
"""Init script: records when the page opens each WebSocket, and fixes the backoff's jitter."""


def test_reconnects_back_off_while_each_connection_ends_right_after_its_welcome(
    live_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    page = contexts().new_page()
    page.add_init_script(OPEN_TIMES)

    def route(socket: WebSocketRoute) -> None:
        upstream = socket.connect_to_server()

        def forward(frame: str | bytes) -> None:
            socket.send(frame)
            if '"welcome"' in str(frame):
                socket.close(code=1011, reason="gone at once")

        upstream.on_message(forward)

    page.route_web_socket(re.compile(r"/ws\?"), route)
    page.goto(f"{live_server.url}/rooms/flaky?user=alice")

    page.wait_for_function("() => window.openTimes.length >= 5", timeout=30_000)
    opens = page.evaluate("window.openTimes")
    gaps = [later - earlier for earlier, later in itertools.pairwise(opens[:5])]
    # Waits of 0.999 x 0.5, 1, 2 and 4 s: never shorter (timers do not fire early).
    for gap, least in zip(gaps, (499, 999, 1998, 3996), strict=True):
        assert gap >= least, gaps


def test_reconnect_delays_grow_from_half_a_second_to_a_30_second_ceiling_with_full_jitter(
    live_server: Process, contexts: Callable[[], BrowserContext]
) -> None:
    page = contexts().new_page()
    page.goto(f"{live_server.url}/")
    delays = page.evaluate(
        """async () => {
          const { reconnectDelay } = await import("/static/backoff.js");
          const attempts = [...Array(12).keys()];
          return [0, 0.5, 0.999999].map((r) => attempts.map((n) => reconnectDelay(n, () => r)));
        }"""
    )
    ceilings = [min(30_000, 500 * 2**n) for n in range(12)]
    assert delays[0] == [0] * 12
    assert delays[1] == [ceiling / 2 for ceiling in ceilings]
    assert delays[2] == pytest.approx([ceiling * 0.999999 for ceiling in ceilings])


def test_with_the_broker_down_the_page_says_the_server_is_unavailable_and_joins_once_it_is_back(
    tmp_path: Path, redis_server: RedisServer, contexts: Callable[[], BrowserContext]
) -> None:
    with run_server(tmp_path, quote_provider="sim", broker=redis_server.url) as server:
        redis_server.stop()
        wait_status(f"{server.url}/readyz", 503)
        page = contexts().new_page()

        page.goto(f"{server.url}/rooms/outage?user=alice")

        notice = page.locator("#log li.error .text")
        expect(notice).to_have_text(
            [re.compile(r"^The server is unavailable: its message broker is down\. .*retrying")]
        )
        expect(page.locator("#status")).to_have_text(re.compile(r"unavailable, retrying in \d+s"))
        redis_server.start()
        expect(page.locator("#status")).to_have_attribute("data-state", "online", timeout=40_000)
        expect(notice).to_have_count(1)  # said once, not once per attempt
        expect(page.locator("#log")).not_to_contain_text("Check the name")


def test_an_attempt_refused_while_the_broker_was_down_does_not_count_once_it_is_back(
    tmp_path: Path, redis_server: RedisServer, contexts: Callable[[], BrowserContext]
) -> None:
    """Upgrades fail while the broker is down; the one whose /readyz answer finds the server
    back (here the third) was refused before it came back: the page retries, and does not
    take it for a refusal of its name or room."""
    with run_server(tmp_path, quote_provider="sim", broker=redis_server.url) as server:
        redis_server.stop()
        wait_status(f"{server.url}/readyz", 503)
        page = contexts().new_page()
        answers: list[str] = []

        def readyz(route: Route) -> None:
            if len(answers) == 2:
                answers.append("ready")
                route.fulfill(json={"status": "ready"})
            else:
                answers.append("passed on")
                route.continue_()

        page.route(re.compile(r"/readyz$"), readyz)
        page.goto(f"{server.url}/rooms/outage?user=alice")
        deadline = time.monotonic() + 30
        while len(answers) < 3 and time.monotonic() < deadline:
            page.wait_for_timeout(50)  # lets the route handler run
        assert answers[:3] == ["passed on", "passed on", "ready"]
        redis_server.start()
        expect(page.locator("#status")).to_have_attribute("data-state", "online", timeout=40_000)
        expect(page.locator("#log")).not_to_contain_text("Check the name")


def wait_status(url: str, status: int, timeout: float = 10) -> None:
    """Poll ``url`` until it answers HTTP ``status``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                got = response.status
        except urllib.error.HTTPError as exc:
            got = exc.code
        if got == status:
            return
        assert time.monotonic() < deadline, f"{url} still answers {got}, not {status}"
        time.sleep(0.1)
