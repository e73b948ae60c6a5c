"""Parse chat commands: ``/stock=CODE`` into Stooq symbols; ``/help`` and unknown ``/words``
into the bot's list of commands.

Stooq symbol conventions (https://stooq.com): US tickers carry a ``.US`` suffix
(``aapl.us``), indices start with ``^`` and carry no suffix (``^spx``). A bare code such as
``aapl`` is taken to be a US ticker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STOCK_PREFIX = "/stock="
MAX_CODE_LENGTH = 20
US_SUFFIX = ".US"

# An optional leading '^', then ASCII letters/digits, with inner '.' or '-' (BRK-B.US).
_CODE = re.compile(r"\^?[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
# A command word opening a message: '/', an ASCII letter, then letters, digits, '_' or '-',
# ending the message or followed by white space or '=' ("/usr/bin is a path" is none).
_COMMAND = re.compile(r"/[A-Za-z][A-Za-z0-9_-]*(?=$|\s|=)")

COMMANDS = "Commands: /stock=CODE gets a stock quote (e.g. /stock=AAPL); /help shows this list."


class CommandError(ValueError):
    """A ``/stock=`` command with a malformed code; ``str(exc)`` is shown to the user."""


def parse_stock_command(text: str) -> str | None:
    """The normalized upper-case Stooq symbol of a ``/stock=CODE`` command.

    ``text`` is a chat message. Returns ``None`` when it is not a bot command (after
    stripping it does not start with ``/stock=``, compared case-insensitively). Otherwise
    returns e.g. ``'aapl'`` -> ``'AAPL.US'``, ``'msft.us'`` -> ``'MSFT.US'``,
    ``'^spx'`` -> ``'^SPX'``: a code holding a ``.`` or starting with ``^`` keeps its form,
    any other code gets ``.US``.

    Raises :class:`CommandError` when the code is empty, longer than 20 characters, or holds
    anything but ASCII letters, digits, inner ``.``/``-`` and a leading ``^``.
    """
    stripped = text.strip()
    head = stripped[: len(STOCK_PREFIX)]
    if not (head.isascii() and head.lower() == STOCK_PREFIX):
        return None
    return stooq_symbol(stripped[len(STOCK_PREFIX) :])


def stooq_symbol(code: str) -> str:
    """The Stooq symbol the bot asks for when a user types ``code`` (surrounding spaces ignored):
    ``'aapl'`` -> ``'AAPL.US'``, ``'FOO.US'`` -> ``'FOO.US'``, ``'^spx'`` -> ``'^SPX'``.

    Raises :class:`CommandError` for a malformed code, as :func:`parse_stock_command` does.
    """
    code = code.strip()
    if not code:
        raise CommandError("missing stock code, e.g. /stock=AAPL")
    if len(code) > MAX_CODE_LENGTH:
        raise CommandError(f"stock code is longer than {MAX_CODE_LENGTH} characters")
    if not _CODE.fullmatch(code):
        raise CommandError(
            "stock code may hold only letters, digits, inner '.' or '-' and a leading '^'"
        )
    symbol = code.upper()
    if symbol.startswith("^") or "." in symbol:
        return symbol
    return symbol + US_SUFFIX


@dataclass(frozen=True, slots=True)
class HelpReply:
    """The bot's answer to ``/help`` (``ok``) or to an unknown command (not ``ok``)."""

    text: str
    ok: bool


def help_reply(text: str) -> HelpReply | None:
    """The answer to a chat message whose first word is a command other than ``/stock=``.

    ``text`` is a chat message that :func:`parse_stock_command` found no ``/stock=`` command
    in. After trimming, it opens with a command word when it starts with ``/``, an ASCII
    letter, then letters, digits, ``_`` or ``-``, up to its end, white space or ``=``;
    compared case-insensitively, ``/help`` gets :data:`COMMANDS`, another (``/nope``,
    ``/stocks=aapl``) is named as unknown before them. Returns None for a chat message
    (``hi``, ``/usr/bin is a path``, ``/ that``).
    """
    found = _COMMAND.match(text.strip())
    if found is None:
        return None
    word = found.group()
    if word.lower() == "/help":
        return HelpReply(COMMANDS, True)
    return HelpReply(f"Unknown command {word}. {COMMANDS}", False)
