"""The Redis broker (``ROOMHUB_BROKER=redis://...`` or ``rediss://...``): rooms shared by
every instance on one Redis.

Keys of room ``R`` (the ``{R}`` hash tag keeps a room's keys together):

* ``roomhub:{R}:epoch`` (made by the first join, so a Redis that lost its data gives the room
  a new epoch; a message that finds none is refused and the room caught up, see SAY in
  ``lua/say.lua``), ``roomhub:{R}:seq`` (the last seq), ``roomhub:{R}:history`` (list of encoded
  ``message`` events: its newest ``history_size`` are the room's history; SAY trims the rest
  only every few dozen messages);
* ``roomhub:{R}:users:<instance>`` (hash: name key -> JSON-encoded name of each member on
  that instance), ``roomhub:{R}:tokens:<instance>`` (hash: join token -> name key) and
  ``roomhub:{R}:joined:<instance>`` (sorted set: the JSON names ranked by join token, which
  rises on each instance, so the welcome's ``online`` and the presence list keep join
  order), all three expiring after ``presence_ttl`` seconds unless the live instance
  refreshes them (every third of it; another instance's refresh lets go of those left two
  thirds of it unrefreshed, with a ``leave`` for each member: ``lua/refresh.lua``);
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

Every operation runs as one server-side Lua script (atomic, as Centrifugo does; the scripts
and their KEYS/ARGV builders: :mod:`~server.rooms.broker.scripts`): a message
increments the seq, appends the encoded event to the capped history and publishes it; a join
gives the joiner the first of its candidate names (the one it asked for, then ``-2``,
``-3``, ...) that no instance holds, publishes its :class:`~server.rooms.broker.Welcome` on the
instance channel and then the ``join`` event on the room channel. Operations leave in one
ordered pipeline over the publisher's own connection (held while it works, taken again after
a failure or an outage), one pipeline unanswered at a time and at least ``batch_window``
apart: what is queued meanwhile leaves in the next; the server API's queries use redis-py's
pool; every subscription shares one pub/sub connection, so a welcome reaches the hub exactly
between the events it covers and the ones after it. The publisher's and the pub/sub
connection are read in their transports' callbacks (:mod:`~server.rooms.broker.resp`), with
no task of their own.

What goes on the channels (events, welcomes, control orders) is written and read by
:mod:`~server.rooms.broker.payload`.

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
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import AskError, MovedError, NoScriptError, RedisError, ResponseError

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
    Refused,
    Sink,
    Welcome,
    encoded_history_seq,
    payload,
    scripts,
)
from .resp import Link, Reply, check_redis_py, open_link
from .scripts import (
    Arg,
    Delete,
    Join,
    Leave,
    Presence,
    Refresh,
    Rooms,
    Say,
    SayRoom,
    Sync,
    channel,
    prefix,
    room_keys,
    say_head,
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
POOL_SIZE = 32
"""Connections to one Redis at most for the server API's queries; a query finding none free
waits for one. The publisher's and the pub/sub connection are made from the same settings
besides (not counted in the pool)."""
CLOSE_DRAIN = 2.0
"""Seconds :meth:`RedisBroker.close` waits for queued operations (the last leaves)."""
CONTROL_CHANNEL = "roomhub:control"
SAY_BATCH = 128
"""Most messages one SAY call carries (Redis runs nothing else while a script runs: about
1 ms for a full call; docs/scaling.md "A 20 ms window")."""
WATCHDOG_EVERY = 1.0
"""Seconds between checks for a pipeline unanswered past ``COMMAND_TIMEOUT``."""


def _online_limit() -> int:
    return member_names.ONLINE_LIMIT


def _presence_tail(kind: str) -> bytes:
    """What follows the members count in a ``join`` or ``leave`` event (its script writes
    the head: type, name and count)."""
    return presence_event(kind, "", 0).partition(b'"members":0')[2]


CHANNEL_HEAD = len("roomhub:{")
INSTANCES_TAIL = b"}:instances"
INSTANCES_MATCH = "roomhub:{*}:instances"
SCAN_COUNT = 1000
"""Keys one ``SCAN`` call looks at when a Redis Cluster node lists its rooms."""


def _encode(value: object) -> bytes:
    """One argument as redis-py's ``Encoder`` writes it: bytes as they are, str as UTF-8,
    int and float by ``repr``. Raises TypeError for any other type, bool included."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value).encode()
    raise TypeError(f"cannot send {type(value).__name__} to redis")


