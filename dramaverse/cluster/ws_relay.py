"""The relay's side of a WebSocket to the worker that owns an Engine.IO session.

When a WebSocket upgrade for a session of another worker reaches a worker (the kernel gave the
new connection to whoever accepted first), the router (``worker_routing.py``) accepts it and
opens an :class:`Upstream`: a WebSocket client connection to the owner's private Unix socket,
carrying the same request target and headers. From then on :func:`pump` passes every message
on as it is, both ways (one task per direction), until either side closes.

This is ``wsproto`` driven directly on a Trio Unix stream, like the benchmark client, rather
than trio-websocket, because a relay is on the live-sync path of every client whose upgrade
landed on the wrong worker: no background reader task and no message queue per connection
(the pump reads the owner one message at a time and hands it straight to the client's socket,
so a slow client slows the owner's writes and the owner's slow-consumer rule applies end to
end), no compression on the local hop, and
a refused handshake comes back to the caller as :class:`Rejected` with the owner's status,
headers and body, which the router relays to the client unchanged.

Resource handling: :meth:`Upstream.connect` opens the stream and closes it itself if the
handshake fails; after that the caller owns the upstream and must :meth:`Upstream.aclose` it.
Writes are serialised by a lock (the client's messages and the answers to the owner's pings
and close come from two tasks); reads happen in :meth:`Upstream.forward_to` only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from dramaverse.domain.close_codes import CloseCode

Headers = list[tuple[bytes, bytes]]
Receive = ASGIReceiveCallable
Send = ASGISendCallable

RECEIVE_BYTES = 64 * 1024
CLOSE_TIMEOUT = 1.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the owner is trusted; this only stops a runaway
MAX_REJECTION_BYTES = 64 * 1024
GONE = (int(CloseCode.GOING_AWAY), "the session's worker went away")
TOO_BIG = (1009, "message too large")


def sendable_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame (RFC 6455 7.4; 1005, 1006, 1015 may not)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _joined(parts: list[str | bytes]) -> str | bytes:
    if isinstance(parts[0], str):
        return "".join(cast(list[str], parts))
    return b"".join(cast(list[bytes], parts))


class Rejected(Exception):
    """The owner answered the upgrade request with an HTTP response instead of 101."""

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        super().__init__(f"upgrade refused with HTTP {status}")
        self.status = status
        self.headers = headers
        self.body = body


class OwnerLost(Exception):
    """The owner closed the connection or broke the protocol during the handshake."""


class Upstream:
    """One WebSocket client connection to the owner; see the module docstring."""

    __slots__ = ("_lock", "_stream", "_ws", "headers", "subprotocol")

    def __init__(self, stream: trio.SocketStream, ws: WSConnection, accept: AcceptConnection):
        self._stream = stream
        self._ws = ws
        self._lock = trio.Lock()
        self.subprotocol = accept.subprotocol
        self.headers: Headers = list(accept.extra_headers)

    @classmethod
    async def connect(
        cls,
        path: str,
        host: str,
        target: str,
        headers: Headers,
        subprotocols: Sequence[str],
    ) -> Upstream:
        """Open the stream and do the handshake.

        Error handling: OSError when the socket is missing or refuses, :class:`OwnerLost` when
        the owner hangs up or answers nonsense, :class:`Rejected` when it refuses the upgrade.
        The caller bounds the time.
        """
        stream = await trio.open_unix_socket(path)
        try:
            ws = WSConnection(ConnectionType.CLIENT)
            request = Request(
                host=host, target=target, extra_headers=headers, subprotocols=list(subprotocols)
            )
            try:
                await stream.send_all(ws.send(request))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise OwnerLost(f"connection lost during the handshake: {exc}") from None
            accept = await _handshake(stream, ws)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return cls(stream, ws, accept)

    async def send(self, data: str | bytes) -> None:
        """Pass one client message on. Raises trio.BrokenResourceError when the owner is gone."""
        event = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        async with self._lock:
            try:
                frame = self._ws.send(event)
            except LocalProtocolError:  # the owner's close came first: it ends the relay
                raise trio.BrokenResourceError("the owner closed the WebSocket") from None
            await self._stream.send_all(frame)

    async def close(self, code: int, reason: str = "") -> None:
        """Send a close frame if the connection is still open (the caller bounds the time)."""
        if self._ws.state is ConnectionState.OPEN:
            await self._answer(CloseConnection(code=code, reason=reason or None))

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._stream.aclose()

    async def forward_to(
        self, deliver: Callable[[str | bytes], Awaitable[None]]
    ) -> tuple[int, str]:
        """Deliver the owner's messages, in order, until it closes; return the close for the
        client: the owner's code and reason, or :data:`GONE` when it vanished without one."""
        ws = self._ws
        parts: list[str | bytes] = []
        size = 0
        while True:
            for event in ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    data = event.data if isinstance(event.data, str) else bytes(event.data)
                    size += len(data)
                    if size > MAX_MESSAGE_BYTES:
                        return TOO_BIG
                    if not event.message_finished:  # a fragment, or a frame read in pieces
                        parts.append(data)
                        continue
                    if parts:
                        parts.append(data)
                        data = _joined(parts)
                        parts.clear()
                    size = 0
                    await deliver(data)
                elif isinstance(event, CloseConnection):
                    await self._answer(event.response())
                    code = event.code if sendable_close_code(event.code) else 1000
                    return code, event.reason or ""
                elif isinstance(event, Ping):
                    await self._answer(event.response())
            try:
                chunk = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return GONE
            if not chunk:
                return GONE
            try:
                ws.receive_data(chunk)
            except RemoteProtocolError:
                return GONE

    async def _answer(self, event: Event) -> None:
        async with self._lock:
            try:
                frame = self._ws.send(event)
            except LocalProtocolError:
                return
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._stream.send_all(frame)


