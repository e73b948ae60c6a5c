"""The Redis broker (``ROOMHUB_BROKER=redis://...`` or ``rediss://...``): rooms shared by
every instance on one Redis.

Keys of room ``R`` (the ``{R}`` hash tag keeps a room's keys together):

* ``roomhub:{R}:epoch`` (made by the first join, so a Redis that lost its data gives the room
  a new epoch), ``roomhub:{R}:seq`` (the last seq), ``roomhub:{R}:history`` (list of encoded
  ``message`` events, at most ``history_size``);
* ``roomhub:{R}:users:<instance>`` (hash: name key -> JSON-encoded name of each member on
  that instance) and ``roomhub:{R}:tokens:<instance>`` (hash: join token -> name key), both
  expiring after ``presence_ttl`` seconds unless the live instance refreshes them;
  ``roomhub:{R}:instances`` lists the instances that may hold entries; ``roomhub:rooms``
  ranks rooms by members;
* the epoch, seq, history and instances keys expire ``retention`` seconds after the room was
  last used: every script that touches the room (a message, join, leave, catch-up, and the
  presence refresh while an instance has members there) sets them to expire again, so an
  abandoned room's keys vanish and its next join makes a new epoch;
* channel ``roomhub:{R}`` carries R's events; ``roomhub:instance:<instance>`` carries the
  welcomes meant for one instance; ``roomhub:control`` carries the server API's
  :class:`~server.rooms.broker.Control` orders (JSON ``{"action", "user", "room"}``) to every
  instance;
* ``roomhub:{R}:ban:<name key>`` marks a banned member, expiring with the ban.

Every operation runs as one server-side Lua script (atomic, as Centrifugo does): a message
increments the seq, appends the encoded event to the capped history and publishes it; a join
gives the joiner the first of its candidate names (the one it asked for, then ``-2``,
``-3``, ...) that no instance holds, publishes its :class:`~server.rooms.broker.Welcome` on the
instance channel and then the ``join`` event on the room channel. Operations leave in one
ordered pipeline over the command connection (redis-py's pool); every subscription shares
one pub/sub connection, read by one task, so a welcome reaches the hub exactly between the
events it covers and the ones after it.

A published payload is ``<kind> <seq> <published> <event>``: kind ``m`` message, ``b`` bot,
``p`` presence; ``published`` is the publisher's ``time.time()``. A welcome payload is
``w <token> <seq> <members> <reset 0|1> <epoch> <room>``, then lines holding the JSON-encoded
name given, the JSON list of names online, and one history event each.

When Redis goes away the broker is not :attr:`ready`, refuses operations at once (messages
come back as :class:`~server.rooms.broker.Refused`), reconnects with capped exponential backoff,
subscribes again to every room that has a hub, rewrites its presence, and hands each room a
catch-up :class:`~server.rooms.broker.Welcome` (token 0) holding the history, so messages published
while it was cut off are not lost. redis-py's own pub/sub reconnection is not relied on (a
subscriber stays dead after a restart: redis-py #2089); the instance channel keeps at least one
subscription open so no health-check reply is read as a message (redis-py #1720).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from ...ops import metrics
from ...wire.protocol import (
    ChatMessage,
    deleted_event,
    message_event,
    now_ms,
    presence_event,
    server_message_event,
)
from .. import names as member_names
from ..names import SUFFIX_LIMIT, name_key, new_epoch, reserved, suffixed
from . import (
    MESSAGE_PREFIX,
    BrokerUnavailable,
    Control,
    ControlSink,
    Event,
    Refused,
    Sink,
    Welcome,
    encoded_history_seq,
)

log = logging.getLogger("roomhub.broker")
T = TypeVar("T")

MIN_BACKOFF = 0.1
MAX_BACKOFF = 5.0
"""Seconds between reconnection attempts: doubling from ``MIN_BACKOFF`` up to this cap."""
SUBSCRIBE_TIMEOUT = 5.0
"""Seconds a subscription may take to be confirmed."""
COMMAND_TIMEOUT = 5.0
"""Seconds one command (or pipeline) may take before Redis counts as unavailable."""
CLOSE_DRAIN = 2.0
"""Seconds :meth:`RedisBroker.close` waits for queued operations (the last leaves)."""
ROOMS_KEY = "roomhub:rooms"
CONTROL_CHANNEL = "roomhub:control"

# Shared by the scripts: ARGV[1] is always the room's key prefix.
_COMMON = """
local function total(prefix, instances)
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', instances)) do
    local here = redis.call('HLEN', prefix .. 'users:' .. id)
    if here == 0 then redis.call('SREM', instances, id) end
    n = n + here
  end
  return n
