"""server/boundary.py: one connection's failure ends that connection, never the server.

Raw requests over real sockets against the real server, as an attacker or a careless client
would send them (issue 12), and a fault injected into Hypercorn's protocol layer to prove the
boundary holds for failures nobody has found yet.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from hypercorn.protocol.h11 import H11Protocol

from dramaverse.server.boundary import valid_websocket_key
from tests.conftest import Server

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(path: bytes, extra: bytes = b"", key: bytes = KEY) -> bytes:
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n" + extra + b"\r\n"
    )


@asynccontextmanager
async def raw(server: Server) -> AsyncIterator[trio.SocketStream]:
    port = int(server.url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        yield stream


async def read_all(stream: trio.SocketStream) -> bytes:
    """Everything until the server closes (a hang guard, not a speed bound)."""
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    """Bytes until ``marker`` has arrived (or the server closed)."""
    data = b""
    with trio.fail_after(10):
        while marker not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return data


async def still_healthy(server: Server) -> None:
    response = await server.client.get("/api/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


@pytest.mark.parametrize(
    "path", [b"/api/health", b"/api/ws", b"/socket.io/?EIO=4&transport=websocket"]
)
@pytest.mark.parametrize(
    "header",
    [
        b"Sec-WebSocket-Protocol: \xff",
        b"Sec-WebSocket-Protocol: dramaverse.v1, \xc3\xa9",
        b"Sec-WebSocket-Extensions: permessage-deflate; \xfe",
    ],
)
async def test_non_ascii_websocket_headers_get_400_and_the_server_lives(
    server: Server, path: bytes, header: bytes
) -> None:
    for _ in range(3):  # the outage took repeated requests: any one must be harmless
        async with raw(server) as stream:
            await stream.send_all(upgrade(path, header + b"\r\n"))
            answer = await read_until(stream, b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        await still_healthy(server)


async def test_non_ascii_header_after_a_keep_alive_request(server: Server) -> None:
    async with raw(server) as stream:
        await stream.send_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await read_until(stream, b'"ok"}')
        assert first.startswith(b"HTTP/1.1 200")
        await stream.send_all(upgrade(b"/api/health", b"Sec-WebSocket-Protocol: \xff\r\n"))
        rest = await read_until(stream, b"\r\n\r\n")
        assert rest.startswith(b"HTTP/1.1 400"), rest[:200]
    await still_healthy(server)


@pytest.mark.parametrize(
    "key", [b"abc", b"", b"not base64 at all!!!!!!!", b"AAAAAAAAAAAAAAAAAAAAAAAAAAAA"]
)
@pytest.mark.parametrize("path", [b"/api/ws", b"/api/health"])
async def test_a_malformed_websocket_key_is_refused(
    server: Server, key: bytes, path: bytes
) -> None:
    async with raw(server) as stream:
        request = upgrade(path, b"Sec-WebSocket-Protocol: dramaverse.v1\r\n", key=key)
        await stream.send_all(request)
        answer = await read_until(stream, b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    await still_healthy(server)


def test_websocket_keys_are_base64_of_sixteen_bytes() -> None:
    assert valid_websocket_key(KEY)
    assert not valid_websocket_key(None)
    assert not valid_websocket_key(b"dGhlIHNhbXBsZSBub25jZQ")  # padding missing
    assert not valid_websocket_key(b"dGhlIHNhbXBsZSBub25jZSE=")  # 17 bytes... or not 16
    assert not valid_websocket_key(b"\xff" * 24)


async def test_an_unexpected_failure_ends_only_its_connection(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault injected into Hypercorn's HTTP/1.1 layer for one path: that client gets a 500 and
    a closed connection, the failure is logged once, and everyone else is served."""
    original = H11Protocol._create_stream

    async def failing(self: H11Protocol, request: object) -> None:
        if getattr(request, "target", b"") == b"/boom":
            raise RuntimeError("injected failure")
        await original(self, request)  # type: ignore[arg-type]

    monkeypatch.setattr(H11Protocol, "_create_stream", failing)
    async with raw(server) as bystander:  # a keep-alive neighbour, open across the failure
        await bystander.send_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_until(bystander, b'"ok"}')).startswith(b"HTTP/1.1 200")
        with caplog.at_level(logging.ERROR, logger="dramaverse.server.boundary"):
            async with raw(server) as victim:
                await victim.send_all(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = await read_all(victim)
        assert answer.startswith(b"HTTP/1.1 500")
        assert answer.endswith(b'{"message":"Internal Server Error"}')
        failures = [r for r in caplog.records if r.name == "dramaverse.server.boundary"]
        assert len(failures) == 1
        assert "injected failure" in (failures[0].exc_text or "")
        await bystander.send_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_until(bystander, b'"ok"}')).startswith(b"HTTP/1.1 200")
    await still_healthy(server)


@pytest.mark.parametrize("path", [b"/x", b"/api/nope"])
async def test_a_websocket_upgrade_to_a_path_without_a_socket_is_a_404(
    server: Server, path: bytes
) -> None:
    """Found by the handshake fuzzer: Quart answers it outside a request context, and the
    error handler's look at the request made it a 500."""
    async with raw(server) as stream:
        await stream.send_all(upgrade(path))
        answer = await read_until(stream, b"}")
    assert answer.startswith(b"HTTP/1.1 404"), answer[:300]
    assert answer.endswith(b'{"message":"Not found: GET ' + path + b'"}')


async def test_a_websocket_upgrade_to_an_http_route_is_a_400(server: Server) -> None:
    async with raw(server) as stream:
        await stream.send_all(upgrade(b"/api/dramas"))
        answer = await read_until(stream, b"}")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