async def _handshake(stream: trio.SocketStream, ws: WSConnection) -> AcceptConnection:
    rejection: RejectConnection | None = None
    body = bytearray()
    while True:
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return event  # frames that came with it stay queued in ws for forward_to
            if isinstance(event, RejectConnection):
                rejection = event
                if not event.has_body:
                    raise Rejected(event.status_code, list(event.headers), b"")
            elif isinstance(event, RejectData) and rejection is not None:
                body += event.data
                if len(body) > MAX_REJECTION_BYTES:
                    raise OwnerLost("the owner's refusal is too long")
                if event.body_finished:
                    raise Rejected(rejection.status_code, list(rejection.headers), bytes(body))
        try:
            data = await stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise OwnerLost(f"connection lost during the handshake: {exc}") from None
        if not data and rejection is not None:  # a refusal delimited by closing the connection
            raise Rejected(rejection.status_code, list(rejection.headers), bytes(body))
        if not data:
            raise OwnerLost("the owner closed the connection during the handshake")
        try:
            ws.receive_data(data)
        except RemoteProtocolError as exc:
            raise OwnerLost(f"invalid handshake answer: {exc}") from None


# -- the ASGI side ------------------------------------------------------------------------------


async def pump(upstream: Upstream, receive: Receive, send: Send) -> None:
    """Relay messages between the client's ASGI WebSocket (accepted) and ``upstream`` until
    one side closes: the owner's close code and reason reach the client; a client that leaves
    gets the owner's side closed."""

    async def deliver(data: str | bytes) -> None:
        if isinstance(data, str):
            await send({"type": "websocket.send", "text": data, "bytes": None})
        else:
            await send({"type": "websocket.send", "bytes": data, "text": None})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_client_to_owner, upstream, receive, nursery.cancel_scope)
        code, reason = await upstream.forward_to(deliver)
        await send({"type": "websocket.close", "code": code, "reason": reason})
        nursery.cancel_scope.cancel()


async def _client_to_owner(upstream: Upstream, receive: Receive, done: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            data = text if text is not None else message.get("bytes")
            if data is None:
                continue
            try:
                await upstream.send(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the owner is gone or closing: forward_to ends the relay
        elif message["type"] == "websocket.disconnect":
            # Hypercorn reports 1006 for most client closes; the owner only needs to know.
            code = message.get("code")
            with trio.move_on_after(CLOSE_TIMEOUT):
                await upstream.close(
                    code if code is not None and sendable_close_code(code) else 1000
                )
            done.cancel()
            return
