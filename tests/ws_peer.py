"""A scripted WebSocket server for testing our clients (the worker relay, the bench client).

Each accepted connection is handed to a test's script as a :class:`Peer`: websockets'
sans-I/O ``ServerProtocol`` on the raw trio stream, so that a script can do a correct handshake
and then write exactly the bytes it wants (frames built with ``Frame.serialize``, truncated
frames, garbage) and read what the client sent back, frame by frame.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import trio
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

_LOGGER = logging.getLogger(__name__)
_LOGGER.setLevel(logging.WARNING)

Script = Callable[["Peer"], Awaitable[None]]


class Peer:
    """The server side of one connection."""

    def __init__(self, stream: trio.SocketStream, subprotocols: list[str]) -> None:
        self.stream = stream
        self.protocol = ServerProtocol(
            subprotocols=[Subprotocol(p) for p in subprotocols] or None,
            max_size=None,
            logger=_LOGGER,
        )
        self.request: Request | None = None
        self._frames: list[Frame] = []

    async def read_request(self) -> Request:
        """The client's upgrade request (read, not answered)."""
        while self.request is None:
            data = await self.stream.receive_some(65536)
            assert data, "the client closed before its request was complete"
            self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                assert isinstance(event, Request)
                self.request = event
        return self.request

    async def accept(self, extra: bytes = b"", headers: dict[str, str] | None = None) -> Request:
        """Answer the upgrade with 101 (``headers`` added), followed in the same write by
        ``extra`` (frames the client must not lose)."""
        request = await self.read_request()
        response = self.protocol.accept(request)
        for name, value in (headers or {}).items():
            response.headers[name] = value
        self.protocol.send_response(response)
        assert response.status_code == 101, response.body
        await self.stream.send_all(b"".join(self.protocol.data_to_send()) + extra)
        return request

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_frame(self, frame: Frame) -> None:
        await self.stream.send_all(frame.serialize(mask=False))

    async def next_frame(self) -> Frame | None:
        """The client's next frame (pings answered by nobody: they are returned), or None when
        it closed the connection."""
        while not self._frames:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                return None
            self.protocol.receive_data(data)
            self._frames += cast("list[Frame]", self.protocol.events_received())
        return self._frames.pop(0)

    async def next_message(self) -> str | bytes | None:
        """The client's next complete data message (control frames skipped), or None."""
        parts: list[bytes] = []
        text = False
        while True:
            frame = await self.next_frame()
            if frame is None or frame.opcode is Opcode.CLOSE:
                return None
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                text, parts = frame.opcode is Opcode.TEXT, []
            elif frame.opcode is not Opcode.CONT:
                continue
            parts.append(bytes(frame.data))
            if frame.fin:
                data = b"".join(parts)
                return data.decode() if text else data

    async def close_frame(self) -> Close | None:
        """The client's close frame (its code and reason), or None when it hung up without."""
        while True:
            frame = await self.next_frame()
            if frame is None:
                return None
            if frame.opcode is Opcode.CLOSE:
                return Close.parse(frame.data)


def close_frame(code: int, reason: str = "") -> Frame:
    """A close frame; any code, even one RFC 6455 forbids on the wire."""
    return Frame(Opcode.CLOSE, code.to_bytes(2, "big") + reason.encode())


async def _serve(listener: trio.SocketListener, script: Script, subprotocols: list[str]) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        try:
            await script(Peer(stream, subprotocols))
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handler, [listener])


@asynccontextmanager
async def unix_peer(
    path: Path, script: Script, subprotocols: list[str] | None = None
) -> AsyncIterator[None]:
    """Serve ``script`` on the Unix socket ``path`` for the body's duration."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, trio.SocketListener(sock), script, subprotocols or [])
        yield
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def tcp_peer(script: Script, subprotocols: list[str] | None = None) -> AsyncIterator[int]:
    """Serve ``script`` on a loopback TCP port (yielded) for the body's duration."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = cast("trio.SocketListener", listeners[0])
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, listener, script, subprotocols or [])
        yield port
        nursery.cancel_scope.cancel()
