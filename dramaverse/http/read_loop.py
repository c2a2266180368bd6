"""Hypercorn's connection read loop without a timeout scope when there is no read timeout.

Hypercorn's ``TCPServer._read_data`` enters ``trio.fail_after(config.read_timeout or inf)``
around every read of every connection, also when no read timeout is configured (Dramaverse sets
none: idle keep-alive connections are closed by ``keep_alive_timeout``, WebSockets by their
heartbeat). A cancel scope per read is a measurable part of a WebSocket frame's cost, so
:func:`install` replaces the loop with one that enters the scope only when a read timeout is
set. Everything else is Hypercorn's: the same reads, the same events, the same ending.

It is also where a new connection can leave Hypercorn: when the configuration claims WebSocket
paths (:func:`dramaverse.http.direct_ws.claim_paths`), the first bytes are looked at, and an
upgrade to one of those paths is served by ``direct_ws`` on the same stream; anything else is
handed to Hypercorn's protocol as it arrived.
"""

from __future__ import annotations

import trio
from hypercorn.events import Closed, RawData
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer

from dramaverse.http import direct_ws

_ORIGINAL = TCPServer._read_data


async def _read_data(self: TCPServer) -> None:
    if self.config.read_timeout is not None:
        await _ORIGINAL(self)
        return
    receive = self.stream.receive_some
    handle = self.protocol.handle
    paths = direct_ws.claimed_paths(self.config)
    if paths:
        try:
            first, upgrade = await direct_ws.sniff(self.stream, paths, MAX_RECV)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            first, upgrade = b"", None
        if upgrade is not None:
            await self.idle_task.stop()  # the keep-alive timer is for HTTP requests
            await direct_ws.serve(self, upgrade)
            await handle(Closed())
            return
        await handle(RawData(first))
        if first == b"":
            await handle(Closed())
            return
    while True:
        try:
            data = await receive(MAX_RECV)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            break
        await handle(RawData(bytes(data)))
        if data == b"":
            break
    await handle(Closed())


def install() -> None:
    """Patch Hypercorn's trio TCP server (idempotent)."""
    TCPServer._read_data = _read_data  # type: ignore[method-assign]
