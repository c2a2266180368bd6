"""dramaverse/server: what each Hypercorn patch promises, and plain Hypercorn when it differs.

Real Hypercorn on loopback with small ASGI applications. The patches are process-wide (they
replace functions on Hypercorn's classes), so a test that makes :func:`fence.install` fall back
installs them again when it ends.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from importlib import metadata
from typing import Any

import pytest
import trio
import trio.testing
import wsproto.extensions
from hypercorn.config import Config
from hypercorn.events import RawData
from hypercorn.protocol import ws_stream
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.tcp_server import TCPServer

from dramaverse.server import (
    boundary,
    compression,
    direct_ws,
    fence,
    keepalive_timer,
    read_loop,
    send_coalescing,
)
from tests.asgi import answer_lifespan
from tests.cluster import free_port

WS_PATH = "/ws"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``hi`` over HTTP; an echo over WebSocket. Like Quart-Trio, an HTTP request's task is
    cancelled as soon as Hypercorn hands it ``http.disconnect`` (what keepalive_timer is for)."""
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message.get("text")})
        return
    async with trio.open_nursery() as nursery:

        async def cancel_on_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(cancel_on_disconnect)
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hi"})
        await trio.sleep_forever()  # until http.disconnect, as a framework's request task


@asynccontextmanager
async def serving(
    *, read_timeout: int | None = None, keep_alive: float = 30, claim: bool = False
) -> AsyncIterator[int]:
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.read_timeout = read_timeout
    config.keep_alive_timeout = keep_alive
    config.accesslog = None
    config.graceful_timeout = 1
    if claim:
        direct_ws.claim_paths(config, [WS_PATH])
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(hypercorn_serve, app, config, shutdown_trigger=stop.wait))
        yield port
        stop.set()  # Hypercorn stops by itself, closing what it opened


@pytest.fixture
def patched() -> None:
    assert fence.install() == ()


@pytest.fixture
def plain_hypercorn(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[str, ...]]:
    """Hypercorn as if it were 0.19.0: install() falls back; the patches come back after."""
    real_version = metadata.version

    def version(name: str) -> str:
        return "0.19.0" if name.lower() == "hypercorn" else real_version(name)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(metadata, "version", version)
            with caplog.at_level(logging.WARNING, logger="dramaverse.server.fence"):
                yield fence.install()
    finally:
        assert fence.install() == ()


async def read_until(stream: trio.SocketStream, end: bytes) -> bytes:
    answer = b""
    with trio.fail_after(5):
        while end not in answer:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed before {end!r}: {answer!r}"
            answer += chunk
    return answer


async def request(stream: trio.SocketStream) -> bytes:
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    return await read_until(stream, b"hi")


async def closed_within(stream: trio.SocketStream, seconds: float) -> bool:
    with trio.move_on_after(seconds):
        return await stream.receive_some(65536) == b""
    return False


async def open_websocket(port: int, extensions: bytes = b"") -> tuple[trio.SocketStream, bytes]:
    """A WebSocket handshake on a raw stream; the stream and the response head."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    await stream.send_all(
        b"GET " + WS_PATH.encode() + b" HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
        + key
        + b"\r\n"
        + extensions
        + b"\r\n"
    )
    head = await read_until(stream, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream, head


async def echo(stream: trio.SocketStream, text: bytes) -> bytes:
    """One masked text frame out (under 126 bytes), the server's frame back."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(text))
    await stream.send_all(bytes([0x81, 0x80 | len(text)]) + mask + masked)
    return await read_until(stream, text)


def test_the_patches_fit_the_installed_hypercorn() -> None:
    """A Hypercorn bump that changes anything patched fails here, not in production."""
    assert fence.install() == ()
    assert TCPServer.run is boundary.run
    assert TCPServer.protocol_send is keepalive_timer.protocol_send
    assert H11Protocol._send_h11_event is send_coalescing.send_h11_event
    assert H11Protocol.stream_send is send_coalescing.stream_send
    assert ws_stream.PerMessageDeflate is compression.StatelessPerMessageDeflate  # type: ignore[attr-defined]
    assert ws_stream.Handshake is boundary.CheckedHandshake
    assert fence.install() == ()  # idempotent


@pytest.mark.usefixtures("patched")
async def test_without_a_read_timeout_requests_are_served_and_idle_connections_stay() -> None:
    async with serving() as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        for _ in range(3):  # keep-alive: several requests on one connection
            assert (await request(stream)).startswith(b"HTTP/1.1 200")
        assert not await closed_within(stream, 1.5)
        await stream.aclose()


@pytest.mark.usefixtures("patched")
async def test_a_configured_read_timeout_runs_hypercorns_own_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[float | None] = []
    original = read_loop._ORIGINAL

    async def spy(server: Any) -> None:
        calls.append(server.config.read_timeout)
        await original(server)

    monkeypatch.setattr(read_loop, "_ORIGINAL", spy)
    async with serving(read_timeout=7) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert (await request(stream)).startswith(b"HTTP/1.1 200")
        await stream.aclose()
    assert calls == [7]  # Hypercorn's loop, with its fail_after(read_timeout), served it
    async with serving() as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert (await request(stream)).startswith(b"HTTP/1.1 200")
        await stream.aclose()
    assert calls == [7]  # without a read timeout: ours


