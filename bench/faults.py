"""Faults with a checker (``make faults``): roomhub's delivery guarantee under Redis and
instance failures, measured from the clients' side.

Two roomhub instances (``python -m server serve``) share rooms through ``shards``
``redis-server`` processes (no persistence); ``ROOMHUB_BROKER`` lists every shard, so each
room lives on one of them. Instance 0 reaches shard 0 through a :class:`~bench.slowlink.SlowLink`
(a plain pass-through until the slow-link fault). Each fault gets fresh rooms, some on every
shard, with members spread over both instances, each member sending a numbered message at a
steady rate over a real WebSocket. The fault strikes a second into the traffic, recovers, and
the traffic goes on a moment longer; then the senders stop, every member that lost its
connection resumes (``since`` and ``epoch``), and the checker reads what each member got.

The guarantee (docs/protocol.md, "Sequence numbers, history and resume"): every message a
sender saw echoed reaches every member who stayed connected exactly once, in ``seq`` order;
a member whose connection ended is excused from the messages after the last one it saw only
when it then got ``reset`` (the room started a new epoch); otherwise resuming with
``since``/``epoch`` must fill the gap from history. :func:`check` counts, per member, what
broke it: lost (an echoed message it should have had and never got), duplicated (one message
twice), out of order (a lower ``seq`` after a higher one in one epoch), conflicts (two
members saw different messages under one ``(epoch, seq)``), and a message refused as
``unavailable`` that reached a member all the same (the docs say nobody gets one).

``python -m bench.faults`` prints the table (markdown); ``tests/test_faults.py`` asserts it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import aiohttp
import orjson
import redis.asyncio as aioredis

from .server import (
    Process,
    RedisServer,
    free_port,
    launch,
    serve_redis,
    server_env,
)
from .slowlink import SlowLink

__all__ = [
    "FAULTS",
    "Fault",
    "MemberLog",
    "Segment",
    "Tally",
    "check",
    "faults",
    "main",
    "run",
    "table",
]

INSTANCES = 2
SETTINGS = {
    "quote_provider": "sim",
    "log_level": "warning",
    "rate_limit": 50,
    "rate_burst": 50,
    "history_size": 500,
}
"""Every instance's settings: no member is rate-limited, and a member that resumes after a
few seconds away finds the gap in history (``history_size`` messages per room)."""
LEAD = 1.0  # seconds of traffic before a fault strikes
TAIL = 1.0  # seconds of traffic after it recovered
START_TIMEOUT = 20.0  # seconds an instance may take to answer /readyz with "ready"
JOIN_TIMEOUT = 10.0  # seconds every member of a phase may take to get its welcome
FAULT_TIMEOUT = 30.0  # seconds a fault and its recovery may take
SETTLE_TIMEOUT = 10.0  # seconds after the traffic for every member to catch up
CONNECT_TIMEOUT = 3.0  # seconds one connection attempt may take up to its welcome
MAX_RETRY = 1.0  # seconds between a member's connection attempts, at most
PROBE_ROOMS = 64  # room names tried at most to find rooms on every shard
POLL = 0.05  # seconds between two looks at an instance's /readyz


@dataclass(slots=True)
class Segment:
    """One connection of a member, from its ``welcome`` on: the welcome's ``epoch``,
    ``seq`` and ``reset``, every message received (``(seq, client id)``, history first, in
    arrival order), and ``closed``: the close code when the server or the network ended it
    (1006 without a close frame), None when the member closed it at the end."""

    epoch: str
    seq: int
    reset: bool
    received: list[tuple[int, str]] = field(default_factory=list)
    closed: int | None = None


@dataclass(slots=True)
class MemberLog:
    """Everything one member did and got: where it lives (``instance`` it first joins,
    ``shard`` of its room), the ids it sent (monotonic send time), echoed (seconds until its
    own message came back) and refused (``error`` ``unavailable``), and its connections in
    order; ``rejoined`` False when its last connection was ended for it and no new one
    could be made."""

    name: str
    room: str
    instance: int
    shard: int
    sent: dict[str, float] = field(default_factory=dict)
    echoed: dict[str, float] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    segments: list[Segment] = field(default_factory=list)
    rejoined: bool = True


@dataclass(slots=True)
class Tally:
    """What :func:`check` counts; messages are counted once per sender (``sent``,
    ``echoed``, ``refused``) or once per member that should have had them (the rest).

    ``refused_delivered``: refused messages some member got all the same (the docs say
    nobody gets one); ``delivered``: echoed messages a member got; ``excused``: echoed
    messages a member missed after its connection ended and the room restarted (a reset);
    ``closes``: connections the server or the network ended; ``slowest_echo``: seconds, the
    longest a sender waited for its own message."""

    members: int = 0
    sent: int = 0
    echoed: int = 0
    refused: int = 0
    refused_delivered: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    conflicts: int = 0
    closes: int = 0
    resets: int = 0
    excused: int = 0
    unresumed: int = 0
    slowest_echo: float = 0.0

    def __add__(self, other: Tally) -> Tally:
        summed = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name != "slowest_echo"
        }
        return Tally(**summed, slowest_echo=max(self.slowest_echo, other.slowest_echo))

    @property
    def broken(self) -> int:
        """Breaches of the guarantee: lost, duplicated, out of order, conflicts, unresumed,
        refused yet delivered."""
        return (
            self.lost
            + self.duplicated
            + self.out_of_order
            + self.conflicts
            + self.unresumed
            + self.refused_delivered
        )


def check(logs: list[MemberLog], history_size: int) -> list[Tally]:
    """One :class:`Tally` per member of ``logs`` (every member of one or more rooms), in
    order, against the guarantee (module docstring). ``history_size``: messages a welcome
    can hold, so a fresh or reset welcome must bring the last that many before it."""
    placed: dict[tuple[str, str, int], str] = {}  # (room, epoch, seq) -> client id
    at: dict[tuple[str, str], tuple[str, int]] = {}  # (room, id) -> (epoch, seq)
    conflicts: Counter[str] = Counter()
    for log in logs:
        for seg in log.segments:
            for seq, ident in seg.received:
                if placed.setdefault((log.room, seg.epoch, seq), ident) != ident:
                    conflicts[log.name] += 1
                if at.setdefault((log.room, ident), (seg.epoch, seq)) != (seg.epoch, seq):
                    conflicts[log.name] += 1
    echoed: dict[str, dict[str, list[tuple[int, str]]]] = {}  # room -> epoch -> (seq, id)
    for log in logs:
        for ident in log.echoed:
            epoch, seq = at[(log.room, ident)]
            echoed.setdefault(log.room, {}).setdefault(epoch, []).append((seq, ident))
    tallies = [
        _check_member(log, echoed.get(log.room, {}), history_size, conflicts[log.name])
        for log in logs
    ]
    for log, tally in zip(logs, tallies, strict=True):
        tally.refused_delivered = sum((log.room, ident) in at for ident in log.refused)
    return tallies


def _check_member(
    log: MemberLog,
    echoed: dict[str, list[tuple[int, str]]],
    history_size: int,
    conflicts: int,
) -> Tally:
    tally = Tally(
        members=1,
        sent=len(log.sent),
        echoed=len(log.echoed),
        refused=len(log.refused),
        conflicts=conflicts,
        slowest_echo=max(log.echoed.values(), default=0.0),
        unresumed=0 if log.rejoined else 1,
    )
    got: Counter[str] = Counter()
    top: dict[str, int] = {}  # epoch -> highest seq received in it
    spans: dict[str, list[float]] = {}  # epoch -> [lowest seq owed after, highest owed]
    for index, seg in enumerate(log.segments):
        tally.resets += seg.reset
        tally.closes += seg.closed is not None
        if seg.epoch not in spans or seg.reset:
            spans[seg.epoch] = [max(0, seg.seq - history_size), math.inf]
        for seq, ident in seg.received:
            got[ident] += 1
            if got[ident] > 1:
                tally.duplicated += 1
                continue
            if seq < top.get(seg.epoch, 0):
                tally.out_of_order += 1
            top[seg.epoch] = max(top.get(seg.epoch, 0), seq)
        last_in_epoch = all(later.epoch != seg.epoch for later in log.segments[index + 1 :])
        if last_in_epoch and seg.closed is not None:
            spans[seg.epoch][1] = top.get(seg.epoch, 0)  # excused after this, if reset
    for epoch, messages in echoed.items():
        low, high = spans.get(epoch, (math.inf, math.inf))
        for seq, ident in messages:
            if got[ident]:
                tally.delivered += 1
            elif low < seq <= high:
                tally.lost += 1
            elif seq > high:
                tally.excused += 1
    return tally


# -- the members ------------------------------------------------------------------------------


class Member:
    """One chat member: keeps a connection (resuming with ``since``/``epoch`` after one
    ends, its home instance first) and sends a numbered message every ``1 / rate`` seconds
    while the traffic runs, recording everything in its :class:`MemberLog`."""

    def __init__(
        self,
        log: MemberLog,
        urls: list[str],
        session: aiohttp.ClientSession,
        changed: asyncio.Event,
    ) -> None:
        self.log = log
        self.changed = changed  # set whenever something happens to the member
        self.urls = urls
        self.session = session
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.segment: Segment | None = None
        self.epoch: str | None = None
        self.mark = 0  # highest seq received in ``epoch``
        self.leaving = False
        self.sent_on: dict[str, Segment] = {}

    @property
    def settled(self) -> bool:
        """Connected, and every message it sent on this connection echoed or refused."""
        seg = self.segment
        if self.ws is None or self.ws.closed or seg is None:
            return False
        answered = self.log.echoed.keys() | self.log.refused
        return all(ident in answered for ident, on in self.sent_on.items() if on is seg)

    async def keep(self, done: asyncio.Event) -> None:
        """Stay connected until ``done``; each attempt after a failure waits longer (up to
        ``MAX_RETRY`` seconds) and tries the next instance."""
        attempt, delay = 0, 0.05
        while not done.is_set():
            ws = await self._connect(self.urls[(self.log.instance + attempt) % len(self.urls)])
            if ws is None:
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), delay)
                delay = min(delay * 2, MAX_RETRY)
                continue
            attempt, delay = 0, 0.05
            if self.leaving:
                await ws.close()
                return
            await self._read(ws)

    async def _connect(self, url: str) -> aiohttp.ClientWebSocketResponse | None:
        """Join through the instance at ``url`` (resuming once there was a welcome) and
        handle the welcome; None when the attempt failed."""
        params = {"room": self.log.room, "user": self.log.name}
        if self.epoch is not None:
            params |= {"since": str(self.mark), "epoch": self.epoch}
        ws = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                ws = await self.session.ws_connect(url, params=params, max_msg_size=0)
                frame = await ws.receive()
        except (aiohttp.ClientError, OSError, TimeoutError):
            if ws is not None:
                await ws.close()
            return None
        if frame.type is not aiohttp.WSMsgType.TEXT:
            await ws.close()
            return None
        events = _events(frame.data)
        welcome = events[0]
        if welcome.get("type") != "welcome":
            await ws.close()
            return None
        seg = Segment(welcome["epoch"], welcome["seq"], welcome["reset"])
        if welcome["reset"] or welcome["epoch"] != self.epoch:
            self.epoch, self.mark = welcome["epoch"], 0
        self.log.segments.append(seg)
        self.segment, self.ws = seg, ws
        self._handle(seg, welcome["history"])
        self._handle(seg, events[1:])
        return ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        seg = self.segment
        assert seg is not None
        async for frame in ws:
            if frame.type is not aiohttp.WSMsgType.TEXT:
                break
            self._handle(seg, _events(frame.data))
        if not self.leaving:
            seg.closed = ws.close_code or 1006
        self.ws = None
        self.changed.set()

    def _handle(self, seg: Segment, events: list[dict[str, object]]) -> None:
        self.changed.set()
        now = time.monotonic()
        for event in events:
            kind = event.get("type")
            if kind == "message":
                seq, ident = event["seq"], event.get("id")
                assert isinstance(seq, int)
                ident = ident if isinstance(ident, str) else f"~{seq}"
                seg.received.append((seq, ident))
                self.mark = max(self.mark, seq)
                sent = self.log.sent.get(ident)
                if sent is not None and ident not in self.log.echoed:
                    self.log.echoed[ident] = now - sent
            elif kind == "error" and event.get("code") == "unavailable":
                reply_to = event.get("reply_to")
                if isinstance(reply_to, str):
                    self.log.refused.add(reply_to)

    async def send(self, stop: asyncio.Event, rate: float, offset: float) -> None:
        """Send ``{name}.{n}`` every ``1 / rate`` seconds from ``offset`` on until ``stop``;
        a tick without an open connection sends nothing."""
        loop = asyncio.get_running_loop()
        due, number = loop.time() + offset, 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - loop.time()))
            due += 1 / rate
            ws, seg = self.ws, self.segment
            if stop.is_set() or ws is None or ws.closed or seg is None:
                continue
            ident = f"{self.log.name}.{number}"
            number += 1
            self.log.sent[ident] = time.monotonic()
            self.sent_on[ident] = seg
            try:
                await ws.send_str(f'{{"type":"message","text":"{ident}","id":"{ident}"}}')
            except (aiohttp.ClientError, ConnectionError):
                del self.log.sent[ident], self.sent_on[ident]

    async def leave(self) -> None:
        """Close the connection (the member's own close: not counted as a close)."""
        self.leaving = True
        if self.ws is not None:
            await self.ws.close()


def _events(data: str) -> list[dict[str, object]]:
    parsed = orjson.loads(data)
    return parsed if isinstance(parsed, list) else [parsed]


# -- the cluster ------------------------------------------------------------------------------


class Cluster:
    """The redis-servers (shards), the slow link from instance 0 to shard 0, and the
    roomhub instances, with what the faults do to them."""

    def __init__(self, workdir: Path, shards: list[RedisServer], link: SlowLink) -> None:
        self.workdir = workdir
        self.shards = shards
        self.link = link
        self.ports = [free_port() for _ in range(INSTANCES)]
        self.instances: list[Process | None] = [None] * INSTANCES
        self.session = aiohttp.ClientSession()
        self.started = 0

    @property
    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{port}/ws" for port in self.ports]

    def broker(self, instance: int) -> str:
        """Instance ``instance``'s ``ROOMHUB_BROKER``: every shard, shard 0 of instance 0
        through the slow link."""
        ports = [shard.port for shard in self.shards]
        if instance == 0:
            ports[0] = self.link.port
        return ",".join(f"redis://127.0.0.1:{port}/0" for port in ports)

    def start(self, instance: int) -> None:
        """Start instance ``instance`` on its port (without waiting: :meth:`ready`)."""
        self.started += 1
        port = self.ports[instance]
        env = server_env(port, broker=self.broker(instance), **SETTINGS)
        log = self.workdir / f"roomhub-{instance}-{self.started}.log"
        self.instances[instance] = launch(["-m", "server", "serve"], port, log, env)

    async def ready(self) -> None:
        """Wait until every instance answers ``/readyz`` with ``ready`` (every shard up);
        ``TimeoutError`` after ``START_TIMEOUT`` seconds, ``RuntimeError`` if one exits."""
        async with asyncio.timeout(START_TIMEOUT):
            for port, process in zip(self.ports, self.instances, strict=True):
                for _ in range(int(START_TIMEOUT / POLL)):
                    if await self._ready(port):
                        break
                    if process is not None and process.proc.poll() is not None:
                        raise RuntimeError(f"roomhub exited: {process.output()[-2000:]}")
                    await asyncio.sleep(POLL)

    async def _ready(self, port: int) -> bool:
        url = f"http://127.0.0.1:{port}/readyz"
        try:
            async with self.session.get(url) as response:
                return (await response.json()).get("status") == "ready"
        except (aiohttp.ClientError, OSError, ValueError):
            return False

    def kill(self, instance: int) -> None:
        """SIGKILL instance ``instance``."""
        process = self.instances[instance]
        if process is not None:
            os.kill(process.pid, signal.SIGKILL)
            process.proc.wait()

    async def shard_of(self, room: str) -> int:
        """The shard that holds ``room``'s keys (-1: none yet)."""
        for index, shard in enumerate(self.shards):
            async with aioredis.Redis(port=shard.port) as client:
                if await client.exists(f"roomhub:{{{room}}}:epoch"):
                    return index
        return -1

    async def close(self) -> None:
        for process in self.instances:
            if process is not None:
                await asyncio.to_thread(process.stop)
        await self.session.close()


# -- the faults -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: its label, which members it strikes (``hit``: by home instance and
    shard), and ``strike``: the fault and its recovery, returning once the cluster is whole."""

    label: str
    hit: Callable[[MemberLog], bool]
    strike: Callable[[Cluster], Awaitable[None]]


SHARD_DOWN = 1.0  # seconds a killed shard stays down
PAUSE_MS = 3000  # CLIENT PAUSE, milliseconds
LINK_DELAY = 0.005  # seconds added each way on the slow link
LINK_SLOW = 1.0  # seconds of the delay alone, before and after the stall
LINK_STALL = 2.0  # seconds nothing crosses the link


async def _kill_shard(cluster: Cluster) -> None:
    cluster.shards[0].kill()
    await asyncio.sleep(SHARD_DOWN)
    cluster.shards[0].start()  # on the same port, empty
    await cluster.ready()


async def _pause_shard(cluster: Cluster) -> None:
    async with aioredis.Redis(port=cluster.shards[0].port) as client:
        await client.client_pause(PAUSE_MS)
    await asyncio.sleep(PAUSE_MS / 1000)
    await cluster.ready()


async def _kill_instance(cluster: Cluster) -> None:
    cluster.kill(0)
    cluster.start(0)  # its members have moved to instance 1 by the time it serves
    await cluster.ready()


async def _slow_link(stall: float, cluster: Cluster) -> None:
    cluster.link.delay = LINK_DELAY
    await asyncio.sleep(LINK_SLOW)
    cluster.link.stall()
    await asyncio.sleep(stall)
    cluster.link.flow()
    await asyncio.sleep(LINK_SLOW)
    cluster.link.delay = 0.0


def faults(stall: float = LINK_STALL) -> tuple[Fault, ...]:
    """The four faults, in order; ``stall``: seconds the slow link stalls."""
    return (
        Fault("shard 0 SIGKILL, restarted empty", lambda m: m.shard == 0, _kill_shard),
        Fault(f"CLIENT PAUSE {PAUSE_MS} on shard 0", lambda m: m.shard == 0, _pause_shard),
        Fault("instance 0 SIGKILL, restarted", lambda m: m.instance == 0, _kill_instance),
        Fault(
            f"link instance 0 to shard 0: +{LINK_DELAY * 1000:g} ms each way, {stall:g} s stall",
            lambda m: m.instance == 0 and m.shard == 0,
            functools.partial(_slow_link, stall),
        ),
    )


FAULTS = faults()


@dataclass(frozen=True, slots=True)
class Traffic:
    """The load of each phase: rooms on every shard, members per room (spread over the
    instances), messages per second per member."""

    rooms_per_shard: int = 2
    members: int = 4
    rate: float = 4.0


async def _place_rooms(cluster: Cluster, tag: str, per_shard: int) -> list[tuple[str, int]]:
    """``per_shard`` fresh rooms on every shard, found by joining candidates (a probe
    member's join makes the room's keys on its shard)."""
    wanted = {index: per_shard for index in range(len(cluster.shards))}
    rooms = []
    for number in range(PROBE_ROOMS):
        room = f"{tag}-{number}"
        params = {"room": room, "user": "probe"}
        async with (
            asyncio.timeout(CONNECT_TIMEOUT),
            cluster.session.ws_connect(cluster.urls[1], params=params) as ws,
        ):
            await ws.receive()
        shard = await cluster.shard_of(room)
        if wanted.get(shard, 0) > 0:
            wanted[shard] -= 1
            rooms.append((room, shard))
        if not any(wanted.values()):
            return rooms
    raise RuntimeError(f"{PROBE_ROOMS} room names did not cover every shard: {wanted}")


async def _phase(
    cluster: Cluster, number: int, fault: Fault, load: Traffic
) -> tuple[list[MemberLog], float]:
    """Run ``fault`` under fresh traffic: every member's log, and the seconds the fault and
    its recovery took."""
    rooms = await _place_rooms(cluster, f"f{number}", load.rooms_per_shard)
    changed = asyncio.Event()
    members = [
        Member(
            MemberLog(f"{room}m{k}", room, k % INSTANCES, shard),
            cluster.urls,
            cluster.session,
            changed,
        )
        for room, shard in rooms
        for k in range(load.members)
    ]
    done, stop = asyncio.Event(), asyncio.Event()
    keepers = [asyncio.create_task(member.keep(done)) for member in members]
    try:
        async with asyncio.timeout(JOIN_TIMEOUT):
            await _until(lambda: all(member.settled for member in members), changed)
        senders = [
            asyncio.create_task(member.send(stop, load.rate, i / len(members) / load.rate))
            for i, member in enumerate(members)
        ]
        await asyncio.sleep(LEAD)
        struck = time.monotonic()
        async with asyncio.timeout(FAULT_TIMEOUT):
            await fault.strike(cluster)
        seconds = time.monotonic() - struck
        await asyncio.sleep(TAIL)
        stop.set()
        await asyncio.gather(*senders)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE_TIMEOUT):
                await _until(lambda: _settled(members), changed)
    finally:
        done.set()
        for member in members:
            member.log.rejoined = member.segment is None or member.segment.closed is None
            await member.leave()
        await asyncio.gather(*keepers, return_exceptions=True)
    return [member.log for member in members], seconds


async def _until(condition: Callable[[], bool], changed: asyncio.Event) -> None:
    """Return once ``condition`` holds, looking again each time ``changed`` is set."""
    while not condition():
        changed.clear()
        await changed.wait()


def _settled(members: list[Member]) -> bool:
    """Every member connected with its messages answered, and every member of a room at
    the same epoch and seq."""
    if not all(member.settled for member in members):
        return False
    marks: dict[str, set[tuple[str | None, int]]] = {}
    for member in members:
        marks.setdefault(member.log.room, set()).add((member.epoch, member.mark))
    return all(len(seen) == 1 for seen in marks.values())


@dataclass(frozen=True, slots=True)
class Row:
    """The tallies of one fault: members it struck and the others; ``seconds`` from the
    strike until the cluster was whole again."""

    fault: Fault
    hit: Tally
    spared: Tally
    seconds: float


async def _run(
    workdir: Path, redis_server: str, shards: int, faults: tuple[Fault, ...], load: Traffic
) -> list[Row]:
    rows = []
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(serve_redis(redis_server, _directory(workdir, f"shard{i}")))
            for i in range(shards)
        ]
        link = SlowLink(servers[0].port)
        await link.start()
        cluster = Cluster(workdir, servers, link)
        try:
            for instance in range(INSTANCES):
                cluster.start(instance)
            await cluster.ready()
            for number, fault in enumerate(faults, 1):
                logs, seconds = await _phase(cluster, number, fault, load)
                tallies = check(logs, int(SETTINGS["history_size"]))
                hit = [t for log, t in zip(logs, tallies, strict=True) if fault.hit(log)]
                spared = [t for log, t in zip(logs, tallies, strict=True) if not fault.hit(log)]
                rows.append(Row(fault, sum(hit, Tally()), sum(spared, Tally()), seconds))
        finally:
            await cluster.close()
            await link.close()
    return rows


def _directory(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(
    workdir: Path,
    redis_server: str = "redis-server",
    shards: int = 2,
    faults: tuple[Fault, ...] = FAULTS,
    load: Traffic = Traffic(),
) -> list[Row]:
    """Run ``faults`` in turn against two instances on ``shards`` fresh redis-servers
    (``redis_server``: the binary), process logs under ``workdir``; one :class:`Row` per
    fault. Raises ``RuntimeError``/``TimeoutError`` when the cluster does not start or
    recover within its bounds."""
    return asyncio.run(_run(workdir, redis_server, shards, faults, load))


COLUMNS = (
    ("members", "members"),
    ("sent", "sent"),
    ("echoed", "echoed"),
    ("refused", "refused (`unavailable`)"),
    ("refused_delivered", "refused, yet delivered"),
    ("delivered", "delivered"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("out_of_order", "out of order"),
    ("conflicts", "seq conflicts"),
    ("closes", "closes"),
    ("resets", "resets"),
    ("excused", "excused by a reset"),
)


def table(rows: list[Row]) -> str:
    """The markdown table: two lines per fault (the members it struck, the others)."""
    head = ["fault", "fault and recovery (s)", *(label for _, label in COLUMNS)]
    head.append("slowest echo (s)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for number, row in enumerate(rows, 1):
        for which, tally in (("struck", row.hit), ("others", row.spared)):
            cells = [f"{number}. {row.fault.label}: {which}", f"{row.seconds:.1f}"]
            cells += [f"{getattr(tally, name):,}" for name, _ in COLUMNS]
            cells.append(f"{tally.slowest_echo:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    default = Traffic()
    parser = argparse.ArgumentParser(
        prog="python -m bench.faults", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--shards", type=int, default=2, help="redis-servers (2)")
    parser.add_argument(
        "--rooms-per-shard", type=int, default=default.rooms_per_shard, help="rooms on each (2)"
    )
    parser.add_argument("--members", type=int, default=default.members, help="per room (4)")
    parser.add_argument("--rate", type=float, default=default.rate, help="msg/s per member (4)")
    parser.add_argument(
        "--stall", type=float, default=LINK_STALL, help="seconds the slow link stalls (2)"
    )
    parser.add_argument("--redis-server", default="redis-server", help="the binary")
    args = parser.parse_args(argv)
    load = Traffic(args.rooms_per_shard, args.members, args.rate)
    workdir = Path(tempfile.mkdtemp(prefix="roomhub-faults-"))
    started = time.monotonic()
    rows = run(workdir, args.redis_server, args.shards, faults(args.stall), load)
    print(table(rows))
    print(f"\n{time.monotonic() - started:.1f} s; logs in {workdir}", file=sys.stderr)
    return 1 if any(row.hit.broken or row.spared.broken for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
