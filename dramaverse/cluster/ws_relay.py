"""The relay's side of a WebSocket to the worker that owns an Engine.IO session.

When a WebSocket upgrade for a session of another worker reaches a worker (the kernel gave the
new connection to whoever accepted first), the router (``worker_routing.py``) accepts it and
opens an :class:`Upstream`: a WebSocket client connection to the owner's private Unix socket,
carrying the same request target and headers. From then on :func:`pump` passes every message
on as it is, both ways (one task per direction), until either side closes.

RFC 6455 is the ``websockets`` package's sans-I/O :class:`~websockets.client.ClientProtocol`
(the handshake request and its checks, framing, masking, the closing handshake), driven here on
a Trio Unix stream, as ``server/direct_ws.py`` drives its server side: bytes read go in with
``receive_data``, frames come out of ``events_received``, and what the protocol has to say
(masked client frames, pongs, the echo of a close) is taken with ``data_to_send`` and written.
Not a library connection object with its own tasks, because a relay is on the live-sync path
of every client whose upgrade landed on the wrong worker: no background reader task and no
message queue per connection (the pump reads the owner one chunk at a time and hands each
message straight to the client's socket before reading more, so a slow client slows the
owner's writes and the owner's slow-consumer rule applies end to end), no compression on the
local hop, and a refused handshake comes back to the caller as :class:`Rejected` with the
owner's status, headers and body, which the router relays to the client unchanged.

Close codes (``domain/close_codes.py``): the owner's close frame reaches the client with its
code and reason, reconnect or terminal as the owner meant it (1005, "no code", becomes 1000).
What is not a close frame is the relay's to name, always with a code that tells the client to
reconnect, since the fault is never the client's: an owner that vanishes is :data:`GONE`
(1001), a message over :data:`MAX_MESSAGE_BYTES` is :data:`TOO_BIG` (1009), and an owner that
breaks the protocol (a malformed frame, text that is not UTF-8, an invalid close code) is
:data:`BROKEN` (1011).

Resource handling: :meth:`Upstream.connect` opens the stream and closes it itself if the
handshake fails; after that the caller owns the upstream and must :meth:`Upstream.aclose` it.
Writes come from two tasks (the client's messages, and the answers to the owner's pings and
close), so the protocol object's outgoing side is used under one lock: a frame is made, taken
with ``data_to_send`` and written in one locked step, which keeps the frames in protocol order
and never hands one task's frame to the other to write. The reader writes only when the owner
asked for an answer (a ping, a close) or broke the protocol, never for a data message, so a
large client message blocked on a full socket does not stop the owner's messages from being
read. Reads happen in :meth:`Upstream.forward_to` only.

Error handling: nothing the owner sends raises out of this module but the exceptions
:meth:`Upstream.connect` documents; the protocol object never raises on bad input (it records
``parser_exc`` and fails the connection), so ``forward_to`` always ends with a close for the
client.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from websockets.client import ClientProtocol
from websockets.datastructures import Headers as WSHeaders
from websockets.exceptions import InvalidHandshake, InvalidState, InvalidStatus, PayloadTooBig
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import BytesLike, Subprotocol
from websockets.uri import WebSocketURI

from dramaverse.domain.close_codes import CloseCode

Headers = list[tuple[bytes, bytes]]
Receive = ASGIReceiveCallable
Send = ASGISendCallable

RECEIVE_BYTES = 64 * 1024
CLOSE_TIMEOUT = 1.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the owner is trusted; this only stops a runaway
MAX_REJECTION_BYTES = 64 * 1024
GONE = (int(CloseCode.GOING_AWAY), "the session's worker went away")
TOO_BIG = (int(CloseCode.TOO_BIG), "message too large")
BROKEN = (int(CloseCode.INTERNAL_ERROR), "the session's worker broke the WebSocket protocol")

# The response headers the protocol consumes; the rest are the owner's, for the client.
_HANDSHAKE_HEADERS = frozenset(
    (b"connection", b"upgrade", b"sec-websocket-accept", b"sec-websocket-protocol")
)
# The Host header and the target are the client's; the URI only satisfies the constructor.
_URI = WebSocketURI(secure=False, host="worker", port=80, path="/", query="")

# websockets' protocol logs at DEBUG and INFO what the relay reports itself.
_LOGGER = logging.getLogger(__name__ + ".rfc6455")
_LOGGER.setLevel(logging.WARNING)


def sendable_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame (RFC 6455 7.4; 1005, 1006, 1015 may not)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class Rejected(Exception):
    """The owner answered the upgrade request with an HTTP response instead of 101."""

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        super().__init__(f"upgrade refused with HTTP {status}")
        self.status = status
        self.headers = headers
        self.body = body


class OwnerLost(Exception):
    """The owner closed the connection or broke the protocol during the handshake."""


class Unrelayable(Exception):
    """The client's request cannot be written on the local hop (a target that is not printable
    ASCII, a header value with a control character); Hypercorn's parser lets neither through."""


