"""Every Prometheus metric roomhub exports, defined once.

Names and labels are part of the interface (dashboards, recording rules and k6 tests use
them); see docs/metrics.md. Labels only take values from the fixed enums below, never room
or user names. Queue gauges are computed at scrape time from callbacks that the app
registers with :func:`set_scrape_sources`.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..wire.api import ERRORS, METHODS
from ..wire.protocol import CloseReason
from . import heap

disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client: not annotated

HEAP_STATES = ("in_use", "kept")
CLOSE_REASONS = tuple(reason.label for reason in CloseReason)
REJECT_REASONS = (
    "origin",
    "bad_room",
    "bad_user",
    "capacity",
    "token_missing",
    "token_invalid",
    "token_expired",
    "room_not_allowed",
    "upgrade_rate",
    "address_connections",
    "room_rate",
    "banned",
)
MESSAGE_KINDS = ("message", "command", "invalid")
BOT_RESULTS = ("ok", "unknown_symbol", "upstream_error", "timeout", "rejected", "dropped")
BROKER_OPERATIONS = ("message", "presence", "bot", "sync", "subscribe", "query")
API_METHODS = (*METHODS, "unknown")
API_RESULTS = ("ok", *ERRORS)
MODERATION_ACTIONS = ("kick", "ban", "delete", "disconnect")

# Fan-out and loop lag: 50 µs .. 1 s (seconds).
FAST_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
# Bot latency and upstream calls: 5 ms .. 10 s (seconds).
BOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RECIPIENT_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class HotCounter:
    """A counter on the message path: a plain int (the event loop is one thread, so no lock)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class HotCounters:
    """A counter family with one label: a :class:`HotCounter` per value, bound up front."""

    def __init__(self, name: str, documentation: str, label: str, values: Iterable[str]) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.children = {value: HotCounter() for value in values}

    def labels(self, value: str) -> HotCounter:
        """The counter of ``value`` (KeyError for a value not declared)."""
        return self.children[value]


class HotHistogram:
    """A histogram on the message path: one count per bucket (a bisect, no lock), made
    cumulative at scrape time. ``buckets`` are upper bounds (``le``), ascending."""

    __slots__ = ("bounds", "counts", "documentation", "name", "total")

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = tuple(float(bound) for bound in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class HotMetrics(Collector):
    """Exports every :class:`HotCounter`, :class:`HotCounters` and :class:`HotHistogram` made
    through it, as prometheus_client's own types would (same names, HELP, types, ``le``)."""

    def __init__(self) -> None:
        self.counters: list[tuple[str, str, HotCounter]] = []
        self.families: list[HotCounters] = []
        self.histograms: list[HotHistogram] = []

    def counter(self, name: str, documentation: str) -> HotCounter:
        counter = HotCounter()
        self.counters.append((name, documentation, counter))
        return counter

    def labelled(
        self, name: str, documentation: str, label: str, values: Iterable[str]
    ) -> HotCounters:
        family = HotCounters(name, documentation, label, values)
        self.families.append(family)
        return family

    def histogram(self, name: str, documentation: str, buckets: Iterable[float]) -> HotHistogram:
        histogram = HotHistogram(name, documentation, buckets)
        self.histograms.append(histogram)
        return histogram

    def collect(self) -> Iterator[Metric]:
        for name, documentation, counter in self.counters:
            yield CounterMetricFamily(name, documentation, value=counter.value)
        for family in self.families:
            metric = CounterMetricFamily(family.name, family.documentation, labels=[family.label])
            for value, child in family.children.items():
                metric.add_metric([value], child.value)
            yield metric
        for histogram in self.histograms:
            running, buckets = 0, []
            for bound, count in zip((*histogram.bounds, math.inf), histogram.counts, strict=True):
                running += count
                buckets.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]  # prometheus_client: not annotated
            yield HistogramMetricFamily(
                histogram.name, histogram.documentation, buckets=buckets, sum_value=histogram.total
            )


HOT = HotMetrics()

