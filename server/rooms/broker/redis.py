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
  last used: every script that touches the room (a join, leave, catch-up, and the presence
  refresh while an instance has members there) sets them to expire again, so an
  abandoned room's keys vanish and its next join makes a new epoch. A message only gives
  the seq and history keys an expiry when it creates them: it comes from a member, whose
  instance's refresh renews the room's keys, and three EXPIREs cost Redis about a third of
  the message script. A server API publish, which may come with no member, renews them;
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
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ...ops import metrics
from ...ops.config import redacted
from ...wire.protocol import (
    MAX_USER,
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
SAY_BATCH = 64
"""Most messages one SAY call carries (Redis runs nothing else while a script runs)."""

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

# KEYS: seq and history of each message. ARGV: channel, event tail (after the seq) and
# published of each message, then the history size and the retention. Several messages (of
# any rooms) share one call: Redis spends about as much on a script call as on the commands
# in it. Only a key this script creates gets its expiry here: a message comes from a member,
# so the presence refresh of the member's instance renews the room's keys (``keep``).
SAY = """
local size, ttl = tonumber(ARGV[#ARGV - 1]), ARGV[#ARGV]
local out = {}
for m = 1, #KEYS / 2 do
  local seq = redis.call('INCR', KEYS[2 * m - 1])
  if seq == 1 then redis.call('EXPIRE', KEYS[2 * m - 1], ttl) end
  local ev = '{"type":"message","seq":' .. seq .. ARGV[3 * m - 1]
  local n = redis.call('RPUSH', KEYS[2 * m], ev)
  if n == 1 then
    redis.call('EXPIRE', KEYS[2 * m], ttl)
  elseif n > size then
    redis.call('LTRIM', KEYS[2 * m], -size, -1)
  end
  redis.call('PUBLISH', ARGV[3 * m - 2], 'm ' .. seq .. ' ' .. ARGV[3 * m] .. ' ' .. ev)
  out[m] = seq
end
return out
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
#       retention, then the candidate names in order of preference as quadruples: name key,
#       JSON name, first and last n (0, 0: the name itself; else the names with the suffixes
#       -first .. -last). The last quadruple's name is taken when every candidate is.
JOIN = (
    _COMMON
    + """
local ids = redis.call('SMEMBERS', KEYS[3])
local function taken(key)
  if redis.call('HEXISTS', KEYS[4], key) == 1 then return true end
  for _, id in ipairs(ids) do
    if redis.call('HEXISTS', ARGV[1] .. 'users:' .. id, key) == 1 then return true end
  end
  return false
end
local chosen, name = ARGV[#ARGV - 3], ARGV[#ARGV - 2]
local found = false
for i = 15, #ARGV, 4 do
  for n = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]) do
    local key, json = ARGV[i], ARGV[i + 1]
    if n > 0 then
      key = key .. '-' .. n
      json = string.sub(json, 1, -2) .. '-' .. n .. '"'
    end
    if not taken(key) then
      chosen, name, found = key, json, true
      break
    end
  end
  if found then break end
end
redis.call('HSET', KEYS[4], chosen, name)
redis.call('HSET', KEYS[5], ARGV[4], chosen)
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


def _encode(value: object) -> bytes:
    """One argument as redis-py's ``Encoder`` writes it: bytes as they are, str as UTF-8,
    int and float by ``repr``."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value).encode()
    raise TypeError(f"cannot send {type(value).__name__} to redis")


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def pack(*args: object) -> bytes:
    """One command in RESP (an array of bulk strings), as redis-py's ``pack_command`` makes it."""
    return b"*%d\r\n" % len(args) + b"".join([_bulk(_encode(arg)) for arg in args])


