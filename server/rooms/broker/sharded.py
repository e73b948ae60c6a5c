"""Rooms sharded over several Redis (``ROOMHUB_BROKER=redis://a/0,redis://b/0``).

:class:`ShardedBroker` puts each room on one shard, a :class:`~.redis.RedisBroker` of its
own: every operation on a room goes to ``shards[shard_of(room)]``, so a room's seq, history,
presence and channel all live on that one Redis. Each shard keeps its own command and pub/sub
connections and reconnects on its own; a shard that is down fails only its own rooms.

Across shards: the room listing merges every up shard's (a down shard's rooms are left out,
with a warning); a :class:`~server.rooms.broker.Control` order goes out on the first shard
that is up, and every instance listens for orders on every shard, so each instance gets it
once.

Placement (:func:`room_shard`): Jump Consistent Hash (Lamping and Veach, "A Fast, Minimal
Memory, Consistent Hash Algorithm", 2014, arXiv:1406.2294) of the 64-bit FNV-1a hash of the
room name's UTF-8 bytes, over the shards in their listed order, as Centrifugo places channels
on Redis shards (centrifuge ``broker_redis.go``, ``consistentIndex``). Adding a shard at the
end of the list moves about 1/N of the rooms (N shards after the change), all of them to the
new shard; removing or reordering shards moves many more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from ...ops import metrics
from ...ops.config import redacted
from ...wire.protocol import ChatMessage
from . import BrokerUnavailable, Control, ControlSink, Sink
from .redis import RedisBroker

log = logging.getLogger("roomhub.broker")

FNV64_OFFSET = 0xCBF29CE484222325
FNV64_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1
JUMP_MULTIPLIER = 2862933555777941757
"""The 64-bit linear congruential step of the jump hash (arXiv:1406.2294, figure 1)."""


def fnv1a_64(data: bytes) -> int:
    """The 64-bit FNV-1a hash of ``data`` (Fowler, Noll and Vo; offset basis and prime from
    the FNV reference, IETF draft-eastlake-fnv): an int in 0 .. 2**64 - 1."""
    value = FNV64_OFFSET
    for byte in data:
        value = ((value ^ byte) * FNV64_PRIME) & MASK64
    return value


def jump_hash(key: int, buckets: int) -> int:
    """The bucket, in 0 .. ``buckets`` - 1, of the 64-bit ``key`` (Jump Consistent Hash,
    arXiv:1406.2294): going from n to n + 1 buckets moves a key only to the new bucket, and
    about 1/(n + 1) of the keys move. Raises ``ValueError`` when ``buckets`` < 1."""
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    key &= MASK64
    bucket, jump = -1, 0
    while jump < buckets:
        bucket = jump
        key = (key * JUMP_MULTIPLIER + 1) & MASK64
        jump = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def room_shard(shards: int) -> Callable[[str], int]:
    """``shard_of`` for ``shards`` Redis: ``room -> jump_hash(fnv1a_64(UTF-8 of room))``."""
    return lambda room: jump_hash(fnv1a_64(room.encode()), shards)


def redis_shards(broker: object) -> tuple[RedisBroker, ...]:
    """The Redis shards of ``broker`` in order: a :class:`ShardedBroker`'s, a lone
    :class:`~.redis.RedisBroker` as shard 0, none for any other broker."""
    if isinstance(broker, ShardedBroker):
        return broker.shards
    return (broker,) if isinstance(broker, RedisBroker) else ()


def shards_down(broker: object) -> list[dict[str, object]]:
    """Each Redis shard of ``broker`` that is not up, as ``{"shard": its index, "url": its URL
    with the password hidden}``."""
    shards = redis_shards(broker)
    return [{"shard": i, "url": redacted(s.url)} for i, s in enumerate(shards) if not s.ready]


class Placement(dict[str, RedisBroker]):
    """``room -> shard``: the rooms subscribed here are kept, so that a hub's operations cost
    one dict lookup (the entries are bounded by the rooms with a hub on this instance); any
    other room is hashed on each lookup (``__missing__``), and not kept."""

    def __init__(self, shards: tuple[RedisBroker, ...], shard_of: Callable[[str], int]) -> None:
        super().__init__()
        self.shards = shards
        self.shard_of = shard_of

    def __missing__(self, room: str) -> RedisBroker:
        return self.shards[self.shard_of(room)]


class ShardedBroker:
    """The :class:`~server.rooms.broker.Broker` of rooms over several Redis ``shards``, each
    room on ``shards[shard_of(room)]`` (see the module docstring).

    :attr:`ready` while any shard is up: the rooms of the others fail on their own
    (:func:`redis_shards` gives each shard's readiness).
    """

    def __init__(self, shards: Sequence[RedisBroker], shard_of: Callable[[str], int]) -> None:
        if not shards:
            raise ValueError("a sharded broker needs at least one shard")
        self.shards = tuple(shards)
        self.shard_of = shard_of
        self._placed = Placement(self.shards, shard_of)

    @property
    def ready(self) -> bool:
        return any(shard.ready for shard in self.shards)

    async def start(self) -> None:
        for shard in self.shards:
            await shard.start()

    async def close(self) -> None:
        await asyncio.gather(*(shard.close() for shard in self.shards))

    # -- a room's operations: its shard's ----------------------------------------------------

    async def subscribe(self, room: str, sink: Sink) -> None:
        shard = self._placed[room]  # hashed, then kept while the room is subscribed
        self._placed[room] = shard
        try:
            await shard.subscribe(room, sink)
        except BrokerUnavailable:
            self._placed.pop(room, None)
            raise

    def unsubscribe(self, room: str, sink: Sink) -> None:
        self._placed[room].unsubscribe(room, sink)
        self._placed.pop(room, None)

    def join(self, room: str, user: str, since: int | None, epoch: str | None, token: int) -> None:
        self._placed[room].join(room, user, since, epoch, token)

    def leave(self, room: str, token: int) -> None:
        self._placed[room].leave(room, token)

    def say(self, room: str, user: str, msg: ChatMessage, sender: int) -> None:
        self._placed[room].say(room, user, msg, sender)

    def publish(self, room: str, event: bytes) -> None:
        self._placed[room].publish(room, event)

    async def publish_message(self, room: str, user: str, text: str, data: object | None) -> int:
        return await self._up(room).publish_message(room, user, text, data)

    async def delete(self, room: str, seq: int) -> bool:
        return await self._up(room).delete(room, seq)

    async def history(self, room: str, since: int, limit: int) -> list[bytes]:
        return await self._up(room).history(room, since, limit)

    async def presence(self, room: str) -> list[str]:
        return await self._up(room).presence(room)

    async def ban(self, room: str, user: str, seconds: float | None) -> None:
        await self._up(room).ban(room, user, seconds)

    async def unban(self, room: str, user: str) -> bool:
        return await self._up(room).unban(room, user)

    async def banned(self, room: str, user: str) -> bool:
        return await self._up(room).banned(room, user)

    def _up(self, room: str) -> RedisBroker:
        """``room``'s shard; :class:`BrokerUnavailable` at once when it is down, rather than
        after a connection attempt to it."""
        shard = self._placed[room]
        if not shard.ready:
            metrics.BROKER_ERRORS.labels("query").inc()
            raise BrokerUnavailable(f"redis shard {self.shards.index(shard)} is unavailable")
        return shard

    # -- over every shard --------------------------------------------------------------------

    async def rooms(self, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` ``(room, members)``, busiest first, then by name, merged over every
        up shard; a shard that is down or fails is left out with a warning. Raises
        :class:`BrokerUnavailable` when no shard answers."""
        up = [index for index, shard in enumerate(self.shards) if shard.ready]
        answers = await asyncio.gather(
            *(self.shards[index].rooms(limit) for index in up), return_exceptions=True
        )
        merged: list[tuple[str, int]] = []
        missing = [index for index in range(len(self.shards)) if index not in up]
        for index, answer in zip(up, answers, strict=True):
            if isinstance(answer, BrokerUnavailable):
                missing.append(index)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                merged += answer
        if len(missing) == len(self.shards):
            raise BrokerUnavailable("no redis shard is available")
        if missing:
            log.warning(
                "rooms_partial",
                extra={"fields": {"shards_left_out": self._named(sorted(missing))}},
            )
        merged.sort(key=lambda room: (-room[1], room[0]))
        return merged[:limit]

    def on_control(self, sink: ControlSink) -> None:
        for shard in self.shards:
            shard.on_control(sink)

    async def control(self, order: Control) -> None:
        """Publish ``order`` on the first shard that is up (every instance listens on every
        shard); :class:`BrokerUnavailable` when none is."""
        for shard in self.shards:
            if shard.ready:
                await shard.control(order)
                return
        raise BrokerUnavailable("no redis shard is available (control)")

    def _named(self, indexes: list[int]) -> list[str]:
        return [f"{index} {redacted(self.shards[index].url)}" for index in indexes]
