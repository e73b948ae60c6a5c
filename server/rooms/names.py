"""Room names and member names: the rules every hub and broker follows.

A room's epoch is a random id made with its state: a room that is reaped and started again,
or whose state was lost elsewhere, has a new epoch, so a client resuming with ``since`` from
another epoch gets the full history and ``reset`` instead of silently missing messages.
Member names are told apart by :func:`name_key`; a taken name gets a numbered suffix
(:func:`free_name`). The names the server speaks under (:data:`RESERVED`) are taken in every
room.
"""

from __future__ import annotations

import secrets
import unicodedata
from collections.abc import Container

from ..bot.stockbot import StockBot
from ..wire.protocol import MAX_USER

SUFFIX_LIMIT = 100
"""Highest numbered suffix tried for a taken name before a random one (see free_name)."""

ONLINE_LIMIT = 100
"""Most member names a ``welcome`` lists (its ``members`` count covers everyone)."""


SERVER_NAME = "server"
"""The sender name of a server API message that names none (docs/api.md)."""


def new_epoch() -> str:
    """A fresh room epoch: 11 URL-safe characters (64 random bits)."""
    return secrets.token_urlsafe(8)


def name_key(name: str) -> str:
    """What two names must differ in to be told apart: NFKC-normalized, case-folded."""
    return unicodedata.normalize("NFKC", name).casefold()


RESERVED = frozenset(map(name_key, (StockBot.name, SERVER_NAME)))
"""Name keys no member gets, so none passes for the bot or the server API: the bot's name and
:data:`SERVER_NAME`."""


def reserved(name: str) -> bool:
    """Whether ``name`` is one of :data:`RESERVED` (ignoring case and compatibility forms)."""
    return name_key(name) in RESERVED


def suffixed(wanted: str, n: int) -> str:
    """``wanted-n`` for 2 <= n <= ``SUFFIX_LIMIT``, past it ``wanted-`` and 6 random hex
    digits; ``wanted`` cut so the whole fits ``MAX_USER`` characters."""
    suffix = f"-{n}" if n <= SUFFIX_LIMIT else f"-{secrets.token_hex(3)}"
    return wanted[: MAX_USER - len(suffix)] + suffix


def free_name(wanted: str, taken: Container[str]) -> str:
    """``wanted``, or when ``taken`` holds its :func:`name_key` (a member already has it,
    ignoring case and Unicode compatibility forms) or it is :func:`reserved`, the first free
    of ``wanted-2`` ...
    ``wanted-{SUFFIX_LIMIT}``, then a random one (see :func:`suffixed`). The cap keeps a join
    cheap however many members asked for one name."""
    name, n = wanted, 1
    while name_key(name) in taken or reserved(name):
        n += 1
        name = suffixed(wanted, n)
    return name
