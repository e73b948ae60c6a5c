"""Settings: one frozen object, read from ``ROOMHUB_*`` env vars and command-line flags.

Every setting has an env var (``ROOMHUB_<NAME>``) and a flag (``--<name>``); a flag wins over
the env var, which wins over the default. A bad value raises :class:`ConfigError` naming the
setting; ``python -m server`` turns that into exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HUB_MODES = ("sharded", "global")
QUOTE_PROVIDERS = ("stooq", "url", "sim")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A setting has a bad value; the message names the env var and the flag."""


@dataclass(frozen=True, slots=True)
class Settings:
    """All server settings. Times are in seconds, sizes in bytes unless named otherwise."""

    host: str = "0.0.0.0"
    port: int = 8080
    hub_mode: str = "sharded"
    history_size: int = 50
    outbox_limit: int = 1000
    """Events that may wait in one client's outbox; more makes it a slow consumer (1013)."""
    fanout_interval: float = 0.01
    """Shortest time between two fan-outs of one room; events arriving sooner leave together
    in the next one. A room that was quiet for this long fans out at once (0 disables)."""
    rate_limit: float = 5.0
    """Messages per second per connection (token bucket refill rate)."""
    rate_burst: int = 10
    max_connections: int = 10000
    allowed_origins: tuple[str, ...] = ()
    """Origins allowed to open a WebSocket; empty means the request's own host; ``*`` any."""
    heartbeat: float = 25.0
    room_grace: float = 30.0
    """How long an empty room keeps its hub (and history) before it is reaped."""
    max_msg_size: int = 16 * 1024
    shutdown_timeout: float = 5.0
    quote_provider: str = "stooq"
    quote_url: str = "https://stooq.com"
    bot_workers: int = 4
    bot_queue_size: int = 100
    bot_timeout: float = 3.0
    bot_cache_ttl: float = 5.0
    log_level: str = "info"


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a finite number >= 0")
    return value


def _positive_float(raw: str) -> float:
    value = _non_negative_float(raw)
    if value == 0:
        raise ValueError("must be > 0")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be 0..65535")
    return value


def _choice(options: Sequence[str]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


PARSERS: dict[str, Callable[[str], Any]] = {
    "host": _text,
    "port": _port,
    "hub_mode": _choice(HUB_MODES),
    "history_size": _positive_int,
    "outbox_limit": _positive_int,
    "fanout_interval": _non_negative_float,
    "rate_limit": _positive_float,
    "rate_burst": _positive_int,
    "max_connections": _positive_int,
    "allowed_origins": _origins,
    "heartbeat": _non_negative_float,
    "room_grace": _non_negative_float,
    "max_msg_size": _positive_int,
    "shutdown_timeout": _non_negative_float,
    "quote_provider": _choice(QUOTE_PROVIDERS),
    "quote_url": _url,
    "bot_workers": _positive_int,
    "bot_queue_size": _positive_int,
    "bot_timeout": _positive_float,
    "bot_cache_ttl": _non_negative_float,
    "log_level": _choice(LOG_LEVELS),
}


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
            help=f"env {env_name(field.name)} (default: {_show(field.default)})",
        )


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "same host"
    return str(value)


def load_settings(
    environ: Mapping[str, str], flags: Mapping[str, str | None] | None = None
) -> Settings:
    """Build :class:`Settings` from env vars and flag values (flags win).

    Raises :class:`ConfigError` naming the env var or flag of the first bad value.
    """
    flags = flags or {}
    values: dict[str, Any] = {}
    for name, parse in PARSERS.items():
        raw = flags.get(name)
        source = flag_name(name)
        if raw is None:
            raw = environ.get(env_name(name))
            source = env_name(name)
        if raw is None:
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}={raw!r}: {exc}") from None
    return Settings(**values)
