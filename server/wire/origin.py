"""Web origins (RFC 6454) and the Origin policy of ``GET /ws``.

An origin is the triple (scheme, host, port) of RFC 6454 section 4: the scheme in lower case,
the host in lower case and IDNA (punycode) form, IPv6 literals without brackets and in their
shortest form, and the port with the scheme's default filled in when it is left out (80 for
``http``/``ws``, 443 for ``https``/``wss``). Two origins are the same when the triples are equal
(RFC 6454 section 5), so ``https://Chat.Example.com:443`` and ``https://chat.example.com`` are
one origin.
"""

from __future__ import annotations

from functools import lru_cache

from yarl import URL

Origin = tuple[str, str, int | None]
"""``(scheme, host, port)``; ``port`` is None only for a scheme without a known default."""


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


def origin_allowed(header: str | None, own: Origin | None, allowed: tuple[str, ...]) -> bool:
    """Whether a WebSocket upgrade with ``Origin: header`` may go ahead.

    ``header`` None (no ``Origin``: not a browser) is always allowed. With an empty
    ``allowed`` only the request's own origin ``own`` is; otherwise only the listed origins,
    compared as origins; the entry ``*`` allows any.
    """
    if header is None or "*" in allowed:
        return True
    origin = parse_origin(header)
    if origin is None:
        return False
    if allowed:
        return origin in map(parse_origin, allowed)
    return origin == own