class Upstream:
    """One WebSocket client connection to the owner; see the module docstring."""

    __slots__ = ("_frames", "_lock", "_protocol", "_stream", "headers", "subprotocol")

    def __init__(
        self,
        stream: trio.SocketStream,
        protocol: ClientProtocol,
        response: Response,
        frames: deque[Frame],
    ) -> None:
        self._stream = stream
        self._protocol = protocol
        self._frames = frames  # parsed, not yet delivered (they may come with the 101)
        self._lock = trio.Lock()
        self.subprotocol: str | None = protocol.subprotocol
        self.headers: Headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.raw_items()
            if name.lower().encode("latin-1") not in _HANDSHAKE_HEADERS
        ]

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

        Error handling: :class:`Unrelayable` when the request cannot be written (before
        connecting), OSError when the socket is missing or refuses, :class:`OwnerLost` when
        the owner hangs up or answers nonsense, :class:`Rejected` when it refuses the upgrade.
        The caller bounds the time.
        """
        protocol = ClientProtocol(
            _URI,
            subprotocols=[Subprotocol(p) for p in subprotocols] or None,
            max_size=MAX_MESSAGE_BYTES,
            logger=_LOGGER,
        )
        protocol.send_request(_request(protocol, host, target, headers))
        request = b"".join(protocol.data_to_send())
        stream = await trio.open_unix_socket(path)
        try:
            try:
                await stream.send_all(request)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise OwnerLost(f"connection lost during the handshake: {exc}") from None
            response, frames = await _handshake(stream, protocol)
            pongs = b"".join(protocol.data_to_send())  # for pings that came with the 101
            if pongs:
                await stream.send_all(pongs)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return cls(stream, protocol, response, frames)

    async def send(self, data: str | bytes) -> None:
        """Pass one client message on. Raises trio.BrokenResourceError when the owner is gone."""
        protocol = self._protocol
        async with self._lock:
            try:
                if isinstance(data, str):
                    protocol.send_text(data.encode("utf-8"))
                else:
                    protocol.send_binary(data)
            except InvalidState:  # the owner's close came first: it ends the relay
                raise trio.BrokenResourceError("the owner closed the WebSocket") from None
            await self._stream.send_all(b"".join(protocol.data_to_send()))

    async def close(self, code: int, reason: str = "") -> None:
        """Send a close frame if the connection is still open (the caller bounds the time)."""
        async with self._lock:
            if self._protocol.state is State.OPEN:
                self._protocol.send_close(code, _fit_reason(reason))
                await self._write_queued()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._stream.aclose()

    async def forward_to(
        self, deliver: Callable[[str | bytes], Awaitable[None]]
    ) -> tuple[int, str]:
        """Deliver the owner's messages, in order, until it closes; return the close for the
        client: the owner's code and reason, or :data:`GONE`, :data:`TOO_BIG` or
        :data:`BROKEN` (see the module docstring)."""
        protocol = self._protocol
        frames = self._frames
        parts: list[BytesLike] = []
        text = False
        while True:
            while frames:
                frame = frames.popleft()
                opcode = frame.opcode
                if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                    text = opcode is Opcode.TEXT
                    if not frame.fin:
                        parts = [frame.data]
                        continue
                    payload = frame.data
                elif opcode is Opcode.CONT:
                    parts.append(frame.data)
                    if not frame.fin:
                        continue
                    payload, parts = b"".join(parts), []
                elif opcode is Opcode.CLOSE:
                    await self._flush()  # the echo the protocol queued
                    close = protocol.close_rcvd
                    assert close is not None
                    code = close.code if sendable_close_code(close.code) else 1000
                    return code, close.reason
                else:
                    if opcode is Opcode.PING:
                        await self._flush()  # the pong the protocol queued
                    continue
                if text:
                    try:
                        message: str | bytes = str(payload, "utf-8")
                    except UnicodeDecodeError:
                        protocol.fail(CloseCode.INVALID_DATA, "text message is not valid UTF-8")
                        await self._flush()
                        return BROKEN
                else:
                    message = bytes(payload)
                await deliver(message)
            failure = protocol.parser_exc
            if failure is not None:
                await self._flush()  # the close the protocol queued when it failed
                return TOO_BIG if isinstance(failure, PayloadTooBig) else BROKEN
            try:
                chunk = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return GONE
            if not chunk:
                return GONE
            protocol.receive_data(chunk)
            frames.extend(cast("list[Frame]", protocol.events_received()))

    async def _flush(self) -> None:
        """Write what the protocol has queued for the owner (answers: pongs, close frames)."""
        async with self._lock:
            await self._write_queued()

    async def _write_queued(self) -> None:
        """Under the lock: write the protocol's queue; a broken stream is left to the reader,
        which reports the owner's end."""
        data = b"".join(self._protocol.data_to_send())
        if data:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._stream.send_all(data)


