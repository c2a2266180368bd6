"""server/direct_ws.py: one connection's reads and writes, driven straight through ASGI.

A :class:`DirectWebSocket` on one end of a real socket pair (or, for the TLS case, on a memory
stream, which has no socket to read from), raw RFC 6455 frames on the other: the protocol
closing under an application that is still answering, a ``receive`` cancelled with or without
bytes waiting, and a socket closed under a waiting reader.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from dramaverse.server.direct_ws import DirectWebSocket, Phase, Upgrade, close_payload
from tests.test_ws_direct import Echo, RawClient, client_frame, connect, serving

MAX_MESSAGE = 1024
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


@asynccontextmanager
async def accepted() -> AsyncIterator[tuple[DirectWebSocket, trio.SocketStream, RawClient]]:
    """An accepted connection on a socket pair: (the server's side, its stream, the client)."""
    server_socket, client_socket = trio.socket.socketpair()
    stream = trio.SocketStream(server_socket)
    client_stream = trio.SocketStream(client_socket)
    socket = DirectWebSocket(stream, Upgrade("/t", b"/t", b"", [], KEY, [], []), MAX_MESSAGE)
    assert await socket.receive() == {"type": "websocket.connect"}
    await socket.send({"type": "websocket.accept"})
    head = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in head:
            head += await client_stream.receive_some(65536)
    head, _, rest = head.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    try:
        yield socket, stream, RawClient(client_stream, rest, head)
    finally:
        await trio.aclose_forcefully(stream)
        await trio.aclose_forcefully(client_stream)


async def frames_until_eof(client: RawClient) -> list[tuple[int, int, bytes]]:
    frames = []
    while True:
        try:
            frames.append(await client.frame())
        except EOFError:
            return frames


async def test_a_message_and_a_close_in_one_read_end_the_connection_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The protocol answers the close as it parses it; the application still gets the message
    first and the disconnect after it, and its answer to the message, which could only follow
    the close frame, is dropped: no error, one close frame on the wire."""
    app = Echo()
    async with serving(app) as port:
        client = await connect(port)
        await client.send(client_frame(0x1, b"hello") + client_frame(0x8, close_payload(1000)))
        assert await frames_until_eof(client) == [(0x88, 0x8, b"\x03\xe8")]
        with trio.fail_after(5):
            await app.finished.wait()
    assert app.disconnects == [{"type": "websocket.disconnect", "code": 1000, "reason": ""}]
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


async def test_closing_after_the_peer_closed_adds_no_second_close_frame() -> None:
    async with accepted() as (socket, stream, client):
        await client.send(client_frame(0x1, b"hi") + client_frame(0x8, close_payload(3000)))
        assert await socket.receive() == {"type": "websocket.receive", "bytes": None, "text": "hi"}
        await socket.send({"type": "websocket.send", "text": "dropped"})
        await socket.send({"type": "websocket.close", "code": 4000, "reason": "too late"})
        assert socket.phase is Phase.CLOSING
        gone = {"type": "websocket.disconnect", "code": 3000, "reason": ""}
        assert await socket.receive() == gone
        await socket.finish()  # nothing left to answer
        await stream.aclose()
        assert await frames_until_eof(client) == [(0x88, 0x8, b"\x0b\xb8")]


async def test_a_receive_cancelled_before_reading_leaves_the_bytes_for_the_next() -> None:
    async with accepted() as (socket, _, client):
        await client.send(client_frame(0x1, b"waiting"))
        with trio.CancelScope() as scope:
            scope.cancel()
            await socket.receive()
        assert scope.cancelled_caught
        with trio.fail_after(5):
            message = await socket.receive()
        assert message["text"] == "waiting"


async def test_a_fragmented_message_survives_a_receive_cancelled_between_its_frames() -> None:
    async with accepted() as (socket, _, client):
        await client.send(client_frame(0x1, b"first ", fin=False))
        received: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                received.append(await socket.receive())

            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()  # the first fragment is parsed
            nursery.cancel_scope.cancel()
        assert received == []
        await client.send(client_frame(0x0, b"last"))
        with trio.fail_after(5):
            message = await socket.receive()
        assert message["text"] == "first last"


async def test_closing_the_stream_under_a_waiting_receive_ends_it_as_1006() -> None:
    async with accepted() as (socket, stream, _):
        received: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                received.append(await socket.receive())

            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(5):
                await stream.aclose()
        assert received == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]
        assert socket.phase is Phase.CLOSED
        await socket.send({"type": "websocket.send", "text": "after the end"})  # dropped


async def test_a_stream_without_a_socket_is_read_through_the_stream() -> None:
    """TLS: the stream has no socket of its own, so reads and writes go through it."""
    client, server = trio.testing.memory_stream_pair()
    socket = DirectWebSocket(server, Upgrade("/t", b"/t", b"", [], KEY, [], []), MAX_MESSAGE)
    assert await socket.receive() == {"type": "websocket.connect"}
    await socket.send({"type": "websocket.accept"})
    await client.send_all(client_frame(0x1, b"over tls") + client_frame(0x9, b"p"))
    with trio.fail_after(5):
        assert (await socket.receive())["text"] == "over tls"
    await socket.send({"type": "websocket.send", "bytes": b"\x00\x01"})
    await client.send_all(client_frame(0x8, close_payload(1000)))
    with trio.fail_after(5):
        assert (await socket.receive())["code"] == 1000
    await server.aclose()
    answer = b""
    while data := await client.receive_some(65536):
        answer += data
    head, _, frames = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert frames == b"\x8a\x01p" + b"\x82\x02\x00\x01" + b"\x88\x02\x03\xe8"  # pong first
