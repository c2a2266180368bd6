"""``POST /api/user/password`` over HTTP and the sockets (routes/password.py).

A real server on a real SQLite file. Revocations are reloaded from the database only every hour
here, so a socket that closes was closed by the revocation message itself. Tokens of the current
session are minted a few seconds in the past where a test needs the cut-off to refuse them (a
cut-off is the start of the change's second: docs/auth.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from dramaverse.config import RateLimit
from dramaverse.http.auth import TokenService
from dramaverse.http.cookies import AUTH_COOKIE, CSRF_COOKIE
from dramaverse.http.routes.password import (
    CHANGE_INVALID,
    CURRENT_TOO_LONG,
    NEW_IS_CURRENT,
    NEW_TOO_LONG,
    NEW_TOO_SHORT,
    WRONG_CURRENT,
)
from tests.conftest import TEST_SECRET, Server, make_settings, running_server
from tests.node.driver import open_driver, require_node
from tests.test_http_cookies import Browser, cookie_login, set_cookies
from tests.test_http_sessions import (
    IPHONE,
    URLS,
    claims,
    closed_with,
    live_socket,
    login,
    refused_everywhere,
    sessions_of,
)
from tests.test_ws_native import receive

PATH = "/api/user/password"
NEW = "brand-new-pw"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = make_settings(tmp_path, revocation_refresh_seconds=3600, trust_proxy=1)
    async with running_server(settings) as running:
        yield running


def older(token: str, seconds: float = 5) -> str:
    """The same session's token as issued ``seconds`` before it (what a device may hold)."""
    found = claims(token)
    return TokenService(TEST_SECRET, 3600).issue(
        found["id"], found["username"], session_id=found.get("sid"), now=found["iat"] - seconds
    )


async def change(server: Server, token: str, body: Any, **headers: str) -> Any:
    return await server.client.post(
        PATH, json=body, headers={"Authorization": f"Bearer {token}", **headers}
    )


async def can_login(server: Server, password: str, name: str = "alice") -> int:
    response = await server.client.post(
        "/api/auth/login", json={"username": name, "password": password}
    )
    status: int = response.status_code
    return status


# -- the change ----------------------------------------------------------------------------------


async def test_a_change_signs_out_every_other_session_and_keeps_the_current_one(
    server: Server,
) -> None:
    registered = await server.register("alice")
    other = await login(server, IPHONE)
    current = older(await login(server))
    legacy = TokenService(TEST_SECRET, 3600).issue(1, "alice", now=time.time() - 5)
    bobs = await server.register("bob")
    async with AsyncExitStack() as stack:
        doomed = [await live_socket(stack, server, t) for t in (other, legacy, current)]
        bobs_socket = await live_socket(stack, server, bobs)
        response = await change(
            server, current, {"currentPassword": "secret-pw", "newPassword": NEW}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"user", "token"}  # login's shape
        assert body["user"] == {"username": "alice"}
        fresh = body["token"]
        assert claims(fresh)["sid"] == claims(current)["sid"]  # the same session, renewed
        state = server.handle.state
        stored = await state.storage.get_user(claims(fresh)["id"])
        assert stored is not None
        cutoff = stored.tokens_valid_after
        assert claims(fresh)["iat"] * 1000 >= cutoff  # the fresh token is not cut off
        assert claims(legacy)["iat"] * 1000 < cutoff
        assert claims(current)["iat"] * 1000 < cutoff
        # Tokens of the other sessions issued in the change's own second escape the cut-off:
        # their sessions' end refuses them, here and on every process.
        ended = set(state.revoker.revocations.ended_sessions())
        assert {claims(registered)["sid"], claims(other)["sid"]} <= ended
        assert claims(current)["sid"] not in ended
        assert "set-cookie" not in response.headers  # a Bearer request: no cookies

        # Every socket opened with a token from before the change closes, the current
        # session's old token included (it reconnects with the new one).
        for socket in doomed:
            assert await closed_with(socket) == (4100, "Invalid or expired token")
        for token in (registered, other, legacy, current):
            await refused_everywhere(server, token)
        # Another user is not concerned.
        await bobs_socket.send_message('{"type":"ping"}')
        assert (await receive(bobs_socket))["type"] == "pong"

    # The current session lives on with the new token, alone.
    assert (await server.get_as(fresh, "/api/user/data")).status_code == 200
    listed = await sessions_of(server, fresh)
    assert [(s["id"], s["current"]) for s in listed] == [(claims(fresh)["sid"], True)]
    assert listed[0]["expiresAt"] == claims(fresh)["exp"] * 1000
    async with AsyncExitStack() as stack:
        socket = await live_socket(stack, server, fresh)
        await socket.send_message('{"type":"ping"}')
        assert (await receive(socket))["type"] == "pong"
    assert await can_login(server, "secret-pw") == 401
    assert await can_login(server, NEW) == 200
    assert server.handle.state.revoker.refreshes == 1  # closed by the messages, not a reload