CONNECTIONS = Gauge("chat_connections", "Open WebSocket connections.")
ROOMS = Gauge("chat_rooms", "Rooms with a running hub.")
CONNECTIONS_OPENED = Counter("chat_connections_opened", "Successful WebSocket upgrades.")
CONNECTIONS_CLOSED = Counter(
    "chat_connections_closed", "WebSocket connections closed, by reason.", ["reason"]
)
HANDSHAKES_REJECTED = Counter(
    "chat_handshakes_rejected",
    "Upgrade requests refused before the upgrade, by reason.",
    ["reason"],
)
HANDSHAKE_TIMEOUTS = Counter(
    "chat_handshake_timeouts",
    "Connections closed because their first request header was not complete within "
    "ROOMHUB_HANDSHAKE_TIMEOUT seconds of connecting (nothing sent counts too).",
)
MESSAGES_RECEIVED = HOT.labelled(
    "chat_messages_received", "Client frames received, by kind.", "kind", MESSAGE_KINDS
)
EVENTS_DELIVERED = HOT.counter(
    "chat_events_delivered", "Events handed to recipients (one per event per recipient)."
)
FRAMES_SENT = HOT.counter("chat_frames_sent", "WebSocket frames written to clients.")
BROADCAST_FANOUT = HOT.histogram(
    "chat_broadcast_fanout_seconds",
    "Time to hand one event (or one batch) to every member of its room.",
    buckets=FAST_BUCKETS,
)
BROADCAST_RECIPIENTS = HOT.histogram(
    "chat_broadcast_recipients", "Members per broadcast.", buckets=RECIPIENT_BUCKETS
)
HUB_QUEUE_DEPTH = Gauge("chat_hub_queue_depth", "Events waiting in hub inboxes (all rooms).")
CLIENT_QUEUE_DEPTH = Gauge(
    "chat_client_queue_depth", "Events waiting in client outboxes (all clients)."
)
ASYNCIO_TASKS = Gauge("chat_asyncio_tasks", "Tasks alive in the event loop.")
EVENT_LOOP_LAG = Histogram(
    "chat_event_loop_lag_seconds",
    "Scheduling delay of a periodic event-loop probe.",
    buckets=FAST_BUCKETS,
)
BOT_COMMANDS = Counter("chat_bot_commands", "Bot commands, by result.", ["result"])
BOT_LATENCY = Histogram(
    "chat_bot_latency_seconds",
    "Bot command received to reply handed to its room's hub for broadcast.",
    buckets=BOT_BUCKETS,
)
BOT_UPSTREAM = Histogram(
    "chat_bot_upstream_seconds", "One call to the quote service.", buckets=BOT_BUCKETS
)
BOT_QUEUE_DEPTH = Gauge("chat_bot_queue_depth", "Bot commands waiting for a worker.")
HEAP_BYTES = Gauge(
    "chat_heap_bytes",
    "C heap (glibc malloc): bytes in use, and bytes kept free but not given back.",
    ["state"],
)
BROKER_PUBLISH = HOT.histogram(
    "chat_broker_publish_seconds",
    "Broker operation handed to Redis to its reply (one pipelined batch, per operation).",
    buckets=FAST_BUCKETS,
)
BROKER_LAG = HOT.histogram(
    "chat_broker_lag_seconds",
    "Message or bot reply handed to the broker (any instance) to its fan-out on this one.",
    buckets=FAST_BUCKETS,
)
BROKER_ERRORS = Counter(
    "chat_broker_errors",
    "Broker operations that failed or were refused, by operation.",
    ["operation"],
)
API_REQUESTS = Counter(
    "chat_api_requests",
    "Server API calls, by method (unknown: not a method) and result (ok or the error code).",
    ["method", "result"],
)
API_SECONDS = Histogram(
    "chat_api_request_seconds",
    "One server API call, from its request to its answer.",
    buckets=FAST_BUCKETS,
)
MODERATION = Counter("chat_moderation", "Moderation actions carried out, by action.", ["action"])
BROKER_RECONNECTS = Counter("chat_broker_reconnects", "Reconnections to the broker after a loss.")
BUILD_INFO = Gauge(
    "chat_build_info",
    "Build, hub mode and broker kind; always 1.",
    ["version", "hub_mode", "broker"],
)


class BrokerLink(Collector):
    """``chat_broker_up`` and ``chat_broker_subscriptions`` per Redis shard (label ``shard``:
    its index in ``ROOMHUB_BROKER``, "0" with one Redis), read at scrape time from the Redis
    broker handed to :meth:`watch`. With the memory broker there is no broker connection to
    describe, so neither series is exported (an absent series, not a constant 1)."""

    def __init__(self) -> None:
        self.broker: Callable[[], Sequence[tuple[bool, int]]] | None = None

    def watch(self, state: Callable[[], Sequence[tuple[bool, int]]] | None) -> None:
        """Export from ``state() -> [(up, subscriptions) of each shard]``; None: stop."""
        self.broker = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.broker is None:
            return
        shards = self.broker()
        up = GaugeMetricFamily(
            "chat_broker_up",
            "1 while the Redis shard can carry operations, else 0.",
            labels=["shard"],
        )
        subscriptions = GaugeMetricFamily(
            "chat_broker_subscriptions",
            "Room channels this instance is subscribed to on the Redis shard.",
            labels=["shard"],
        )
        for index, (ready, count) in enumerate(shards):
            up.add_metric([str(index)], 1 if ready else 0)
            subscriptions.add_metric([str(index)], count)
        yield up
        yield subscriptions


BROKER_LINK = BrokerLink()
REGISTRY.register(BROKER_LINK)
REGISTRY.register(HOT)

if heap.AVAILABLE:
    for _state in HEAP_STATES:
        HEAP_BYTES.labels(_state).set_function(
            lambda state=_state: getattr(heap.heap_stats(), state)  # type: ignore[misc]  # default binds the loop variable
        )
for _reason in CLOSE_REASONS:
    CONNECTIONS_CLOSED.labels(_reason)
for _reason in REJECT_REASONS:
    HANDSHAKES_REJECTED.labels(_reason)
for _result in BOT_RESULTS:
    BOT_COMMANDS.labels(_result)
for _operation in BROKER_OPERATIONS:
    BROKER_ERRORS.labels(_operation)
for _action in MODERATION_ACTIONS:
    MODERATION.labels(_action)
for _method in METHODS:
    API_REQUESTS.labels(_method, "ok")


def set_scrape_sources(
    *,
    connections: Callable[[], float],
    rooms: Callable[[], float],
    hub_queue_depth: Callable[[], float],
    client_queue_depth: Callable[[], float],
    bot_queue_depth: Callable[[], float],
    asyncio_tasks: Callable[[], float],
) -> None:
    """Point the state gauges at callbacks evaluated on each scrape."""
    CONNECTIONS.set_function(connections)
    ROOMS.set_function(rooms)
    HUB_QUEUE_DEPTH.set_function(hub_queue_depth)
    CLIENT_QUEUE_DEPTH.set_function(client_queue_depth)
    BOT_QUEUE_DEPTH.set_function(bot_queue_depth)
    ASYNCIO_TASKS.set_function(asyncio_tasks)
