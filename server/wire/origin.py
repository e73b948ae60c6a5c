"""Web origins (RFC 6454) and the Origin policy of ``GET /ws``.

An origin is the triple (scheme, host, port) of RFC 6454 section 4: the scheme in lower case,
the host in lower case and IDNA (punycode) form, IPv6 literals without brackets and in their
shortest form, and the port with the scheme's default filled in when it is left out (80 for
``http``/``ws``, 443 for ``https``/``wss``). Two origins are the same when the triples are equal
(RFC 6454 section 5), so ``https://Chat.Example.com:443`` and ``https://chat.example.com`` are
one origin.

Which ``Origin`` is the server's own page (``ROOMHUB_ORIGIN_CHECK``, docs/protocol.md "Origin
policy"): by default (``host``) one whose host and port are the request's ``Host``, whatever
its scheme, the rule of gorilla/websocket's ``checkSameOrigin`` and Django Channels'
``AllowedHostsOriginValidator``: a TLS-terminating proxy passes on the browser's ``Host`` over
plain HTTP, so the scheme the server sees is not the page's. ``strict`` compares the scheme too.
"""

from __future__ import annotations

from functools import lru_cache

from yarl import URL

Origin = tuple[str, str, int | None]
"""``(scheme, host, port)``; ``port`` is None only for a scheme without a known default."""

ORIGIN_CHECKS = ("host", "strict")
"""Values of ``ROOMHUB_ORIGIN_CHECK``: how the server tells its own page's ``Origin``."""

PAGE_SCHEMES = ("http", "https")
"""Schemes a page served by roomhub (directly or through a proxy) can have."""


@lru_cache(maxsize=256)
def parse_origin(text: str) -> Origin | None:
    """The origin named by ``text``, an ``Origin`` header value or an allow-list entry.

    Accepts ``scheme://host[:port]`` with an optional trailing ``/``; returns None for
    anything else (``null``, a path, a query, user info, a bad port or IPv6 literal).
    The last 256 texts are remembered: a server sees the same few on every upgrade.
    """
    try:
        url = URL(text.strip())
    except ValueError:
        return None
    if (
        not url.absolute
        or not url.raw_host
        or url.raw_user is not None
        or url.raw_path not in ("", "/")
        or url.raw_query_string
        or url.raw_fragment
    ):
        return None
    return (url.scheme, url.raw_host, url.port)


def request_origin(scheme: str, host: str) -> Origin | None:
    """The origin of a request made with ``scheme`` to the ``Host`` header value ``host``.

    A browser leaves the scheme's default port out of ``Host`` (RFC 9110 section 7.2), so
    ``("https", "chat.example.com")`` is ``("https", "chat.example.com", 443)``.
    """
    return parse_origin(f"{scheme}://{host}")


def is_own_page(origin: Origin, scheme: str, host: str, check: str = "host") -> bool:
    """Whether ``origin`` is the page of the server that got a request made with ``scheme`` to
    the ``Host`` header value ``host``.

    ``check`` ``host``: ``origin`` is ``http`` or ``https`` and its host and port equal
    ``host``'s, whatever ``scheme`` is. A ``host`` without a port stands for the default port of
    the origin's scheme, since browsers leave the default port out of both ``Origin`` (RFC 6454
    section 6.2) and ``Host`` (RFC 9110 section 7.2): ``https://chat.example.com`` matches
    ``chat.example.com`` and ``chat.example.com:443``, not ``chat.example.com:80``.
    ``check`` ``strict``: ``origin`` is the request's own origin, :func:`request_origin`.
    """
    if check == "strict":
        return origin == request_origin(scheme, host)
    return origin[0] in PAGE_SCHEMES and origin == request_origin(origin[0], host)


def origin_allowed(
    header: str | None, scheme: str, host: str, allowed: tuple[str, ...], check: str = "host"
) -> bool:
    """Whether a WebSocket upgrade with ``Origin: header``, made with ``scheme`` to the ``Host``
    header value ``host``, may go ahead.

    ``header`` None (no ``Origin``: not a browser) is always allowed. With an empty
    ``allowed`` only the server's own page is (:func:`is_own_page` with ``check``); otherwise
    only the listed origins, compared as origins; the entry ``*`` allows any.
    """
    if header is None or "*" in allowed:
        return True
    origin = parse_origin(header)
    if origin is None:
        return False
    if allowed:
        return origin in map(parse_origin, allowed)
    return is_own_page(origin, scheme, host, check)
