"""Command line: ``python -m server [serve] [--flags]`` or ``roomhub serve [--flags]``.

Every flag has a ``ROOMHUB_*`` env var twin (see ``--help``). A bad value, or an address the
server cannot listen on, exits with code 2 and a message naming the setting.

On SIGTERM or SIGINT the server keeps listening while it drains: ``/readyz`` answers 503,
new upgrades get 503, outboxes are flushed for a bounded time and clients are closed with
1001. Then it stops listening, finishes and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from .app import create_app, shutdown_connections
from .config import ConfigError, Settings, add_flags, load_settings
from .logs import setup_logging

log = logging.getLogger("roomhub")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomhub", description="Observable WebSocket chat server with per-room hubs."
    )
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser("serve", help="run the chat server (the default)")
    add_flags(serve_parser)
    return parser


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain and stop (see the module docstring).

    Raises :class:`ConfigError` when it cannot listen on ``host:port``.
    """
    app = create_app(settings)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=settings.shutdown_timeout
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"ROOMHUB_HOST/ROOMHUB_PORT={settings.host}:{settings.port}: "
            f"cannot listen there ({exc.strerror or exc})"
        ) from None
    host, port = runner.addresses[0][:2]
    log.info("listening", extra={"fields": {"host": host, "port": port}})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await shutdown_connections(app)
    await runner.cleanup()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
        args.insert(0, "serve")
    parser = build_parser()
    flags = vars(parser.parse_args(args))
    flags.pop("command")
    try:
        settings = load_settings(os.environ, flags)
        setup_logging(settings.log_level)
        log.info(
            "starting",
            extra={"fields": {"hub_mode": settings.hub_mode, "quote": settings.quote_provider}},
        )
        asyncio.run(serve(settings))
    except ConfigError as exc:
        parser.exit(2, f"roomhub: invalid setting {exc}\n")


if __name__ == "__main__":
    main()
