"""Command line: ``python -m server [serve] [--flags]`` or ``roomhub serve [--flags]``.

Every flag has a ``ROOMHUB_*`` env var twin (see ``--help``). A bad value exits with code 2
and a message naming the setting.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from .app import create_app
from .config import ConfigError, add_flags, load_settings
from .logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomhub", description="Observable WebSocket chat server with per-room hubs."
    )
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the chat server (the default)")
    add_flags(serve)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
        args.insert(0, "serve")
    parser = build_parser()
    flags = vars(parser.parse_args(args))
    flags.pop("command")
    try:
        settings = load_settings(os.environ, flags)
    except ConfigError as exc:
        parser.exit(2, f"roomhub: invalid setting {exc}\n")
    setup_logging(settings.log_level)
    logging.getLogger("roomhub").info(
        "starting",
        extra={
            "fields": {"host": settings.host, "port": settings.port, "hub_mode": settings.hub_mode}
        },
    )
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