end
local function rank(rooms, room, n)
  if n > 0 then redis.call('ZADD', rooms, n, room) else redis.call('ZREM', rooms, room) end
end
-- Sets the room's keys to expire ``ttl`` seconds from now.
local function keep(prefix, ttl)
  for _, name in ipairs({'epoch', 'seq', 'history', 'instances'}) do
    redis.call('EXPIRE', prefix .. name, ttl)
  end
end
-- Publishes the welcome of join ``token`` (0: a catch-up) to ``channel``; ``seen`` is the
-- epoch the joiner saw ('' if none), ``name`` the JSON name it got.
local function welcome(keys, token, room, members, since, seen, fresh, name, channel, limit)
  local epoch = redis.call('GET', keys.epoch)
  if not epoch then
    epoch = fresh
    redis.call('SET', keys.epoch, epoch)
  end
  local reset = 0
  if seen ~= '' and seen ~= epoch then
    reset, since = 1, -1
  end
  local online = {}
  for _, id in ipairs(redis.call('SMEMBERS', keys.instances)) do
    for _, who in ipairs(redis.call('HVALS', keys.prefix .. 'users:' .. id)) do
      if #online < limit then online[#online + 1] = who end
    end
  end
  local seq = tonumber(redis.call('GET', keys.seq) or '0')
  local out = {table.concat({'w', token, seq, members, reset, epoch, room}, ' '), name,
               '[' .. table.concat(online, ',') .. ']'}
  for _, ev in ipairs(redis.call('LRANGE', keys.history, 0, -1)) do
    if tonumber(string.match(ev, '^{"type":"message","seq":(%d+)')) > since then
      table.insert(out, ev)
    end
  end
  redis.call('PUBLISH', channel, table.concat(out, '\\n'))