async def test_a_legacy_token_gets_a_new_session(server: Server) -> None:
    await server.register("alice")
    legacy = TokenService(TEST_SECRET, 3600).issue(1, "alice", now=time.time() - 5)
    response = await change(server, legacy, {"currentPassword": "secret-pw", "newPassword": NEW})
    assert response.status_code == 200, response.text
    fresh = response.json()["token"]
    assert "sid" in claims(fresh)
    assert [s["current"] for s in await sessions_of(server, fresh)] == [True]  # only the new one
    await refused_everywhere(server, legacy)


async def test_non_ascii_passwords_are_changed_and_checked_in_utf8(server: Server) -> None:
    token = await server.register("alice", "pässwörd-ü")
    new = "新しいパスワード🎬"  # 6 to 72 bytes: 8 characters, 9 UTF-16 units, 28 bytes
    response = await change(server, token, {"currentPassword": "pässwörd-ü", "newPassword": new})
    assert response.status_code == 200, response.text
    assert await can_login(server, new) == 200
    assert await can_login(server, "pässwörd-ü") == 401


async def test_the_socketio_sockets_of_other_sessions_are_disconnected(server: Server) -> None:
    require_node()
    await server.register("alice")
    other, current = await login(server), await login(server)
    async with open_driver() as node:
        for transport in ("websocket", "polling"):
            options = {"auth": {"token": other}, "transports": [transport], "reconnection": False}
            await node.send("connect", name=transport, url=server.url, options=options)
            await node.expect("connect", transport)
        response = await change(
            server, current, {"currentPassword": "secret-pw", "newPassword": NEW}
        )
        assert response.status_code == 200
        for transport in ("websocket", "polling"):
            closed = await node.expect("disconnect", transport)
            assert closed["reason"] == "io server disconnect"
        again = {"auth": {"token": other}, "transports": ["websocket"], "reconnection": False}
        await node.send("connect", name="again", url=server.url, options=again)
        refused = await node.expect("connect_error", "again")
        assert refused["message"] == "Authentication error: Invalid token."
        fresh = {
            "auth": {"token": response.json()["token"]},
            "transports": ["websocket"],
            "reconnection": False,
        }
        await node.send("connect", name="fresh", url=server.url, options=fresh)
        await node.expect("connect", "fresh")


# -- refusals ------------------------------------------------------------------------------------


async def test_a_wrong_current_password_is_403_and_changes_nothing(server: Server) -> None:
    await server.register("alice")
    other, current = await login(server), await login(server)
    response = await change(server, current, {"currentPassword": "wrong-pw", "newPassword": NEW})
    assert (response.status_code, response.json()) == (403, {"message": WRONG_CURRENT})
    # Not even the "same password" rule is said to someone who does not know the password.
    same = await change(server, current, {"currentPassword": "wrong-pw", "newPassword": "wrong-pw"})
    assert same.status_code == 403
    for token in (other, current):
        assert (await server.get_as(token, "/api/user/data")).status_code == 200
    assert await can_login(server, "secret-pw") == 200
    assert await can_login(server, NEW) == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, CHANGE_INVALID),
        ([], CHANGE_INVALID),
        ("secret-pw", CHANGE_INVALID),
        (None, CHANGE_INVALID),
        ({"currentPassword": "secret-pw"}, CHANGE_INVALID),
        ({"newPassword": NEW}, CHANGE_INVALID),
        ({"currentPassword": "", "newPassword": NEW}, CHANGE_INVALID),
        ({"currentPassword": 123456, "newPassword": NEW}, CHANGE_INVALID),
        ({"currentPassword": "secret-pw", "newPassword": 12345678}, CHANGE_INVALID),
        ({"currentPassword": "secret-pw", "newPassword": None}, CHANGE_INVALID),
        ({"currentPassword": True, "newPassword": NEW}, CHANGE_INVALID),
        ({"currentPassword": ["secret-pw"], "newPassword": NEW}, CHANGE_INVALID),
        ({"currentPassword": {"a": 1}, "newPassword": NEW}, CHANGE_INVALID),
        ({"currentPassword": "x" * 1025, "newPassword": NEW}, CURRENT_TOO_LONG),
        ({"currentPassword": "secret-pw", "newPassword": "short"}, NEW_TOO_SHORT),
        ({"currentPassword": "secret-pw", "newPassword": ""}, NEW_TOO_SHORT),
        ({"currentPassword": "secret-pw", "newPassword": "é" * 37}, NEW_TOO_LONG),  # 74 bytes
        ({"currentPassword": "secret-pw", "newPassword": "x" * 5000}, NEW_TOO_LONG),
        ({"currentPassword": "secret-pw", "newPassword": "secret-pw"}, NEW_IS_CURRENT),
    ],
)
async def test_invalid_bodies_are_400_and_change_nothing(
    server: Server, body: Any, message: str
) -> None:
    token = await server.register("alice")
    response = await change(server, token, body)
    assert (response.status_code, response.json()) == (400, {"message": message})
    assert (await server.get_as(token, "/api/user/data")).status_code == 200
    assert await can_login(server, "secret-pw") == 200


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (
            b'{"currentPassword": "secret-pw", "newPassword": "\\ud800abcdef"}',
            "application/json",
            400,
        ),
        (b'{"currentPassword": ', "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b'{"currentPassword":"secret-pw","newPassword":"brand-new-pw"}', "text/plain", 400),
        (b'{"currentPassword":"' + b"x" * 200_000 + b'"}', "application/json", 413),
    ],
)
async def test_malformed_bodies_are_clear_4xx(
    server: Server, content: bytes, content_type: str, status: int
) -> None:
    token = await server.register("alice")
    response = await server.client.post(
        PATH,
        content=content,
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
    )
    assert response.status_code == status, response.text
    assert isinstance(response.json()["message"], str)
    assert await can_login(server, "secret-pw") == 200