@pytest.mark.usefixtures("patched")
@pytest.mark.parametrize("claim", [True, False], ids=["direct", "hypercorn"])
async def test_a_websocket_outlives_the_keep_alive_timeout(
    mock_clock: trio.testing.MockClock, claim: bool
) -> None:
    """The keep-alive timer Hypercorn starts for every connection is for HTTP requests: it
    must not close a WebSocket, served directly (read_loop stops it) or by Hypercorn."""
    mock_clock.autojump_threshold = 0.5  # real sockets: jump only when all is quiet
    async with serving(keep_alive=5, claim=claim) as port:
        stream, _ = await open_websocket(port)
        await trio.sleep(60)  # virtual: twelve keep-alive timeouts
        assert (await echo(stream, b"still here")).endswith(b"still here")
        await stream.aclose()


@pytest.mark.usefixtures("patched")
async def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The application cancels its request task on http.disconnect, which used to cancel the
    start of the keep-alive timer: the idle connection then stayed open for ever."""
    mock_clock.autojump_threshold = 0.5
    async with serving(keep_alive=5) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert (await request(stream)).startswith(b"HTTP/1.1 200")
        with trio.fail_after(60):  # virtual seconds; the timeout is 5
            assert await stream.receive_some(65536) == b""
        await stream.aclose()


def count_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every socket write Hypercorn makes from now on (a spy around what is installed)."""
    writes: list[bytes] = []
    installed = TCPServer.protocol_send

    async def spy(self: TCPServer, event: Any) -> None:
        if isinstance(event, RawData):
            writes.append(event.data)
        await installed(self, event)

    monkeypatch.setattr(TCPServer, "protocol_send", spy)
    return writes


@pytest.mark.usefixtures("patched")
async def test_a_small_response_leaves_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serving() as port:
        writes = count_writes(monkeypatch)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        for _ in range(2):  # the second one on the recycled keep-alive connection
            writes.clear()
            answer = await request(stream)
            assert len(writes) == 1
            assert writes[0] == answer
            assert answer.startswith(b"HTTP/1.1 200")
            assert answer.endswith(b"\r\n\r\nhi")
        await stream.aclose()


@pytest.mark.usefixtures("patched")
async def test_deflate_is_offered_without_context_takeover() -> None:
    offer = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    async with serving() as port:  # Hypercorn's own WebSocket layer: nothing claimed
        stream, head = await open_websocket(port, offer)
        assert b"server_no_context_takeover" in head
        assert b"client_no_context_takeover" in head
        await stream.aclose()


async def test_a_version_mismatch_falls_back_to_plain_hypercorn(
    plain_hypercorn: tuple[str, ...],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert plain_hypercorn == ("hypercorn 0.19.0 (written for 0.18.*)",)
    records = caplog.get_records("setup")  # the fixture's install()
    warnings = [r for r in records if r.name == "dramaverse.server.fence"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "hypercorn 0.19.0" in warnings[0].getMessage()
    assert TCPServer._read_data is read_loop._ORIGINAL
    assert TCPServer.protocol_send is keepalive_timer._ORIGINAL
    assert H11Protocol.stream_send is send_coalescing._ORIGINAL_STREAM_SEND
    assert H11Protocol._send_h11_event is not send_coalescing.send_h11_event
    assert ws_stream.PerMessageDeflate is wsproto.extensions.PerMessageDeflate  # type: ignore[attr-defined]
    assert ws_stream.Handshake is not boundary.CheckedHandshake
    assert TCPServer.run is boundary.run  # the one part kept: see fence's docstring
    offer = b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
    async with serving(claim=True) as port:
        writes = count_writes(monkeypatch)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert (await request(stream)).startswith(b"HTTP/1.1 200")
        assert len(writes) > 1  # Hypercorn's own writes: head, body, end of message
        await stream.aclose()
        socket, head = await open_websocket(port, offer)  # claimed, but Hypercorn serves it
        assert b"client_no_context_takeover" not in head  # deflate with context takeover
        await socket.aclose()
        socket, _ = await open_websocket(port)
        assert (await echo(socket, b"plain")).endswith(b"plain")
        await socket.aclose()


async def test_a_changed_function_falls_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def protocol_send(self: TCPServer, event: Any) -> None:  # as a new Hypercorn might
        await keepalive_timer._ORIGINAL(self, event)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(TCPServer, "protocol_send", protocol_send)
            with caplog.at_level(logging.WARNING, logger="dramaverse.server.fence"):
                found = fence.install()
            assert found == ("hypercorn.trio.tcp_server.TCPServer.protocol_send",)
            assert TCPServer.protocol_send is protocol_send  # left as Hypercorn has it
            assert TCPServer._read_data is read_loop._ORIGINAL
            warnings = [r for r in caplog.records if r.name == "dramaverse.server.fence"]
            assert len(warnings) == 1
            assert "TCPServer.protocol_send" in warnings[0].getMessage()
    finally:
        assert fence.install() == ()


@pytest.mark.usefixtures("plain_hypercorn")
async def test_the_boundary_holds_on_plain_hypercorn() -> None:
    """Hypercorn's handshake raises on a non-ASCII header (issue 12); without our handshake
    check that ends the connection, and the boundary keeps it from ending the server."""
    async with serving() as port:
        for _ in range(3):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(
                b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Protocol: \xff\r\n\r\n"
            )
            with trio.fail_after(5):
                while await stream.receive_some(65536):
                    pass
            await stream.aclose()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert (await request(stream)).startswith(b"HTTP/1.1 200")
        await stream.aclose()
