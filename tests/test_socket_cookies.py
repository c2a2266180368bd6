"""The auth cookie on the socket handshakes: the native WebSocket and Socket.IO.

A handshake that brings no token (no ``hello.token``, header or subprotocol; no ``auth.token``
in the Socket.IO CONNECT) is authenticated by the browser's auth cookie, but only when it
carries an ``Origin`` header on the allow-list: a refusal keeps each protocol's own code (4100,
``connect_error``). Socket.IO is driven by the real npm socket.io-client, whose ``extraHeaders``
stand in for what a browser sends by itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from dramaverse.http.cookies import AUTH_COOKIE, CSRF_COOKIE, SOCKET_ORIGIN_REQUIRED
from dramaverse.realtime.socketio import COOKIE_ORIGIN_REQUIRED
from tests.conftest import Server, make_settings, running_server, sample_records
from tests.node.driver import NodeDriver, open_driver, require_node
from tests.test_http_cookies import ALLOWED, Browser, cookie_login
from tests.test_ws_native import device, receive

URLS = [r["url"] for r in sample_records()]


@pytest.fixture(params=[True, False], ids=["direct-ws", "hypercorn-ws"])
async def either_ws(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    """A server with its WebSockets on the server's own layer or on Hypercorn's."""
    async with running_server(make_settings(tmp_path, ws_direct=request.param)) as running:
        yield running


def cookie_header(browser: Browser) -> str:
    return f"{AUTH_COOKIE}={browser.token}; {CSRF_COOKIE}={browser.csrf}"


def handshake(
    browser: Browser | None, origin: str | None = ALLOWED, cookie: str | None = None
) -> list[tuple[bytes, bytes]]:
    """The handshake headers a browser adds: its cookies and its page's Origin."""
    if cookie is None and browser is not None:
        cookie = cookie_header(browser)
    headers = [] if cookie is None else [(b"Cookie", cookie.encode("latin-1"))]
    if origin is not None:
        headers.append((b"Origin", origin.encode()))
    return headers


async def closed_with(ws: WebSocketConnection) -> tuple[int, str]:
    with trio.fail_after(10):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            return closed.reason.code, closed.reason.reason or ""


# -- the native WebSocket --------------------------------------------------------------------


async def test_native_socket_with_the_cookie_and_an_allowed_origin(either_ws: Server) -> None:
    server = either_ws
    alice = await cookie_login(server, "alice")
    async with device(server, None, headers=handshake(alice)) as ws:
        ready = await receive(ws)
        assert ready["type"] == "ready"
        assert ready["user"] == {"username": "alice"}


async def test_native_socket_refuses_the_cookie_without_origin(either_ws: Server) -> None:
    server = either_ws
    alice = await cookie_login(server, "alice")
    async with device(server, None, headers=handshake(alice, origin=None)) as ws:
        assert await closed_with(ws) == (4100, SOCKET_ORIGIN_REQUIRED)


async def test_native_socket_refuses_a_disallowed_origin_at_the_handshake(server: Server) -> None:
    alice = await cookie_login(server, "alice")
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Protocol": "dramaverse.v1",
        "Cookie": cookie_header(alice),
        "Origin": "https://evil.example",
    }
    refused = await server.client.get("/api/ws", headers=upgrade)
    assert refused.status_code == 403


@pytest.mark.parametrize(
    ("cookie", "reason"),
    [
        (f"{AUTH_COOKIE}=not-a-token", "Invalid or expired token"),
        ("theme=dark", "Authentication token required"),
    ],
)
async def test_native_socket_with_a_bad_cookie_is_4100(
    server: Server, cookie: str, reason: str
) -> None:
    async with device(server, None, headers=handshake(None, cookie=cookie)) as ws:
        assert await closed_with(ws) == (4100, reason)


async def test_native_socket_prefers_any_token_to_the_cookie(server: Server) -> None:
    alice = await cookie_login(server, "alice")
    bob = await server.register("bob")
    async with device(server, bob, headers=handshake(alice)) as ws:  # hello.token
        assert (await receive(ws))["user"] == {"username": "bob"}
    bearer = [*handshake(alice), (b"Authorization", f"Bearer {bob}".encode())]
    async with device(server, None, headers=bearer) as ws:
        assert (await receive(ws))["user"] == {"username": "bob"}
    # Any Authorization header, even one that is not Bearer, means the cookie is not used.
    basic = [*handshake(alice), (b"Authorization", b"Basic eDp5")]
    async with device(server, None, headers=basic) as ws:
        assert await closed_with(ws) == (4100, "Authentication token required")


