"""Rooms over a Redis Cluster (``ROOMHUB_BROKER=redis+cluster://host:port[,host:port...]``):
:class:`ClusterBroker`, one :class:`~server.rooms.broker.redis.RedisBroker` per master in
sharded pub/sub mode, each room on the master that serves its slot.

A room's keys and channels all carry its ``{room}`` hash tag, so they live in one key slot
(CRC16 of the room name modulo 16384, Redis Cluster specification, "Keys distribution
model") and on the one master that serves that slot. :func:`discover` reads the slot map
(``CLUSTER SLOTS``) from the first seed node that answers; :class:`SlotMap` routes a room to
the index of its master.

Only masters known at start are routed to: a slot that moves to another known master is
followed when the map is read again (:meth:`SlotMap.update`); a master added later, or a
replica promoted at a new address, needs the instances to restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import RedisError
from yarl import URL

from ...ops.config import redacted
from .redis import RedisBroker
from .sharded import ShardedBroker

log = logging.getLogger("roomhub.broker")

SLOTS = 16384
"""Key slots of a Redis Cluster."""
DISCOVER_TIMEOUT = 5.0
"""Seconds one seed node may take to answer ``CLUSTER SLOTS``."""


@dataclass(frozen=True, slots=True)
class SlotRange:
    """Slots ``first`` .. ``last`` (inclusive), served by the master at ``address``
    (``host:port``)."""

    first: int
    last: int
    address: str


def room_slot(room: str) -> int:
    """The key slot of every key and channel of ``room`` (its ``{room}`` hash tag)."""
    return int(key_slot(f"{{{room}}}".encode()))


def tagged(stem: str, ranges: Iterable[SlotRange]) -> str:
    """The first name ``roomhub:{<stem>:N}`` (N = 0, 1, ...) whose slot lies in ``ranges``:
    a channel of one master's own (its control channel), the same on every instance that
    read the same map. Raises ValueError when ``ranges`` is empty."""
    spans = [(span.first, span.last) for span in ranges]
    if not spans:
        raise ValueError("a master without slots has no channel of its own")
    number = 0
    while True:
        tag = f"{stem}:{number}"
        slot = room_slot(tag)
        if any(first <= slot <= last for first, last in spans):
            return f"roomhub:{{{tag}}}"
        number += 1


async def read_slots(url: str) -> list[SlotRange]:
    """The masters' slot ranges as the node at ``url`` (``redis://host:port``) sees them.

    Raises :class:`redis.exceptions.RedisError` or OSError when it cannot be read.
    ``CLUSTER SLOTS`` replies ``[first, last, [host, port, id, ...], replica...]`` per range
    (Redis command reference); an empty host means the node that answered."""
    client = aioredis.Redis.from_url(
        url, socket_timeout=DISCOVER_TIMEOUT, socket_connect_timeout=DISCOVER_TIMEOUT
    )
    try:
        reply = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]  # redis-py: not annotated
    finally:
        await client.aclose()
    own_host = client.connection_pool.connection_kwargs.get("host", "127.0.0.1")
    ranges = []
    for first, last, master, *_ in reply:
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        ranges.append(SlotRange(int(first), int(last), f"{host or own_host}:{int(master[1])}"))
    return sorted(ranges, key=lambda span: span.first)


async def discover(seeds: list[str]) -> list[SlotRange]:
    """The slot map read from the first of ``seeds`` (``redis://`` or ``rediss://`` URLs)
    that answers; raises ConnectionError naming each seed (password hidden) and its failure
    when none does."""
    failures = []
    for seed in seeds:
        try:
            async with asyncio.timeout(DISCOVER_TIMEOUT):
                return await read_slots(seed)
        except (RedisError, OSError, TimeoutError) as exc:
            failures.append(f"{redacted(seed)}: {type(exc).__name__}: {exc}")
    raise ConnectionError("no redis cluster seed answered: " + "; ".join(failures))


class SlotMap:
    """Which of the known ``masters`` (``host:port``, in the order of the shards) serves each
    slot; a slot no known master serves routes to the master that served it before (its
    operations fail there until the map is read again)."""

    def __init__(self, masters: list[str], ranges: list[SlotRange]) -> None:
        self.masters = masters
        self._owner = [0] * SLOTS
        self.update(ranges)

    @classmethod
    def of(cls, ranges: list[SlotRange]) -> SlotMap:
        """The map of ``ranges`` with its masters in the order of their first slot."""
        masters = list(dict.fromkeys(span.address for span in ranges))
        return cls(masters, ranges)

    def update(self, ranges: list[SlotRange]) -> None:
        """Route each slot of ``ranges`` served by a known master to that master."""
        index = {address: number for number, address in enumerate(self.masters)}
        for span in ranges:
            number = index.get(span.address)
            if number is None:
                log.warning("cluster_master_unknown", extra={"fields": {"master": span.address}})
                continue
            self._owner[span.first : span.last + 1] = [number] * (span.last - span.first + 1)

    def shard_of(self, room: str) -> int:
        """The index of the master that serves ``room``'s slot."""
        return self._owner[room_slot(room)]


def node_url(seed: str, address: str) -> str:
    """The URL of the node at ``address`` (``host:port``): ``seed``'s scheme, credentials
    and options with that host and port."""
    host, _, port = address.rpartition(":")
    return str(URL(seed).with_host(host).with_port(int(port)))


class Cluster:
    """A Redis Cluster as roomhub uses it: its slot map (:attr:`slots`), one URL per master
    (:meth:`master_urls`, in the map's order), each master's channel for control orders
    (:attr:`control_channels`: a slot it serves), and a re-read of the map (:meth:`refresh`)
    when a master reconnects or answers MOVED."""

    def __init__(self, seeds: list[str], ranges: list[SlotRange]) -> None:
        self.seeds = seeds
        self.slots = SlotMap.of(ranges)
        self.control_channels = [
            tagged("control", [span for span in ranges if span.address == master])
            for master in self.slots.masters
        ]
        self._refreshing: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, seeds: list[str]) -> Cluster:
        """Read the slot map from the first seed that answers (:func:`discover`)."""
        return cls(seeds, await discover(seeds))

    def master_urls(self) -> list[str]:
        """One URL per master, in the order of :attr:`slots` (their shard indexes)."""
        return [node_url(self.seeds[0], address) for address in self.slots.masters]

    def refresh(self) -> None:
        """Re-read the slot map in the background (once at a time) from the masters, then
        the seeds; a slot that moved between known masters is followed from then on."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh(), name="cluster-slots")

    async def _refresh(self) -> None:
        try:
            ranges = await discover([*self.master_urls(), *self.seeds])
        except ConnectionError as exc:
            log.warning("cluster_slots_unread", extra={"fields": {"error": str(exc)}})
            return
        self.slots.update(ranges)
        log.info("cluster_slots_read", extra={"fields": {"ranges": len(ranges)}})

    async def close(self) -> None:
        """Stop a re-read in progress."""
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)


class ClusterBroker(ShardedBroker):
    """Rooms over a Redis Cluster: a :class:`~.sharded.ShardedBroker` with one
    :class:`~.redis.RedisBroker` per master (sharded pub/sub), each room on the master that
    serves its slot (:attr:`Cluster.slots`)."""

    def __init__(self, cluster: Cluster, shards: list[RedisBroker]) -> None:
        super().__init__(shards, cluster.slots.shard_of)
        self.cluster = cluster

    @classmethod
    async def connect(
        cls,
        seeds: list[str],
        history_size: int,
        presence_ttl: float,
        retention: float,
        batch_window: float = 0.0,
    ) -> ClusterBroker:
        """Read the slot map from the first of ``seeds`` that answers and make one broker
        per master (the other arguments as :class:`~.redis.RedisBroker`'s); raises
        ConnectionError when no seed answers."""
        cluster = await Cluster.connect(seeds)
        shards = [
            RedisBroker(
                url,
                history_size,
                presence_ttl,
                retention,
                batch_window,
                sharded_pubsub=True,
                control_channel=cluster.control_channels[index],
                refresh_slots=cluster.refresh,
            )
            for index, url in enumerate(cluster.master_urls())
        ]
        return cls(cluster, shards)

    async def close(self) -> None:
        await self.cluster.close()
        await super().close()
