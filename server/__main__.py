"""Command line: ``python -m server [serve] [--flags]`` or ``roomhub serve [--flags]``, and
``roomhub token --sub NAME --ttl 1h`` to mint a development token for ``ROOMHUB_AUTH=token``,
and ``roomhub api METHOD --room ... --text ...`` to call the server API (docs/api.md) at
``ROOMHUB_API_URL`` (default ``http://127.0.0.1:8080``) with the key in ``ROOMHUB_API_KEY``: it
prints the JSON answer and exits 1 on an error answer (or no answer), 2 on a usage error.

Every flag has a ``ROOMHUB_*`` env var twin (see ``--help``). A bad value, or an address the
server cannot listen on, exits with code 2 and a message naming the setting. A ``ROOMHUB_*``
variable that is no setting gets one warning at start. Once listening, the server prints
``roomhub listening on http://HOST:PORT`` on stdout besides its JSON log line.

On SIGTERM or SIGINT the server keeps listening while it drains: ``/readyz`` answers 503,
new upgrades get 503, outboxes are flushed for a bounded time and clients are closed with
1001. Then it stops listening, finishes and exits 0.

An installed aiohttp that lacks a part ``server/transport/upgrade.py`` relies on stops start-up the
same way, with exit code 2 and a message naming its version and the range roomhub supports.

With ``--workers N`` (N > 1) the process supervises N such servers sharing the port
(``server.ops.supervisor``). Each server, the only one or every worker, runs on the event loop
``ROOMHUB_EVENT_LOOP`` names: asyncio's own by default, or uvloop (docs/scaling.md measures
both).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path

import httpx
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from .ops.config import ConfigError, Settings, add_flags, load_settings, unknown_env_vars
from .ops.logs import setup_logging
from .ops.supervisor import Announce, print_line, supervise
from .transport.deadline import listen
from .transport.upgrade import seam_problem
from .web.app import create_app, shutdown_connections
from .web.auth import mint_token
from .wire.api import METHODS

log = logging.getLogger("roomhub")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomhub", description="Observable WebSocket chat server with per-room hubs."
    )
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser("serve", help="run the chat server (the default)")
    add_flags(serve_parser)
    token_parser = commands.add_parser(
        "token",
        help="print a signed token for ROOMHUB_AUTH=token (development)",
        description="Signs HS256 with ROOMHUB_TOKEN_SECRET, or RS256/ES256 with --private-key.",
    )
    token_parser.add_argument("--sub", required=True, help="the user (the sub claim)")
    token_parser.add_argument("--ttl", default="1h", help="lifetime: 90s, 30m, 1h or 7d")
    token_parser.add_argument("--name", help="display name (the name claim; default: sub)")
    token_parser.add_argument("--rooms", help="comma-separated rooms it may join (default: any)")
    token_parser.add_argument("--private-key", help="PEM private key file (RSA or P-256)")
    token_parser.add_argument("--roles", help="comma-separated roles (mod: a moderator)")
    api_parser = commands.add_parser(
        "api",
        help="call the server API (docs/api.md) at ROOMHUB_API_URL with ROOMHUB_API_KEY",
        description="Sends the fields given as flags; prints the JSON answer.",
    )
    api_parser.add_argument("method", choices=list(METHODS))
    for field, (kind, text) in API_FLAGS.items():
        if kind is bool:
            api_parser.add_argument(f"--{field}", action="store_true", default=None, help=text)
        else:
            api_parser.add_argument(f"--{field}", help=text)
    return parser


API_FLAGS: dict[str, tuple[type, str]] = {
    "room": (str, "the room"),
    "rooms": (list, "comma-separated rooms (broadcast)"),
    "user": (str, "a member name (or the sender's name of publish)"),
    "text": (str, "the message text"),
    "data": (dict, "any JSON value to send with the message"),
    "seq": (int, "a message's seq (delete)"),
    "since": (int, "history: messages above this seq"),
    "limit": (int, "history: at most this many"),
    "duration": (float, "ban: seconds (absent: until unban)"),
    "reason": (str, "disconnect, kick, ban: a reason for the log"),
    "reconnect": (bool, "disconnect: the page reconnects (4100, not 4500)"),
}
"""The flags of ``roomhub api``: one per API field, with how its text becomes JSON."""
DEFAULT_API_URL = "http://127.0.0.1:8080"
API_TIMEOUT = 10.0
"""Seconds ``roomhub api`` waits for the answer."""


def api_body(args: argparse.Namespace) -> dict[str, object]:
    """The JSON body from the flags given; ``ValueError`` naming a flag that is not valid."""
    body: dict[str, object] = {}
    for field, (kind, _) in API_FLAGS.items():
        raw = getattr(args, field)
        if raw is None:
            continue
        try:
            if kind is list:
                body[field] = [room.strip() for room in raw.split(",") if room.strip()]
            elif kind is dict:
                body[field] = json.loads(raw)
            elif kind in (int, float):
                body[field] = kind(raw)
            else:
                body[field] = raw
        except ValueError:
            raise ValueError(f"--{field}={raw!r}: not a valid {kind.__name__}") from None
    return body


def call_api(method: str, body: dict[str, object], environ: Mapping[str, str]) -> int:
    """POST ``body`` to ``method`` of the API named by ``environ``; print the answer; the
    exit code: 0 answered 200, 1 an error answer or none, 2 the key is not set."""
    key = environ.get("ROOMHUB_API_KEY", "").strip()
    if not key:
        sys.stderr.write("roomhub api: set ROOMHUB_API_KEY to the server's API key\n")
        return 2
    url = environ.get("ROOMHUB_API_URL", "").strip() or DEFAULT_API_URL
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/api/v1/{method}",
            json=body,
            headers={"X-API-Key": key},
            timeout=API_TIMEOUT,
        )
    except httpx.HTTPError as exc:
        sys.stderr.write(f"roomhub api: no answer from {url}: {exc}\n")
        return 1
    print(response.text)
    return 0 if response.status_code == 200 else 1


TTL_RE = re.compile(r"([0-9]+)([smhd])")
TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def ttl_seconds(raw: str) -> int:
    """``90s``, ``30m``, ``1h`` or ``7d`` in seconds; ``ValueError`` for anything else."""
    match = TTL_RE.fullmatch(raw.strip())
    if not match or int(match[1]) == 0:
        raise ValueError(f"--ttl={raw!r}: must look like 90s, 30m, 1h or 7d")
    return int(match[1]) * TTL_UNITS[match[2]]


def token(args: argparse.Namespace) -> str:
    """The token that ``roomhub token`` prints; ``ValueError`` naming what is wrong."""
    try:
        key = Path(args.private_key).read_bytes() if args.private_key else None
    except OSError as exc:
        raise ValueError(f"--private-key={args.private_key!r}: {exc.strerror}") from None
    rooms = [r.strip() for r in args.rooms.split(",") if r.strip()] if args.rooms else None
    return mint_token(
        args.sub,
        ttl_seconds(args.ttl),
        secret=os.environ.get("ROOMHUB_TOKEN_SECRET"),
        private_key=key,
        name=args.name,
        rooms=rooms,
        roles=[r.strip() for r in args.roles.split(",") if r.strip()] if args.roles else None,
    )


def listening_line(host: str, port: int) -> str:
    """The plain start-up line: where to point a browser."""
    if host in ("0.0.0.0", "::"):
        return f"roomhub listening on every interface, port {port}: http://127.0.0.1:{port}"
    shown = f"[{host}]" if ":" in host else host
    return f"roomhub listening on http://{shown}:{port}"


async def _listen(
    runner: web.AppRunner, settings: Settings, port: int, names: str, reuse: bool
) -> asyncio.Server:
    """Listen with the handshake deadline (:func:`server.transport.deadline.listen`); raises
    :class:`ConfigError` naming ``names`` when it cannot."""
    host = settings.host
    try:
        return await listen(runner, host, port, settings.handshake_timeout, reuse)
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"{names}={host}:{port}: cannot listen there ({exc.strerror or exc})"
        ) from None


async def serve(settings: Settings, worker: int = 0, announce: Announce = print_line) -> None:
    """Serve until SIGTERM or SIGINT, then drain and stop (see the module docstring).

    ``worker``: this process's index among ``settings.workers`` (its metrics port is
    ``metrics_port + worker``). ``announce`` gets the :func:`listening_line` once listening
    (the supervisor prints the first one of its workers). Raises :class:`ConfigError` when it
    cannot listen.
    """
    loop = asyncio.get_running_loop()
    app = create_app(settings)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=settings.shutdown_timeout
    )
    await runner.setup()
    reuse = settings.workers > 1
    site = await _listen(runner, settings, settings.port, "ROOMHUB_HOST/ROOMHUB_PORT", reuse)
    # Everything made so far lives as long as the process: keep it out of the garbage
    # collector's full collections, which then cost in proportion to the connections only.
    gc.collect()
    gc.freeze()
    host, port = site.sockets[0].getsockname()[:2]
    metrics_runner = metrics_site = None
    if settings.metrics_port:
        metrics_app = web.Application(
            handler_args={"keepalive_timeout": settings.handshake_timeout}
        )
        metrics_app.router.add_get("/metrics", make_aiohttp_handler())
        metrics_runner = web.AppRunner(metrics_app, handle_signals=False, access_log=None)
        await metrics_runner.setup()
        metrics_port = settings.metrics_port + worker
        metrics_site = await _listen(
            metrics_runner, settings, metrics_port, "ROOMHUB_METRICS_PORT", False
        )
    announce(listening_line(host, port))
    log.info(
        "listening",
        extra={
            "fields": {
                "host": host,
                "port": port,
                "worker": worker,
                "metrics_port": settings.metrics_port and settings.metrics_port + worker,
                "event_loop": type(loop).__module__.partition(".")[0],  # the one running
            }
        },
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await shutdown_connections(app)
    site.close()
    await runner.cleanup()
    if metrics_runner is not None and metrics_site is not None:
        metrics_site.close()
        await metrics_runner.cleanup()
    log.info("stopped", extra={"fields": {"worker": worker}})


def run(main: Coroutine[object, object, None], event_loop: str) -> None:
    """Run ``main`` to its end on a new event loop of the kind ``event_loop`` names
    (``uvloop`` or ``asyncio``, :data:`server.ops.config.EVENT_LOOPS`), as ``asyncio.run``
    does; ``asyncio.Runner`` takes a loop factory on Python 3.11, ``asyncio.run`` only from
    3.12."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if event_loop == "uvloop":
        import uvloop  # only when chosen: asyncio needs no uvloop installed

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def run_worker(settings: Settings, worker: int, announce: Announce) -> None:
    """A worker process of ``--workers N``: serve, exit 2 on a setting it cannot use."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        run(serve(settings, worker, announce), settings.event_loop)
    except ConfigError as exc:
        sys.stderr.write(f"roomhub: invalid setting {exc}\n")
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
        args.insert(0, "serve")
    parser = build_parser()
    parsed = parser.parse_args(args)
    if parsed.command == "token":
        try:
            print(token(parsed))
        except ValueError as exc:
            parser.exit(2, f"roomhub token: {exc}\n")
        return
    if parsed.command == "api":
        try:
            body = api_body(parsed)
        except ValueError as exc:
            parser.exit(2, f"roomhub api: {exc}\n")
        sys.exit(call_api(parsed.method, body, os.environ))
    problem = seam_problem()
    if problem:  # before any worker starts or anything listens
        parser.exit(2, f"roomhub: {problem}\n")
    flags = vars(parsed)
    flags.pop("command")
    try:
        settings = load_settings(os.environ, flags)
        setup_logging(settings.log_level)
        for name, closest in unknown_env_vars(os.environ).items():
            log.warning("unknown_setting", extra={"fields": {"env": name, "did_you_mean": closest}})
        log.info(
            "starting",
            extra={
                "fields": {
                    "hub_mode": settings.hub_mode,
                    "quote": settings.quote_provider,
                    "auth": settings.auth,
                }
            },
        )
        if settings.workers > 1:
            sys.exit(supervise(settings, run_worker))
        run(serve(settings), settings.event_loop)
    except ConfigError as exc:
        parser.exit(2, f"roomhub: invalid setting {exc}\n")


if __name__ == "__main__":
    main()
