"""Hypercorn's connection read loop without a timeout scope when there is no read timeout.

Hypercorn's ``TCPServer._read_data`` enters ``trio.fail_after(config.read_timeout or inf)``
around every read of every connection, also when no read timeout is configured (Dramaverse sets
none: idle keep-alive connections are closed by ``keep_alive_timeout``, WebSockets by their
heartbeat). A cancel scope per read is a measurable part of a WebSocket frame's cost, so
:func:`read_data` (installed by :func:`dramaverse.server.fence.install`) replaces the loop with
one that enters the scope only when a read timeout is set. Everything else is Hypercorn's: the
same reads, the same events, the same ending.

Measured again for issue 13 (alternating runs on a shared 2-core machine, so every figure):
the server's CPU per ``/api/health`` request was 542, 558, 512, 611 µs with this loop against
575, 572, 578, 614 µs with Hypercorn's loop after the sniff (lower in each of the 4 pairs, about
5 % on average; a bare ``trio.fail_after(inf)`` around one checkpoint costs 6-7 µs here).
``bench.catalog_bench --sizes 20000`` cannot see it through its noise (e_health 1254, 1664,
1628, 713, 1184, 1448 rps against 980, 1431, 1180, 1452, 1432, 1762; a_default 1412, 1118, 928,
1190, 1071, 1482 against 1353, 1268, 1455, 931, 948, 1200), and the WebSocket ping round trip
does not cross this loop any more (``direct_ws`` reads its stream itself: 60.5, 51.5, 50.0 µs
against 57.5, 55.5, 55.5 µs, the same code both times). Kept: it pays a little, and the loop has
to be replaced for the sniffing anyway, so dropping it would remove eight lines, not a patch.

It is also where a new connection can leave Hypercorn: when the configuration claims WebSocket
paths (:func:`dramaverse.server.direct_ws.claim_paths`), the first bytes are looked at, and an
upgrade to one of those paths is served by ``direct_ws`` on the same stream; anything else is
handed to Hypercorn's protocol as it arrived.
"""

from __future__ import annotations

import trio
from hypercorn.events import Closed, RawData
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer

from dramaverse.server import direct_ws

_ORIGINAL = TCPServer._read_data


async def read_data(self: TCPServer) -> None:
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