@dataclass(slots=True)
class _Op:
    """One queued operation: a script call, or a plain command when ``script`` is None;
    ``packed`` holds its RESP bytes once made (:meth:`wire`). A message has ``say`` instead:
    the RESP bytes of its keys and of its arguments in the SAY script, which takes several
    messages per call."""

    kind: str  # metrics.BROKER_OPERATIONS
    script: AsyncScript | None
    keys: list[str]
    args: list[object]
    failed: Callable[[], None] | None = None
    command: tuple[object, ...] = field(default=())
    packed: bytes = b""
    say: tuple[bytes, bytes] | None = None

    def wire(self) -> bytes:
        """The operation's RESP bytes (EVALSHA for a script)."""
        if not self.packed:
            if self.script is None:
                self.packed = pack(*self.command)
            else:
                self.packed = pack(
                    "EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args
                )
        return self.packed


class RedisBroker:
    """Rooms over one Redis (see the module docstring and :class:`~server.rooms.broker.Broker`).

    ``url``: ``redis://`` or ``rediss://`` (redis-py's URL syntax); ``history_size``: messages
    kept per room; ``presence_ttl``: seconds an instance's presence outlives its last refresh
    (refreshed every third of it); ``retention``: seconds a room's keys outlive its last use,
    at least ``presence_ttl`` so the refresh keeps a room in use alive; ``batch_window``:
    seconds the publisher waits after an operation is queued so that those queued meanwhile
    leave in the same pipeline (0: none beyond what waits when it runs).
    """

    def __init__(
        self,
        url: str,
        history_size: int,
        presence_ttl: float,
        retention: float,
        batch_window: float = 0.0,
    ) -> None:
        self.url = url
        self._shown = redacted(url)  # for logs
        self.batch_window = batch_window
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
        # room -> the RESP bytes of its seq and history keys, and of its channel (SAY).
        self._say_parts: dict[str, tuple[bytes, bytes]] = {}
        self._say_tail = _bulk(_encode(history_size)) + _bulk(_encode(self.retention))
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
        self._say_parts.pop(room, None)
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
                    log.info(
                        "broker_reconnected",
                        extra={"fields": {"rooms": len(self._sinks), "redis": self._shown}},
                    )
                    self._resync()
                else:
                    log.info(
                        "broker_connected",
                        extra={"fields": {"instance": self.instance, "redis": self._shown}},
                    )
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
                        extra={
                            "fields": {
                                "error": f"{type(exc).__name__}: {exc}",
                                "redis": self._shown,
                            }
                        },
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
        """Hand every pub/sub message to its room; raises when the connection is lost.

        Reads the pub/sub connection's replies itself (``read_response`` with no timeout, as
        ``PubSub.parse_response(block=True)`` does) without the retry and health-check layer
        around each: the broker has no retries and no health checks (``_subscriber``
        reconnects), and that layer was half the cost of a message read."""
        conn = pubsub.connection
        if conn is None:
            raise BrokerUnavailable("no pub/sub connection")
        while True:
            message = await conn.read_response(
                timeout=math.inf, disconnect_on_error=False, push_request=True
            )
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

        candidates = candidate_names(user)
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

        parts = self._say_parts.get(room)
        if parts is None:
            keys = _room_keys(room, "seq", "history")
            parts = self._say_parts[room] = (
                b"".join([_bulk(key.encode()) for key in keys]),
                _bulk(channel(room).encode()),
            )
        args = parts[1] + _bulk(tail) + _bulk(repr(time.time()).encode())
        self._enqueue(_Op("message", self._scripts["say"], [], [], failed, say=(parts[0], args)))

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
            if self.batch_window:
                await asyncio.sleep(self.batch_window)
            self._queued.clear()
            while self._queue:
                # Not held in a local: a batch's operations are freed once it is sent.
                await self._send(self._take())
            self._idle.set()

    def _take(self) -> list[_Op]:
        ops = list(self._queue)
        self._queue.clear()
        return ops

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
            log.warning(
                "broker_send_failed", extra={"fields": {"error": str(exc), "redis": self._shown}}
            )
            results = [exc] * len(ops)
        elapsed = time.perf_counter() - started
        for op, result in zip(ops, results, strict=True):
            if isinstance(result, Exception):
                self._fail(op)
            else:
                metrics.BROKER_PUBLISH.observe(elapsed)

    async def _execute(self, ops: list[_Op]) -> list[object]:
        """Send ``ops`` as one write of their RESP bytes on a pooled connection and read a
        reply for each (an error reply as its exception), under one timeout for the whole
        batch rather than one per reply (``timeout=math.inf``: none per read)."""
        pool = self._client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py: not annotated
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                wire, replies = self._pack(ops)
                await conn.send_packed_command(wire, False)
                results: list[object] = []
                for count in replies:
                    try:
                        reply = await conn.read_response(timeout=math.inf)
                    except ResponseError as exc:
                        reply = exc
                    results.extend([reply] * count)
            return results
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    def _pack(self, ops: list[_Op]) -> tuple[bytes, list[int]]:
        """The RESP bytes of ``ops``, in order, and how many of them each reply answers:
        a run of messages (up to ``SAY_BATCH``) is one SAY call, any other op one command."""
        chunks: list[bytes] = []
        replies: list[int] = []
        start, end = 0, len(ops)
        while start < end:
            if ops[start].say is None:
                chunks.append(ops[start].wire())
                replies.append(1)
                start += 1
                continue
            stop = start + 1
            while stop < end and stop - start < SAY_BATCH and ops[stop].say is not None:
                stop += 1
            run = [op.say for op in ops[start:stop] if op.say is not None]
            count = len(run)
            chunks += [
                b"*%d\r\n" % (3 + 5 * count + 2),
                _bulk(b"EVALSHA"),
                _bulk(self._scripts["say"].sha.encode()),
                _bulk(b"%d" % (2 * count)),
                *[keys for keys, _ in run],
                *[args for _, args in run],
                self._say_tail,
            ]
            replies.append(count)
            start = stop
        return b"".join(chunks), replies

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
        args: list[bytes | str | int] = [
            channel(room),
            tail,
            repr(time.time()),
            self.history_size,
            self.retention,
        ]
        # SAY renews no expiry (a member's presence refresh does): a room the API publishes
        # into may have no member, so its keys are renewed here, as any use of a room does.
        pipe = self._client.pipeline(transaction=False)
        await self._scripts["say"](keys=_room_keys(room, "seq", "history"), args=args, client=pipe)
        for key in _room_keys(room, "seq", "history", "epoch"):
            pipe.expire(key, self.retention)
        answers = await self._call("publish", pipe.execute())
        return int(answers[0][0])

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


