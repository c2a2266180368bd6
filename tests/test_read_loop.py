"""http/read_loop.py: Hypercorn's read loop without a per-read cancel scope, and Hypercorn's own
loop (with its read timeout) whenever a read timeout is configured. Real Hypercorn on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from dramaverse.http import read_loop
from tests.asgi import answer_lifespan
from tests.cluster import free_port


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"hi"})


@asynccontextmanager
async def serving(read_timeout: int | None) -> AsyncIterator[int]:
    read_loop.install()
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.read_timeout = read_timeout
    config.keep_alive_timeout = 30  # only the read timeout may end an idle connection here
    config.accesslog = None
    config.graceful_timeout = 1
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(hypercorn_serve, hello, config, shutdown_trigger=stop.wait))
        yield port
        stop.set()  # Hypercorn stops by itself, closing what it opened


async def request(stream: trio.SocketStream) -> bytes:
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    answer = b""
    with trio.fail_after(5):
        while not answer.endswith(b"hi"):
            chunk = await stream.receive_some(65536)
            assert chunk, "closed before answering"
            answer += chunk
    return answer


async def closed_within(stream: trio.SocketStream, seconds: float) -> bool:
    with trio.move_on_after(seconds):
        return await stream.receive_some(65536) == b""
    return False


async def test_without_a_read_timeout_requests_are_served_and_idle_connections_stay() -> None:
    async with serving(None) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        for _ in range(3):  # keep-alive: several requests on one connection
            assert (await request(stream)).startswith(b"HTTP/1.1 200")
        assert not await closed_within(stream, 1.5)
        await stream.aclose()


async def test_a_configured_read_timeout_runs_hypercorns_own_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[float | None] = []
    original = read_loop._ORIGINAL

    async def spy(server: Any) -> None:
        calls.append(server.config.read_timeout)
        await original(server)

    monkeypatch.setattr(read_loop, "_ORIGINAL", spy)
    async with serving(7) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert (await request(stream)).startswith(b"HTTP/1.1 200")
        await stream.aclose()
    assert calls == [7]  # Hypercorn's loop, with its fail_after(read_timeout), served it
    async with serving(None) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert (await request(stream)).startswith(b"HTTP/1.1 200")
        await stream.aclose()
    assert calls == [7]  # without a read timeout: ours