async def test_a_change_needs_a_valid_token(server: Server) -> None:
    await server.register("alice")
    body = {"currentPassword": "secret-pw", "newPassword": NEW}
    missing = await server.client.post(PATH, json=body)
    assert (missing.status_code, missing.json()) == (
        401,
        {"message": "Authentication token required"},
    )
    forged = TokenService("another-secret-" + "y" * 40, 60).issue(1, "alice")
    assert (await change(server, forged, body)).status_code == 401
    assert await can_login(server, "secret-pw") == 200


# -- cookies -------------------------------------------------------------------------------------


async def test_a_cookie_request_gets_the_new_cookies(server: Server) -> None:
    browser = await cookie_login(server, "alice")
    body = {"currentPassword": "secret-pw", "newPassword": NEW}
    # A cookie request that changes state needs the CSRF token: without it, nothing happens.
    refused = await server.client.post(PATH, json=body, headers=browser.headers(csrf=None))
    assert refused.status_code == 403
    assert refused.json()["message"].startswith("CSRF token missing")
    assert await can_login(server, "secret-pw") == 200

    response = await server.client.post(PATH, json=body, headers=browser.headers())
    assert response.status_code == 200, response.text
    cookies = set_cookies(response)
    server.client.cookies.clear()
    token = response.json()["token"]
    assert cookies[AUTH_COOKIE][0] == token
    assert cookies[AUTH_COOKIE][1]["max-age"] == str(24 * 3600)
    assert "httponly" in cookies[AUTH_COOKIE][1]
    renewed = Browser(token, cookies[CSRF_COOKIE][0])
    write = await server.client.post(
        "/api/user/favorites",
        json={"dramaUrl": URLS[0], "isFavorite": True},
        headers=renewed.headers(),
    )
    assert write.status_code == 200, write.text
    # The old CSRF value was signed for the old token: it does not go with the new cookie.
    mixed = await server.client.post(
        "/api/user/favorites",
        json={"dramaUrl": URLS[0], "isFavorite": False},
        headers=renewed.headers(csrf=browser.csrf),
    )
    assert mixed.status_code == 403


# -- the session's budget of wrong passwords -----------------------------------------------------


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[Server]:
    settings = make_settings(
        tmp_path,
        revocation_refresh_seconds=3600,
        trust_proxy=1,
        rate_limit_login_account=RateLimit(3, 900),
    )
    async with running_server(settings) as running:
        yield running


async def test_wrong_passwords_are_limited_per_session_and_count_for_the_account(
    limited: Server,
) -> None:
    server = limited
    await server.register("alice")
    thief, owner = await login(server), await login(server)
    wrong = {"currentPassword": "guess", "newPassword": NEW}
    answers = [(await change(server, thief, wrong)).status_code for _ in range(3)]
    assert answers == [403, 403, 403]
    locked = await change(server, thief, {"currentPassword": "secret-pw", "newPassword": NEW})
    assert locked.status_code == 429
    assert locked.json()["message"].startswith("Too many failed password attempts")
    assert 0 < int(locked.headers["Retry-After"]) <= 900
    # The guesses count against the account: a login from an address it never signed in
    # from is refused now, even with the right password.
    stranger = await server.client.post(
        "/api/auth/login",
        json={"username": "alice", "password": "secret-pw"},
        headers={"X-Forwarded-For": "203.0.113.9"},
    )
    assert stranger.status_code == 429
    # The owner's session has its own budget: the change goes through.
    response = await change(server, owner, {"currentPassword": "secret-pw", "newPassword": NEW})
    assert response.status_code == 200, response.text
    await refused_everywhere(server, thief)


async def test_a_locked_account_does_not_stop_its_owner_changing_the_password(
    limited: Server,
) -> None:
    server = limited
    owner = await server.register("alice")
    for attempt in range(5):  # an attacker spreading guesses over addresses
        await server.client.post(
            "/api/auth/login",
            json={"username": "alice", "password": f"guess-{attempt}"},
            headers={"X-Forwarded-For": f"198.51.100.{attempt}"},
        )
    body = json.dumps({"currentPassword": "secret-pw", "newPassword": NEW})
    response = await server.client.post(
        PATH,
        content=body,
        headers={"Authorization": f"Bearer {owner}", "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
