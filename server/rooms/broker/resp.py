"""The broker's two busy Redis connections (the publisher's and the pub/sub one), read in the
transport's callback.

redis-py makes each connection (the URL's host or socket, TLS, AUTH, SELECT; RESP2, since
the broker's pools ask for it); its transport is then handed to a :class:`Link`, which parses
replies with hiredis as they arrive and hands each to a callback in the same call: no reader
task, no stream buffer and no future per read. Error replies come as redis-py's exception
objects (``MovedError``, ``NoScriptError``, ...), not raised.

The hand-over reads redis-py's private ``Connection._writer`` (an ``asyncio.StreamWriter``)
and error replies are made by its ``redis._parsers.BaseParser.parse_error``:
redis-py is pinned by the lock (``requirements/serve.txt``), :func:`check_redis_py` runs when
a Redis broker is made so a changed redis-py stops start-up with a message, and
``tests/test_redis_publisher.py`` guards it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import hiredis
import redis
from redis._parsers import BaseParser
from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool

Reply = object
"""One parsed reply: bytes, int, a list of replies, None, or a ``ResponseError``."""


def check_redis_py(connection_class: type[AbstractConnection] = Connection) -> None:
    """Raise ``RuntimeError`` naming the redis-py version unless its connections keep their
    ``asyncio.StreamWriter`` in ``_writer``, which :func:`open_link` takes the transport from."""
    if not hasattr(connection_class(), "_writer"):
        raise RuntimeError(
            f"redis-py {redis.__version__}: {connection_class.__name__} keeps no _writer, "
            "which the Redis broker takes its connections' transports from; install the "
            "redis-py version requirements/serve.txt pins"
        )


class Link(asyncio.Protocol):
    """One Redis connection whose replies go to ``on_reply`` as they are parsed; ``on_lost``
    is called with the link once when the connection ends.

    ``closed`` resolves (to the error, or None) when the connection ends; ``lost`` is set as
    soon as Redis ended it (end of stream or error), before asyncio reports it."""

    def __init__(
        self,
        connection: AbstractConnection,
        on_reply: Callable[[Reply], None],
        on_lost: Callable[[Link], None],
    ) -> None:
        self._connection = connection
        self._on_reply = on_reply
        self._on_lost = on_lost
        self._parser = hiredis.Reader(replyError=BaseParser.parse_error)
        self._transport: asyncio.Transport | None = None
        self.lost = False
        self.closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        on_reply = self._on_reply
        while (reply := parser.gets()) is not False:
            on_reply(reply)

    def eof_received(self) -> bool | None:
        self.lost = True
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.closed.done():
            self.closed.set_result(exc)
            self._on_lost(self)

    def write(self, data: bytes) -> None:
        """Send ``data`` (RESP commands); nothing happens once the connection is lost."""
        if self._transport is not None and not self.lost:
            self._transport.write(data)

    async def close(self) -> None:
        """Close the connection at once: the transport is aborted (what it still holds to send
        is dropped, so a Redis that stopped reading cannot hold the close up), then redis-py
        lets the connection go (``disconnect``)."""
        self.lost = True
        if self._transport is not None:
            self._transport.abort()
        await self._connection.disconnect(nowait=True)


async def open_link(
    pool: ConnectionPool, on_reply: Callable[[Reply], None], on_lost: Callable[[Link], None]
) -> Link:
    """A new connection made by redis-py from ``pool``'s settings (not counted in the pool),
    read by a :class:`Link` from then on. Raises redis-py's ``ConnectionError`` or
    ``TimeoutError`` (its ``socket_connect_timeout``) when Redis cannot be reached."""
    connection: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]  # redis-py: not annotated
    await connection.connect()  # type: ignore[no-untyped-call]  # redis-py: not annotated
    writer = getattr(connection, "_writer", None)
    if not isinstance(writer, asyncio.StreamWriter):
        await connection.disconnect(nowait=True)
        raise RuntimeError(f"redis-py {redis.__version__}: a connection has no StreamWriter")
    link = Link(connection, on_reply, on_lost)
    writer.transport.set_protocol(link)
    link.connection_made(writer.transport)
    return link
