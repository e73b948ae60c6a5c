"""The "roomhub server" dashboard: what one or more chat server processes are doing.

Every query reads the metrics of server/ops/metrics.py (and the recorded series of
prometheus/rules/recording.yml in the last row), filtered by the ``$instance`` variable,
whose choices follow the ``$hub_mode`` variable (both read from ``chat_build_info``).
"""

from __future__ import annotations

from grafana_foundation_sdk.models.dashboard import Dashboard, VariableSort
from panels import (
    bucket_heatmap,
    finish,
    graph,
    link,
    new_dashboard,
    query,
    row,
    single,
    variable,
)

UID = "roomhub-server"
SEL = 'instance=~"$instance"'
RATE = "[$__rate_interval]"


def rate(metric: str, by: str = "", extra: str = "") -> str:
    """``sum [by (labels)] (rate(metric{instance filter[, extra]}[$__rate_interval]))``."""
    selector = f"{{{SEL}, {extra}}}" if extra else f"{{{SEL}}}"
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{selector}{RATE}))"


def quantile(q: float, histogram: str, by: str = "") -> str:
    """``histogram_quantile`` over a classic histogram's buckets, grouped by ``by`` and ``le``."""
    return f"histogram_quantile({q}, {rate(f'{histogram}_bucket', f'{by}, le' if by else 'le')})"


def quantiles(histogram: str, *qs: float) -> list:
    return [query(quantile(q, histogram, "instance"), f"p{q * 100:g} {{{{instance}}}}") for q in qs]


def recorded(name: str, extra: str = "") -> str:
    """A recorded series filtered by the ``$hub_mode`` and ``$instance`` variables."""
    return f'{name}{{hub_mode=~"$hub_mode", {SEL}{extra}}}'


