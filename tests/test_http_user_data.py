"""The user's own data: ``GET /api/user/export`` and ``DELETE /api/user`` (routes/user_data.py).

A real server on a real SQLite file, which the deletion tests read behind the server's back to
see that nothing of the user is left. Revocations are reloaded only every hour here, so the
sockets that close were closed by the deletion's message.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from dramaverse.http.cookies import AUTH_COOKIE, CSRF_COOKIE
from dramaverse.http.routes.user_data import (
    DELETE_INVALID,
    DELETED,
    PASSWORD_TOO_LONG,
    WRONG_PASSWORD,
    export_filename,
)
from tests.conftest import Server, make_settings, running_server
from tests.node.driver import open_driver, require_node
from tests.test_http_cookies import cookie_login, set_cookies
from tests.test_http_sessions import (
    IPHONE,
    URLS,
    claims,
    closed_with,
    live_socket,
    login,
    refused_everywhere,
)
from tests.test_ws_native import receive

TABLES = (
    "user_favorites",
    "user_statuses",
    "user_episode_reviews",
    "user_events",
    "user_event_heads",
    "player_statuses",
    "sessions",
)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = make_settings(tmp_path, revocation_refresh_seconds=3600)
    async with running_server(settings) as running:
        yield running


async def fill_library(server: Server, token: str, drama: str, room: str) -> None:
    writes: list[tuple[str, dict[str, Any]]] = [
        ("/api/user/favorites", {"dramaUrl": drama, "isFavorite": True}),
        ("/api/user/statuses", {"dramaUrl": drama, "status": "Watching"}),
        (
            "/api/user/reviews/episodes",
            {"dramaUrl": drama, "episodeNumber": 3, "text": "Wow 🎬", "clientUpdatedAt": 1},
        ),
        ("/api/player/status", {"roomCode": room, "time": 12.5}),
    ]
    for path, body in writes:
        response = await server.post_as(token, path, body)
        assert response.status_code == 200, (path, response.text)


def rows_of(server: Server, user_id: int) -> dict[str, int]:
    path = server.settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        found = {
            table: db.execute(
                f"SELECT count(*) FROM {table} WHERE user_id = ?", (user_id,)
            ).fetchone()[0]
            for table in TABLES
        }
        found["users"] = db.execute(
            "SELECT count(*) FROM users WHERE id = ?", (user_id,)
        ).fetchone()[0]
    return found


# -- export --------------------------------------------------------------------------------------


async def test_the_export_holds_everything_about_the_user_and_nothing_of_anyone_else(
    server: Server,
) -> None:
    alice = await server.register("alice")
    phone = await login(server, IPHONE)
    bob = await server.register("bob")
    await fill_library(server, alice, URLS[0], "ALICEROOM")
    await fill_library(server, bob, URLS[1], "BOBSROOM")

    response = await server.get_as(phone, "/api/user/export")
    assert response.status_code == 200, response.text
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="dramaverse-alice-{today}.json"'
    )
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Type"].startswith("application/json")
    text = response.text
    export = response.json()
    assert set(export) == {
        "format",
        "exportedAt",
        "user",
        "library",
        "events",
        "sessions",
        "playerStatuses",
    }
    assert export["format"] == "dramaverse.export.v1"
    assert export["user"]["username"] == "alice"
    assert export["user"]["id"] == claims(alice)["id"]
    assert set(export["user"]) == {
        "id",
        "username",
        "createdAt",
        "isAdmin",
        "isBanned",
        "tokensValidAfter",
    }
    assert export["library"]["favorites"] == [URLS[0]]
    assert export["library"]["statuses"][URLS[0]]["status"] == "Watching"
    assert export["library"]["episodeReviews"][URLS[0]]["3"]["text"] == "Wow 🎬"
    assert [e["seq"] for e in export["events"]] == [1, 2, 3]
    assert {s["id"] for s in export["sessions"]} == {claims(alice)["sid"], claims(phone)["sid"]}
    assert [s["roomCode"] for s in export["playerStatuses"]] == ["ALICEROOM"]
    # No password hash, and nothing of bob's.
    assert "$2b$" not in text
    assert "password" not in text.lower()
    for theirs in ("bob", URLS[1], "BOBSROOM", claims(bob)["sid"]):
        assert theirs not in text


async def test_the_export_by_cookie_needs_no_csrf_token_and_the_token_decides_whose(
    server: Server,
) -> None:
    browser = await cookie_login(server, "alice")
    bob = await server.register("bob")
    await fill_library(server, bob, URLS[1], "BOBSROOM")
    # A GET changes nothing: no CSRF token needed; bob's Bearer is not in the request.
    response = await server.client.get("/api/user/export", headers=browser.headers(csrf=None))
    assert response.status_code == 200, response.text
    assert response.json()["user"]["username"] == "alice"
    assert response.json()["library"]["favorites"] == []
    # Query parameters name nobody: bob's id in the query changes nothing.
    again = await server.client.get(
        f"/api/user/export?userId={claims(bob)['id']}", headers=browser.headers(csrf=None)
    )
    assert again.json()["user"]["username"] == "alice"


async def test_the_export_needs_a_valid_token(server: Server) -> None:
    missing = await server.client.get("/api/user/export")
    assert (missing.status_code, missing.json()) == (
        401,
        {"message": "Authentication token required"},
    )
    garbage = await server.get_as("not-a-token", "/api/user/export")
    assert (garbage.status_code, garbage.json()) == (401, {"message": "Invalid or expired token"})


@pytest.mark.parametrize(
    ("username", "expected"),
    [
        ("alice", "dramaverse-alice-2023-11-14.json"),
        ('a"b\r\n;c', "dramaverse-a_b___c-2023-11-14.json"),
        ("名前", "dramaverse-__-2023-11-14.json"),
        ("", "dramaverse-user-2023-11-14.json"),
        ("x" * 500, f"dramaverse-{'x' * 40}-2023-11-14.json"),
    ],
)
def test_export_file_names_are_safe(username: str, expected: str) -> None:
    assert export_filename(username, 1_700_000_000_000) == expected


# -- deletion ------------------------------------------------------------------------------------


async def delete(server: Server, token: str, body: Any, **headers: str) -> Any:
    return await server.client.request(
        "DELETE",
        "/api/user",
        content=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            **headers,
        },
    )


async def test_deletion_removes_everything_and_refuses_the_user_everywhere(
    server: Server,
) -> None:
    require_node()
    alice = await server.register("alice")
    phone = await login(server, IPHONE)
    bob = await server.register("bob")
    await fill_library(server, alice, URLS[0], "ALICEROOM")
    await fill_library(server, bob, URLS[1], "BOBSROOM")
    alice_id = claims(alice)["id"]
    assert all(rows_of(server, alice_id).values())

    async with open_driver() as node, AsyncExitStack() as stack:
        sockets = [await live_socket(stack, server, token) for token in (alice, phone)]
        bobs_socket = await live_socket(stack, server, bob)
        options = {"auth": {"token": phone}, "transports": ["websocket"], "reconnection": False}
        await node.send("connect", name="phone", url=server.url, options=options)
        await node.expect("connect", "phone")

        response = await delete(server, alice, {"password": "secret-pw"})
        assert (response.status_code, response.json()) == (200, {"message": DELETED})
        assert "set-cookie" not in response.headers  # a Bearer request

        for socket in sockets:
            assert await closed_with(socket) == (4100, "Invalid or expired token")
        closed = await node.expect("disconnect", "phone")
        assert closed["reason"] == "io server disconnect"
        await node.send("connect", name="again", url=server.url, options=options)
        refused = await node.expect("connect_error", "again")
        assert refused["message"] == "Authentication error: Invalid token."
        for token in (alice, phone):
            await refused_everywhere(server, token)
        assert (await server.get_as(alice, "/api/user/export")).status_code == 401
        assert (await delete(server, alice, {"password": "secret-pw"})).status_code == 401

        # Bob is untouched.
        await bobs_socket.send_message('{"type":"ping"}')
        assert (await receive(bobs_socket))["type"] == "pong"
    assert set(rows_of(server, alice_id).values()) == {0}
    assert all(rows_of(server, claims(bob)["id"]).values())
    login_again = await server.client.post(
        "/api/auth/login", json={"username": "alice", "password": "secret-pw"}
    )
    assert (login_again.status_code, login_again.json()) == (
        401,
        {"message": "Invalid credentials"},
    )
    assert server.handle.state.revoker.refreshes == 1  # closed by the message
    # The name is free again, for a new account with nothing of the old one's.
    newcomer = await server.register("alice")
    assert claims(newcomer)["id"] != alice_id
    data = await server.get_as(newcomer, "/api/user/data")
    assert data.json()["data"]["favorites"] == []
    assert (await server.get_as(alice, "/api/user/data")).status_code == 401


async def test_a_wrong_password_deletes_nothing(server: Server) -> None:
    alice = await server.register("alice")
    await fill_library(server, alice, URLS[0], "ALICEROOM")
    response = await delete(server, alice, {"password": "not-it"})
    assert (response.status_code, response.json()) == (403, {"message": WRONG_PASSWORD})
    assert all(rows_of(server, claims(alice)["id"]).values())
    assert (await server.get_as(alice, "/api/user/data")).status_code == 200


async def test_the_last_admin_cannot_delete_their_account(server: Server) -> None:
    alice = await server.register("alice")
    bob = await server.register("bob")
    storage = server.handle.state.storage
    await storage.set_admin(claims(alice)["id"], True)
    refused = await delete(server, alice, {"password": "secret-pw"})
    assert refused.status_code == 409
    assert "admin" in refused.json()["message"].lower()
    assert rows_of(server, claims(alice)["id"])["users"] == 1
    assert (await server.get_as(alice, "/api/user/data")).status_code == 200
    # With another admin, it goes through; a user who is no admin was never concerned.
    await storage.set_admin(claims(bob)["id"], True)
    assert (await delete(server, alice, {"password": "secret-pw"})).status_code == 200
    carol = await server.register("carol")
    assert (await delete(server, carol, {"password": "secret-pw"})).status_code == 200


async def test_a_cookie_deletion_needs_csrf_and_clears_the_cookies(server: Server) -> None:
    browser = await cookie_login(server, "alice")
    body = json.dumps({"password": "secret-pw"}).encode()
    headers = {"Content-Type": "application/json"}
    refused = await server.client.request(
        "DELETE", "/api/user", content=body, headers={**headers, **browser.headers(csrf=None)}
    )
    assert refused.status_code == 403
    assert (await server.get_as(browser.token, "/api/user/data")).status_code == 200

    response = await server.client.request(
        "DELETE", "/api/user", content=body, headers={**headers, **browser.headers()}
    )
    assert response.status_code == 200, response.text
    cookies = set_cookies(response)
    server.client.cookies.clear()
    for name in (AUTH_COOKIE, CSRF_COOKIE):
        value, attributes = cookies[name]
        assert (value, attributes["max-age"], attributes["path"]) == ("", "0", "/")
    assert (await server.get_as(browser.token, "/api/user/data")).status_code == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, DELETE_INVALID),
        ([], DELETE_INVALID),
        (None, DELETE_INVALID),
        ("secret-pw", DELETE_INVALID),
        ({"password": ""}, DELETE_INVALID),
        ({"password": None}, DELETE_INVALID),
        ({"password": 1234567}, DELETE_INVALID),
        ({"password": False}, DELETE_INVALID),
        ({"password": ["secret-pw"]}, DELETE_INVALID),
        ({"pass": "secret-pw"}, DELETE_INVALID),
        ({"password": "ü" * 1025}, PASSWORD_TOO_LONG),
    ],
)
async def test_invalid_deletion_bodies_are_400(server: Server, body: Any, message: str) -> None:
    alice = await server.register("alice")
    response = await delete(server, alice, body)
    assert (response.status_code, response.json()) == (400, {"message": message})
    assert rows_of(server, claims(alice)["id"])["users"] == 1


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"", "application/json", 400),
        (b'{"password": "\\u0000secret"}', "application/json", 400),
        (b'{"password": ', "application/json", 400),
        (b'{"password":"secret-pw"}', "text/plain", 400),
        (b'{"password":"' + b"x" * 200_000 + b'"}', "application/json", 413),
    ],
)
async def test_malformed_deletion_bodies_are_clear_4xx(
    server: Server, content: bytes, content_type: str, status: int
) -> None:
    alice = await server.register("alice")
    response = await server.client.request(
        "DELETE",
        "/api/user",
        content=content,
        headers={"Authorization": f"Bearer {alice}", "Content-Type": content_type},
    )
    assert response.status_code == status, response.text
    assert isinstance(response.json()["message"], str)
    assert rows_of(server, claims(alice)["id"])["users"] == 1


async def test_deletion_needs_a_valid_token(server: Server) -> None:
    await server.register("alice")
    missing = await server.client.request("DELETE", "/api/user", json={"password": "secret-pw"})
    assert missing.status_code == 401
    assert (await delete(server, "garbage", {"password": "secret-pw"})).status_code == 401


# -- the OpenAPI document ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/api/user/password", "post", {"200", "400", "401", "403", "413", "429", "503"}),
        ("/api/user/export", "get", {"200", "401", "403", "429", "503"}),
        ("/api/user", "delete", {"200", "400", "401", "403", "409", "413", "429", "503"}),
    ],
)
async def test_the_account_routes_are_described_fully(
    server: Server, path: str, method: str, statuses: set[str]
) -> None:
    document = (await server.client.get("/api/openapi.json")).json()
    operation = document["paths"][path][method]
    assert set(operation["responses"]) == statuses
    assert operation["security"] == [{"bearerAuth": []}]
    assert operation["tags"] == ["account"]
    assert "content" in operation["responses"]["200"]


async def test_an_export_has_the_documented_fields(server: Server) -> None:
    token = await server.register("alice")
    await fill_library(server, token, URLS[0], "ROOM")
    schema = (await server.client.get("/api/openapi.json")).json()["components"]["schemas"][
        "UserExport"
    ]
    export = (await server.get_as(token, "/api/user/export")).json()
    assert set(export) == set(schema["required"]) == set(schema["properties"])
    assert set(export["user"]) == set(schema["properties"]["user"]["required"])
    for part in ("events", "sessions", "playerStatuses"):
        required = set(schema["properties"][part]["items"]["required"])
        assert export[part]
        assert all(set(item) == required for item in export[part]), part


async def test_a_cookie_logout_needs_csrf_and_clears_the_cookies(server: Server) -> None:
    browser = await cookie_login(server, "alice")
    refused = await server.client.post("/api/auth/logout", headers=browser.headers(csrf=None))
    assert refused.status_code == 403
    assert (await server.get_as(browser.token, "/api/user/data")).status_code == 200

    response = await server.client.post("/api/auth/logout", headers=browser.headers())
    assert response.status_code == 200, response.text
    cookies = set_cookies(response)
    server.client.cookies.clear()
    for name in (AUTH_COOKIE, CSRF_COOKIE):
        value, attributes = cookies[name]
        assert (value, attributes["max-age"], attributes["path"]) == ("", "0", "/")
    assert (await server.get_as(browser.token, "/api/user/data")).status_code == 401


async def test_a_bearer_logout_sets_no_cookie(server: Server) -> None:
    token = (
        await server.client.post(
            "/api/auth/register", json={"username": "bob", "password": "secret-pw"}
        )
    ).json()["token"]
    response = await server.client.post(
        "/api/auth/logout", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