def pack(*args: object) -> bytes:
    """One command in RESP (an array of bulk strings), as redis-py's ``pack_command`` makes it
    (arguments as :func:`_encode` takes them). The common types are taken inline: a JOIN call
    carries about 50 arguments, and a call per argument was half the packing's time."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if type(arg) is str:
            data = arg.encode()
        elif type(arg) is bytes:
            data = arg
        elif type(arg) is int:
            data = b"%d" % arg
        else:
            data = _encode(arg)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


@dataclass(slots=True)
class _Op:
    """One queued operation: a script call, or a plain command when ``script`` is None;
    ``packed`` holds its RESP bytes once made (:meth:`wire`). A message has ``say`` instead:
    the RESP bytes of its keys and of its arguments in the SAY script, which takes several
    messages per call (:class:`~server.rooms.broker.scripts.SayRoom`), and its ``room``. A
    query has ``answer``, the future its reply resolves. ``urgent``: someone waits on it (a
    query's answer, a join's welcome), so it does not wait for the batch window."""

    kind: str  # metrics.BROKER_OPERATIONS
    script: AsyncScript | None
    keys: list[str]
    args: list[Arg]
    failed: Callable[[], None] | None = None
    command: tuple[object, ...] = field(default=())
    packed: bytes = b""
    say: tuple[bytes, bytes] | None = None
    room: str = ""
    answer: asyncio.Future[object] | None = None
    urgent: bool = False

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


@dataclass(slots=True)
class _Batch:
    """One pipeline written to Redis: its operations, what each reply answers
    (see :meth:`RedisBroker._pack`) and when it left (``time.perf_counter``); ``answered``
    counts the replies taken, the operations' results go into ``results``; ``skip`` replies
    still to pass over (of the SCRIPT LOADs sent ahead of it when it carries script calls
    sent again after Redis lost its scripts, ``reloaded``)."""

    ops: list[_Op]
    replies: list[int]
    started: float
    answered: int = 0
    results: list[object] = field(default_factory=list)
    skip: int = 0
    reloaded: bool = False


class RedisBroker:
    """Rooms over one Redis (see the module docstring and :class:`~server.rooms.broker.Broker`).

    ``url``: ``redis://`` or ``rediss://`` (redis-py's URL syntax); ``history_size``: messages
    kept per room; ``presence_ttl``: seconds an instance's presence outlives its last refresh
    (refreshed every third of it); ``retention``: seconds a room's keys outlive its last use,
    at least ``presence_ttl`` so the refresh keeps a room in use alive; ``batch_window``:
    the shortest time (seconds) from one pipeline to the next: operations queued within it
    leave together in the next one, and one queued later leaves in the same loop pass, as
    does one someone waits on (a ban check, a join) with whatever is queued (0: the next
    pipeline leaves as soon as the last one is answered).

    A master of a Redis Cluster (:mod:`~server.rooms.broker.cluster`) is one with
    ``sharded_pubsub``: room events by SSUBSCRIBE/SPUBLISH on the master that holds the room,
    each welcome on the room's ``roomhub:{R}:welcome:<instance>`` channel (subscribed with
    the room, so in order with its events), control orders on ``control_channel`` (one in a
    slot of the master's), no room list key (rooms are listed by SCAN), and messages share a
    SAY call only with messages of their room; ``refresh_slots`` is called on each reconnect
    and on a MOVED or ASK answer.
    """

    def __init__(
        self,
        url: str,
        history_size: int,
        presence_ttl: float,
        retention: float,
        batch_window: float = 0.0,
        sharded_pubsub: bool = False,
        control_channel: str = CONTROL_CHANNEL,
        refresh_slots: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.sharded_pubsub = sharded_pubsub
        self.control_channel = control_channel
        self._control_bytes = control_channel.encode()
        self._refresh_slots = refresh_slots
        self._cluster_node_logged = False
        self._publish_command = "SPUBLISH" if sharded_pubsub else "PUBLISH"
        self._shown = redacted(url)  # for logs
        check_redis_py()
        self.batch_window = batch_window
        self.history_size = history_size
        self.presence_ttl = max(1, round(presence_ttl))
        self.retention = max(self.presence_ttl, math.ceil(retention))
        self.instance = secrets.token_hex(6)
        self._instance_channel = f"roomhub:instance:{self.instance}"
        self._instance_bytes = self._instance_channel.encode()
        self._welcome_suffix = f":welcome:{self.instance}".encode()
        # A bounded pool that makes a caller wait for a free connection (up to
        # COMMAND_TIMEOUT) instead of failing: a burst of server API queries must not fail
        # with "Too many connections" (redis-py's default pool: 100, then an error).
        # RESP2 (redis-py 8 speaks RESP3 unless told): a pub/sub message is then a plain
        # array reply (measured cheaper to read; docs/scaling.md).
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            protocol=2,
            max_connections=POOL_SIZE,
            timeout=COMMAND_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
        )
        self._client = aioredis.Redis(connection_pool=self._pool)
        self._link: Link | None = None  # the publisher's own connection, kept while it works
        self._link_stale = False  # set on an outage: take a new one before sending
        self._connecting: asyncio.Task[None] | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._sent = -math.inf  # time.monotonic() when the last pipeline was written
        self._asked = False  # an urgent operation waits in the queue
        self._in_flight: _Batch | None = None  # the one pipeline written and not yet answered
        self._scripts = {
            name: self._client.register_script(scripts.source(name, sharded_pubsub))
            for name in scripts.SCRIPTS
        }
        self._load_scripts = b"".join(
            pack("SCRIPT", "LOAD", script.script) for script in self._scripts.values()
        )
        self._control: ControlSink | None = None
        self._sinks: dict[str, Sink] = {}
        # room -> the epoch of the last welcome handed to its sink.
        self._epochs: dict[str, str] = {}
        # room -> the RESP bytes of its part in every SAY call.
        self._say_parts: dict[str, SayRoom] = {}
        self._say_tail = scripts.say_settings(history_size, self.retention)
        # On a cluster node no key spans the rooms' slots: the scripts rank no rooms there.
        self._ranked = not sharded_pubsub
        # room -> join token -> (name key, JSON name) of the members here; joins in flight.
        self._local: dict[str, dict[int, tuple[str, bytes]]] = {}
        self._joining: dict[int, str] = {}
        self._confirms: dict[bytes, list[asyncio.Future[None]]] = {}
        self._queue: deque[_Op] = deque()
        self._idle = asyncio.Event()  # set while nothing is queued or being sent
        self._idle.set()
        self._pubsub: Link | None = None
        self._up = False
        self._closed = False
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
            asyncio.create_task(self._watchdog(), name="broker-watchdog"),
            asyncio.create_task(self._refresher(), name="broker-refresher"),
        ]

    async def close(self) -> None:
        """Send what is queued (up to ``CLOSE_DRAIN`` s), then stop and disconnect."""
        if self._up:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_DRAIN):
                    await self._idle.wait()
        self._up = False
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        tasks = [*self._tasks, *([self._connecting] if self._connecting else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_queued()
        if self._link is not None:
            await self._link.close()  # the batch in flight, if any, fails
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()
            await self._pool.aclose()

    # -- subscriptions ----------------------------------------------------------------------

    async def subscribe(self, room: str, sink: Sink) -> None:
        self._sinks[room] = sink
        try:
            await self._subscribe(self._room_channels(room))
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
        self._epochs.pop(room, None)
        pubsub = self._pubsub
        if pubsub is not None and self._up:
            # In order with any later SUBSCRIBE of a new hub of the room: same connection.
            if self.sharded_pubsub:
                pubsub.write(b"".join(pack("SUNSUBSCRIBE", n) for n in self._room_channels(room)))
            else:
                pubsub.write(pack("UNSUBSCRIBE", channel(room)))

    def _room_channels(self, room: str) -> list[str]:
        """The channels this instance subscribes to for ``room``: its events and, with
        sharded pub/sub, the welcomes meant for this instance (on the room's node, in order
        with its events)."""
        if self.sharded_pubsub:
            return [channel(room), self._welcome_channel(room)]
        return [channel(room)]

    def _welcome_channel(self, room: str) -> str:
        """Where the scripts publish this instance's welcomes of ``room``: the instance
        channel, or with sharded pub/sub a channel in the room's slot."""
        if self.sharded_pubsub:
            return f"{prefix(room)}welcome:{self.instance}"
        return self._instance_channel

    async def _subscribe(self, names: list[str]) -> None:
        """SUBSCRIBE (SSUBSCRIBE, one channel a command: each may be in a slot of its own)
        and wait until Redis confirms each channel."""
        pubsub = self._pubsub
        if pubsub is None or pubsub.lost:
            raise BrokerUnavailable("redis is unavailable")
        loop = asyncio.get_running_loop()
        waits = []
        for name in names:
            future = loop.create_future()
            self._confirms.setdefault(name.encode(), []).append(future)
            waits.append(future)
        if self.sharded_pubsub:
            pubsub.write(b"".join(pack("SSUBSCRIBE", name) for name in names))
        else:
            pubsub.write(pack("SUBSCRIBE", *names))
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                results = await asyncio.gather(*waits, return_exceptions=True)
        except TimeoutError as exc:
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
            pubsub: Link | None = None
            try:
                pubsub = await open_link(self._pool, self._on_pubsub_reply, self._pubsub_lost)
                self._pubsub = pubsub
                own = [self.control_channel]
                if not self.sharded_pubsub:
                    own.insert(0, self._instance_channel)
                rooms = [name for room in self._sinks for name in self._room_channels(room)]
                await self._subscribe([*own, *rooms])
                await self._client.ping()
                if self.sharded_pubsub:
                    await self._cluster_ok()
                else:
                    await self._not_a_cluster_node()
                self._set_up(True)
                if connected_once:
                    metrics.BROKER_RECONNECTS.inc()
                    log.info(
                        "broker_reconnected",
                        extra={"fields": {"rooms": len(self._sinks), "redis": self._shown}},
                    )
                    self._resync()
                    if self._refresh_slots is not None:
                        self._refresh_slots()
                else:
                    log.info(
                        "broker_connected",
                        extra={"fields": {"instance": self.instance, "redis": self._shown}},
                    )
                connected_once, outage_logged, delay = True, False, MIN_BACKOFF
                error = await pubsub.closed
                raise BrokerUnavailable(f"pub/sub connection lost: {error!r}")
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
                self._refuse_confirms(BrokerUnavailable("redis connection lost"))
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    def _refuse_confirms(self, error: BrokerUnavailable) -> None:
        """Fail every subscription waiting for Redis to confirm it."""
        for futures in self._confirms.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        self._confirms.clear()

    async def _cluster_ok(self) -> None:
        """Raise :class:`BrokerUnavailable` unless this Redis Cluster node says
        ``cluster_state:ok``: a master started again answers PING and SSUBSCRIBE at once but
        refuses every key (CLUSTERDOWN) for a second or two, until it has rejoined, and the
        catch-up after a reconnect must not run before (seen on Redis 7.0)."""
        info = await self._client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]  # redis-py: not annotated
        if info.get("cluster_state") != "ok":
            raise BrokerUnavailable(f"cluster_state:{info.get('cluster_state')}")

    def _pubsub_lost(self, link: Link) -> None:
        if link is self._pubsub:
            self._refuse_confirms(BrokerUnavailable("redis connection lost"))

    def _on_pubsub_reply(self, reply: Reply) -> None:
        """Hand a pub/sub message to its room, or a confirmation to the subscription waiting."""
        if isinstance(reply, ResponseError):
            # An SSUBSCRIBE answered MOVED (the slot went to another node): the subscriptions
            # waiting fail, the connection keeps the others.
            self._refuse_confirms(BrokerUnavailable(f"subscribe refused: {reply}"))
            self._moved(reply)
            return
        if not isinstance(reply, list):
            return
        kind, name = reply[0], reply[1]
        if kind == b"message" or kind == b"smessage":
            try:
                self._on_message(name, reply[2])
            except ValueError:  # not a payload the scripts publish: skipped, logged
                log.warning(
                    "pubsub_message_unreadable",
                    extra={
                        "fields": {"channel": name.decode(errors="replace"), "redis": self._shown}
                    },
                )
        elif kind == b"subscribe" or kind == b"ssubscribe":
            for future in self._confirms.pop(name, []):
                if not future.done():
                    future.set_result(None)

    def _on_message(self, name: bytes, data: bytes) -> None:
        if name == self._instance_bytes or name.endswith(self._welcome_suffix):
            self._on_welcome(data)
            return
        if name == self._control_bytes:
            self._on_control(data)
            return
        room = name[CHANNEL_HEAD:-1].decode()
        sink = self._sinks.get(room)
        if sink is None:
            return
        if data.startswith(payload.NEW_EPOCH):
            self._on_new_epoch(room, *payload.decode_epoch(data))
            return
        sink(payload.decode_event(data))

    def _on_new_epoch(self, room: str, epoch: str, made_for: bytes) -> None:
        """Catch ``room`` up when Redis made it a new epoch for a welcome elsewhere while its
        hub here had been handed another (Redis lost the room's keys, and another instance
        noticed first), so that its members resume in the new one. A welcome of this
        instance's (``made_for``) brings the new epoch itself."""
        if made_for == self._instance_bytes or made_for.endswith(self._welcome_suffix):
            return
        known = self._epochs.get(room)
        if known is not None and known != epoch:
            self._catch_up(room)

    def _on_welcome(self, data: bytes) -> None:
        got = payload.decode_welcome(data)
        if self._joining.pop(got.token, None) is not None:
            name = orjson.loads(got.name)
            self._local.setdefault(got.room, {})[got.token] = (name_key(name), got.name)
        else:
            name = ""  # a catch-up, or a join whose connection left meanwhile
        sink = self._sinks.get(got.room)
        if sink is not None:
            self._epochs[got.room] = got.epoch
            sink(
                Welcome(
                    got.token,
                    name,
                    got.epoch,
                    got.seq,
                    got.members,
                    got.online,
                    got.reset,
                    got.history,
                )
            )

    def _moved(self, error: Exception) -> None:
        """On a MOVED or ASK answer (a Redis Cluster slot served elsewhere now), have the
        slot map read again; from a Redis named by a plain ``redis://`` URL, log once that
        it is a cluster node, which only ``redis+cluster://`` can use."""
        if not isinstance(error, MovedError | AskError):
            return
        if self._refresh_slots is not None:
            self._refresh_slots()
        else:
            self._log_cluster_node(f"{type(error).__name__}: {error}")

    def _log_cluster_node(self, error: str) -> None:
        """Log once that the Redis a plain ``redis://`` URL names is a cluster node."""
        if self._cluster_node_logged:
            return
        self._cluster_node_logged = True
        log.error(
            "broker_is_cluster_node",
            extra={
                "fields": {
                    "redis": self._shown,
                    "error": error,
                    "hint": "list a Redis Cluster in ROOMHUB_BROKER as redis+cluster://",
                }
            },
        )

    async def _not_a_cluster_node(self) -> None:
        """Raise :class:`BrokerUnavailable`, logging ``broker_is_cluster_node`` once, when
        the Redis a plain ``redis://`` URL names runs in cluster mode (``INFO cluster``:
        ``cluster_enabled:1``): there every join names a key outside its room's slot (the
        rooms ranking) and is refused with CROSSSLOT, and a room on another master gets
        MOVED, so no room would work. A Redis that refuses ``INFO`` is taken at its word."""
        try:
            info = await self._client.info("cluster")
        except ResponseError:
            return
        if info.get("cluster_enabled") == 1:
            self._log_cluster_node("INFO cluster: cluster_enabled:1")
            raise BrokerUnavailable("a Redis Cluster node, named by a plain redis:// URL")

    def _set_up(self, up: bool) -> None:
        self._up = up
        if not up:
            # The publisher's connection may have died with the pub/sub one, unnoticed
            # while nothing was sent: the first batch after the reconnect goes on a new one.
            self._link_stale = True

    def _resync(self) -> None:
        """After a reconnect: rewrite this instance's presence, then hand each room its history."""
        for room in self._local:
            self._refresh(room, whole=True)
        for room in self._sinks:
            self._catch_up(room)

    def _catch_up(self, room: str) -> None:
        """Hand ``room`` its history in a catch-up welcome (token 0), making it a new epoch if
        Redis lost its keys: after a reconnect, or when SAY found them lost."""
        sync = Sync(
            room,
            self._welcome_channel(room),
            new_epoch(),
            _online_limit(),
            self.retention,
            self.history_size,
            self._ranked,
        )
        self._enqueue(self._script_op("sync", sync))

    # -- operations -------------------------------------------------------------------------

    def join(self, room: str, user: str, since: int | None, epoch: str | None, token: int) -> None:
        self._joining[token] = room

        def failed() -> None:
            self._joining.pop(token, None)
            sink = self._sinks.get(room)
            if sink is not None:
                sink(Refused(token=token))

        join = Join(
            room,
            self.instance,
            token,
            self.presence_ttl,
            _presence_tail("join"),
            repr(time.time()),
            since,
            epoch,
            new_epoch(),
            self._welcome_channel(room),
            _online_limit(),
            self.retention,
            self.history_size,
            tuple(candidate_names(user)),
            self._ranked,
        )
        self._enqueue(self._script_op("presence", join, failed, urgent=True))

    def leave(self, room: str, token: int) -> None:
        self._joining.pop(token, None)
        here = self._local.get(room, {})
        here.pop(token, None)
        if not here:
            self._local.pop(room, None)
        leave = Leave(
            room,
            self.instance,
            token,
            self.presence_ttl,
            _presence_tail("leave"),
            repr(time.time()),
            self.retention,
            self._ranked,
        )
        self._enqueue(self._script_op("presence", leave))

    def say(self, room: str, user: str, msg: ChatMessage, sender: int) -> None:
        tail = message_event(0, room, user, msg)[len(MESSAGE_PREFIX) + 1 :]

        def failed() -> None:
            sink = self._sinks.get(room)
            if sink is not None:
                sink(Refused(sender=sender, reply_to=msg.id))

        parts = self._say_parts.get(room)
        if parts is None:
            parts = self._say_parts[room] = SayRoom.of(room)
        args = parts.message(tail, repr(time.time()).encode())
        say = (parts.keys, args)
        self._enqueue(_Op("message", self._scripts["say"], [], [], failed, say=say, room=room))

    def publish(self, room: str, event: bytes) -> None:
        data = payload.encode_event(payload.BOT, 0, time.time(), event)
        self._enqueue(
            _Op("bot", None, [], [], command=(self._publish_command, channel(room), data))
        )

    def _script_op(
        self,
        kind: str,
        call: scripts.Call,
        failed: Callable[[], None] | None = None,
        urgent: bool = False,
    ) -> _Op:
        """The queued operation of script ``call``, counted as ``kind`` (``urgent``: see
        :class:`_Op`)."""
        return _Op(kind, self._scripts[call.NAME], call.keys(), call.args(), failed, urgent=urgent)

    def _refresh(self, room: str, whole: bool = False) -> None:
        """Keep this instance's members of ``room`` present, and let go of those of an
        instance that stopped refreshing; ``whole`` replaces what Redis holds for this
        instance (after a reconnect), else entries are only added."""
        here = self._local.get(room, {})
        members = tuple((token, key, name) for token, (key, name) in here.items())
        refresh = Refresh(
            room,
            self.instance,
            self.presence_ttl,
            whole,
            self.retention,
            members,
            repr(time.time()),
            _presence_tail("leave"),
            _presence_tail("join"),
            self._ranked,
        )
        self._enqueue(self._script_op("presence", refresh))

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
        self._idle.clear()
        if op.urgent:
            self._asked = True
            if isinstance(self._flush_handle, asyncio.TimerHandle):
                self._flush_handle.cancel()
                self._flush_handle = None
        if self._flush_handle is None and self._in_flight is None:
            self._schedule()

    def _schedule(self) -> None:
        """Flush in this loop pass, or ``batch_window`` seconds after the last pipeline left
        when that is later and no urgent operation waits."""
        loop = asyncio.get_running_loop()
        wait = 0.0 if self._asked else self._sent + self.batch_window - time.monotonic()
        if wait > 0:
            self._flush_handle = loop.call_later(wait, self._flush)
        else:
            self._flush_handle = loop.call_soon(self._flush)

    def _fail(self, op: _Op) -> None:
        metrics.BROKER_ERRORS.labels(op.kind).inc()
        if op.failed is not None:
            op.failed()

    def _flush(self) -> None:
        """Write every queued operation as one pipeline, unless one is still unanswered (what
        is queued meanwhile leaves when its replies are in); take a new connection first when
        there is none, Redis closed it, or an outage made it stale (seen before anything is
        written, so nothing is sent twice)."""
        self._flush_handle = None
        if self._in_flight is not None or self._connecting is not None:
            return
        if not self._queue:
            self._idle.set()
            return
        if self._closed:
            self._fail_queued()
            return
        link = self._link
        if link is None or link.lost or self._link_stale:
            self._connecting = asyncio.create_task(self._connect(), name="broker-publisher")
            return
        ops = list(self._queue)
        self._queue.clear()
        self._asked = False
        if self.sharded_pubsub:
            ops = _by_room(ops)
        wire, replies = self._pack(ops)
        self._in_flight = _Batch(ops, replies, time.perf_counter())
        self._sent = time.monotonic()
        link.write(wire)

    async def _connect(self) -> None:
        """Take a new connection for the publisher, then write what is queued; if Redis
        cannot be reached within ``COMMAND_TIMEOUT``, what is queued fails."""
        old, self._link = self._link, None
        try:
            if old is not None:
                await old.close()
            async with asyncio.timeout(COMMAND_TIMEOUT):
                self._link = await open_link(
                    self._pool, self._on_publisher_reply, self._publisher_lost
                )
            self._link_stale = False
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "broker_send_failed", extra={"fields": {"error": str(exc), "redis": self._shown}}
            )
            self._fail_queued()
        finally:
            self._connecting = None
        self._flush()

    def _on_publisher_reply(self, reply: Reply) -> None:
        """Take one reply of the pipeline in flight; settle the batch on its last one."""
        batch = self._in_flight
        if batch is None:
            # No batch asked for this: the connection is out of step; drop it.
            self._link_stale = True
            return
        if batch.skip:
            batch.skip -= 1  # a SCRIPT LOAD's reply
            return
        count = batch.replies[batch.answered]
        batch.answered += 1
        if isinstance(reply, Exception):
            batch.results.extend([reply] * max(count, 1))
        elif count:
            assert isinstance(reply, list)  # a SAY call's seqs
            batch.results.extend(reply)
        else:
            batch.results.append(reply)
        if batch.answered < len(batch.replies):
            return
        self._in_flight = None
        if not batch.reloaded and any(isinstance(r, NoScriptError) for r in batch.results):
            # Redis lost its script cache (a restart, a failover, SCRIPT FLUSH): the script
            # calls that found none go again; the rest ran and are settled.
            again: list[_Op] = []
            ran: list[_Op] = []
            results: list[object] = []
            for op, result in zip(batch.ops, batch.results, strict=True):
                if isinstance(result, NoScriptError):
                    again.append(op)
                else:
                    ran.append(op)
                    results.append(result)
            self._resend(again)
            self._settle(ran, results, time.perf_counter() - batch.started)
            return
        self._settle(batch.ops, batch.results, time.perf_counter() - batch.started)
        if not self._queue:
            self._flush()  # nothing queued: the publisher is idle
        elif self._flush_handle is None:
            self._schedule()

    def _fail_queued(self) -> None:
        failed = list(self._queue)
        self._queue.clear()
        self._asked = False
        for op in failed:
            self._fail(op)

    def _resend(self, ops: list[_Op]) -> None:
        """Load the scripts and send ``ops`` again, in order, on the same connection."""
        wire, replies = self._pack(ops)
        self._in_flight = _Batch(
            ops, replies, time.perf_counter(), skip=len(self._scripts), reloaded=True
        )
        if self._link is not None:
            self._link.write(self._load_scripts + wire)

    def _publisher_lost(self, link: Link) -> None:
        """The publisher's connection ended: the batch in flight fails; what is queued goes
        on a new connection (or fails, while Redis is unavailable)."""
        if link is not self._link:
            return  # one the publisher had let go (nothing was in flight on it)
        error = ConnectionError("redis closed the publisher's connection")
        batch, self._in_flight = self._in_flight, None
        if batch is not None:
            log.warning(
                "broker_send_failed", extra={"fields": {"error": str(error), "redis": self._shown}}
            )
            self._settle(batch.ops, [error] * len(batch.ops), 0.0)
        if not self._up:
            self._fail_queued()
            self._idle.set()
        elif self._flush_handle is None and self._connecting is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    async def _watchdog(self) -> None:
        """Drop the publisher's connection when a pipeline waited over ``COMMAND_TIMEOUT``
        for its replies (checked every ``WATCHDOG_EVERY`` seconds): its operations fail."""
        while True:
            await asyncio.sleep(WATCHDOG_EVERY)
            if self._in_flight is not None and self._link is not None:
                waited = time.perf_counter() - self._in_flight.started
                if waited > COMMAND_TIMEOUT:
                    self._link_stale = True
                    with contextlib.suppress(RedisError, OSError):
                        await self._link.close()

    def _settle(self, ops: list[_Op], results: list[object], elapsed: float) -> None:
        """Hand each operation its reply: a failure to its ``failed``, an answer to its
        future; a SAY that found its room's keys lost catches the room up."""
        lost: dict[str, None] = {}
        for op, result in zip(ops, results, strict=True):
            if isinstance(result, Exception):
                self._fail(op)
                self._moved(result)
            elif result == 0 and op.say is not None:
                lost[op.room] = None
                self._fail(op)
            else:
                metrics.BROKER_PUBLISH.observe(elapsed)
                if op.answer is not None and not op.answer.done():
                    op.answer.set_result(result)
        for room in lost:
            self._catch_up(room)

    def _pack(self, ops: list[_Op]) -> tuple[bytes, list[int]]:
        """The RESP bytes of ``ops``, in order, and what each reply answers: a run of
        messages (up to ``SAY_BATCH``) is one SAY call, whose reply holds a seq for each of
        its ``count`` messages; any other op is one command, whose reply (0) is its own."""
        chunks: list[bytes] = []
        replies: list[int] = []
        start, end = 0, len(ops)
        while start < end:
            if ops[start].say is None:
                chunks.append(ops[start].wire())
                replies.append(0)
                start += 1
                continue
            stop = start + 1
            # On a cluster node a script's keys must all be in one slot: one room per call.
            first = ops[start].say
            room = first[0] if self.sharded_pubsub and first is not None else None
            while (
                stop < end
                and stop - start < SAY_BATCH
                and (say := ops[stop].say) is not None
                and (room is None or say[0] == room)
            ):
                stop += 1
            run = [op.say for op in ops[start:stop] if op.say is not None]
            count = len(run)
            chunks += [
                say_head(self._scripts["say"].sha, count),
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
            if self.sharded_pubsub:
                rooms = await self._counted_rooms()
            else:
                flat = await self._run(Rooms(limit))
                rooms = [(flat[i].decode(), int(flat[i + 1])) for i in range(0, len(flat), 2)]
        except (RedisError, OSError):
            metrics.BROKER_ERRORS.labels("query").inc()
            raise BrokerUnavailable("redis is unavailable") from None
        return sorted(rooms, key=lambda room: (-room[1], room[0]))[:limit]

    async def _counted_rooms(self) -> list[tuple[str, int]]:
        """``(room, members)`` of every room with members whose keys this node holds.

        On a Redis Cluster node a script may touch the keys of one slot only, so no room
        list spans the rooms: the node's ``instances`` keys are found by ``SCAN`` and each
        room counted by the PRESENCE script, which costs Redis time in proportion to the
        keys and rooms the node holds. The match also takes a ban of a member named
        ``...}:instances`` (``roomhub:{R}:ban:x}:instances``); a room name holds no ``}``, so
        such a key is passed over."""
        found = [
            room
            async for key in self._client.scan_iter(match=INSTANCES_MATCH, count=SCAN_COUNT)
            if "}" not in (room := key[CHANNEL_HEAD : -len(INSTANCES_TAIL)].decode())
        ]
        pipe = self._client.pipeline(transaction=False)
        for room in found:
            await self._run(Presence(room), client=pipe)
        counts = await pipe.execute()
        return [(room, len(names)) for room, names in zip(found, counts, strict=True) if names]

    # -- the server API ----------------------------------------------------------------------

    def on_control(self, sink: ControlSink) -> None:
        self._control = sink

    def _on_control(self, data: bytes) -> None:
        if self._control is None:
            return
        try:
            order = payload.decode_control(data)
        except ValueError:
            log.warning("control_unreadable", extra={"fields": {"size": len(data)}})
            return
        self._control(order)

    async def _call(self, what: str, command: Awaitable[T]) -> T:
        """Await one API command; a Redis failure counts as a ``query`` error and raises
        :class:`BrokerUnavailable` naming ``what``."""
        try:
            return await command
        except (RedisError, OSError) as exc:
            metrics.BROKER_ERRORS.labels("query").inc()
            self._moved(exc)
            raise BrokerUnavailable(f"redis is unavailable ({what})") from None

    def _run(self, call: scripts.Call, client: aioredis.Redis | None = None) -> Awaitable[Any]:
        """Run script ``call`` now (loading it first if Redis lacks it), on ``client`` (a
        pipeline) if given."""
        return self._scripts[call.NAME](keys=call.keys(), args=call.args(), client=client)

    async def publish_message(self, room: str, user: str, text: str, data: object | None) -> int:
        event = server_message_event(0, room, user, text, data, now_ms())
        say = Say(
            room,
            event[len(MESSAGE_PREFIX) + 1 :],
            repr(time.time()),
            self.history_size,
            self.retention,
            # A room with members here has an epoch: if Redis has none, it lost the room.
            # (Not "a hub here": the API starts the room's hub before it publishes.)
            None if room in self._local else new_epoch(),
        )
        # SAY renews no expiry (a member's presence refresh does): a room the API publishes
        # into may have no member, so its keys are renewed here, as any use of a room does.
        pipe = self._client.pipeline(transaction=False)
        await self._run(say, client=pipe)
        for key in room_keys(room, "seq", "history", "epoch"):
            pipe.expire(key, self.retention)
        answers = await self._call("publish", pipe.execute())
        seq = int(answers[0][0])
        if not seq:
            metrics.BROKER_ERRORS.labels("query").inc()
            self._catch_up(room)
            raise BrokerUnavailable("redis lost the room's keys (publish)")
        return seq

    async def delete(self, room: str, seq: int) -> bool:
        delete = Delete(
            room,
            seq,
            repr(time.time()),
            deleted_event(room, seq),
            self.history_size,
        )
        found = await self._call("delete", self._run(delete))
        return bool(found)

    async def history(self, room: str, since: int, limit: int) -> list[bytes]:
        kept: list[bytes] = await self._call(
            "history",
            self._client.lrange(prefix(room) + "history", -self.history_size, -1),  # type: ignore[arg-type]  # redis-py: Awaitable | list
        )
        newer = [event for event in kept if encoded_history_seq(event) > since]
        return newer[-limit:]

    async def presence(self, room: str) -> list[str]:
        names = await self._call("presence", self._run(Presence(room)))
        return [orjson.loads(name) for name in names]

    async def control(self, order: Control) -> None:
        data = payload.encode_control(order)
        publish = self._client.execute_command(self._publish_command, self.control_channel, data)  # type: ignore[no-untyped-call]  # redis-py: not annotated
        await self._call("control", publish)

    async def ban(self, room: str, user: str, seconds: float | None) -> None:
        expiry = None if seconds is None else max(1, math.ceil(seconds * 1000))
        await self._call("ban", self._client.set(_ban_key(room, user), b"1", px=expiry))

    async def unban(self, room: str, user: str) -> bool:
        return bool(await self._call("unban", self._client.delete(_ban_key(room, user))))

    async def banned(self, room: str, user: str) -> bool:
        """Asked in the publisher's pipeline (an EXISTS whose reply resolves a future), not on
        a pooled connection: the checks of a burst of handshakes leave in one write instead of
        contending for the pool. Refused at once while Redis is unavailable, and when the
        batch fails (a :class:`BrokerUnavailable`, as every other query)."""
        answer: asyncio.Future[object] = asyncio.get_running_loop().create_future()

        def failed() -> None:
            if not answer.done():
                answer.set_exception(BrokerUnavailable("redis is unavailable (banned)"))

        key = _ban_key(room, user)
        self._enqueue(
            _Op("query", None, [], [], failed, command=("EXISTS", key), answer=answer, urgent=True)
        )
        return bool(await answer)


def _ban_key(room: str, user: str) -> str:
    return f"{prefix(room)}ban:{user}"


def candidate_names(user: str) -> list[Arg]:
    """The JOIN script's candidate names for ``user``, as names.free_name tries them: the
    name asked for (unless it is reserved), ``-2`` .. ``-SUFFIX_LIMIT``, then a random one.
    The numbered names go as one quadruple per suffix length (the name is cut to fit
    ``MAX_USER`` with its suffix),
    ``(key, JSON, first, last)``, and the script appends ``-n`` to both: ``-`` and digits
    are left alone by NFKC and case folding and need no JSON escape, so the key and JSON of
    ``base-n`` are those of ``base`` with ``-n`` appended. About 0.3 KB per join instead
    of the 30 KB that a pair per candidate took."""
    out: list[Arg] = [] if reserved(user) else [name_key(user), orjson.dumps(user), 0, 0]
    first = 2
    while first <= SUFFIX_LIMIT:
        digits = len(str(first))
        last = min(SUFFIX_LIMIT, 10**digits - 1)
        base = user[: MAX_USER - 1 - digits]
        out += [name_key(base), orjson.dumps(base), first, last]
        first = last + 1
    fallback = suffixed(user, SUFFIX_LIMIT + 1)
    return [*out, name_key(fallback), orjson.dumps(fallback), 0, 0]


def _by_room(ops: list[_Op]) -> list[_Op]:
    """``ops`` with each run of messages regrouped room by room (each room's messages, and
    every other operation, keep their order), so that a room's messages share SAY calls."""
    out: list[_Op] = []
    run: dict[bytes, list[_Op]] = {}
    for op in ops:
        if op.say is None:
            for group in run.values():
                out += group
            run.clear()
            out.append(op)
        else:
            run.setdefault(op.say[0], []).append(op)
    for group in run.values():
        out += group
    return out
