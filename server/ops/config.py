"""Settings: one frozen object, read from ``ROOMHUB_*`` env vars and command-line flags.

Every setting has an env var (``ROOMHUB_<NAME>``) and a flag (``--<name>``); a flag wins over
the env var, which wins over the default. A bad value raises :class:`ConfigError` naming the
setting; ``python -m server`` turns that into exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.connection import ConnectionPool
from yarl import URL

from ..wire.origin import ORIGIN_CHECKS, parse_origin

HUB_MODES = ("sharded", "global")
QUOTE_PROVIDERS = ("stooq", "url", "sim")
LOG_LEVELS = ("debug", "info", "warning", "error")
AUTH_MODES = ("none", "token")
EVENT_LOOPS = ("asyncio", "uvloop")


class ConfigError(ValueError):
    """A setting has a bad value; the message names the env var and the flag."""


def _setting(default: Any, text: str) -> Any:
    """A settings field with its ``--help`` text."""
    return dataclasses.field(default=default, metadata={"help": text})


@dataclass(frozen=True, slots=True)
class Settings:
    """All server settings. Times are in seconds, sizes in bytes unless named otherwise."""

    host: str = _setting(
        "127.0.0.1", "address to listen on (0.0.0.0: every IPv4 interface, as in Docker)"
    )
    port: int = _setting(8080, "TCP port to listen on (0: any free port)")
    hub_mode: str = _setting(
        "sharded", "sharded: one hub task per room; global: one hub for every room"
    )
    history_size: int = _setting(50, "messages each room keeps for welcome and since")
    outbox_limit: int = _setting(
        1000, "events that may wait for one client before it is closed as a slow consumer"
    )
    fanout_interval: float = _setting(
        0.01, "seconds, shortest gap between two fan-outs of one room (0: no coalescing)"
    )
    rate_limit: float = _setting(5.0, "frames per second each connection may send")
    rate_burst: int = _setting(10, "frames a connection may send at once")
    max_connections: int = _setting(10000, "open WebSocket connections; more get HTTP 503")
    max_rooms: int = _setting(10000, "rooms at once; a join that would open one more gets HTTP 503")
    handshake_timeout: float = _setting(
        10.0,
        "seconds a client has to send its whole request header (an upgrade or any HTTP "
        "request) after connecting or after its previous answer; then the socket is closed",
    )
    max_connections_per_address: int = _setting(
        500, "open WebSocket connections from one client address; more get HTTP 429 (0: off)"
    )
    upgrade_rate: float = _setting(
        20.0, "upgrade requests per second from one client address; more get HTTP 429 (0: off)"
    )
    upgrade_burst: int = _setting(100, "upgrade requests one client address may send at once")
    new_rooms_per_minute: int = _setting(
        60, "rooms one client address may open per minute; more get HTTP 429 (0: off)"
    )
    allowed_origins: tuple[str, ...] = _setting(
        (), "comma-separated origins allowed to connect; empty: the request's own origin; *: any"
    )
    origin_check: str = _setting(
        "host",
        "with allowed_origins empty, the Origin of the server's own page: host (its host and port "
        "are the request's Host, whatever its scheme) or strict (its scheme too)",
    )
    trusted_proxies: tuple[str, ...] = _setting(
        (),
        "comma-separated addresses or networks of the reverse proxies in front of the server; "
        "requests must then come through one and its X-Forwarded-* headers are used; empty: off",
    )
    heartbeat: float = _setting(
        25.0,
        "seconds of silence from a client before it is pinged; no pong in half: 1011 "
        "(0: off; else at least 1)",
    )
    room_grace: float = _setting(30.0, "seconds an empty room keeps its hub and history")
    max_msg_size: int = _setting(
        32 * 1024, "bytes; a bigger client message closes with 1009 (every valid message fits)"
    )
    max_frame_size: int = _setting(
        64 * 1024, "bytes; largest frame the server sends, unless one event alone is bigger"
    )
    close_timeout: float = _setting(
        2.0, "seconds a client has to answer the server's close frame before TCP is ended"
    )
    shutdown_timeout: float = _setting(5.0, "seconds of graceful shutdown on SIGTERM/SIGINT")
    quote_provider: str = _setting("stooq", "stock quotes from: stooq, url or sim (offline)")
    quote_url: str = _setting("https://stooq.com", "base URL of the stooq or url provider")
    bot_workers: int = _setting(4, "stock bot workers (upstream calls at once)")
    bot_queue_size: int = _setting(100, "bot commands that may wait; more get error busy")
    bot_timeout: float = _setting(
        3.0, "seconds one upstream quote call, or a command waiting for the bot, may take"
    )
    bot_cache_ttl: float = _setting(5.0, "seconds a quote is reused (0: no cache)")
    log_level: str = _setting("info", "debug, info, warning or error")
    auth: str = _setting(
        "none", "none: names are chosen freely; token: a signed JWT (?token=) names the user"
    )
    token_secret: str = _setting("", "HS256 secret for auth=token, at least 32 bytes")
    token_public_key: str = _setting(
        "", "PEM file with the RSA (RS256) or P-256 (ES256) public key for auth=token"
    )
    broker: str = _setting(
        "memory",
        "rooms live in this process (memory) or in Redis (a redis:// or rediss:// URL; several, "
        "separated by commas: each room on one of them)",
    )
    presence_ttl: float = _setting(
        15.0, "seconds a crashed instance's members keep being counted (Redis broker)"
    )
    api_key: str = _setting(
        "", "key of the server API (POST /api/v1/<method>, X-API-Key); empty: the API is off"
    )
    api_max_body: int = _setting(
        64 * 1024, "bytes; a bigger server API request body is refused with 413"
    )
    redis_batch_window: int = _setting(
        20000,
        "microseconds, shortest gap between two pipelines of the Redis broker; operations "
        "queued within it leave together (0: no gap)",
    )
    workers: int = _setting(1, "server processes sharing the port (more than 1 needs Redis)")
    event_loop: str = _setting(
        "asyncio", "asyncio (the standard loop) or uvloop (libuv; see docs/scaling.md)"
    )
    metrics_port: int = _setting(
        0, "worker i serves /metrics on this port + i (0: /metrics on the serving port only)"
    )

    @property
    def redis(self) -> bool:
        """Whether rooms live in Redis (``broker`` is a URL) rather than in this process."""
        return self.broker != "memory"

    @property
    def broker_cluster(self) -> bool:
        """Whether ``broker`` names the seed nodes of a Redis Cluster (``redis+cluster://``)."""
        return cluster_broker(self.broker)

    @property
    def broker_urls(self) -> tuple[str, ...]:
        """The Redis URLs of ``broker`` (:func:`broker_urls`): one per shard, in order, or
        one per seed node of a Redis Cluster; empty with the memory broker."""
        return broker_urls(self.broker) if self.redis else ()


MIN_HEARTBEAT = 1.0
"""Shortest ``heartbeat`` in seconds other than 0 (off); its sweep runs every half of it."""

INT_RE = re.compile(r"[0-9]+")
FLOAT_RE = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")


def _int(raw: str, accepted: str = "a whole number >= 0, like 5") -> int:
    if not INT_RE.fullmatch(raw.strip()):
        raise ValueError(f"must be {accepted}")
    return int(raw)


def _float(raw: str, accepted: str = "a plain decimal number >= 0, like 2 or 0.5") -> float:
    if not FLOAT_RE.fullmatch(raw.strip()):
        raise ValueError(f"must be {accepted}")
    return float(raw)


def _positive_int(raw: str) -> int:
    accepted = "a whole number >= 1, like 5"
    value = _int(raw, accepted)
    if value < 1:
        raise ValueError(f"must be {accepted}")
    return value


def _positive_float(raw: str) -> float:
    accepted = "a plain decimal number > 0, like 2 or 0.5"
    value = _float(raw, accepted)
    if value == 0:
        raise ValueError(f"must be {accepted}")
    return value


def _heartbeat(raw: str) -> float:
    accepted = f"0 (off) or a plain decimal number >= {MIN_HEARTBEAT:g}, like 25"
    value = _float(raw, accepted)
    if 0 < value < MIN_HEARTBEAT:
        raise ValueError(f"must be {accepted}")
    return value


def _fanout_interval(raw: str) -> float:
    value = _float(raw)
    if value > 1:
        raise ValueError("must be at most 1 (second)")
    return value


def _batch_window(raw: str) -> int:
    accepted = "a whole number of microseconds from 0 to 100000"
    value = _int(raw, accepted)
    if value > 100_000:
        raise ValueError(f"must be {accepted}")
    return value


def _port(raw: str) -> int:
    accepted = "a port number from 0 to 65535"
    value = _int(raw, accepted)
    if value > 65535:
        raise ValueError(f"must be {accepted}")
    return value


def _choice(options: Sequence[str]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _event_loop(raw: str) -> str:
    value = _choice(EVENT_LOOPS)(raw)
    if value == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ValueError("uvloop is not installed in this Python (pip install uvloop; no Windows)")
    return value


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/").lower() for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and parse_origin(origin) is None:
            raise ValueError(f"{origin!r} is not an origin like https://chat.example.com")
    return origins


def _addresses(raw: str) -> tuple[str, ...]:
    entries = tuple(e.strip() for e in raw.split(",") if e.strip())
    for entry in entries:
        try:
            ipaddress.ip_address(entry)
        except ValueError:
            try:
                ipaddress.ip_network(entry)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network like 10.0.0.0/8"
                ) from None
    return entries


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    accepted = "must be an http:// or https:// URL with a host and no spaces"
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(accepted)
    try:
        url = URL(value)
    except ValueError as exc:
        raise ValueError(f"{accepted} ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(accepted)
    return value


REDIS_SCHEMES = ("redis", "rediss")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_REDIS_PORT = 6379


def _broker(raw: str) -> str:
    value = raw.strip()
    if value.lower() == "memory":
        return "memory"
    urls = broker_urls(value)
    return value if cluster_broker(value) else ",".join(urls)


def cluster_broker(broker: str) -> bool:
    """Whether ``broker`` names the seed nodes of a Redis Cluster (``redis+cluster://``)."""
    return broker.lower().startswith(tuple(f"{scheme}://" for scheme in CLUSTER_SCHEMES))


def broker_urls(broker: str) -> tuple[str, ...]:
    """The Redis URLs that the ``broker`` setting names, in order: each shard's (several
    ``redis://`` or ``rediss://`` URLs separated by commas), or, for
    ``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://``: TLS),
    one ``redis://`` (``rediss://``) URL per seed node with the credentials. Raises
    ``ValueError`` naming the first bad item (its password hidden), or a Redis server named
    twice (by host and port: pub/sub channels are shared by all of a server's databases)."""
    if cluster_broker(broker):
        urls = _cluster_seeds(broker)
    else:
        for url in URL_START_RE.split(broker):
            if "," in url.partition("://")[2].rpartition("@")[0]:
                raise ValueError(
                    f"{redacted(url.strip())!r} has a ',' in its password: {ENCODE_PASSWORD}"
                )
        items = [item.strip() for item in broker.split(",")]
        urls = tuple(
            _redis_url(item, index, len(items), URLS, whole=len(items) == 1)
            for index, item in enumerate(items)
        )
    seen: dict[tuple[str, int], str] = {}
    for url in urls:
        parsed = URL(url)
        server = ((parsed.host or "").lower(), parsed.explicit_port or DEFAULT_REDIS_PORT)
        if server in seen:
            raise ValueError(
                f"{redacted(url)!r} names the same Redis server as {redacted(seen[server])!r} "
                "(its pub/sub is shared by every database): list each Redis once"
            )
        seen[server] = url
    return urls


URLS = "must be memory or redis:// or rediss:// URLs separated by commas"
ENCODE_PASSWORD = "a password's , @ / : ? # and % must be percent-encoded, like %2C for ,"


def _redis_url(item: str, index: int, count: int, accepted: str, whole: bool = False) -> str:
    """``item`` (the ``index``-th of ``count`` comma-separated URLs) if it is a usable
    ``redis://`` or ``rediss://`` URL, else ``ValueError`` naming it and what is ``accepted``
    (``whole``: the item is the whole setting, which the error's prefix shows already)."""
    which = f"item {index + 1} " if count > 1 else ""
    if not item:
        raise ValueError(f"{which}is empty: {accepted}")
    shown = "the URL" if whole else f"{which}{redacted(item)!r}"
    if any(c.isspace() or not c.isprintable() for c in item):
        raise ValueError(f"{shown} has a space or a control character: {accepted}")
    try:
        url = URL(item)
        port = url.explicit_port
    except ValueError as exc:
        hint = f"; {ENCODE_PASSWORD}" if "@" in item else ""
        raise ValueError(f"{shown} does not parse ({exc}{hint}): {accepted}") from None
    if url.scheme not in REDIS_SCHEMES or not url.host:
        raise ValueError(f"{shown} is not a redis:// or rediss:// URL with a host: {accepted}")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{shown}: the port must be 1..65535")
    if url.path not in ("", "/") and not INT_RE.fullmatch(url.path[1:]):
        raise ValueError(f"{shown}: the database after the host must be a number, like /0")
    if url.query_string:
        _redis_options(item, url, shown)
    return item


def _redis_options(item: str, url: URL, shown: str) -> None:
    """Raise ``ValueError`` naming ``item`` (parsed: ``url``; shown as ``shown``) when an
    option after its ``?`` is one redis-py does not take or takes no such value of (its URL
    options:
    https://redis.readthedocs.io/en/stable/connections.html#redis.Redis.from_url), is given
    twice, is a timeout of 0 seconds or less (Python's sockets take 0 as non-blocking and a
    negative one as an error), or is ``protocol``: the broker reads Redis's answers as RESP2
    and sets that itself."""
    query = url.query
    if "protocol" in query:
        raise ValueError(f"{shown}: the protocol option is not taken (the broker speaks RESP2)")
    for name in query:
        if len(query.getall(name)) > 1:
            raise ValueError(f"{shown}: the option {name!r} is given more than once")
    try:
        ConnectionPool.from_url(item).make_connection()  # type: ignore[no-untyped-call]
    except TypeError as exc:  # redis-py hands an option it does not know to the connection
        unknown = UNKNOWN_OPTION_RE.search(str(exc))
        what = f"'{unknown[1]}'" if unknown else "an option"
        raise ValueError(f"{shown}: redis-py takes no {what} option in a URL") from None
    except ValueError as exc:
        raise ValueError(f"{shown}: {exc}") from None
    for name in TIMEOUT_OPTIONS.intersection(query):
        if not 0 < float(query[name]) < math.inf:
            raise ValueError(f"{shown}: {name} must be a number of seconds above 0, like 5")


TIMEOUT_OPTIONS = frozenset({"socket_timeout", "socket_connect_timeout"})
UNKNOWN_OPTION_RE = re.compile(r"unexpected keyword argument '(\w+)'")


def _cluster_seeds(broker: str) -> tuple[str, ...]:
    """The seed node URLs of a ``redis+cluster://`` setting (see :func:`broker_urls`)."""
    scheme, _, rest = broker.partition("://")
    plain = scheme.lower().removesuffix("+cluster")
    credentials, _, nodes = rest.rpartition("@")
    accepted = f"must be {scheme}://[user:password@]host:port[,host:port...]"
    if "://" in nodes:
        raise ValueError(f"{accepted}: each seed after the first is host:port, not a URL")
    if not nodes or any(mark in nodes for mark in "/?#"):
        raise ValueError(f"{accepted} (a Redis Cluster has one database: no /db or options)")
    items = [item.strip() for item in nodes.split(",")]
    userinfo = f"{credentials}@" if credentials else ""
    return tuple(
        _redis_url(f"{plain}://{userinfo}{item}" if item else "", index, len(items), accepted)
        for index, item in enumerate(items)
    )


def _text(raw: str) -> str:
    return raw.strip()


API_KEY_RE = re.compile(r"[\x21-\x7e]{16,256}")


def _api_key(raw: str) -> str:
    key = raw.strip()
    if not API_KEY_RE.fullmatch(key):
        raise ValueError("must be 16-256 printable ASCII characters without spaces")
    return key


PARSERS: dict[str, Callable[[str], Any]] = {
    "host": _text,
    "port": _port,
    "hub_mode": _choice(HUB_MODES),
    "history_size": _positive_int,
    "outbox_limit": _positive_int,
    "fanout_interval": _fanout_interval,
    "rate_limit": _positive_float,
    "rate_burst": _positive_int,
    "max_connections": _positive_int,
    "max_rooms": _positive_int,
    "handshake_timeout": _positive_float,
    "max_connections_per_address": _int,
    "upgrade_rate": _float,
    "upgrade_burst": _positive_int,
    "new_rooms_per_minute": _int,
    "allowed_origins": _origins,
    "origin_check": _choice(ORIGIN_CHECKS),
    "trusted_proxies": _addresses,
    "heartbeat": _heartbeat,
    "room_grace": _float,
    "max_msg_size": _positive_int,
    "max_frame_size": _positive_int,
    "close_timeout": _positive_float,
    "shutdown_timeout": _float,
    "quote_provider": _choice(QUOTE_PROVIDERS),
    "quote_url": _url,
    "bot_workers": _positive_int,
    "bot_queue_size": _positive_int,
    "bot_timeout": _positive_float,
    "bot_cache_ttl": _float,
    "log_level": _choice(LOG_LEVELS),
    "auth": _choice(AUTH_MODES),
    "token_secret": _text,
    "token_public_key": _text,
    "broker": _broker,
    "presence_ttl": _positive_float,
    "api_key": _api_key,
    "api_max_body": _positive_int,
    "redis_batch_window": _batch_window,
    "workers": _positive_int,
    "event_loop": _event_loop,
    "metrics_port": _port,
}


def unknown_env_vars(environ: Mapping[str, str]) -> dict[str, str | None]:
    """``ROOMHUB_*`` names in ``environ`` that are no setting (a typo, say), sorted, each with
    the closest setting's env var (``difflib``), or None when none is close."""
    known = [env_name(name) for name in PARSERS]
    unknown = sorted(k for k in environ if k.startswith("ROOMHUB_") and k not in known)
    return {k: next(iter(difflib.get_close_matches(k, known, n=1)), None) for k in unknown}


def env_name(field: str) -> str:
    return f"ROOMHUB_{field.upper()}"


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add one string flag per setting; values are validated by :func:`load_settings`."""
    for field in dataclasses.fields(Settings):
        parser.add_argument(
            flag_name(field.name),
            dest=field.name,
            metavar=field.name.upper(),
            help=f"{field.metadata['help']}; env {env_name(field.name)}, "
            f"default {_show(field.default)}",
        )


def _show(value: object) -> str:
    if isinstance(value, tuple):
        value = ",".join(value)
    return str(value) or "(empty)"


def load_settings(
    environ: Mapping[str, str], flags: Mapping[str, str | None] | None = None
) -> Settings:
    """Build :class:`Settings` from env vars and flag values (flags win).

    An empty or blank value counts as unset. Raises :class:`ConfigError` naming the env var or flag
    of the first bad value.
    """
    flags = flags or {}
    values: dict[str, Any] = {}
    for name, parse in PARSERS.items():
        raw = flags.get(name)
        source = flag_name(name)
        if not (raw or "").strip():
            raw = environ.get(env_name(name))
            source = env_name(name)
        if raw is None or not raw.strip():
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            shown = redacted(raw) if name == "broker" else "***" if name == "api_key" else raw
            raise ConfigError(f"{source}={shown!r}: {exc}") from None
    settings = Settings(**values)
    _check_together(settings)
    return settings


URL_START_RE = re.compile(r",(?=[^,]*://)")
"""A comma that starts another URL of a list (one before a ``scheme://``)."""
PASSWORD_QUERY_RE = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
"""A ``password=`` option of a URL's query, which redis-py takes as the password."""


def redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages and logs; in a
    comma-separated list of URLs, each one's. A list is cut only at the commas before a
    ``scheme://``, and what stands before the last ``@`` counts as ``user:password`` (all of
    it hidden without a ``:``), even where the URL is not well formed: a password holding a
    ``,`` or an ``@`` is hidden whole, and so is a ``password=`` option."""
    items = URL_START_RE.split(url)
    if len(items) > 1:
        return ",".join(redacted(item) for item in items)
    url = PASSWORD_QUERY_RE.sub(r"\1***", url)
    scheme, sep, rest = url.rpartition("://") if "://" in url else ("", "", url)
    userinfo, at, location = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user + colon if colon else ''}***@{location}"


def _check_together(settings: Settings) -> None:
    """Settings that are valid alone but not together; raises :class:`ConfigError`."""
    if settings.redis and settings.hub_mode == "global":
        raise ConfigError(
            f"ROOMHUB_HUB_MODE=global with ROOMHUB_BROKER={redacted(settings.broker)!r}: global "
            "mode is the single-process baseline; use hub mode sharded or broker memory"
        )
    if settings.api_key and settings.hub_mode == "global":
        raise ConfigError(
            "ROOMHUB_API_KEY with ROOMHUB_HUB_MODE=global: the server API works through the "
            "broker, which the global baseline does not use; use hub mode sharded"
        )
    if settings.workers > 1 and not settings.redis:
        raise ConfigError(
            f"ROOMHUB_WORKERS={settings.workers} with ROOMHUB_BROKER=memory: workers share "
            "rooms only through Redis; set ROOMHUB_BROKER to a redis:// URL"
        )
    unset = [
        f"{env_name(name)} ({flag_name(name)})"
        for name in ("port", "metrics_port")
        if getattr(settings, name) == 0
    ]
    if settings.workers > 1 and unset:
        raise ConfigError(
            f"ROOMHUB_WORKERS={settings.workers} needs a fixed {' and '.join(unset)}: the "
            "workers share the port, and each serves /metrics on its own port from "
            "ROOMHUB_METRICS_PORT up"
        )
    if settings.metrics_port and settings.metrics_port + settings.workers > 65536:
        raise ConfigError(
            f"ROOMHUB_METRICS_PORT={settings.metrics_port}: the workers' metrics ports "
            "would pass 65535"
        )
