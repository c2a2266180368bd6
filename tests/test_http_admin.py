"""The admin API over HTTP: who may call it, what it validates, what it reads and the roles.

A real server on a real SQLite file; the first registered user is made an admin through storage
(as ``dramaverse user promote`` does). What bans, resets and deletions do to tokens and sockets
is in ``test_admin_revocations.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from dramaverse.config import RateLimit
from dramaverse.http.auth import TokenService
from tests.conftest import Server, make_settings, running_server, sample_records
from tests.test_http_cookies import ALLOWED, cookie_login
from tests.test_http_sessions import live_socket

URLS = [r["url"] for r in sample_records()]
ADMIN_REQUIRED = {"message": "Admin access required"}
INVALID = {"message": "Invalid or expired token"}
LAST_ADMIN = {"message": "The last admin cannot be demoted, banned or deleted."}
NOT_FOUND = {"message": "User not found"}
BAD_ID = {"message": "Invalid user id: a whole number from 1 to 9007199254740991."}

# Every admin route, with a user id to put in it (bob's, 2).
ROUTES = [
    ("GET", "/api/admin/users"),
    ("GET", "/api/admin/stats"),
    ("GET", "/api/admin/users/2/data"),
    ("POST", "/api/admin/users/2/promote"),
    ("POST", "/api/admin/users/2/demote"),
    ("POST", "/api/admin/users/2/ban"),
    ("POST", "/api/admin/users/2/unban"),
    ("POST", "/api/admin/users/2/reset-password"),
    ("DELETE", "/api/admin/users/2"),
]
ID_ROUTES = [(method, path.replace("/2", "/{id}")) for method, path in ROUTES if "/2" in path]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(make_settings(tmp_path, revocation_refresh_seconds=3600)) as running:
        yield running


async def admin_and_bob(server: Server) -> tuple[str, str]:
    """alice (id 1, admin) and bob (id 2), each with a token."""
    alice = await server.register("alice")
    bob = await server.register("bob")
    await server.handle.state.storage.set_admin(1, True)
    return alice, bob


async def call(server: Server, token: str | None, method: str, path: str) -> Any:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return await server.client.request(method, path, headers=headers)


# -- the door ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_admin_route_refuses_strangers_and_non_admins(
    server: Server, method: str, path: str
) -> None:
    _, bob = await admin_and_bob(server)
    missing = await call(server, None, method, path)
    assert (missing.status_code, missing.json()) == (
        401,
        {"message": "Authentication token required"},
    )
    forged = TokenService("another-secret-" + "y" * 40, 60).issue(1, "alice")
    assert (await call(server, forged, method, path)).json() == INVALID
    refused = await call(server, bob, method, path)
    assert (refused.status_code, refused.json()) == (403, ADMIN_REQUIRED)
    assert refused.headers["cache-control"] == "no-store"
    # Nothing happened to bob.
    assert (await server.get_as(bob, "/api/user/data")).status_code == 200
    assert not (await server.handle.state.storage.get_user(2)).is_admin  # type: ignore[union-attr]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_admin_route_answers_an_admin(server: Server, method: str, path: str) -> None:
    alice, _ = await admin_and_bob(server)
    response = await call(server, alice, method, path)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert isinstance(response.json(), dict)


@pytest.mark.parametrize(("method", "path"), ID_ROUTES)
@pytest.mark.parametrize(
    ("user_id", "status", "body"),
    [
        ("0", 400, BAD_ID),
        ("-1", 400, BAD_ID),
        ("1.0", 400, BAD_ID),
        ("2e0", 400, BAD_ID),
        ("abc", 400, BAD_ID),
        ("%20 2", 400, BAD_ID),
        ("9007199254740992", 400, BAD_ID),  # 2^53: not a safe integer
        ("1" * 21, 400, BAD_ID),
        ("%EF%BC%92", 400, BAD_ID),  # a full-width digit two
        ("9007199254740991", 404, NOT_FOUND),
        ("3", 404, NOT_FOUND),
    ],
)
async def test_user_ids_are_validated(
    server: Server, method: str, path: str, user_id: str, status: int, body: dict[str, str]
) -> None:
    alice, _ = await admin_and_bob(server)
    response = await call(server, alice, method, path.format(id=user_id))
    assert (response.status_code, response.json()) == (status, body)


async def test_cookie_auth_needs_csrf_like_every_other_route(server: Server) -> None:
    browser = await cookie_login(server, "alice")
    await server.register("bob")
    await server.handle.state.storage.set_admin(1, True)
    read = await server.client.get("/api/admin/users", headers=browser.headers(csrf=None))
    assert read.status_code == 200  # a read needs no CSRF token
    path = "/api/admin/users/2/ban"
    forged = await server.client.post(path, headers=browser.headers(csrf=None))
    assert forged.status_code == 403
    elsewhere = await server.client.post(path, headers=browser.headers(origin="http://evil.test"))
    assert elsewhere.status_code == 403
    assert not (await server.handle.state.storage.get_user(2)).is_banned  # type: ignore[union-attr]
    done = await server.client.post(path, headers=browser.headers(origin=ALLOWED))
    assert done.status_code == 200, done.text
    assert done.json()["user"]["isBanned"] is True


async def test_admin_routes_count_toward_the_user_rate_limit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rate_limit_user=RateLimit(3, 60))
    async with running_server(settings) as server:
        alice, _ = await admin_and_bob(server)
        answers = [
            (await call(server, alice, "GET", "/api/admin/stats")).status_code for _ in "abc"
        ]
        assert answers == [200, 200, 200]
        limited = await call(server, alice, "GET", "/api/admin/users")
        assert limited.status_code == 429
        assert "ratelimit-reset" in {name.lower() for name in limited.headers}


# -- roles -------------------------------------------------------------------------------------


async def test_a_promotion_and_a_demotion_count_from_the_next_request(server: Server) -> None:
    alice, bob = await admin_and_bob(server)
    promoted = await call(server, alice, "POST", "/api/admin/users/2/promote")
    assert promoted.json() == {
        "message": "bob is an admin.",
        "user": {
            "id": 2,
            "username": "bob",
            "createdAt": promoted.json()["user"]["createdAt"],
            "isAdmin": True,
            "isBanned": False,
        },
    }
    assert (await call(server, bob, "GET", "/api/admin/stats")).status_code == 200
    # bob demotes alice: her unexpired token stops opening the admin API at once.
    demoted = await call(server, bob, "POST", "/api/admin/users/1/demote")
    assert demoted.json()["message"] == "alice is no longer an admin."
    refused = await call(server, alice, "GET", "/api/admin/users")
    assert (refused.status_code, refused.json()) == (403, ADMIN_REQUIRED)
    assert (await server.get_as(alice, "/api/user/data")).status_code == 200  # still a user
    twice = await call(server, bob, "POST", "/api/admin/users/2/promote")
    assert twice.status_code == 200  # promoting an admin changes nothing


@pytest.mark.parametrize(
    ("method", "action"),
    [("POST", "/demote"), ("POST", "/ban"), ("DELETE", "")],
)
async def test_the_last_admin_cannot_be_demoted_banned_or_deleted(
    server: Server, method: str, action: str
) -> None:
    alice, bob = await admin_and_bob(server)
    alone = await call(server, alice, method, f"/api/admin/users/1{action}")
    assert (alone.status_code, alone.json()) == (409, LAST_ADMIN)
    assert (await call(server, alice, "GET", "/api/admin/stats")).status_code == 200
    # With a second admin it is allowed; then the second one is the last.
    await call(server, alice, "POST", "/api/admin/users/2/promote")
    done = await call(server, bob, method, f"/api/admin/users/1{action}")
    assert done.status_code == 200, done.text
    last = await call(server, bob, method, f"/api/admin/users/2{action}")
    assert (last.status_code, last.json()) == (409, LAST_ADMIN)
    assert (await server.handle.state.storage.count_admins()) == 1


async def test_a_banned_admin_no_longer_counts_and_cannot_use_the_api(server: Server) -> None:
    alice, bob = await admin_and_bob(server)
    await call(server, alice, "POST", "/api/admin/users/2/promote")
    fresh_bob = (
        await server.client.post(
            "/api/auth/login", json={"username": "bob", "password": "secret-pw"}
        )
    ).json()["token"]
    assert (await call(server, alice, "POST", "/api/admin/users/2/ban")).status_code == 200
    for token in (bob, fresh_bob):
        refused = await call(server, token, "GET", "/api/admin/users")
        assert (refused.status_code, refused.json()) == (401, INVALID)
    # alice is the last admin who is not banned now.
    alone = await call(server, alice, "POST", "/api/admin/users/1/demote")
    assert (alone.status_code, alone.json()) == (409, LAST_ADMIN)


# -- reading -----------------------------------------------------------------------------------


async def test_the_user_list_pages_searches_and_counts_libraries(server: Server) -> None:
    alice, bob = await admin_and_bob(server)
    for name in ("carol", "Bobby_2", "dave"):
        await server.register(name)
    await server.post_as(bob, "/api/user/favorites", {"dramaUrl": URLS[0], "isFavorite": True})
    await server.post_as(bob, "/api/user/statuses", {"dramaUrl": URLS[1], "status": "Watching"})
    listed = (await call(server, alice, "GET", "/api/admin/users?limit=2")).json()
    assert (listed["total"], listed["page"], listed["limit"], listed["totalPages"]) == (5, 1, 2, 3)
    assert [u["username"] for u in listed["users"]] == ["alice", "bob"]
    alice_row, bob_row = listed["users"]
    assert alice_row["isAdmin"] is True
    assert bob_row["library"] == {"favorites": 1, "statuses": 1, "episodeReviews": 0}
    assert bob_row["isBanned"] is False
    assert isinstance(bob_row["lastSeenAt"], int)
    assert isinstance(bob_row["createdAt"], int)
    last = (await call(server, alice, "GET", "/api/admin/users?limit=2&page=3")).json()
    assert [u["username"] for u in last["users"]] == ["dave"]
    beyond = (await call(server, alice, "GET", "/api/admin/users?page=99")).json()
    assert (beyond["users"], beyond["total"]) == ([], 5)
    found = (await call(server, alice, "GET", "/api/admin/users?search=BoB")).json()
    assert [u["username"] for u in found["users"]] == ["bob", "Bobby_2"]
    wild = (await call(server, alice, "GET", "/api/admin/users?search=%25")).json()
    assert wild["total"] == 0  # a LIKE wildcard is searched for literally


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("page=0", "Invalid page: a whole number from 1 to 1000000."),
        ("page=-1", "Invalid page: a whole number from 1 to 1000000."),
        ("page=1.5", "Invalid page: a whole number from 1 to 1000000."),
        ("page=", "Invalid page: a whole number from 1 to 1000000."),
        ("page=%201", "Invalid page: a whole number from 1 to 1000000."),
        ("page=1e3", "Invalid page: a whole number from 1 to 1000000."),
        ("page=1000001", "Invalid page: a whole number from 1 to 1000000."),
        ("page=" + "9" * 400, "Invalid page: a whole number from 1 to 1000000."),
        ("limit=0", "Invalid limit: a whole number from 1 to 100."),
        ("limit=101", "Invalid limit: a whole number from 1 to 100."),
        ("limit=true", "Invalid limit: a whole number from 1 to 100."),
        ("search=" + "a" * 65, None),
        ("search=a%00b", None),
        ("search=a%0Ab", None),
    ],
)
async def test_the_user_list_validates_its_arguments(
    server: Server, query: str, message: str | None
) -> None:
    alice, _ = await admin_and_bob(server)
    response = await call(server, alice, "GET", f"/api/admin/users?{query}")
    assert response.status_code == 400, response.text
    expected = message or ("Invalid search: at most 64 characters, without control characters.")
    assert response.json() == {"message": expected}


async def test_stats_count_registrations_sessions_and_this_processs_sockets(
    server: Server,
) -> None:
    alice, bob = await admin_and_bob(server)
    async with AsyncExitStack() as stack:
        await live_socket(stack, server, bob)
        await live_socket(stack, server, bob)
        stats = (await call(server, alice, "GET", "/api/admin/stats")).json()
    assert stats["users"] == 2
    assert stats["activeSessions"] == 2
    assert stats["connectedDevices"] == 2
    assert stats["worker"] is None  # a single process
    assert stats["days"] == 30
    (today,) = stats["registrationsPerDay"]
    assert today["count"] == 2
    assert len(today["day"]) == 10
    week = (await call(server, alice, "GET", "/api/admin/stats?days=7")).json()
    assert week["days"] == 7
    assert week["connectedDevices"] == 0
    for bad in ("0", "367", "x", "-5"):
        refused = await call(server, alice, "GET", f"/api/admin/stats?days={bad}")
        assert refused.json() == {"message": "Invalid days: a whole number from 1 to 366."}


async def test_a_users_data_is_everything_stored_but_the_password_hash(server: Server) -> None:
    alice, bob = await admin_and_bob(server)
    await server.post_as(bob, "/api/user/favorites", {"dramaUrl": URLS[0], "isFavorite": True})
    data = (await call(server, alice, "GET", "/api/admin/users/2/data")).json()
    assert set(data) == {"user", "library", "events", "sessions", "playerStatuses"}
    assert data["user"]["username"] == "bob"
    assert data["library"]["favorites"] == [URLS[0]]
    assert [event["seq"] for event in data["events"]] == [1]
    assert len(data["sessions"]) == 1
    assert "password" not in str(data).lower()
    assert "$2b$" not in str(data)


# -- the OpenAPI document ----------------------------------------------------------------------


async def test_the_admin_routes_are_described_with_what_they_answer(server: Server) -> None:
    alice, _ = await admin_and_bob(server)
    document = (await server.client.get("/api/openapi.json")).json()
    for method, path in ROUTES:
        described = path.replace("/2", "/{user_id}")
        operation = document["paths"][described][method.lower()]
        assert operation["tags"] == ["admin"]
        assert operation["security"] == [{"bearerAuth": []}]
        statuses = set(operation["responses"])
        assert {"200", "400", "401", "403", "429", "503"} <= statuses, path
        assert ("404" in statuses) == ("{user_id}" in described), path
        last_admin = described.endswith(("/demote", "/ban")) or method == "DELETE"
        assert ("409" in statuses) == last_admin, path
    schemas = document["components"]["schemas"]
    listed = (await call(server, alice, "GET", "/api/admin/users")).json()["users"][0]
    assert set(listed) == set(schemas["UserSummary"]["required"])
    changed = (await call(server, alice, "POST", "/api/admin/users/2/unban")).json()
    assert set(changed["user"]) == set(schemas["AdminUser"]["required"])
    stats = (await call(server, alice, "GET", "/api/admin/stats")).json()
    stats_schema = document["paths"]["/api/admin/stats"]["get"]["responses"]["200"]
    assert set(stats) == set(stats_schema["content"]["application/json"]["schema"]["required"])
