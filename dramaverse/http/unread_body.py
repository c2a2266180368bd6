"""Finish reading a request's body before answering it early.

A route may answer before it has read the request body: a 401, 403 or 429 decided from the
headers, a 413 for a body over the limit, an Engine.IO error for an unknown sid. On a keep-alive
HTTP/1.1 connection the rest of that body is still on its way, and Hypercorn then could neither
parse the next request nor close: the client's next request on that connection hung (seen with
a 200 KB POST followed by a GET).

:class:`CloseOnUnreadBody` is the outermost ASGI layer. It watches the request's ``receive``
stream; when a response starts before the last body chunk has arrived, it first reads and drops
the rest of the body (at most ``DRAIN_BYTES`` within ``DRAIN_SECONDS``), so the exchange ends
cleanly and the connection stays usable; a body too big or too slow for that gets the answer with
``Connection: close`` instead, as HTTP prescribes. Requests without a body, and bodies read
completely (every successful write), pass through untouched.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)

_CLOSE = (b"connection", b"close")
DRAIN_BYTES = 8 << 20  # read at most this much of an unwanted body before giving up on it
DRAIN_SECONDS = 5.0


def _has_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.strip() != b"0"
        if name == b"transfer-encoding":
            return True
    return False


class CloseOnUnreadBody:
    def __init__(self, app: ASGIFramework) -> None:
        self._app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http" or not _has_body(scope["headers"]):
            await self._app(scope, receive, send)
            return
        complete = False
        draining: trio.CancelScope | None = None

        async def tracked_receive() -> ASGIReceiveEvent:
            nonlocal complete
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True  # the last chunk, or the client went away
                if draining is not None:  # the application's reader took the last chunk
                    draining.cancel()
            return message

        async def guarded_send(message: ASGISendEvent) -> None:
            nonlocal draining
            if message["type"] == "http.response.start" and not complete:
                # Answering early: take in the rest of the body first, so the exchange ends
                # cleanly and the connection can carry the next request. A body too big or too
                # slow to drain gets the connection closed instead.
                draining = trio.CancelScope(deadline=trio.current_time() + DRAIN_SECONDS)
                with draining:
                    await _drain(tracked_receive)
                draining = None
                if not complete:
                    headers = [*message["headers"], _CLOSE]
                    message = {**message, "headers": headers}  # type: ignore[typeddict-item]
            await send(message)

        await self._app(scope, tracked_receive, guarded_send)


async def _drain(receive: ASGIReceiveCallable) -> None:
    """Read and drop the rest of the body, at most ``DRAIN_BYTES`` of it."""
    dropped = 0
    while dropped <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        body = message.get("body", b"")
        dropped += len(body) if isinstance(body, bytes) else 0