def candidate_names(user: str) -> list[object]:
    """The JOIN script's candidate names for ``user``, as names.free_name tries them: the
    name asked for (unless it is reserved), ``-2`` .. ``-SUFFIX_LIMIT``, then a random one.
    The numbered names go as one quadruple per suffix length (the name is cut to fit
    ``MAX_USER`` with its suffix),
    ``(key, JSON, first, last)``, and the script appends ``-n`` to both: ``-`` and digits
    are left alone by NFKC and case folding and need no JSON escape, so the key and JSON of
    ``base-n`` are those of ``base`` with ``-n`` appended. About 0.3 KB per join instead
    of the 30 KB that a pair per candidate took."""
    out: list[object] = [] if reserved(user) else [name_key(user), orjson.dumps(user), 0, 0]
    first = 2
    while first <= SUFFIX_LIMIT:
        digits = len(str(first))
        last = min(SUFFIX_LIMIT, 10**digits - 1)
        base = user[: MAX_USER - 1 - digits]
        out += [name_key(base), orjson.dumps(base), first, last]
        first = last + 1
    fallback = suffixed(user, SUFFIX_LIMIT + 1)
    return [*out, name_key(fallback), orjson.dumps(fallback), 0, 0]


def _room_keys(room: str, *names: str) -> list[str]:
    return [prefix(room) + name for name in names]


def _quiet(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
