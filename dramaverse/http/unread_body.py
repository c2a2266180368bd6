"""Close the connection after answering a request whose body was not read to the end.

A route may answer before it has read the request body: a 401, 403 or 429 decided from the
headers, a 413 for a body over the limit, an Engine.IO error for an unknown sid. On a keep-alive
HTTP/1.1 connection the rest of that body is still on its way, and Hypercorn could then neither
parse the next request nor close: the client's next request on that connection hung (seen with
a 200 KB POST followed by a GET). The fix is the one HTTP prescribes: answer with
``Connection: close``, so the client opens a fresh connection for its next request.

:class:`CloseOnUnreadBody` is the outermost ASGI layer. It watches the request's ``receive``
stream; when a response starts before the last body chunk has arrived, it adds
``connection: close`` and reads and drops the rest of the body beside the application (at most
``DRAIN_BYTES`` within ``DRAIN_SECONDS``), so Hypercorn can finish the exchange and close.
Requests without a body, and bodies read completely (every successful write), keep their
connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

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

        async def tracked_receive() -> ASGIReceiveEvent:
            nonlocal complete
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True  # the last chunk, or the client went away
            return message

        async with trio.open_nursery() as nursery:

            async def guarded_send(message: ASGISendEvent) -> None:
                if message["type"] == "http.response.start" and not complete:
                    headers = [*message["headers"], _CLOSE]
                    message = {**message, "headers": headers}  # type: ignore[typeddict-item]
                    # Read the rest now, beside the application: Hypercorn's queue towards the
                    # application is bounded, and a full one would stall the response itself.
                    nursery.start_soon(_drain, tracked_receive, lambda: complete)
                await send(message)

            await self._app(scope, tracked_receive, guarded_send)


async def _drain(receive: ASGIReceiveCallable, complete: Callable[[], bool]) -> None:
    """Read and drop the rest of the body (bounded), so Hypercorn can finish and close."""
    dropped = 0
    with trio.move_on_after(DRAIN_SECONDS):
        while dropped <= DRAIN_BYTES and not complete():
            message = await receive()
            if message["type"] != "http.request":
                return
            body = message.get("body", b"")
            dropped += len(body) if isinstance(body, bytes) else 0
            if not message.get("more_body", False):
                return
