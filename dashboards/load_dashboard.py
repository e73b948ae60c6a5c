"""The "roomhub load (k6)" dashboard: what the k6 scenarios measured, next to the server.

k6 pushes its metrics through remote write (``-o experimental-prometheus-rw`` with
``K6_PROMETHEUS_RW_TREND_AS_NATIVE_HISTOGRAM=true``): counters arrive as ``k6_<name>_total``,
rates as ``k6_<name>_rate``, gauges as ``k6_<name>`` and time trends as native histograms
``k6_<name>_seconds``; every k6 tag (``testid``, ``scenario``, ...) is a label. The custom
metric names come from k6/lib/metrics.js.
"""

from __future__ import annotations

from grafana_foundation_sdk.models.dashboard import Dashboard, VariableSort
from panels import MAY_BE_EMPTY, finish, graph, link, new_dashboard, query, row, variable

UID = "roomhub-load"
K6 = 'testid=~"$testid", scenario=~"$scenario"'
RATE = "[$__rate_interval]"


def rate(metric: str, by: str = "scenario") -> str:
    """``sum by (by) (rate(metric{testid, scenario filter}[$__rate_interval]))``."""
    return f"sum by ({by}) (rate({metric}{{{K6}}}{RATE}))"


def trend(name: str, q: float) -> str:
    """Quantile ``q`` of a k6 time trend (native histogram ``k6_<name>_seconds``) per scenario."""
    return f"histogram_quantile({q}, {rate(f'k6_{name}_seconds')})"


def trend_quantiles(name: str) -> list:
    return [query(trend(name, q), f"p{q * 100:g} {{{{scenario}}}}") for q in (0.5, 0.95, 0.99)]


def build() -> Dashboard:
    board = (
        new_dashboard(
            UID,
            "roomhub load (k6)",
            "What a k6 scenario measured (remote write, tagged testid and scenario), with the "
            "server's key signals below for the same time range.",
        )
        .links([link("roomhub server", "roomhub-server")])
        .with_variable(
            variable(
                "testid",
                "test id",
                "label_values(k6_vus, testid)",
                sort=VariableSort.ALPHABETICAL_DESC,
            )
        )
        .with_variable(
            variable(
                "scenario",
                "scenario",
                'label_values(k6_ws_sessions_total{testid=~"$testid"}, scenario)',
                sort=VariableSort.ALPHABETICAL_ASC,
            )
        )
    )

    board.with_row(row("Load"))
    board.with_panel(
        graph(
            "Virtual users",
            "Active and allocated k6 VUs per test run. The spike scenario jumps straight up; "
            "storm ramps many short-lived users; soak holds a plateau.",
            "short",
            query('sum by (testid) (k6_vus{testid=~"$testid"})', "VUs {{testid}}"),
            query('sum by (testid) (k6_vus_max{testid=~"$testid"})', "max VUs {{testid}}"),
        )
    )
    board.with_panel(
        graph(
            "WebSocket sessions/s",
            "New WebSocket sessions per second by scenario: the storm's ramp up, the spike's "
            "jump, the soak's steady reconnects. Users that stay connected (mixed, "
            "active-chat) open their sessions once at the start and then add nothing here.",
            "ops",
            query(rate("k6_ws_sessions_total"), "{{scenario}}"),
        )
    )
    board.with_panel(
        graph(
            "Connecting p95",
            "95th percentile of the WebSocket handshake time (TCP connect + upgrade) by "
            "scenario. It rises when the server's event loop is saturated by a storm or spike.",
            "s",
            query(f"histogram_quantile(0.95, {rate('k6_ws_connecting_seconds')})", "{{scenario}}"),
        )
    )

    board.with_row(row("Latency"))
    board.with_panel(
        graph(
            "Message round trip (chat_rtt)",
            "Own chat message sent -> the same message read back from the room broadcast, by "
            "scenario. The fan-out cost every member pays; the global hub mode makes it climb "
            "with the room size.",
            "s",
            *trend_quantiles("chat_rtt"),
        )
    )
    board.with_panel(
        graph(
            "Bot round trip (chat_bot_rtt)",
            "/stock command sent -> the bot's reply, by scenario. The bot scenario's "
            "backpressure: it grows with the bot queue until commands are refused as busy.",
            "s",
            *trend_quantiles("chat_bot_rtt"),
        )
    )
    board.with_panel(
        graph(
            "Delivery lag (chat_delivery_lag)",
            "Server timestamp of another user's message -> the frame read by this client "
            "(sampled once per second per connection), by scenario. Queues in outboxes and in "
            "the k6 process itself show up here.",
            "s",
            *trend_quantiles("chat_delivery_lag"),
        )
    )

    board.with_row(row("Traffic and errors"))
    board.with_panel(
        graph(
            "Messages sent and received/s",
            "Chat messages sent, own messages read back, and server events received (each "
            "event of a batched frame counts; added when a session ends), per second.",
            "ops",
            query(rate("k6_chat_messages_sent_total"), "sent {{scenario}}"),
            query(rate("k6_chat_messages_echoed_total"), "echoed {{scenario}}"),
            query(rate("k6_chat_events_received_total"), "events received {{scenario}}"),
        )
    )
    board.with_panel(
        graph(
            "Checks: upgrades and bot replies",
            "Share of WebSocket upgrades that succeeded and of bot commands answered with a "
            "quote (cumulative over the run). Below 100 % during a storm over capacity or "
            "under bot backpressure.",
            "percentunit",
            query(
                f"min by (scenario) (k6_chat_ws_upgrade_ok_rate{{{K6}}})", "upgrades {{scenario}}"
            ),
            query(
                f"min by (scenario) (k6_chat_bot_reply_ok_rate{{{K6}}})",
                "bot replies ok {{scenario}}",
            ),
        )
    )
    board.with_panel(
        graph(
            "Unexpected closes and errors",
            "Connections the server or network closed while the client still wanted them, by "
            "close code (1013 slow consumer, 1008 policy, 1006 abnormal), and error events "
            f"by code (busy, rate_limited, ...). {MAY_BE_EMPTY}: a healthy run has none.",
            "ops",
            query(
                rate("k6_chat_unexpected_closes_total", "scenario, close_code"),
                "close {{close_code}}",
            ),
            query(rate("k6_chat_errors_received_total", "scenario, code"), "error {{code}}"),
        )
    )

    board.with_row(row("Server under this load"))
    board.with_panel(
        graph(
            "Server connections",
            "Open connections on all chat servers (details on the roomhub server dashboard).",
            "short",
            query("sum(chat_connections)", "connections"),
            width=6,
        )
    )
    board.with_panel(
        graph(
            "Server fan-out p99",
            "Broadcast fan-out p99 on all chat servers.",
            "s",
            query(
                "histogram_quantile(0.99, sum by (le) "
                f"(rate(chat_broadcast_fanout_seconds_bucket{RATE})))",
                "p99",
            ),
            width=6,
        )
    )
    board.with_panel(
        graph(
            "Server event-loop lag p99",
            "Event-loop lag p99 on all chat servers.",
            "s",
            query(
                "histogram_quantile(0.99, sum by (le) "
                f"(rate(chat_event_loop_lag_seconds_bucket{RATE})))",
                "p99",
            ),
            width=6,
        )
    )
    board.with_panel(
        graph(
            "Server RSS",
            "Resident memory of all chat servers: the soak scenario's leak check.",
            "bytes",
            query(
                "sum by (instance) (process_resident_memory_bytes and on (job, instance) "
                "chat_build_info)",
                "{{instance}}",
            ),
            width=6,
        )
    )
    return finish(board.build())
