"""Typed application keys: every object the app shares between handlers and lifetimes."""

from __future__ import annotations

import httpx
from aiohttp import web

from ..bot.stockbot import StockBot
from ..ops.config import Settings
from ..rooms.broker import Broker
from ..rooms.dispatch import RoomDispatcher
from ..rooms.items import Hubs
from ..rooms.moderation import Moderation
from ..transport.limits import AddressLimits
from ..transport.registry import ConnectionRegistry
from .auth import TokenVerifier

settings_key = web.AppKey("settings_key", Settings)
registry_key = web.AppKey("registry_key", ConnectionRegistry)
hubs_key = web.AppKey("hubs_key", Hubs)
http_client_key = web.AppKey("http_client_key", httpx.AsyncClient)
bot_key = web.AppKey("bot_key", StockBot)
broker_key = web.AppKey("broker_key", Broker)
limits_key = web.AppKey("limits_key", AddressLimits)
moderation_key = web.AppKey("moderation_key", Moderation)
dispatcher_key = web.AppKey("dispatcher_key", RoomDispatcher)
"""Set once the hubs and the bot run."""
verifier_key = web.AppKey("verifier_key", TokenVerifier)
"""Only with ``ROOMHUB_AUTH=token``."""
