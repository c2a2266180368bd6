"""trio-websocket client helpers for tests.

trio-websocket never closes its TCP stream when the *server* closes the WebSocket first: the
reader stops at EOF without closing, and ``aclose()`` returns early for a closed connection. The
socket is then only closed by the garbage collector, which pytest reports as an unraisable
ResourceWarning in whatever test happens to run then. :func:`open_client` closes it on exit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url


@asynccontextmanager
async def open_client(url: str, **options: Any) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(url, **options) as ws:
        try:
            yield ws
        finally:
            with trio.CancelScope(shield=True):
                await ws._stream.aclose()
