"""The stock bot: ``/stock=CODE`` parsing, quote providers and the worker pool that answers.

- :mod:`server.bot.commands` turns chat text into a Stooq symbol.
- :mod:`server.bot.providers` fetches a price (Stooq CSV over HTTP, or offline).
- :mod:`server.bot.stockbot` queues commands and replies through bounded workers.
"""
