"""The connections of one server and their counts, changed only here.

A connection takes a slot when its upgrade is accepted (:meth:`ConnectionRegistry.reserve`),
counts as open once the socket is handed over (:meth:`~ConnectionRegistry.open`) and gives the
slot back when it ends (:meth:`~ConnectionRegistry.close`), or at once when the upgrade failed
(:meth:`~ConnectionRegistry.release`). A shutdown first :meth:`~ConnectionRegistry.drain`\\ s
the registry, then waits for the last connection (:meth:`~ConnectionRegistry.drained`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Set

from ..ops import metrics
from ..wire.protocol import CloseReason
from .connection import Connection
from .limits import Address, AddressLimits


class ConnectionRegistry:
    """``connections``: the open connections. ``reserved``: slots taken, upgrades under way
    and open connections (the capacity check counts both). ``closed``: connections closed so
    far. ``draining``: shutdown has begun; no new upgrade is accepted."""

    __slots__ = ("_connections", "_drained", "closed", "draining", "reserved")

    def __init__(self) -> None:
        self._connections: set[Connection] = set()
        self._drained: asyncio.Event | None = None
        self.reserved = 0
        self.closed = 0
        self.draining = False

    @property
    def connections(self) -> Set[Connection]:
        """The open connections (a live view: copy it before closing any)."""
        return self._connections

    def reserve(self, address: Address | None) -> None:
        """Take a slot, here and in ``address``'s per-address count, for an upgrade about to
        be accepted."""
        self.reserved += 1
        AddressLimits.opened(address)

    def release(self, address: Address | None) -> None:
        """Give back the slots of an upgrade that never opened (the client went away)."""
        self.reserved -= 1
        AddressLimits.closed(address)

    def open(self, conn: Connection) -> None:
        """``conn`` is open (``chat_connections_opened_total``)."""
        self._connections.add(conn)
        metrics.CONNECTIONS_OPENED.inc()

    def close(self, conn: Connection, reason: CloseReason) -> None:
        """``conn`` ended for ``reason`` (``chat_connections_closed_total{reason}``): its slot
        is free again, here and in its address's count."""
        self._connections.discard(conn)
        self.reserved -= 1
        AddressLimits.closed(conn.address)
        self.closed += 1
        if self._drained is not None and not self._connections:
            self._drained.set()
        metrics.CONNECTIONS_CLOSED.labels(reason.label).inc()

    def drain(self) -> list[Connection]:
        """Begin the shutdown: refuse new upgrades from now on; the connections open now."""
        self.draining = True
        return list(self._connections)

    async def drained(self, budget: float) -> bool:
        """Wait up to ``budget`` seconds for the last connection to end; whether it did."""
        if not self._connections:
            return True
        self._drained = asyncio.Event()
        try:
            await asyncio.wait_for(self._drained.wait(), budget)
        except TimeoutError:
            return False
        return True
