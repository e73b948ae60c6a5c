"""The server on each event loop ``ROOMHUB_EVENT_LOOP`` offers, as a real process.

The other tests run on asyncio's loop, the default; what roomhub does with a socket's transport
that only they check (flow control and the reset of a client with full buffers) is checked here
once more on uvloop, whose transports are its own (libuv) code.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.chat import TCP_CLOSE, WAIT, Peer, raw_client_that_never_reads, tcp_info
from tests.support.processes import run_server


@pytest.mark.parametrize(("setting", "running"), [(None, "asyncio"), ("uvloop", "uvloop")])
def test_the_server_runs_on_the_event_loop_the_setting_names(
    tmp_path: Path, setting: str | None, running: str
) -> None:
    chosen = {} if setting is None else {"event_loop": setting}
    with run_server(tmp_path, quote_provider="sim", **chosen) as server:
        pass
    assert f'"event_loop":"{running}"' in server.output()


async def test_on_uvloop_a_client_whose_buffers_are_full_is_reset_at_the_close_timeout(
    tmp_path: Path,
) -> None:
    """A client that stopped reading is closed as a slow consumer once its outbox is full
    (the transport's flow control held writes back); bytes are left that its buffers will
    never take, so at the close timeout the server resets it (``SO_LINGER`` 0 through
    uvloop's socket): its TCP state goes to CLOSE."""
    settings = {"quote_provider": "sim", "close_timeout": 0.3, "outbox_limit": 200}
    settings |= {"rate_limit": 10000, "rate_burst": 10000, "event_loop": "uvloop"}
    with run_server(tmp_path, **settings) as server:
        ann = await Peer("aiohttp").open(f"{server.ws_url}?room=full&user=ann")
        try:
            await ann.wait_for(lambda e: e["type"] == "welcome")
            sock = raw_client_that_never_reads("127.0.0.1", server.port, "full")
            with sock:
                await ann.wait_for(lambda e: e["type"] == "join" and e["user"] == "slow")
                deadline = time.monotonic() + 3 * WAIT
                sent = 0
                while tcp_info(sock)[0] != TCP_CLOSE:
                    assert time.monotonic() < deadline, "the client was never reset"
                    if sent < 20000:
                        for _ in range(20):
                            await ann.send("x" * 1900, id=str(sent))
                            sent += 1
                    await asyncio.sleep(0.01)
        finally:
            await ann.aclose()
    assert '"reason":"slow_consumer"' in server.output()
