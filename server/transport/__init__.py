"""One client's socket after the upgrade: aiohttp's hand-off (:mod:`.upgrade`) and the
connection (:mod:`.connection`). Imports :mod:`server.ops` and :mod:`server.wire`."""
