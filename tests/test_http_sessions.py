"""Sign-in sessions over HTTP and the sockets: logout, the session list, ending sessions.

A real server on a real SQLite file. The safety-net refresh of revocations is set to an hour
(``REVOCATION_REFRESH_SECONDS``), so a socket that closes after a logout was closed by the
revocation message itself, not by a periodic reload (the tests also check the reload count).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from dramaverse.config import RateLimit
from dramaverse.http.auth import TokenService
from tests.conftest import TEST_SECRET, Server, make_settings, running_server, sample_records
from tests.test_ws_native import device, receive

URLS = [r["url"] for r in sample_records()]
FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
INVALID = {"message": "Invalid or expired token"}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = make_settings(tmp_path, revocation_refresh_seconds=3600)
    async with running_server(settings) as running:
        yield running


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
    return decoded


async def login(server: Server, user_agent: str = FIREFOX, name: str = "alice") -> str:
    response = await server.client.post(
        "/api/auth/login",
        json={"username": name, "password": "secret-pw"},
        headers={"User-Agent": user_agent},
    )
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"user", "token"}  # the original shape, unchanged
    token: str = response.json()["token"]
    return token


async def sessions_of(server: Server, token: str) -> list[dict[str, Any]]:
    response = await server.get_as(token, "/api/user/sessions")
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()["sessions"]
    return listed


async def refused_everywhere(server: Server, token: str) -> None:
    """The token gets 401 on a Quart route, the raw-ASGI write path and the session list."""
    data = await server.get_as(token, "/api/user/data")
    assert (data.status_code, data.json()) == (401, INVALID)
    write = await server.post_as(
        token, "/api/user/favorites", {"dramaUrl": URLS[0], "isFavorite": True}
    )
    assert (write.status_code, write.json()) == (401, INVALID)
    listed = await server.get_as(token, "/api/user/sessions")
    assert (listed.status_code, listed.json()) == (401, INVALID)
    async with device(server, token) as ws:
        assert await closed_with(ws) == (4100, "Invalid or expired token")


async def closed_with(ws: WebSocketConnection) -> tuple[int, str]:
    """Read until the server closes the socket; its close code and reason."""
    with trio.fail_after(10):  # a hang guard: the close is pushed, not polled
        try:
            while True:
                frame = json.loads(await ws.get_message())
                assert frame["type"] in ("ready", "ping"), frame
        except ConnectionClosed as closed:
            return closed.reason.code, closed.reason.reason or ""


async def live_socket(stack: AsyncExitStack, server: Server, token: str) -> WebSocketConnection:
    """A native socket past ``ready``, closed when ``stack`` is."""
    ws = await stack.enter_async_context(device(server, token))
    assert (await receive(ws))["type"] == "ready"
    return ws


# -- sessions come with tokens -------------------------------------------------------------------


async def test_register_and_login_start_sessions_named_after_the_browser(server: Server) -> None:
    response = await server.client.post(
        "/api/auth/register",
        json={"username": "alice", "password": "secret-pw"},
        headers={"User-Agent": IPHONE},
    )
    assert response.status_code == 201
    assert set(response.json()) == {"message", "user", "token"}
    first = response.json()["token"]
    second = await login(server)
    one, two = claims(first), claims(second)
    assert one["sid"] != two["sid"]
    assert one["jti"] != two["jti"]
    assert one["exp"] - one["iat"] == 24 * 3600
    listed = await sessions_of(server, second)
    assert [s["id"] for s in listed] == [two["sid"], one["sid"]]  # newest first
    assert [s["current"] for s in listed] == [True, False]
    assert [s["device"] for s in listed] == ["Firefox on Windows", "Safari on iOS"]
    assert listed[0]["userAgent"] == FIREFOX
    assert listed[0]["address"] == "127.0.0.1"
    assert listed[0]["expiresAt"] == two["exp"] * 1000
    assert listed[0]["createdAt"] <= listed[0]["lastSeenAt"]
    # The other token sees the same list, with itself as the current one.
    assert [s["current"] for s in await sessions_of(server, first)] == [False, True]


async def test_an_endless_user_agent_is_stored_bounded(server: Server) -> None:
    await server.register("alice")
    token = await login(server, "Firefox/1 \x01" + "x" * 5000)
    (mine,) = [s for s in await sessions_of(server, token) if s["current"]]
    assert len(mine["userAgent"]) == 512
    assert "\x01" not in mine["userAgent"]
    assert mine["device"] == "Firefox"


# -- logout ------------------------------------------------------------------------------------


async def test_logout_refuses_the_token_everywhere_and_closes_its_sockets(server: Server) -> None:
    await server.register("alice")
    phone, laptop = await login(server, IPHONE), await login(server)
    async with AsyncExitStack() as stack:
        phone_socket = await live_socket(stack, server, phone)
        laptop_socket = await live_socket(stack, server, laptop)
        response = await server.post_as(phone, "/api/auth/logout", {})
        assert (response.status_code, response.json()) == (200, {"message": "Logged out."})
        assert await closed_with(phone_socket) == (4100, "Invalid or expired token")
        await refused_everywhere(server, phone)
        again = await server.post_as(phone, "/api/auth/logout", {})
        assert again.status_code == 401
        # The laptop's session is another one: untouched, its socket still live. (The
        # registration's session is there too.)
        listed = await sessions_of(server, laptop)
        assert [s["current"] for s in listed] == [True, False]
        assert claims(phone)["sid"] not in [s["id"] for s in listed]
        await laptop_socket.send_message('{"type":"ping"}')
        assert (await receive(laptop_socket))["type"] == "pong"
    assert server.handle.state.revoker.refreshes == 1  # only the load at start
    assert server.handle.state.sockets.count() == 0


async def test_a_revocation_survives_a_restart(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, revocation_refresh_seconds=3600)
    async with running_server(settings) as server:
        await server.register("alice")
        token = await login(server)
        assert (await server.post_as(token, "/api/auth/logout", {})).status_code == 200
    async with running_server(settings, records=[]) as restarted:
        await refused_everywhere(restarted, token)


# -- the session list and ending sessions --------------------------------------------------------


async def test_ending_one_session_and_only_ones_own(server: Server) -> None:
    await server.register("alice")
    await server.register("bob")
    mine, spare = await login(server), await login(server, IPHONE)
    bobs = await login(server, name="bob")
    spare_id, bob_id = claims(spare)["sid"], claims(bobs)["sid"]
    async with AsyncExitStack() as stack:
        spare_socket = await live_socket(stack, server, spare)
        # Someone else's session: 404, exactly as an unknown one, and nothing happens to it.
        theirs = await server.client.delete(
            f"/api/user/sessions/{bob_id}", headers={"Authorization": f"Bearer {mine}"}
        )
        assert (theirs.status_code, theirs.json()) == (404, {"message": "Session not found."})
        assert (await server.get_as(bobs, "/api/user/data")).status_code == 200
        unknown = await server.client.delete(
            "/api/user/sessions/" + "A" * 32, headers={"Authorization": f"Bearer {mine}"}
        )
        assert unknown.status_code == 404

        ended = await server.client.delete(
            f"/api/user/sessions/{spare_id}", headers={"Authorization": f"Bearer {mine}"}
        )
        assert (ended.status_code, ended.json()) == (
            200,
            {"message": "Session ended.", "current": False},
        )
        assert await closed_with(spare_socket) == (4100, "Invalid or expired token")
        await refused_everywhere(server, spare)
        twice = await server.client.delete(
            f"/api/user/sessions/{spare_id}", headers={"Authorization": f"Bearer {mine}"}
        )
        assert twice.status_code == 404
        left = [s["id"] for s in await sessions_of(server, mine)]
        assert claims(mine)["sid"] in left
        assert spare_id not in left
        assert len(left) == 2  # and the registration's


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("short", 400, "Invalid session id: a session id is 16 to 64 letters, digits, - or _."),
        ("x" * 65, 400, None),
        ("%00" * 20, 400, None),
        ("..%2F..%2F" * 3, 404, None),  # a slash is no session id's, nor any route's
        ("%2F" + "A" * 32, 404, None),  # JSON, not Werkzeug's HTML redirect for "//"
        ("%F0%9F%8E%AC" * 8, 400, None),
    ],
)
async def test_malformed_session_ids_are_400(
    server: Server, path: str, status: int, message: str | None
) -> None:
    token = await server.register("alice")
    response = await server.client.delete(
        f"/api/user/sessions/{path}", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == status, response.text
    if message is not None:
        assert response.json() == {"message": message}
    assert (await server.get_as(token, "/api/user/data")).status_code == 200


async def test_ending_ones_own_current_session_is_a_logout(server: Server) -> None:
    token = await server.register("alice")
    response = await server.client.delete(
        f"/api/user/sessions/{claims(token)['sid']}", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.json() == {"message": "Session ended.", "current": True}
    assert (await server.get_as(token, "/api/user/data")).status_code == 401


async def test_logout_others_keeps_only_the_current_session(server: Server) -> None:
    await server.register("alice")
    keep = await login(server)
    others = [await login(server, IPHONE) for _ in range(2)]
    async with AsyncExitStack() as stack:
        sockets = [await live_socket(stack, server, token) for token in others]
        kept_socket = await live_socket(stack, server, keep)
        response = await server.post_as(keep, "/api/user/sessions/logout-others", {})
        assert response.json() == {"message": "Logged out of 3 other sessions.", "ended": 3}
        for socket in sockets:
            assert await closed_with(socket) == (4100, "Invalid or expired token")
        for token in others:
            await refused_everywhere(server, token)
        assert [s["current"] for s in await sessions_of(server, keep)] == [True]
        await kept_socket.send_message('{"type":"ping"}')
        assert (await receive(kept_socket))["type"] == "pong"
        again = await server.post_as(keep, "/api/user/sessions/logout-others", {})
        assert again.json() == {"message": "Logged out of 0 other sessions.", "ended": 0}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/auth/logout"),
        ("GET", "/api/user/sessions"),
        ("DELETE", "/api/user/sessions/" + "A" * 32),
        ("POST", "/api/user/sessions/logout-others"),
    ],
)
async def test_every_session_route_needs_a_valid_token(
    server: Server, method: str, path: str
) -> None:
    missing = await server.client.request(method, path)
    assert (missing.status_code, missing.json()) == (
        401,
        {"message": "Authentication token required"},
    )
    forged = TokenService("another-secret-" + "y" * 40, 60).issue(1, "alice")
    bad = await server.client.request(method, path, headers={"Authorization": f"Bearer {forged}"})
    assert (bad.status_code, bad.json()) == (401, INVALID)


async def test_session_routes_count_toward_the_user_rate_limit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rate_limit_user=RateLimit(3, 60))
    async with running_server(settings) as server:
        token = await server.register("alice")
        answers = [(await server.get_as(token, "/api/user/sessions")).status_code for _ in range(3)]
        assert answers == [200, 200, 200]
        limited = await server.post_as(token, "/api/user/sessions/logout-others", {})
        assert limited.status_code == 429
        assert (await server.get_as(token, "/api/user/data")).status_code == 429


# -- legacy tokens (no session id) ---------------------------------------------------------------


async def test_legacy_tokens_work_until_the_users_cutoff_moves(server: Server) -> None:
    await server.register("alice")
    await server.register("bob")
    # Tokens as the server issued them before sessions existed: no sid, no jti.
    legacy = TokenService(TEST_SECRET, 3600).issue(1, "alice", now=time.time() - 5)
    bobs_legacy = TokenService(TEST_SECRET, 3600).issue(2, "bob", now=time.time() - 5)
    assert "sid" not in claims(legacy)
    assert (await server.get_as(legacy, "/api/user/data")).status_code == 200
    assert await sessions_of(server, legacy) != []  # alice's registration session
    assert not any(s["current"] for s in await sessions_of(server, legacy))
    current = await login(server)
    async with AsyncExitStack() as stack:
        socket = await live_socket(stack, server, legacy)
        # Logging out a legacy token signs the user out everywhere: its cut-off moves.
        response = await server.post_as(legacy, "/api/auth/logout", {})
        assert response.json() == {
            "message": "Logged out everywhere (this token belonged to no session)."
        }
        assert await closed_with(socket) == (4100, "Invalid or expired token")
        await refused_everywhere(server, legacy)
        await refused_everywhere(server, current)
        with sqlite3.connect(server.settings.sqlite_path) as conn:
            (cutoff,) = conn.execute("SELECT tokens_valid_after FROM users WHERE id = 1").fetchone()
        assert cutoff > 0
        assert cutoff % 1000 == 0
    # Another user's legacy token is not concerned, and alice can log in again.
    assert (await server.get_as(bobs_legacy, "/api/user/data")).status_code == 200
    fresh = await login(server)
    assert (await server.get_as(fresh, "/api/user/data")).status_code == 200


async def test_a_banned_user_cannot_log_in(server: Server) -> None:
    await server.register("alice")
    await server.handle.state.storage.set_banned(1, True, int(time.time() * 1000))
    response = await server.client.post(
        "/api/auth/login", json={"username": "alice", "password": "secret-pw"}
    )
    assert (response.status_code, response.json()) == (
        403,
        {"message": "This account has been banned."},
    )
    wrong = await server.client.post(
        "/api/auth/login", json={"username": "alice", "password": "wrong-pw"}
    )
    assert (wrong.status_code, wrong.json()) == (401, {"message": "Invalid credentials"})