end
"""

# KEYS: seq, history, epoch. ARGV: event tail (after the seq), history size, channel,
# published, retention.
SAY = """
local seq = redis.call('INCR', KEYS[1])
local ev = '{"type":"message","seq":' .. seq .. ARGV[1]
redis.call('RPUSH', KEYS[2], ev)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
redis.call('PUBLISH', ARGV[3], 'm ' .. seq .. ' ' .. ARGV[4] .. ' ' .. ev)
return seq
"""

# KEYS: history. ARGV: the message's prefix up to its seq and comma, channel, published,
# the deleted event. Removes the message from the history and publishes the event.
DELETE = """
for _, ev in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if string.sub(ev, 1, #ARGV[1]) == ARGV[1] then
    redis.call('LREM', KEYS[1], 1, ev)
    redis.call('PUBLISH', ARGV[2], 'b 0 ' .. ARGV[3] .. ' ' .. ARGV[4])
    return 1
  end
end
return 0
"""

# KEYS: instances. ARGV: prefix. The JSON names of the room's members on every instance.
PRESENCE = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  for _, who in ipairs(redis.call('HVALS', ARGV[1] .. 'users:' .. id)) do
    out[#out + 1] = who
  end
end
return out
"""

# KEYS: seq, history, instances, users, tokens, rooms, epoch.
# ARGV: prefix, room, instance, token, ttl, event tail (after members), published, channel,
#       since, epoch the joiner saw, a fresh epoch, instance channel, online limit,
#       retention, then candidate name key, JSON name pairs in order of preference.
JOIN = (
    _COMMON
    + """
local ids = redis.call('SMEMBERS', KEYS[3])
local chosen = #ARGV - 1
for i = 15, #ARGV, 2 do
  local taken = redis.call('HEXISTS', KEYS[4], ARGV[i]) == 1
  for _, id in ipairs(ids) do
    if not taken and redis.call('HEXISTS', ARGV[1] .. 'users:' .. id, ARGV[i]) == 1 then
      taken = true
    end
  end
  if not taken then
    chosen = i
    break
  end
end
local name = ARGV[chosen + 1]
redis.call('HSET', KEYS[4], ARGV[chosen], name)
redis.call('HSET', KEYS[5], ARGV[4], ARGV[chosen])
redis.call('EXPIRE', KEYS[4], ARGV[5])
redis.call('EXPIRE', KEYS[5], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[3])
local n = total(ARGV[1], KEYS[3])
rank(KEYS[6], ARGV[2], n)
local keys = {prefix = ARGV[1], seq = KEYS[1], history = KEYS[2], epoch = KEYS[7],
              instances = KEYS[3]}
welcome(keys, ARGV[4], ARGV[2], n, tonumber(ARGV[9]), ARGV[10], ARGV[11], name, ARGV[12],
        tonumber(ARGV[13]))
keep(ARGV[1], ARGV[14])
redis.call('PUBLISH', ARGV[8],
  'p 0 ' .. ARGV[7] .. ' {"type":"join","user":' .. name .. ',"members":' .. n .. ARGV[6])
return n
"""
)

# KEYS: instances, users, tokens, rooms. ARGV: prefix, room, token, ttl, event tail (after
# members), published, channel, retention.
LEAVE = (
    _COMMON
    + """
local key = redis.call('HGET', KEYS[3], ARGV[3])
if not key then return -1 end
local name = redis.call('HGET', KEYS[2], key)
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[2], key)
local n = total(ARGV[1], KEYS[1])
rank(KEYS[4], ARGV[2], n)
keep(ARGV[1], ARGV[8])
if name then
  redis.call('PUBLISH', ARGV[7],
    'p 0 ' .. ARGV[6] .. ' {"type":"leave","user":' .. name .. ',"members":' .. n .. ARGV[5])
end
return n
"""
)

# KEYS: seq, history, instances, rooms, epoch. ARGV: prefix, room, instance channel, a fresh
# epoch, online limit, retention. Publishes a catch-up welcome (token 0) with the whole history.
SYNC = (
    _COMMON
    + """
local n = total(ARGV[1], KEYS[3])
rank(KEYS[4], ARGV[2], n)
local keys = {prefix = ARGV[1], seq = KEYS[1], history = KEYS[2], epoch = KEYS[5],
              instances = KEYS[3]}
welcome(keys, '0', ARGV[2], n, -1, '', ARGV[4], '""', ARGV[3], tonumber(ARGV[5]))
keep(ARGV[1], ARGV[6])
return n
"""
)

# KEYS: instances, users, tokens, rooms. ARGV: prefix, room, instance, ttl, whole (1: replace
# what is there, 0: add), retention, then token, name key, JSON name triples of this
# instance's members.
REFRESH = (
    _COMMON
    + """
if ARGV[5] == '1' then redis.call('DEL', KEYS[2], KEYS[3]) end
for i = 7, #ARGV, 3 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
end
if #ARGV > 6 then
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  redis.call('EXPIRE', KEYS[3], ARGV[4])
  redis.call('SADD', KEYS[1], ARGV[3])
  keep(ARGV[1], ARGV[6])
end
rank(KEYS[4], ARGV[2], total(ARGV[1], KEYS[1]))
"""
)

# KEYS: rooms. ARGV: limit. Recounts the busiest rooms (dead instances drop out).
ROOMS = (
    _COMMON
    + """
local out = {}
for _, room in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)) do
  local prefix = 'roomhub:{' .. room .. '}:'
  local n = total(prefix, prefix .. 'instances')
  rank(KEYS[1], room, n)
  if n > 0 then
    table.insert(out, room)
    table.insert(out, n)
  end
end
return out
"""
)


def _online_limit() -> int:
    return member_names.ONLINE_LIMIT


def prefix(room: str) -> str:
    return f"roomhub:{{{room}}}:"


def channel(room: str) -> str:
    return f"roomhub:{{{room}}}"


CHANNEL_HEAD = len("roomhub:{")
CONTROL_BYTES = CONTROL_CHANNEL.encode()


@dataclass(slots=True)
class _Op:
    """One queued operation: a script call, or a plain command when ``script`` is None."""

    kind: str  # metrics.BROKER_OPERATIONS
    script: AsyncScript | None
    keys: list[str]
    args: list[object]
    failed: Callable[[], None] | None = None
    command: tuple[object, ...] = field(default=())


class RedisBroker:
    """Rooms over one Redis (see the module docstring and :class:`~server.rooms.broker.Broker`).

    ``url``: ``redis://`` or ``rediss://`` (redis-py's URL syntax); ``history_size``: messages
    kept per room; ``presence_ttl``: seconds an instance's presence outlives its last refresh
    (refreshed every third of it); ``retention``: seconds a room's keys outlive its last use,
    at least ``presence_ttl`` so the refresh keeps a room in use alive.
    """

    def __init__(self, url: str, history_size: int, presence_ttl: float, retention: float) -> None:
        self.url = url
        self.history_size = history_size
        self.presence_ttl = max(1, round(presence_ttl))
        self.retention = max(self.presence_ttl, math.ceil(retention))
        self.instance = secrets.token_hex(6)
        self._instance_channel = f"roomhub:instance:{self.instance}"
        self._client = aioredis.Redis.from_url(
            url,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
        )
        self._scripts = {
            name: self._client.register_script(source)
            for name, source in (
                ("say", SAY),
                ("join", JOIN),
                ("leave", LEAVE),
                ("sync", SYNC),
                ("refresh", REFRESH),
                ("rooms", ROOMS),
                ("delete", DELETE),
                ("presence", PRESENCE),
            )
        }
        self._control: ControlSink | None = None
        self._sinks: dict[str, Sink] = {}
        # room -> join token -> (name key, JSON name) of the members here; joins in flight.
        self._local: dict[str, dict[int, tuple[str, bytes]]] = {}
        self._joining: dict[int, str] = {}
        self._confirms: dict[bytes, list[asyncio.Future[None]]] = {}
        self._queue: deque[_Op] = deque()
        self._queued = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing is queued or being sent
        self._idle.set()
        self._pubsub: aioredis.client.PubSub | None = None
        self._up = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def ready(self) -> bool:
        return self._up

    def subscriptions(self) -> int:
        return len(self._sinks) if self._up else 0

    # -- lifetime ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting in the background; the server runs (not ready) while Redis is away."""
        self._tasks = [
            asyncio.create_task(self._subscriber(), name="broker-subscriber"),
            asyncio.create_task(self._publisher(), name="broker-publisher"),
            asyncio.create_task(self._refresher(), name="broker-refresher"),
        ]

    async def close(self) -> None:
        """Send what is queued (up to ``CLOSE_DRAIN`` s), then stop and disconnect."""
        if self._up:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_DRAIN):
                    await self._idle.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()

    # -- subscriptions ----------------------------------------------------------------------

    async def subscribe(self, room: str, sink: Sink) -> None:
        self._sinks[room] = sink
        try:
            await self._subscribe([channel(room)])
        except BrokerUnavailable:
            if self._sinks.get(room) == sink:
                del self._sinks[room]
            metrics.BROKER_ERRORS.labels("subscribe").inc()
            raise

    def unsubscribe(self, room: str, sink: Sink) -> None:
        if self._sinks.get(room) != sink:
            return
        del self._sinks[room]
        pubsub = self._pubsub
        if pubsub is not None and self._up:
            task = asyncio.create_task(self._unsubscribe(pubsub, room))
            task.add_done_callback(_quiet)

    async def _unsubscribe(self, pubsub: aioredis.client.PubSub, room: str) -> None:
        if room in self._sinks:
            return  # a new hub took the room over (and subscribed) meanwhile
        with contextlib.suppress(RedisError, OSError):
            await pubsub.unsubscribe(channel(room))

    async def _subscribe(self, names: list[str]) -> None:
        """SUBSCRIBE and wait until Redis confirms each channel."""
        pubsub = self._pubsub
        if pubsub is None:
            raise BrokerUnavailable("redis is unavailable")
        loop = asyncio.get_running_loop()
        waits = []
        for name in names:
            future = loop.create_future()
            self._confirms.setdefault(name.encode(), []).append(future)
            waits.append(future)
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                await pubsub.subscribe(*names)
                results = await asyncio.gather(*waits, return_exceptions=True)
        except (RedisError, OSError, TimeoutError) as exc:
            for name, future in zip(names, waits, strict=True):
                future.cancel()
                with contextlib.suppress(KeyError, ValueError):
                    self._confirms[name.encode()].remove(future)
            raise BrokerUnavailable(f"subscribe failed: {exc!r}") from None
        if any(isinstance(result, BaseException) for result in results):
            raise BrokerUnavailable("redis connection lost while subscribing")

    async def _subscriber(self) -> None:
        """Keep the pub/sub connection: connect, subscribe, read; reconnect with backoff.

        One warning per outage; the reconnection is logged and counted."""
        delay = MIN_BACKOFF
        connected_once = outage_logged = False
        while True:
            pubsub = self._client.pubsub()
            reader: asyncio.Task[None] | None = None
            try:
                await pubsub.connect()  # type: ignore[no-untyped-call]  # redis-py: not annotated
                self._pubsub = pubsub
                reader = asyncio.create_task(self._read(pubsub), name="broker-reader")
                await self._subscribe(
                    [self._instance_channel, CONTROL_CHANNEL, *map(channel, self._sinks)]
                )
                await self._client.ping()
                self._set_up(True)
                if connected_once:
                    metrics.BROKER_RECONNECTS.inc()
                    log.info("broker_reconnected", extra={"fields": {"rooms": len(self._sinks)}})
                    self._resync()
                else:
                    log.info("broker_connected", extra={"fields": {"instance": self.instance}})
                connected_once, outage_logged, delay = True, False, MIN_BACKOFF
                await reader
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, BrokerUnavailable) as exc:
                metrics.BROKER_ERRORS.labels("subscribe").inc()
                if not outage_logged:
                    outage_logged = True
                    log.warning(
                        "broker_unavailable",
                        extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}},
                    )
            finally:
                self._set_up(False)
                self._pubsub = None
                if reader is not None:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
                for futures in self._confirms.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(BrokerUnavailable("redis connection lost"))
                self._confirms.clear()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _read(self, pubsub: aioredis.client.PubSub) -> None:
        """Hand every pub/sub message to its room; raises when the connection is lost."""
        while True:
            message = await pubsub.parse_response(block=True)
            if message is None:
                continue
            kind, name = message[0], message[1]
            if kind == b"message":
                self._on_message(name, message[2])
            elif kind == b"subscribe":
                for future in self._confirms.pop(name, []):
                    if not future.done():
                        future.set_result(None)

    def _on_message(self, name: bytes, data: bytes) -> None:
        if name == self._instance_channel.encode():
            self._on_welcome(data)
            return
        if name == CONTROL_BYTES:
            self._on_control(data)
            return
        sink = self._sinks.get(name[CHANNEL_HEAD:-1].decode())
        if sink is None:
            return
        kind, seq, published, event = data.split(b" ", 3)
        sink(Event(event, int(seq), kind != b"p", float(published)))

    def _on_welcome(self, data: bytes) -> None:
        head, user, online, *history = data.split(b"\n")
        _, token, seq, members, reset, epoch, room = head.decode().split(" ")
        if self._joining.pop(int(token), None) is not None:
            name = orjson.loads(user)
            self._local.setdefault(room, {})[int(token)] = (name_key(name), user)
        else:
            name = ""  # a catch-up, or a join whose connection left meanwhile
        sink = self._sinks.get(room)
        if sink is not None:
            sink(
                Welcome(
                    int(token),
                    name,
                    epoch,
                    int(seq),
                    int(members),
                    orjson.loads(online),
                    reset == "1",
                    history,
                )
            )

    def _set_up(self, up: bool) -> None:
        self._up = up

    def _resync(self) -> None:
        """After a reconnect: rewrite this instance's presence, then hand each room its history."""
        for room in self._local:
            self._refresh(room, whole=True)
        for room in self._sinks:
            self._enqueue(
                _Op(
                    "sync",
                    self._scripts["sync"],
                    [
                        *_room_keys(room, "seq", "history", "instances"),
                        ROOMS_KEY,
                        prefix(room) + "epoch",
                    ],
                    [
                        prefix(room),
                        room,
                        self._instance_channel,
                        new_epoch(),
                        _online_limit(),
                        self.retention,
                    ],
                )
            )

    # -- operations -------------------------------------------------------------------------

    def join(self, room: str, user: str, since: int | None, epoch: str | None, token: int) -> None:
        self._joining[token] = room

        def failed() -> None:
            self._joining.pop(token, None)
            sink = self._sinks.get(room)
            if sink is not None:
                sink(Refused(token=token))

        # As names.free_name: the name asked for, -2 .. -SUFFIX_LIMIT (less the reserved
        # names), then a random one.
        names = [user, *(suffixed(user, n) for n in range(2, SUFFIX_LIMIT + 2))]
        names = [name for name in names if not reserved(name)]
        candidates = [item for name in names for item in (name_key(name), orjson.dumps(name))]
        tail = presence_event("join", "", 0).partition(b'"members":0')[2]
        self._enqueue(
            _Op(
                "presence",
                self._scripts["join"],
                [
                    *_room_keys(room, "seq", "history", "instances"),
                    f"{prefix(room)}users:{self.instance}",
                    f"{prefix(room)}tokens:{self.instance}",
                    ROOMS_KEY,
                    prefix(room) + "epoch",
                ],
                [
                    prefix(room),
                    room,
                    self.instance,
                    token,
                    self.presence_ttl,
                    tail,
                    repr(time.time()),
                    channel(room),
                    -1 if since is None else since,
                    epoch or "",
                    new_epoch(),
                    self._instance_channel,
                    _online_limit(),
                    self.retention,
                    *candidates,
                ],
                failed,
            )
        )

    def leave(self, room: str, token: int) -> None:
        self._joining.pop(token, None)
        here = self._local.get(room, {})
        here.pop(token, None)
        if not here:
            self._local.pop(room, None)
        tail = presence_event("leave", "", 0).partition(b'"members":0')[2]
        self._enqueue(
            _Op(
                "presence",
                self._scripts["leave"],
                self._presence_keys(room),
                [
                    prefix(room),
                    room,
                    token,
                    self.presence_ttl,
                    tail,
                    repr(time.time()),
                    channel(room),
                    self.retention,
                ],
            )
        )

    def say(self, room: str, user: str, msg: ChatMessage, sender: int) -> None:
        tail = message_event(0, room, user, msg)[len(MESSAGE_PREFIX) + 1 :]

        def failed() -> None:
            sink = self._sinks.get(room)
            if sink is not None:
                sink(Refused(sender=sender, reply_to=msg.id))

        self._enqueue(
            _Op(
                "message",
                self._scripts["say"],
                _room_keys(room, "seq", "history", "epoch"),
                [tail, self.history_size, channel(room), repr(time.time()), self.retention],
                failed,
            )
        )

    def publish(self, room: str, event: bytes) -> None:
        payload = b"b 0 " + repr(time.time()).encode() + b" " + event
        self._enqueue(_Op("bot", None, [], [], command=("PUBLISH", channel(room), payload)))

    def _presence_keys(self, room: str) -> list[str]:
        """KEYS of the leave and refresh scripts: instances, this instance's users and
        tokens, and the room list."""
        here = prefix(room)
        return [
            f"{here}instances",
            f"{here}users:{self.instance}",
            f"{here}tokens:{self.instance}",
            ROOMS_KEY,
        ]

    def _refresh(self, room: str, whole: bool = False) -> None:
        """Keep this instance's members of ``room`` present; ``whole`` replaces what Redis
        holds for this instance (after a reconnect), else entries are only added."""
        here = self._local.get(room, {})
        triples = [item for token, (key, name) in here.items() for item in (token, key, name)]
        self._enqueue(
            _Op(
                "presence",
                self._scripts["refresh"],
                self._presence_keys(room),
                [
                    prefix(room),
                    room,
                    self.instance,
                    self.presence_ttl,
                    int(whole),
                    self.retention,
                    *triples,
                ],
            )
        )

    async def _refresher(self) -> None:
        """Keep this instance's presence entries alive while it has members."""
        while True:
            await asyncio.sleep(self.presence_ttl / 3)
            if self._up:
                for room in list(self._local):
                    self._refresh(room)

    def _enqueue(self, op: _Op) -> None:
        if not self._up:
            self._fail(op)
            return
        self._queue.append(op)
        self._queued.set()
        self._idle.clear()

    def _fail(self, op: _Op) -> None:
        metrics.BROKER_ERRORS.labels(op.kind).inc()
        if op.failed is not None:
            op.failed()

    async def _publisher(self) -> None:
        """Send queued operations in order, all that wait in one pipeline."""
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                ops = list(self._queue)
                self._queue.clear()
                await self._send(ops)
            self._idle.set()

    async def _send(self, ops: list[_Op]) -> None:
        started = time.perf_counter()
        try:
            results = await self._execute(ops)
            if any(isinstance(r, NoScriptError) for r in results):
                # Redis restarted without its script cache: nothing in this batch ran.
                for script in self._scripts.values():
                    await self._client.script_load(script.script)
                results = await self._execute(ops)
        except (RedisError, OSError) as exc:
            log.warning("broker_send_failed", extra={"fields": {"error": str(exc)}})
            results = [exc] * len(ops)
        elapsed = time.perf_counter() - started
        for op, result in zip(ops, results, strict=True):
            if isinstance(result, Exception):
                self._fail(op)
            else:
                metrics.BROKER_PUBLISH.observe(elapsed)

    async def _execute(self, ops: list[_Op]) -> list[object]:
        async with self._client.pipeline(transaction=False) as pipe:
            for op in ops:
                if op.script is None:
                    pipe.execute_command(*op.command)
                else:
                    pipe.evalsha(op.script.sha, len(op.keys), *op.keys, *op.args)  # type: ignore[arg-type]  # args: str, int, float
            return await pipe.execute(raise_on_error=False)

    # -- queries ----------------------------------------------------------------------------

    async def rooms(self, limit: int) -> list[tuple[str, int]]:
        try:
            flat = await self._scripts["rooms"](keys=[ROOMS_KEY], args=[limit])
        except (RedisError, OSError):
            metrics.BROKER_ERRORS.labels("query").inc()
            raise BrokerUnavailable("redis is unavailable") from None
        rooms = [(flat[i].decode(), int(flat[i + 1])) for i in range(0, len(flat), 2)]
        return sorted(rooms, key=lambda room: (-room[1], room[0]))

    # -- the server API ----------------------------------------------------------------------

    def on_control(self, sink: ControlSink) -> None:
        self._control = sink

    def _on_control(self, data: bytes) -> None:
        if self._control is None:
            return
        try:
            fields = orjson.loads(data)
            order = Control(fields["action"], fields["user"], fields["room"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("control_unreadable", extra={"fields": {"size": len(data)}})
            return
        self._control(order)

    async def _call(self, what: str, command: Awaitable[T]) -> T:
        """Await one API command; a Redis failure counts as a ``query`` error and raises
        :class:`BrokerUnavailable` naming ``what``."""
        try:
            return await command
        except (RedisError, OSError):
            metrics.BROKER_ERRORS.labels("query").inc()
            raise BrokerUnavailable(f"redis is unavailable ({what})") from None

    async def publish_message(self, room: str, user: str, text: str, data: object | None) -> int:
        event = server_message_event(0, room, user, text, data, now_ms())
        tail = event[len(MESSAGE_PREFIX) + 1 :]
        keys = _room_keys(room, "seq", "history", "epoch")
        args: list[bytes | str | int] = [
            tail,
            self.history_size,
            channel(room),
            repr(time.time()),
            self.retention,
        ]
        seq = await self._call("publish", self._scripts["say"](keys=keys, args=args))
        return int(seq)

    async def delete(self, room: str, seq: int) -> bool:
        head = MESSAGE_PREFIX + str(seq).encode() + b","
        args: list[bytes | str] = [head, channel(room), repr(time.time()), deleted_event(room, seq)]
        found = await self._call(
            "delete", self._scripts["delete"](keys=_room_keys(room, "history"), args=args)
        )
        return bool(found)

    async def history(self, room: str, since: int, limit: int) -> list[bytes]:
        kept: list[bytes] = await self._call(
            "history",
            self._client.lrange(prefix(room) + "history", 0, -1),  # type: ignore[arg-type]  # redis-py: Awaitable | list
        )
        newer = [event for event in kept if encoded_history_seq(event) > since]
        return newer[-limit:]

    async def presence(self, room: str) -> list[str]:
        names = await self._call(
            "presence",
            self._scripts["presence"](keys=_room_keys(room, "instances"), args=[prefix(room)]),
        )
        return [orjson.loads(name) for name in names]

    async def control(self, order: Control) -> None:
        payload = orjson.dumps({"action": order.action, "user": order.user, "room": order.room})
        await self._call("control", self._client.publish(CONTROL_CHANNEL, payload))

    async def ban(self, room: str, user: str, seconds: float | None) -> None:
        expiry = None if seconds is None else max(1, math.ceil(seconds * 1000))
        await self._call("ban", self._client.set(_ban_key(room, user), b"1", px=expiry))

    async def unban(self, room: str, user: str) -> bool:
        return bool(await self._call("unban", self._client.delete(_ban_key(room, user))))

    async def banned(self, room: str, user: str) -> bool:
        return bool(await self._call("banned", self._client.exists(_ban_key(room, user))))


def _ban_key(room: str, user: str) -> str:
    return f"{prefix(room)}ban:{user}"


def _room_keys(room: str, *names: str) -> list[str]:
    return [prefix(room) + name for name in names]


def _quiet(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
