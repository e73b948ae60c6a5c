"""Typed application keys: every object the app shares between handlers and lifetimes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx
from aiohttp import web

from ..bot.stockbot import StockBot
from ..ops.config import Settings
from ..rooms.broker import Broker
from ..rooms.items import Hubs
from ..transport.connection import Connection
from .auth import TokenVerifier


@dataclass(slots=True)
class ServerState:
    """Mutable server-wide state: open connections, connection slots reserved (upgrades under
    way and open connections), connections closed so far, whether shutdown has begun, and the
    event set once shutdown has seen the last connection end."""

    connections: set[Connection] = field(default_factory=set)
    reserved: int = 0
    closed: int = 0
    shutting_down: bool = False
    drained: asyncio.Event | None = None


settings_key = web.AppKey("settings_key", Settings)
state_key = web.AppKey("state_key", ServerState)
hubs_key = web.AppKey("hubs_key", Hubs)
http_client_key = web.AppKey("http_client_key", httpx.AsyncClient)
bot_key = web.AppKey("bot_key", StockBot)
broker_key = web.AppKey("broker_key", Broker)
verifier_key = web.AppKey("verifier_key", TokenVerifier)
"""Only with ``ROOMHUB_AUTH=token``."""
