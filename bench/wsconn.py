"""A lean WebSocket client connection for the benchmarks: websockets' sans-I/O client on a socket.

RFC 6455 is the ``websockets`` package's :class:`~websockets.client.ClientProtocol` (handshake
request and checks, framing, masking, permessage-deflate, the closing handshake), driven over
``trio.open_tcp_stream`` by the caller's own task: one protocol object and no background task per
connection (the caller does the handshake and its receive loop), so one Python process can hold
ten thousand connections, and the client's CPU per frame stays small next to the server it
shares the machine with. ``trio-websocket`` and websockets' own trio connection are not used:
both run a reader task and a message queue per connection.

    conn = await open_websocket("127.0.0.1", port, "/api/ws", deflate=True)
    await conn.send_text('{"type":"ping"}')
    message = await conn.receive()          # str for text, bytes for binary; pings answered

With ``deflate=True`` the upgrade request offers ``permessage-deflate; client_max_window_bits``
(what browsers send); see :class:`BrowserDeflate`.

Arrival times (:attr:`WSConn.last_recv`) are ``time.perf_counter()`` (CLOCK_MONOTONIC on
Linux) taken when the chunk that completed a frame was read from the socket.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn, cast

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState, InvalidStatus
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.typing import BytesLike, ExtensionParameter, Subprotocol
from websockets.uri import WebSocketURI

__all__ = [
    "BrowserDeflate",
    "WSClosed",
    "WSConn",
    "WSError",
    "WSHandshakeRejected",
    "open_websocket",
]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # far above anything the server sends; bounds a runaway
_TEXT, _BINARY, _CONT, _CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE

# Keeps the protocol's DEBUG checks off (they cost per frame) and its INFO lines out.
_LOGGER = logging.getLogger(__name__ + ".rfc6455")
_LOGGER.setLevel(logging.WARNING)


class WSError(Exception):
    """The WebSocket connection could not be opened or used."""


class WSClosed(WSError):
    """The connection is closed (``code`` 1006: closed without a close frame)."""

    def __init__(self, code: int, reason: str | None = None) -> None:
        super().__init__(f"closed with {code}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.reason = reason or ""


class WSHandshakeRejected(WSError):
    """The server answered the upgrade request with an HTTP status instead of 101."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"upgrade refused with HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class BrowserDeflate(ClientPerMessageDeflateFactory):
    """permessage-deflate as a browser offers it, compressing outbound messages statelessly.

    The offer is ``permessage-deflate; client_max_window_bits``. Inbound messages are inflated
    as negotiated (one inflater per connection unless the server takes no context over). Each
    outbound message is compressed with a new 512-byte-window compressor that is dropped right
    after (:class:`StatelessDeflate`): valid for any negotiated window, since a sender may
    always start afresh, and it keeps 10,000 client connections from holding 10,000 deflate
    states (about 256 KB each at the default window and memory level).
    """

    def __init__(self) -> None:
        super().__init__(client_max_window_bits=True)

    def process_response_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> PerMessageDeflate:
        return StatelessDeflate(super().process_response_params(params, accepted_extensions))


class StatelessDeflate(PerMessageDeflate):
    """The negotiated extension, compressing each outbound message with a fresh small context;
    :attr:`params` names what was negotiated."""

    def __init__(self, agreed: PerMessageDeflate) -> None:
        super().__init__(
            remote_no_context_takeover=agreed.remote_no_context_takeover,
            local_no_context_takeover=True,  # a new compressor per message, dropped after it
            remote_max_window_bits=agreed.remote_max_window_bits,
            local_max_window_bits=9,  # zlib's smallest; at most what any server allows
            compress_settings={"memLevel": 1},
        )
        params = [
            f"client_max_window_bits={agreed.local_max_window_bits}",
            f"server_max_window_bits={agreed.remote_max_window_bits}",
        ]
        if agreed.local_no_context_takeover:
            params.append("client_no_context_takeover")
        if agreed.remote_no_context_takeover:
            params.append("server_no_context_takeover")
        self.params = "; ".join(params)


