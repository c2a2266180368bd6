"""trio-websocket client helpers for tests.

trio-websocket never closes its TCP stream when the *server* closes the WebSocket first: the
reader stops at EOF without closing, and ``aclose()`` returns early for a closed connection. The
socket is then only closed by the garbage collector, which pytest reports as an unraisable
ResourceWarning in whatever test happens to run then. :func:`open_client` therefore opens the TCP
stream itself, hands it to trio-websocket's public ``wrap_client_stream``, and closes it on exit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

CLOSE_SECONDS = 5  # bound on the closing handshake at exit


@asynccontextmanager
async def open_client(url: str, **options: Any) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket to ``ws://`` ``url``; ``options`` as for ``wrap_client_stream``.

    An exception in the body leaves unwrapped (not in the nursery's ExceptionGroup): it is held
    while the connection closes and the reader task ends, and raised after.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None:
        raise ValueError(f"not a ws:// URL: {url!r}")
    port = parts.port or 80
    host = parts.hostname if port == 80 else f"{parts.hostname}:{port}"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    stream = await trio.open_tcp_stream(parts.hostname, port)
    failure: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, host, resource, **options)
            try:
                yield ws
            except BaseException as exc:  # raised again below, Cancelled too
                failure = exc
            with trio.move_on_after(CLOSE_SECONDS) as cleanup:
                cleanup.shield = True
                await ws.aclose()
            nursery.cancel_scope.cancel()  # the reader task, which stays at a silent peer
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()
    if failure is not None:
        raise failure
