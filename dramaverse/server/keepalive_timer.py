"""Every idle keep-alive connection keeps its timer: shutdown and the keep-alive timeout close it.

Hypercorn closes an idle HTTP/1.1 connection from a per-connection task that waits for
``keep_alive_timeout`` or for the server to stop, whichever comes first. The task is (re)started
when a response ends, from inside the application's last ``send``: Hypercorn hands the
application ``http.disconnect`` and then starts the timer. Quart-Trio cancels the request's
nursery as soon as it receives that ``http.disconnect``, so the ``send`` that was starting the
timer is cancelled at its first checkpoint and the timer never starts. Such a connection (any
keep-alive client whose last request went to a Quart route, a relay's pool connection to another
worker among them) was then never closed by the server: not after the keep-alive timeout, and
not at shutdown, where Hypercorn waited the whole ``SHUTDOWN_GRACE_SECONDS`` for it.

:func:`protocol_send` (installed by :func:`dramaverse.server.fence.install`) makes Hypercorn's
connection-state updates (``Updated(idle=...)``: start or stop that timer) run shielded: they
take no time (a lock held for no await, a task started), and the caller's cancellation is
delivered at its next checkpoint, as before.
"""

from __future__ import annotations

import trio
from hypercorn.events import Event, Updated
from hypercorn.trio.tcp_server import TCPServer

_ORIGINAL = TCPServer.protocol_send


async def protocol_send(self: TCPServer, event: Event) -> None:
    if isinstance(event, Updated):
        with trio.CancelScope(shield=True):
            await _ORIGINAL(self, event)
        return
    await _ORIGINAL(self, event)
