"""Keep-alive connections never hang after an answer given before the body was read, and an
idle one never holds up a shutdown."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.conftest import Server, make_settings, running_server


async def _exchange(server: Server, request: bytes) -> tuple[bytes, trio.SocketStream]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(request)
    head = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(65536)
            assert chunk, "closed before answering"
            head += chunk
    return head, stream


def _post(path: str, body: bytes, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", *extra]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _next_request_is_answered(stream: trio.SocketStream) -> bool:
    """Send another request on the same connection: it must be answered, not left hanging."""
    await stream.send_all(b"GET /api/health HTTP/1.1\r\nHost: test\r\n\r\n")
    answer = b""
    with trio.move_on_after(5):
        while b'{"status":"ok"}' not in answer:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return False
            answer += chunk
        return True
    return False


BIG = b'{"a": "' + b"x" * 200_000 + b'"}'


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/user/favorites", b"401"),  # the raw-ASGI write path, refused from the headers
        ("/api/auth/register", b"413"),  # a Quart route, body over MAX_BODY_BYTES
        ("/socket.io/?EIO=4&transport=polling&sid=nope", b"400"),  # Engine.IO, unknown sid
    ],
)
async def test_an_early_answer_leaves_the_connection_usable(
    server: Server, path: str, status: bytes
) -> None:
    head, stream = await _exchange(server, _post(path, BIG))
    async with stream:
        assert head.split(b" ")[1] == status
        assert await _next_request_is_answered(stream)


async def test_a_body_read_to_the_end_keeps_the_connection(server: Server) -> None:
    token = await server.register("alice")
    body = b'{"dramaUrl": "nope", "isFavorite": true}'
    head, stream = await _exchange(
        server, _post("/api/user/favorites", body, f"Authorization: Bearer {token}")
    )
    async with stream:
        assert head.split(b" ")[1] == b"404"
        assert b"connection: close" not in head.lower()
        await stream.send_all(b"GET /api/health HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = b""
        with trio.fail_after(5):
            while b'{"status":"ok"}' not in answer:
                answer += await stream.receive_some(65536)


async def _answer(stream: trio.SocketStream) -> bytes:
    """One whole response (with a Content-Length) from ``stream``."""
    data = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += await stream.receive_some(65536)
    return head


@pytest.mark.parametrize("path", ["/api/dramas/metadata", "/api/health"])
async def test_shutdown_closes_an_idle_keep_alive_connection_without_waiting_the_grace(
    tmp_path: Path, path: str
) -> None:
    # Quart-Trio routes: the request's nursery is cancelled as the response ends, which once
    # kept Hypercorn from starting the connection's idle timer (server/keepalive_timer.py).
    settings = make_settings(tmp_path, shutdown_grace_seconds=600)
    async with running_server(settings) as server:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            head = await _answer(stream)
            assert head.startswith(b"HTTP/1.1 200")
            assert b"connection: close" not in head.lower()
            server.handle.stop()
            with trio.fail_after(30):  # a hang guard, far below the 600 s grace
                assert await stream.receive_some(65536) == b""  # closed by the server
