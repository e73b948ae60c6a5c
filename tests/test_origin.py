"""The Origin policy: RFC 6454 origins, the server's own page, the allow-list."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import assume, given
from hypothesis import strategies as st

from server.ops.config import ConfigError, load_settings
from server.web.app import create_app
from server.wire.origin import origin_allowed, parse_origin, request_origin
from tests.chat import UPGRADE_HEADERS, Client, settings

DEFAULT_PORT = {"http": 80, "https": 443}

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
dns_names = (
    st.lists(labels, min_size=1, max_size=3)
    .map(".".join)
    .filter(
        lambda name: not name.replace(".", "").isdigit()  # all-digit names read as IPv4
    )
)
idn_names = st.sampled_from(["bücher.example", "xn--bcher-kva.example", "пример.рф", "例え.jp"])
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda ip: f"[{ip}]")
hosts = st.one_of(dns_names, idn_names, ipv4, ipv6)


@st.composite
def pages(draw: st.DrawFn) -> tuple[str, str, int]:
    """Where a page is served: scheme, host as a URL writes it, port."""
    scheme = draw(st.sampled_from(["http", "https"]))
    port = draw(st.one_of(st.just(DEFAULT_PORT[scheme]), st.integers(1, 65535)))
    return scheme, draw(hosts), port


def shuffle_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips, strict=True))


def authority(draw: st.DrawFn, scheme: str, host: str, port: int) -> str:
    """``host[:port]`` as a client may write it: any case, the default port left out or not."""
    if port != DEFAULT_PORT[scheme] or draw(st.booleans()):
        return f"{shuffle_case(draw, host)}:{port}"
    return shuffle_case(draw, host)


@given(st.data(), pages())
def test_the_servers_own_page_is_always_allowed(data: st.DataObject, page: Any) -> None:
    scheme, host, port = page
    origin = f"{shuffle_case(data.draw, scheme)}://{authority(data.draw, scheme, host, port)}"
    own = request_origin(scheme, authority(data.draw, scheme, host, port))
    assert own is not None
    assert origin_allowed(origin, own, ())
    assert origin_allowed(origin + "/", own, ())


@given(st.data(), pages(), pages())
def test_another_origin_is_never_allowed(data: st.DataObject, page: Any, other: Any) -> None:
    own = request_origin(page[0], authority(data.draw, *page))
    assume(parse_origin(f"{other[0]}://{other[1]}:{other[2]}") != own)
    origin = f"{other[0]}://{authority(data.draw, *other)}"
    assert not origin_allowed(origin, own, ())


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://chat.example.com", "chat.example.com"),
        ("http://chat.example.com", "chat.example.com:80"),
        ("http://chat.example.com:80", "CHAT.example.com"),
        ("http://xn--bcher-kva.example", "bücher.example"),
        ("http://[::1]:8080", "[0:0::1]:8080"),
        ("http://127.0.0.1:8080", "127.0.0.1:8080"),
    ],
)
def test_forms_of_one_origin_are_one_origin(origin: str, host: str) -> None:
    assert parse_origin(origin) == request_origin("http", host)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://chat.example.com", "chat.example.com"),  # another scheme and port
        ("https://chat.example.com", "chat.example.com:443"),  # another scheme
        ("http://chat.example.com:8080", "chat.example.com"),
        ("http://chat.example.com.evil.example", "chat.example.com"),
        ("http://evil.example", "chat.example.com"),
        ("null", "chat.example.com"),
        ("http://chat.example.com/page", "chat.example.com"),
        ("http://user@chat.example.com", "chat.example.com"),
    ],
)
def test_other_origins_and_non_origins_are_refused(origin: str, host: str) -> None:
    assert not origin_allowed(origin, request_origin("http", host), ())


def test_allow_list_entries_are_compared_as_origins() -> None:
    allowed = load_settings({"ROOMHUB_ALLOWED_ORIGINS": "https://Chat.Example.com:443/"})
    assert origin_allowed("https://chat.example.com", None, allowed.allowed_origins)
    assert not origin_allowed("http://chat.example.com", None, allowed.allowed_origins)


def test_an_allow_list_entry_that_is_not_an_origin_stops_start_up() -> None:
    with pytest.raises(ConfigError, match="ROOMHUB_ALLOWED_ORIGINS"):
        load_settings({"ROOMHUB_ALLOWED_ORIGINS": "https://ok.example,chat.example.com/x"})


@pytest.mark.parametrize(
    ("host", "origin", "status"),
    [
        ("chat.example.com", "http://chat.example.com", 101),
        ("chat.example.com", "http://CHAT.EXAMPLE.COM:80", 101),
        ("chat.example.com:80", "http://chat.example.com", 101),
        ("chat.example.com", "https://chat.example.com", 403),
        ("chat.example.com", "http://other.example.com", 403),
    ],
)
async def test_upgrade_on_a_standard_port_behind_a_domain(
    aiohttp_client: Any, host: str, origin: str, status: int
) -> None:
    server: TestClient = await aiohttp_client(create_app(settings()))
    headers = {**UPGRADE_HEADERS, "Host": host, "Origin": origin}
    response = await server.get("/ws", params={"room": "r1"}, headers=headers)
    assert response.status == status


BROWSER_BEHIND_PROXY = {
    **UPGRADE_HEADERS,
    "Origin": "https://chat.example.com",
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "chat.example.com",
}
"""An upgrade from an HTTPS page, as a TLS-terminating proxy passes it on."""


async def test_a_trusted_proxys_forwarded_scheme_and_host_let_the_https_page_in(
    aiohttp_client: Any,
) -> None:
    server: TestClient = await aiohttp_client(create_app(settings(trusted_proxies=("127.0.0.1",))))
    ws = await server.ws_connect("/ws", params={"room": "r1"}, headers=BROWSER_BEHIND_PROXY)
    assert (await Client(ws).next())["type"] == "welcome"
    await ws.close()
    plain_host = {k: v for k, v in BROWSER_BEHIND_PROXY.items() if k != "X-Forwarded-Host"}
    plain_host["Host"] = "chat.example.com"
    response = await server.get("/ws", params={"room": "r1"}, headers=plain_host)
    assert response.status == 101


async def test_forwarded_headers_are_ignored_by_default(aiohttp_client: Any) -> None:
    server: TestClient = await aiohttp_client(create_app(settings()))
    response = await server.get("/ws", params={"room": "r1"}, headers=BROWSER_BEHIND_PROXY)
    assert response.status == 403


@pytest.mark.parametrize(
    ("trusted", "headers"),
    [
        (("10.9.9.9",), BROWSER_BEHIND_PROXY),  # not from the proxy
        (("127.0.0.0/8",), {**UPGRADE_HEADERS, "Origin": "http://chat.example.com"}),  # no XFF
        (("127.0.0.1",), {**BROWSER_BEHIND_PROXY, "X-Forwarded-For": "198.51.100.1, 203.0.113.7"}),
    ],
    ids=["untrusted-peer", "no-x-forwarded-for", "two-hops"],
)
async def test_with_trusted_proxies_set_other_requests_get_400(
    aiohttp_client: Any, trusted: tuple[str, ...], headers: dict[str, str]
) -> None:
    server: TestClient = await aiohttp_client(create_app(settings(trusted_proxies=trusted)))
    assert (await server.get("/ws", params={"room": "r1"}, headers=headers)).status == 400
    assert (await server.get("/rooms/r1", headers=headers)).status == 400
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await server.get(path)).status == 200, path


def test_a_trusted_proxy_that_is_not_an_address_stops_start_up() -> None:
    with pytest.raises(ConfigError, match="ROOMHUB_TRUSTED_PROXIES"):
        load_settings({"ROOMHUB_TRUSTED_PROXIES": "10.0.0.5,proxy.internal"})