# -- Socket.IO -------------------------------------------------------------------------------


@pytest.fixture
async def node() -> AsyncIterator[NodeDriver]:
    require_node()
    async with open_driver() as driver:
        yield driver


def sio_options(headers: dict[str, str], transports: list[str], **extra: Any) -> dict[str, Any]:
    return {"auth": {}, "transports": transports, "extraHeaders": headers, **extra}


@pytest.mark.parametrize("transports", [["polling", "websocket"], ["websocket"]])
async def test_socketio_with_the_cookie_and_an_allowed_origin(
    node: NodeDriver, either_ws: Server, transports: list[str]
) -> None:
    server = either_ws
    alice = await cookie_login(server, "alice")
    headers = {"Cookie": cookie_header(alice), "Origin": ALLOWED}
    await node.send("connect", name="a", url=server.url, options=sio_options(headers, transports))
    connected = await node.expect("connect", "a")
    if transports == ["websocket"]:
        assert connected["transport"] == "websocket"
    # A write made the way a browser page makes it (cookie + CSRF) reaches the socket.
    body = {"dramaUrl": URLS[0], "isFavorite": True}
    written = await server.client.post("/api/user/favorites", json=body, headers=alice.headers())
    assert written.status_code == 200, written.text
    event = await node.expect("event", "a")
    assert event["event"] == "favorite_updated"
    assert event["args"] == [body, "1"]


@pytest.mark.parametrize("transports", [["polling", "websocket"], ["websocket"]])
async def test_socketio_refuses_the_cookie_without_origin(
    node: NodeDriver, server: Server, transports: list[str]
) -> None:
    alice = await cookie_login(server, "alice")
    headers = {"Cookie": cookie_header(alice)}
    await node.send("connect", name="a", url=server.url, options=sio_options(headers, transports))
    refused = await node.expect("connect_error", "a")
    assert refused["message"] == COOKIE_ORIGIN_REQUIRED
    assert node.of("connect", "a") == []


@pytest.mark.parametrize("transports", [["polling", "websocket"], ["websocket"]])
async def test_socketio_refuses_a_disallowed_origin(
    node: NodeDriver, server: Server, transports: list[str]
) -> None:
    alice = await cookie_login(server, "alice")
    headers = {"Cookie": cookie_header(alice), "Origin": "https://evil.example"}
    options = sio_options(headers, transports, reconnection=False)
    await node.send("connect", name="a", url=server.url, options=options)
    await node.expect("connect_error", "a")
    assert node.of("connect", "a") == []
    assert server.handle.state.engine is not None
    assert server.handle.state.engine.sessions == {}  # no session was opened


async def test_socketio_token_wins_over_the_cookie_and_bad_cookies_are_refused(
    node: NodeDriver, server: Server
) -> None:
    alice = await cookie_login(server, "alice")
    bob = await server.register("bob")
    headers = {"Cookie": cookie_header(alice), "Origin": ALLOWED}
    options = sio_options(headers, ["websocket"])
    await node.send(
        "connect", name="b", url=server.url, options={**options, "auth": {"token": bob}}
    )
    await node.expect("connect", "b")
    bad = {"Cookie": f"{AUTH_COOKIE}=not-a-token", "Origin": ALLOWED}
    await node.send("connect", name="x", url=server.url, options=sio_options(bad, ["websocket"]))
    refused = await node.expect("connect_error", "x")
    assert refused["message"] == "Authentication error: Invalid token."
    # Bob's socket gets Bob's events, not Alice's.
    await server.post_as(
        alice.token, "/api/user/favorites", {"dramaUrl": URLS[0], "isFavorite": True}
    )
    await server.post_as(bob, "/api/user/favorites", {"dramaUrl": URLS[1], "isFavorite": True})
    event = await node.expect("event", "b")
    assert event["args"][0] == {"dramaUrl": URLS[1], "isFavorite": True}