def build() -> Dashboard:
    board = (
        new_dashboard(
            UID,
            "roomhub server",
            "Connections, fan-out, queues, event loop, process and stock bot of the roomhub "
            "chat servers picked by $hub_mode and $instance.",
        )
        .links([link("roomhub load (k6)", "roomhub-load")])
        .with_variable(
            variable(
                "hub_mode",
                "hub mode",
                "label_values(chat_build_info, hub_mode)",
                sort=VariableSort.ALPHABETICAL_ASC,
            )
        )
        .with_variable(
            variable(
                "instance",
                "instance",
                'label_values(chat_build_info{hub_mode=~"$hub_mode"}, instance)',
                sort=VariableSort.ALPHABETICAL_ASC,
            )
        )
    )

    board.with_row(row("Overview"))
    board.with_panel(
        single(
            "Hub mode",
            "ROOMHUB_HUB_MODE of the chosen servers: global is the single-hub 'before' design, "
            "sharded runs one hub task per room.",
            "none",
            query(f"max by (hub_mode) (chat_build_info{{{SEL}}})", "{{hub_mode}}"),
            name=True,
        )
    )
    board.with_panel(
        single(
            "Connections",
            "Open WebSocket connections.",
            "short",
            query(f"sum(chat_connections{{{SEL}}})", "connections"),
        )
    )
    board.with_panel(
        single(
            "Rooms",
            "Rooms with a running hub.",
            "short",
            query(f"sum(chat_rooms{{{SEL}}})", "rooms"),
        )
    )
    board.with_panel(
        single(
            "Events delivered/s",
            "Events handed to recipients per second, all chosen servers.",
            "short",
            query(rate("chat_events_delivered_total"), "events/s"),
        )
    )
    board.with_panel(
        single(
            "Fan-out p99",
            "99th percentile time to hand one event (or batch) to every member of its room.",
            "s",
            query(quantile(0.99, "chat_broadcast_fanout_seconds"), "p99"),
        )
    )
    board.with_panel(
        single(
            "Event-loop lag p99",
            "99th percentile of how late the periodic event-loop probe woke up.",
            "s",
            query(quantile(0.99, "chat_event_loop_lag_seconds"), "p99"),
        )
    )

    board.with_row(row("Connections"))
    board.with_panel(
        graph(
            "Connections and rooms",
            "Open WebSocket connections and rooms with a running hub, per server. The storm "
            "scenario draws a saw-tooth (all users connect, then leave); spike a sudden step; "
            "soak a flat line that must not drift.",
            "short",
            query(f"sum by (instance) (chat_connections{{{SEL}}})", "connections {{instance}}"),
            query(f"sum by (instance) (chat_rooms{{{SEL}}})", "rooms {{instance}}"),
        )
    )
    board.with_panel(
        graph(
            "Upgrades and closes by reason",
            "Successful WebSocket upgrades and closed connections per second, by close reason "
            "(normal, client_gone, slow_consumer, rate_limited, protocol_error, too_big, "
            "heartbeat_timeout, shutdown, error). Storm: opened and normal/client_gone closes "
            "rise together.",
            "ops",
            query(rate("chat_connections_opened_total"), "opened"),
            query(rate("chat_connections_closed_total", "reason"), "closed: {{reason}}"),
            table=True,
        )
    )
    board.with_panel(
        graph(
            "Handshake rejects by reason",
            "Upgrade requests refused before the upgrade (origin, bad_room, bad_user, "
            "capacity), per second. Zero in a healthy run; capacity rises when a storm "
            "exceeds ROOMHUB_MAX_CONNECTIONS.",
            "ops",
            query(rate("chat_handshakes_rejected_total", "reason"), "{{reason}}"),
            table=True,
        )
    )

    board.with_row(row("Fan-out"))
    board.with_panel(
        graph(
            "Fan-out time p50 / p95 / p99",
            "Time to hand one event (or one batch) to every member of its room. It grows "
            "with the room's size and the load: a 100-connection storm on sharded hubs "
            "measured p50 1-2 ms and p95 10-21 ms here. The global hub awaits every send "
            "in turn, so its p99 climbs with the number of connections.",
            "s",
            *quantiles("chat_broadcast_fanout_seconds", 0.5, 0.95, 0.99),
        )
    )
    board.with_panel(
        bucket_heatmap(
            "Fan-out time heatmap",
            "Broadcasts per fan-out time bucket (50 µs .. 1 s). A spike shows as a band "
            "moving up the buckets and back.",
            query(f"sum by (le) (increase(chat_broadcast_fanout_seconds_bucket{{{SEL}}}{RATE}))"),
        )
    )
    board.with_panel(
        graph(
            "Recipients per broadcast",
            "Members of the room per broadcast: mean and p99. The size of one fan-out.",
            "short",
            query(
                f"{rate('chat_broadcast_recipients_sum')}"
                f" / {rate('chat_broadcast_recipients_count')}",
                "mean",
            ),
            query(quantile(0.99, "chat_broadcast_recipients"), "p99"),
        )
    )
    board.with_panel(
        graph(
            "Events delivered/s and frames/s",
            "Events handed to recipients and WebSocket frames written, per second. Frames "
            "fall below events when pending events are coalesced into one frame.",
            "ops",
            query(rate("chat_events_delivered_total"), "events delivered"),
            query(rate("chat_frames_sent_total"), "frames sent"),
        )
    )
    board.with_panel(
        graph(
            "Batching factor (events per frame)",
            "Events delivered / frames sent. 1 means one frame per event; it grows with load "
            "as the hub coalesces events that arrive together.",
            "short",
            query(
                f"{rate('chat_events_delivered_total')} / {rate('chat_frames_sent_total')}",
                "events per frame",
            ),
        )
    )
    board.with_panel(
        graph(
            "Messages received/s by kind",
            "Client frames received per second: chat messages, bot commands and invalid frames.",
            "ops",
            query(rate("chat_messages_received_total", "kind"), "{{kind}}"),
        )
    )

    board.with_row(row("Queues and event loop"))
    board.with_panel(
        graph(
            "Hub and client queue depth",
            "Events waiting in hub inboxes (all rooms) and in client outboxes (all clients). "
            "The global hub's inbox grows under load; client outboxes grow behind slow "
            "readers.",
            "short",
            query(f"sum(chat_hub_queue_depth{{{SEL}}})", "hub inboxes"),
            query(f"sum(chat_client_queue_depth{{{SEL}}})", "client outboxes"),
            width=6,
        )
    )
    board.with_panel(
        graph(
            "Slow-consumer closes",
            "Connections closed with 1013 because their outbox stayed full, per second. Zero "
            "unless clients cannot keep up.",
            "ops",
            query(
                rate("chat_connections_closed_total", "instance", 'reason="slow_consumer"'),
                "{{instance}}",
            ),
            width=6,
        )
    )
    board.with_panel(
        graph(
            "asyncio tasks",
            "Tasks alive in the event loop. It follows connections (handler and writer per "
            "client); in the soak scenario it must return to its baseline after each wave.",
            "short",
            query(f"sum by (instance) (chat_asyncio_tasks{{{SEL}}})", "{{instance}}"),
            width=6,
        )
    )
    board.with_panel(
        graph(
            "Event-loop lag p50 / p99",
            "How late the periodic probe wakes up: time the loop spent on other work. Every "
            "message, heartbeat and bot reply waits at least this long.",
            "s",
            *quantiles("chat_event_loop_lag_seconds", 0.5, 0.99),
            width=6,
        )
    )

    board.with_row(row("Process"))
    board.with_panel(
        graph(
            "Resident memory",
            "RSS per server process. The soak scenario's leak check: after each wave of "
            "users it must come back to a plateau, not climb.",
            "bytes",
            query(f"sum by (instance) (process_resident_memory_bytes{{{SEL}}})", "{{instance}}"),
        )
    )
    board.with_panel(
        graph(
            "Open file descriptors",
            "Open fds per process: about one per connection. The compose file raises the "
            "limit (nofile) to 65536.",
            "short",
            query(f"sum by (instance) (process_open_fds{{{SEL}}})", "{{instance}}"),
        )
    )
    board.with_panel(
        graph(
            "CPU",
            "CPU seconds per second per process; one asyncio loop cannot use more than one core.",
            "percentunit",
            query(rate("process_cpu_seconds_total", "instance"), "{{instance}}"),
        )
    )

    board.with_row(row("Stock bot"))
    board.with_panel(
        graph(
            "Bot commands by result",
            "/stock commands per second by result (ok, unknown_symbol, upstream_error, "
            "timeout, rejected, dropped). The bot scenario's backpressure shows as rejected: "
            "the queue is full and senders get 'busy'. dropped: the reply's room had emptied "
            "and stopped.",
            "ops",
            query(rate("chat_bot_commands_total", "result"), "{{result}}"),
            table=True,
            width=6,
        )
    )
    board.with_panel(
        graph(
            "Bot latency p50 / p95 / p99",
            "Command received to reply broadcast: queue wait, cache or quote call, fan-out.",
            "s",
            *quantiles("chat_bot_latency_seconds", 0.5, 0.95, 0.99),
            width=6,
        )
    )
    board.with_panel(
        graph(
            "Upstream latency p50 / p99",
            "One call to the quote service (stockapi in compose). Cache hits and "
            "single-flight followers make no call.",
            "s",
            *quantiles("chat_bot_upstream_seconds", 0.5, 0.99),
            width=6,
        )
    )
    board.with_panel(
        graph(
            "Bot queue depth",
            "Commands waiting for a bot worker. Pinned at the queue size "
            "(ROOMHUB_BOT_QUEUE_SIZE) while the bot scenario pushes past what the workers "
            "serve.",
            "short",
            query(f"sum by (instance) (chat_bot_queue_depth{{{SEL}}})", "{{instance}}"),
            width=6,
        )
    )

    board.with_row(row("Backplane"))
    board.with_panel(
        graph(
            "Broker up",
            "Per instance and Redis shard (its index in ROOMHUB_BROKER): 1 while the instance "
            "reaches it, 0 while it is unavailable: that shard's rooms fail, /readyz answers "
            "degraded (503 once no shard is up) and RoomhubBrokerDown fires after 1 m. No "
            "series with the memory broker, which has no broker connection.",
            "short",
            query(
                f"min by (instance, shard) (chat_broker_up{{{SEL}}})",
                "{{instance}} shard {{shard}}",
            ),
            width=6,
        )
    )
    board.with_panel(
        graph(
            "Pub/sub lag p50 / p99",
            "A message handed to Redis by any instance to its fan-out on this one, including "
            "the room's fan-out interval. Redis broker only.",
            "s",
            *quantiles("chat_broker_lag_seconds", 0.5, 0.99),
            width=6,
        )
    )
    board.with_panel(
        graph(
            "Broker round trip p50 / p99",
            "A pipelined batch of broker operations (messages, joins, leaves, presence "
            "refreshes) handed to Redis to its reply. Redis broker only.",
            "s",
            *quantiles("chat_broker_publish_seconds", 0.5, 0.99),
            width=6,
        )
    )
    board.with_panel(
        graph(
            "Broker errors by operation",
            "Broker operations refused or failed per second while Redis was unavailable, by "
            "operation; Broker reconnects counts recoveries; subscriptions are the room "
            "channels the instances listen to on each Redis shard. Redis broker only.",
            "ops",
            query(rate("chat_broker_errors_total", "operation"), "{{operation}}"),
            query(rate("chat_broker_reconnects_total"), "reconnects"),
            query(
                f"sum by (shard) (chat_broker_subscriptions{{{SEL}}})",
                "subscriptions shard {{shard}}",
            ),
            width=6,
        )
    )

    board.with_row(row("Server API and moderation"))
    board.with_panel(
        graph(
            "API calls by method and result",
            "Server API calls per second (POST /api/v1/<method>, docs/api.md) by method and "
            "result: ok, or the error code. unauthorized counts calls with a missing or wrong "
            "X-API-Key.",
            "reqps",
            query(rate("chat_api_requests_total", "method, result"), "{{method}} {{result}}"),
            width=8,
        )
    )
    board.with_panel(
        graph(
            "API call latency p50 / p99",
            "One server API call from its request to its answer (with Redis: its round trips "
            "to Redis included).",
            "s",
            *quantiles("chat_api_request_seconds", 0.5, 0.99),
            width=8,
        )
    )
    board.with_panel(
        graph(
            "Moderation by action",
            "Kicks, bans, deletions and disconnects per second, through the server API or by "
            "moderators in the page.",
            "ops",
            query(rate("chat_moderation_total", "action"), "{{action}}"),
            width=8,
        )
    )

    board.with_row(row("Hub mode comparison (recorded, 1 m windows)"))
    board.with_panel(
        graph(
            "Fan-out p99 by hub mode",
            "Recorded fan-out p99 with each server's hub mode: run the same scenario with "
            "ROOMHUB_HUB_MODE=global and then sharded and compare the two curves.",
            "s",
            query(
                recorded(
                    "instance:chat_broadcast_fanout_seconds:quantile_rate1m", ', quantile="0.99"'
                ),
                "{{hub_mode}} {{instance}}",
            ),
        )
    )
    board.with_panel(
        graph(
            "Events delivered/s by hub mode",
            "Recorded delivery rate of all replicas of each hub mode.",
            "ops",
            query('job:chat_events_delivered:rate1m{hub_mode=~"$hub_mode"}', "{{hub_mode}}"),
        )
    )
    board.with_panel(
        graph(
            "Event-loop lag p99 by hub mode",
            "Recorded event-loop lag p99 with each server's hub mode.",
            "s",
            query(
                recorded(
                    "instance:chat_event_loop_lag_seconds:quantile_rate1m", ', quantile="0.99"'
                ),
                "{{hub_mode}} {{instance}}",
            ),
        )
    )
    return finish(board.build())