class WSConn:
    """One client WebSocket connection; used by a single task (no locking)."""

    __slots__ = (
        "_frames",
        "_parts",
        "_protocol",
        "_recv_size",
        "_stream",
        "_text",
        "extension",
        "last_recv",
        "subprotocol",
    )

    def __init__(
        self,
        stream: trio.SocketStream,
        protocol: ClientProtocol,
        frames: deque[Frame],
        recv_size: int,
        last_recv: float,
    ) -> None:
        self._stream = stream
        self._protocol = protocol
        self._frames = frames  # parsed, not yet returned (some may come with the 101)
        self._parts: list[BytesLike] = []  # a fragmented message so far
        self._text = False  # whether that message is text
        self._recv_size = recv_size
        self.subprotocol: str | None = protocol.subprotocol
        self.extension: StatelessDeflate | None = next(
            (e for e in protocol.extensions if isinstance(e, StatelessDeflate)), None
        )
        self.last_recv = last_recv

    @property
    def deflate(self) -> bool:
        """permessage-deflate was negotiated."""
        return self.extension is not None

    @property
    def deflate_params(self) -> str | None:
        """The negotiated permessage-deflate parameters, or None."""
        return None if self.extension is None else self.extension.params

    async def send_text(self, text: str) -> None:
        protocol = self._protocol
        try:
            protocol.send_text(text.encode())
        except InvalidState:  # the server's close frame arrived first
            raise WSClosed(1006, "send after the connection closed") from None
        writes = protocol.data_to_send()
        try:
            await self._stream.send_all(writes[0] if len(writes) == 1 else b"".join(writes))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise WSClosed(1006, f"send failed: {type(exc).__name__}") from None

    async def send_json(self, obj: Any) -> None:
        await self.send_text(json.dumps(obj, separators=(",", ":")))

    async def receive(self) -> str | bytes:
        """The next complete message; answers WebSocket pings; raises WSClosed at the end."""
        frames = self._frames
        protocol = self._protocol
        while True:
            while frames:
                frame = frames.popleft()
                opcode = frame.opcode
                if opcode is _TEXT:
                    if frame.fin:
                        try:
                            return str(frame.data, "utf-8")
                        except UnicodeDecodeError:
                            await self._invalid_text()
                    self._text = True
                    self._parts = [frame.data]
                elif opcode is _BINARY:
                    if frame.fin:
                        return bytes(frame.data)
                    self._text = False
                    self._parts = [frame.data]
                elif opcode is _CONT:
                    self._parts.append(frame.data)
                    if frame.fin:
                        data, self._parts = b"".join(self._parts), []
                        if not self._text:
                            return data
                        try:
                            return str(data, "utf-8")
                        except UnicodeDecodeError:
                            await self._invalid_text()
                elif opcode is _CLOSE:  # its echo went out with the read that parsed it
                    close = protocol.close_rcvd
                    assert close is not None
                    await self._abort()
                    raise WSClosed(close.code, close.reason)
                # a ping was answered when it was parsed; a pong needs nothing
            failure = protocol.parser_exc
            if failure is not None:  # the protocol sent its close (1002, 1007, 1009)
                await self._abort()
                sent = protocol.close_sent
                raise WSClosed(sent.code if sent is not None else 1006, str(failure))
            try:
                data = await self._stream.receive_some(self._recv_size)
            except (OSError, trio.BrokenResourceError) as exc:
                await self._abort()
                raise WSClosed(1006, f"receive failed: {type(exc).__name__}: {exc}") from None
            except trio.ClosedResourceError:
                raise WSClosed(1006, "closed locally") from None
            if not data:
                await self._abort()
                raise WSClosed(1006, "connection closed without a close frame")
            self.last_recv = time.perf_counter()
            protocol.receive_data(data)
            frames.extend(cast("list[Frame]", protocol.events_received()))
            writes = protocol.data_to_send()  # pongs, the echo of a close, a failure's close
            if writes:
                with contextlib.suppress(OSError, trio.BrokenResourceError):
                    await self._stream.send_all(b"".join(writes))

    async def _invalid_text(self) -> NoReturn:
        """Fail the connection as a browser does on text that is not UTF-8 (the protocol
        object leaves that check to its caller)."""
        self._frames.clear()
        protocol = self._protocol
        protocol.fail(1007, "text message is not valid UTF-8")
        with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            await self._stream.send_all(b"".join(protocol.data_to_send()))
        await self._abort()
        raise WSClosed(1007, "text message is not valid UTF-8")

    async def receive_json(self) -> dict[str, Any]:
        msg = await self.receive()
        frame = json.loads(msg)
        if not isinstance(frame, dict):
            raise WSError(f"frame is not a JSON object: {msg[:200]!r}")
        return frame

    async def aclose(self, code: int = 1000) -> None:
        """Send a close frame (best effort, no waiting for the answer) and close the socket."""
        try:
            protocol = self._protocol
            if protocol.state is State.OPEN:
                protocol.send_close(code)
                with (
                    contextlib.suppress(
                        OSError, trio.BrokenResourceError, trio.ClosedResourceError
                    ),
                    trio.move_on_after(1),
                ):
                    await self._stream.send_all(b"".join(protocol.data_to_send()))
        finally:
            await self._abort()

    async def _abort(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self._stream)


async def open_websocket(
    host: str,
    port: int,
    path: str,
    *,
    subprotocols: Sequence[str] = (),
    headers: Iterable[tuple[bytes, bytes]] = (),
    deflate: bool = False,
    recv_size: int = 4096,
) -> WSConn:
    """Open a TCP connection and perform the WebSocket upgrade (no timeout: use a cancel scope).

    Error handling: OSError when the connection fails, :class:`WSHandshakeRejected` for an HTTP
    answer, :class:`WSError` for anything else that is not a valid 101.
    """
    protocol = ClientProtocol(
        WebSocketURI(secure=False, host=host, port=port, path="/", query=""),
        subprotocols=[Subprotocol(p) for p in subprotocols] or None,
        extensions=[BrowserDeflate()] if deflate else None,
        max_size=MAX_MESSAGE_BYTES,
        logger=_LOGGER,
    )
    request = protocol.connect()
    request.path = path
    for name, value in headers:
        request.headers[name.decode("latin-1")] = value.decode("latin-1")
    protocol.send_request(request)
    stream = await trio.open_tcp_stream(host, port)
    try:
        await stream.send_all(b"".join(protocol.data_to_send()))
        while True:
            data = await stream.receive_some(recv_size)
            now = time.perf_counter()
            if data:
                protocol.receive_data(data)
            else:  # a refusal may be delimited by closing the connection
                protocol.receive_eof()
            events = protocol.events_received()
            failure = protocol.handshake_exc
            if isinstance(failure, InvalidStatus):
                response = failure.response
                raise WSHandshakeRejected(response.status_code, bytes(response.body))
            if failure is not None:
                raise WSError(f"invalid upgrade answer: {failure}")
            if events:
                writes = protocol.data_to_send()  # pongs for pings that came with the 101
                if writes:
                    await stream.send_all(b"".join(writes))
                frames = deque(cast("list[Frame]", events[1:]))
                return WSConn(stream, protocol, frames, recv_size, now)
            if not data:
                raise WSError("connection closed during the upgrade")
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
        raise
