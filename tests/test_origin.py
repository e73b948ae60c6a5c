"""The Origin policy: RFC 6454 origins, the server's own page (host or strict), the allow-list."""

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


CHECKS = ("host", "strict")


@pytest.mark.parametrize("check", CHECKS)
@given(data=st.data(), page=pages())
def test_the_servers_own_page_is_always_allowed(data: st.DataObject, page: Any, check: str) -> None:
    scheme, host, port = page
    origin = f"{shuffle_case(data.draw, scheme)}://{authority(data.draw, scheme, host, port)}"
    own = authority(data.draw, scheme, host, port)  # the Host header the browser sends
    assert origin_allowed(origin, scheme, own, (), check)
    assert origin_allowed(origin + "/", scheme, own, (), check)


@given(st.data(), pages(), st.sampled_from(["http", "https"]))
def test_host_check_allows_the_servers_host_and_port_whatever_the_scheme(
    data: st.DataObject, page: Any, scheme_seen: str
) -> None:
    scheme, host, port = page
    origin = f"{scheme}://{authority(data.draw, scheme, host, port)}"
    assert origin_allowed(origin, scheme_seen, f"{host}:{port}", ())


@given(st.data(), pages(), pages())
def test_host_check_refuses_another_host_or_port(
    data: st.DataObject, page: Any, other: Any
) -> None:
    assume(
        parse_origin(f"http://{other[1]}:{other[2]}") != parse_origin(f"http://{page[1]}:{page[2]}")
    )
    origin = f"{other[0]}://{authority(data.draw, *other)}"
    assert not origin_allowed(origin, page[0], f"{page[1]}:{page[2]}", ())


@given(st.data(), pages(), pages())
def test_strict_check_refuses_another_origin(data: st.DataObject, page: Any, other: Any) -> None:
    own = request_origin(page[0], authority(data.draw, *page))
    assume(parse_origin(f"{other[0]}://{other[1]}:{other[2]}") != own)
    origin = f"{other[0]}://{authority(data.draw, *other)}"
    assert not origin_allowed(origin, page[0], authority(data.draw, *page), (), "strict")


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
        ("https://chat.example.com", "chat.example.com"),  # TLS ends at the proxy
        ("http://chat.example.com", "chat.example.com"),
        ("https://chat.example.com", "chat.example.com:443"),
        ("https://CHAT.example.com:443", "chat.example.com"),
        ("https://chat.example.com:8443", "chat.example.com:8443"),
        ("https://xn--bcher-kva.example", "bücher.example"),
        ("https://[::1]:8080", "[0:0::1]:8080"),
    ],
)
def test_host_check_allows_the_host_and_port_of_the_host_header(origin: str, host: str) -> None:
    assert origin_allowed(origin, "http", host, ())


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://chat.example.com", "chat.example.com:80"),  # port 443 against 80
        ("http://chat.example.com", "chat.example.com:443"),  # port 80 against 443
        ("https://chat.example.com:8443", "chat.example.com"),  # 8443 against 443
        ("http://chat.example.com:8080", "chat.example.com"),
        ("https://chat.example.com.evil.example", "chat.example.com"),
        ("https://evil.example", "chat.example.com"),
        ("ws://chat.example.com", "chat.example.com"),  # not a page's scheme
        ("null", "chat.example.com"),
        ("http://chat.example.com/page", "chat.example.com"),
        ("http://user@chat.example.com", "chat.example.com"),
    ],
)
@pytest.mark.parametrize("check", CHECKS)
def test_other_origins_and_non_origins_are_refused(origin: str, host: str, check: str) -> None:
    assert not origin_allowed(origin, "http", host, (), check)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://chat.example.com", "chat.example.com"),  # another scheme and port
        ("https://chat.example.com", "chat.example.com:443"),  # another scheme
    ],
)
def test_strict_check_refuses_the_https_page_when_the_request_came_as_http(
    origin: str, host: str
) -> None:
    assert not origin_allowed(origin, "http", host, (), "strict")
    assert origin_allowed(origin, "https", host, (), "strict")


def test_allow_list_entries_are_compared_as_origins() -> None:
    allowed = load_settings({"ROOMHUB_ALLOWED_ORIGINS": "https://Chat.Example.com:443/"})
    assert origin_allowed("https://chat.example.com", "http", "x", allowed.allowed_origins)
    assert not origin_allowed("http://chat.example.com", "http", "x", allowed.allowed_origins)


def test_an_allow_list_replaces_the_own_page_rule() -> None:
    listed = ("https://elsewhere.example",)
    assert not origin_allowed("http://chat.example.com", "http", "chat.example.com", listed)


@pytest.mark.parametrize("check", CHECKS)
def test_origin_check_is_host_or_strict(check: str) -> None:
    assert load_settings({}).origin_check == "host"
    assert load_settings({"ROOMHUB_ORIGIN_CHECK": check.upper()}).origin_check == check


def test_another_origin_check_stops_start_up() -> None:
    with pytest.raises(ConfigError, match="ROOMHUB_ORIGIN_CHECK='scheme': must be one of host"):
        load_settings({"ROOMHUB_ORIGIN_CHECK": "scheme"})


def test_an_allow_list_entry_that_is_not_an_origin_stops_start_up() -> None:
    with pytest.raises(ConfigError, match="ROOMHUB_ALLOWED_ORIGINS"):
        load_settings({"ROOMHUB_ALLOWED_ORIGINS": "https://ok.example,chat.example.com/x"})


@pytest.mark.parametrize(
    ("check", "host", "origin", "status"),
    [
        ("host", "chat.example.com", "http://chat.example.com", 101),
        ("host", "chat.example.com", "http://CHAT.EXAMPLE.COM:80", 101),
        ("host", "chat.example.com:80", "http://chat.example.com", 101),
        ("host", "chat.example.com", "https://chat.example.com", 101),  # TLS ends at a proxy
        ("host", "chat.example.com", "https://evil.example.com", 403),
        ("host", "chat.example.com", "http://other.example.com", 403),
        ("strict", "chat.example.com", "http://chat.example.com", 101),
        ("strict", "chat.example.com", "https://chat.example.com", 403),
    ],
)
async def test_upgrade_on_a_standard_port_behind_a_domain(
    aiohttp_client: Any, check: str, host: str, origin: str, status: int
) -> None:
    server: TestClient = await aiohttp_client(create_app(settings(origin_check=check)))
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


@pytest.mark.parametrize("check", CHECKS)
async def test_forwarded_headers_are_ignored_by_default(aiohttp_client: Any, check: str) -> None:
    # The Host is the test server's own 127.0.0.1:port, not the page's chat.example.com.
    server: TestClient = await aiohttp_client(create_app(settings(origin_check=check)))
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