def _fit_reason(reason: str) -> str:
    """``reason`` cut to fit a close frame (125 bytes with the code) on a UTF-8 boundary."""
    return reason.encode("utf-8")[:123].decode("utf-8", "ignore")


def _request(protocol: ClientProtocol, host: str, target: str, relayed: Headers) -> Request:
    """The upgrade request: the client's target, Host and headers, then the protocol's own."""
    # The messages name what was wrong, never the value: it may be a cookie or a token.
    if not target.isascii() or not target.isprintable() or " " in target:
        raise Unrelayable("the request target is not printable ASCII")
    request = protocol.connect()
    headers = WSHeaders()
    name = "host"
    try:
        headers["Host"] = host
        for raw_name, raw_value in relayed:
            name = raw_name.decode("latin-1")
            headers[name] = raw_value.decode("latin-1")
    except InvalidHandshake:  # a value with a control character
        raise Unrelayable(f"the {name} header cannot be written") from None
    for key, text in request.headers.raw_items():
        if key != "Host":
            headers[key] = text
    request.path = target
    request.headers = headers
    return request


async def _handshake(
    stream: trio.SocketStream, protocol: ClientProtocol
) -> tuple[Response, deque[Frame]]:
    """Read until the owner's answer is complete: the 101 and any frames that came with it."""
    while True:
        try:
            data = await stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise OwnerLost(f"connection lost during the handshake: {exc}") from None
        if data:
            protocol.receive_data(data)
        else:  # a refusal may be delimited by closing the connection
            protocol.receive_eof()
        events = protocol.events_received()
        failure = protocol.handshake_exc
        if isinstance(failure, InvalidStatus):
            response = failure.response
            if len(response.body) > MAX_REJECTION_BYTES:
                raise OwnerLost("the owner's refusal is too long")
            raise Rejected(response.status_code, _raw(response.headers), bytes(response.body))
        if failure is not None:
            raise OwnerLost(f"invalid handshake answer: {failure}")
        if events:
            answer = events[0]
            assert isinstance(answer, Response)
            return answer, deque(cast("list[Frame]", events[1:]))
        if not data:
            raise OwnerLost("the owner closed the connection during the handshake")


def _raw(headers: WSHeaders) -> Headers:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers.raw_items()]


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
