"""First real load: 300 connections in one room, one broadcast, every connection reads it."""

from __future__ import annotations

import pytest

from tests.support.k6 import CHECKS, run_k6

pytestmark = pytest.mark.k6

CONNECTIONS = 300


def test_every_one_of_300_connections_receives_one_broadcast(live_server, k6_bin, tmp_path):
    opened = live_server.metrics()["chat_connections_opened_total"]
    run = run_k6(k6_bin, CHECKS / "broadcast-300.js", live_server.ws_url, tmp_path)
    assert not run.failures(), "thresholds failed:\n" + "\n".join(run.failures())
    assert run.returncode == 0, run.output[-4000:]
    assert live_server.metrics()["chat_connections_opened_total"] - opened == CONNECTIONS
    assert run.count("broadcast_received") == CONNECTIONS
    figures = {
        "connect_p95_ms": run.values("ws_connecting")["p(95)"],
        "delivery_p50_ms": run.values("broadcast_delivery")["med"],
        "delivery_p95_ms": run.values("broadcast_delivery")["p(95)"],
        "delivery_max_ms": run.values("broadcast_delivery")["max"],
    }
    print(" ".join(f"{name}={value:.1f}" for name, value in figures.items()))
