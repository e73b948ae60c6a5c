"""Per-address limits at the door: WebSocket connections open, upgrades per second and new
rooms per minute, for each client address (docs/limits.md).

The address is the peer's, or behind ``ROOMHUB_TRUSTED_PROXIES`` the forwarded client's
(``request.remote`` either way, see ``server.app.forwarded_middleware``). An IPv6 client is
counted by its /64 network: one host usually holds a whole /64 and could otherwise take a
new address for every connection (RFC 6177 section 2 on /64 per end site, at the least).

Each limit is a setting; 0 turns it off, and with all three off nothing is tracked. The
state per address is a small :class:`Address`; an entry with no open connection whose
buckets are full again says nothing the next request would not, and :meth:`AddressLimits.sweep`
drops it. A sweep runs when a new address appears, at most every ``SWEEP_INTERVAL`` seconds,
so the table holds the addresses with connections open plus those seen within the last
refill period (a minute at most) and sweep interval: many addresses do not grow it for good.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..ops.config import Settings
from ..wire.protocol import ProtocolError
from .bucket import TokenBucket

IPV6_PREFIX = 64
"""IPv6 clients are limited per network of this prefix length."""

SWEEP_INTERVAL = 10.0
"""Seconds between two sweeps of idle addresses (one runs when a new address appears)."""

CONNECTIONS_RETRY_AFTER = 10
"""Seconds a client refused for its open connections is told to wait (``Retry-After``)."""


class Throttled(ProtocolError):
    """A per-address limit refused the request; ``retry_after``: whole seconds to wait."""

    def __init__(self, code: str, detail: str, retry_after: int) -> None:
        super().__init__(code, detail)
        self.retry_after = retry_after


@dataclass(slots=True)
class Address:
    """What one client address holds: its open connections and its two buckets."""

    key: str
    connections: int
    upgrades: TokenBucket | None
    rooms: TokenBucket | None

    def idle(self, now: float) -> bool:
        """No connection open and both buckets full: forgetting it changes nothing."""
        return (
            self.connections == 0
            and (self.upgrades is None or self.upgrades.full(now))
            and (self.rooms is None or self.rooms.full(now))
        )


def address_key(remote: str | None) -> str:
    """The key a client address is limited under: an IPv4 address as is (an IPv4-mapped IPv6
    address as its IPv4 address), an IPv6 address as its /64 network, anything else (a Unix
    socket's empty peer, a name) as given."""
    try:
        ip = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote or ""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


class AddressLimits:
    """The per-address limits of one server process (see the module docstring).

    ``clock``: seconds, monotonic.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_connections = settings.max_connections_per_address
        self.upgrade_rate = settings.upgrade_rate
        self.upgrade_burst = settings.upgrade_burst
        self.rooms_per_minute = settings.new_rooms_per_minute
        self.enabled = bool(self.max_connections or self.upgrade_rate or self.rooms_per_minute)
        self._now = clock
        self._addresses: dict[str, Address] = {}
        self._swept = clock()

    def __len__(self) -> int:
        """Addresses tracked now."""
        return len(self._addresses)

    def address(self, remote: str | None) -> Address | None:
        """The entry for client address ``remote`` (made on first sight), or None when every
        per-address limit is off."""
        if not self.enabled:
            return None
        key = address_key(remote)
        entry = self._addresses.get(key)
        if entry is None:
            now = self._now()
            if now - self._swept >= SWEEP_INTERVAL:
                self.sweep()
            upgrades = rooms = None
            if self.upgrade_rate:
                burst = self.upgrade_burst
                upgrades = TokenBucket(self.upgrade_rate, burst, now)
            if self.rooms_per_minute:
                per_minute = self.rooms_per_minute
                rooms = TokenBucket(per_minute / 60, per_minute, now)
            entry = self._addresses[key] = Address(key, 0, upgrades, rooms)
        return entry

    def take_upgrade(self, entry: Address | None) -> None:
        """Count one upgrade request; raises :class:`Throttled` when the address is over
        ``ROOMHUB_UPGRADE_RATE``."""
        if entry is not None:
            _take(entry.upgrades, self._now(), "too_many_upgrades", "upgrade requests")

    def check_connections(self, entry: Address | None) -> None:
        """Raises :class:`Throttled` when the address holds ``ROOMHUB_MAX_CONNECTIONS_PER_ADDRESS``
        connections (upgrades under way included)."""
        if entry is not None and self.max_connections and entry.connections >= self.max_connections:
            raise Throttled(
                "too_many_connections",
                "too many open connections from your address",
                CONNECTIONS_RETRY_AFTER,
            )

    @staticmethod
    def opened(entry: Address | None) -> None:
        """A connection from ``entry``'s address takes a slot (before its upgrade)."""
        if entry is not None:
            entry.connections += 1

    @staticmethod
    def closed(entry: Address | None) -> None:
        """A connection from ``entry``'s address ended (or its upgrade failed)."""
        if entry is not None:
            entry.connections -= 1

    def take_room(self, entry: Address | None) -> None:
        """Count one new room; raises :class:`Throttled` when the address is over
        ``ROOMHUB_NEW_ROOMS_PER_MINUTE``."""
        if entry is not None:
            _take(entry.rooms, self._now(), "too_many_rooms", "new rooms")

    def sweep(self) -> int:
        """Forget every idle address (see :meth:`Address.idle`); returns how many."""
        now = self._swept = self._now()
        idle = [key for key, entry in self._addresses.items() if entry.idle(now)]
        for key in idle:
            del self._addresses[key]
        return len(idle)


def _take(bucket: TokenBucket | None, now: float, code: str, what: str) -> None:
    """Take a token from ``bucket`` (None: that limit is off); raises :class:`Throttled`
    naming ``what`` and the seconds until the next token when there is none."""
    if bucket is not None and not bucket.take(now):
        raise Throttled(code, f"too many {what} from your address", bucket.wait())
