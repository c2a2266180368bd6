"""The /api/user contract: library reads and writes, validation, conflicts, ownership."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Server, sample_records

URL = sample_records()[0]["url"]
URL2 = sample_records()[1]["url"]


async def test_empty_library_shape(server: Server) -> None:
    token = await server.register("alice")
    response = await server.get_as(token, "/api/user/data")
    assert response.status_code == 200
    assert response.json() == {
        "user": {"username": "alice"},
        "data": {"favorites": [], "statuses": {}, "reviews": {}, "episodeReviews": {}},
    }


async def test_favorites_add_remove_and_idempotence(server: Server) -> None:
    token = await server.register("alice")
    for body in ({"dramaUrl": URL2, "isFavorite": True}, {"dramaUrl": URL, "isFavorite": True}):
        response = await server.post_as(token, "/api/user/favorites", body)
        assert response.status_code == 200
        assert response.json() == {"success": True}
    again = await server.post_as(
        token, "/api/user/favorites", {"dramaUrl": URL, "isFavorite": True}
    )
    assert again.json() == {"success": True}
    data = (await server.get_as(token, "/api/user/data")).json()["data"]
    assert data["favorites"] == sorted([URL, URL2])
    await server.post_as(token, "/api/user/favorites", {"dramaUrl": URL, "isFavorite": False})
    data = (await server.get_as(token, "/api/user/data")).json()["data"]
    assert data["favorites"] == [URL2]


async def test_status_set_default_episode_and_delete(server: Server) -> None:
    token = await server.register("alice")
    await server.post_as(token, "/api/user/statuses", {"dramaUrl": URL, "status": "Watching"})
    await server.post_as(
        token, "/api/user/statuses", {"dramaUrl": URL2, "status": "Completed", "currentEpisode": 12}
    )
    data = (await server.get_as(token, "/api/user/data")).json()["data"]
    assert data["statuses"] == {
        URL: {"status": "Watching", "currentEpisode": 0},
        URL2: {"status": "Completed", "currentEpisode": 12},
    }
    response = await server.post_as(token, "/api/user/statuses", {"dramaUrl": URL, "status": ""})
    assert response.json() == {"success": True}
    data = (await server.get_as(token, "/api/user/data")).json()["data"]
    assert list(data["statuses"]) == [URL2]


async def test_review_save_conflict_force_and_delete(server: Server) -> None:
    token = await server.register("alice")
    path = "/api/user/reviews/episodes"
    first = await server.post_as(
        token, path, {"dramaUrl": URL, "episodeNumber": 3, "text": "great", "clientUpdatedAt": 0}
    )
    assert first.status_code == 200
    body = first.json()
    assert body["success"] is True
    stamp = body["newUpdatedAt"]
    assert isinstance(stamp, int)
    assert stamp > 1_600_000_000_000  # milliseconds, not seconds

    stale = {
        "dramaUrl": URL,
        "episodeNumber": 3,
        "text": "older edit",
        "clientUpdatedAt": stamp - 1,
    }
    conflict = await server.post_as(token, path, stale)
    assert conflict.status_code == 409
    assert conflict.json() == {
        "message": "Conflict detected.",
        "serverVersion": {"text": "great", "updatedAt": stamp},
    }
    data = (await server.get_as(token, "/api/user/data")).json()["data"]
    assert data["episodeReviews"] == {URL: {"3": {"text": "great", "updatedAt": stamp}}}

    forced = await server.post_as(token, path, {**stale, "force": True})
    assert forced.status_code == 200
    forced_stamp = forced.json()["newUpdatedAt"]
    assert forced_stamp > stamp

    current = {"dramaUrl": URL, "episodeNumber": 3, "text": "v3", "clientUpdatedAt": forced_stamp}
    assert (await server.post_as(token, path, current)).status_code == 200

    deleted = await server.post_as(
        token,
        path,
        {"dramaUrl": URL, "episodeNumber": 3, "text": " \n\t\u00a0", "clientUpdatedAt": 0},
    )
    assert deleted.json() == {"success": True}
    data = (await server.get_as(token, "/api/user/data")).json()["data"]
    assert data["episodeReviews"] == {}


async def test_users_do_not_see_each_other(server: Server) -> None:
    alice = await server.register("alice")
    bob = await server.register("bob")
    await server.post_as(alice, "/api/user/favorites", {"dramaUrl": URL, "isFavorite": True})
    data = (await server.get_as(bob, "/api/user/data")).json()
    assert data["user"] == {"username": "bob"}
    assert data["data"]["favorites"] == []


async def test_unknown_drama_is_404_and_changes_nothing(server: Server) -> None:
    token = await server.register("alice")
    for path, body in [
        ("/api/user/favorites", {"dramaUrl": "https://nope", "isFavorite": True}),
        ("/api/user/statuses", {"dramaUrl": "https://nope", "status": "Watching"}),
        (
            "/api/user/reviews/episodes",
            {"dramaUrl": "https://nope", "episodeNumber": 1, "text": "x", "clientUpdatedAt": 0},
        ),
    ]:
        response = await server.post_as(token, path, body)
        assert response.status_code == 404
        assert "https://nope" in response.json()["message"]
    data = (await server.get_as(token, "/api/user/data")).json()["data"]
    assert data == {"favorites": [], "statuses": {}, "reviews": {}, "episodeReviews": {}}


FAVORITE_BAD: list[Any] = [
    {},
    {"dramaUrl": URL},
    {"dramaUrl": URL, "isFavorite": 1},
    {"dramaUrl": URL, "isFavorite": "true"},
    {"dramaUrl": URL, "isFavorite": None},
    {"dramaUrl": 5, "isFavorite": True},
    {"dramaUrl": None, "isFavorite": True},
    [URL, True],
    "text",
    42,
]
STATUS_BAD: list[Any] = [
    {"dramaUrl": URL},
    {"dramaUrl": URL, "status": 1},
    {"dramaUrl": URL, "status": None},
    {"dramaUrl": URL, "status": "Watching", "currentEpisode": "3"},
    {"dramaUrl": URL, "status": "Watching", "currentEpisode": True},
    {"dramaUrl": URL, "status": "Watching", "currentEpisode": None},
]
REVIEW_OK = {"dramaUrl": URL, "episodeNumber": 1, "text": "x", "clientUpdatedAt": 0}
REVIEW_BAD: list[Any] = [
    {k: v for k, v in REVIEW_OK.items() if k != "episodeNumber"},
    {**REVIEW_OK, "episodeNumber": "1"},
    {**REVIEW_OK, "episodeNumber": True},
    {**REVIEW_OK, "text": None},
    {**REVIEW_OK, "text": 5},
    {**REVIEW_OK, "clientUpdatedAt": "0"},
    {**REVIEW_OK, "clientUpdatedAt": False},
    {**REVIEW_OK, "force": 1},
    {**REVIEW_OK, "force": None},
    {**REVIEW_OK, "force": "true"},
]


@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/user/favorites", b) for b in FAVORITE_BAD]
    + [("/api/user/statuses", b) for b in STATUS_BAD]
    + [("/api/user/reviews/episodes", b) for b in REVIEW_BAD],
)
async def test_type_checks_follow_javascript_typeof(server: Server, path: str, body: Any) -> None:
    token = await server.register("alice")
    response = await server.post_as(token, path, body)
    assert response.status_code == 400
    assert response.json() == {"message": "Invalid payload."}


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/api/user/favorites", {"dramaUrl": "", "isFavorite": True}, "dramaUrl"),
        ("/api/user/favorites", {"dramaUrl": "u" * 2049, "isFavorite": True}, "dramaUrl"),
        ("/api/user/statuses", {"dramaUrl": URL, "status": "s" * 65}, "status"),
        (
            "/api/user/statuses",
            {"dramaUrl": URL, "status": "Watching", "currentEpisode": -1},
            "currentEpisode",
        ),
        (
            "/api/user/statuses",
            {"dramaUrl": URL, "status": "Watching", "currentEpisode": 2.5},
            "currentEpisode",
        ),
        ("/api/user/reviews/episodes", {**REVIEW_OK, "episodeNumber": 10**9}, "episodeNumber"),
        ("/api/user/reviews/episodes", {**REVIEW_OK, "text": "x" * 10_001}, "text"),
    ],
)
async def test_sizes_are_bounded(server: Server, path: str, body: Any, fragment: str) -> None:
    token = await server.register("alice")
    response = await server.post_as(token, path, body)
    assert response.status_code == 400
    assert fragment in response.json()["message"]


async def test_whole_float_episode_is_accepted(server: Server) -> None:
    token = await server.register("alice")
    response = await server.post_as(
        token, "/api/user/statuses", {"dramaUrl": URL, "status": "Watching", "currentEpisode": 4.0}
    )
    assert response.status_code == 200
    data = (await server.get_as(token, "/api/user/data")).json()["data"]
    assert data["statuses"][URL] == {"status": "Watching", "currentEpisode": 4}


@pytest.mark.parametrize(
    ("content", "content_type", "status", "fragment"),
    [
        (b'{"dramaUrl": ', "application/json", 400, "Malformed JSON"),
        (b'{"a": NaN}', "application/json", 400, "Malformed JSON"),
        (b"\xff\xfe", "application/json", 400, "UTF-8"),
        (b"[" * 5000 + b"]" * 5000, "application/json", 400, "Malformed JSON"),
        (b'{"dramaUrl": "x", "isFavorite": true}', "text/plain", 400, "Invalid payload."),
        (b"", "application/json", 400, "Invalid payload."),
        (b'{"dramaUrl": "x\\ud800y", "isFavorite": true}', "application/json", 400, "surrogates"),
        (b'{"dramaUrl": "x\\u0000", "isFavorite": true}', "application/json", 400, "NUL"),
        (
            b'{"dramaUrl": "x", "isFavorite": true, "k": ["\\udc00"]}',
            "application/json",
            400,
            "NUL",
        ),
    ],
)
async def test_malformed_bodies(
    server: Server, content: bytes, content_type: str, status: int, fragment: str
) -> None:
    token = await server.register("alice")
    response = await server.client.post(
        "/api/user/favorites",
        content=content,
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
    )
    assert response.status_code == status
    assert fragment in response.json()["message"]


async def test_body_size_limit_is_413(server: Server) -> None:
    token = await server.register("alice")
    big = b'{"dramaUrl": "' + b"a" * (server.settings.max_body_bytes + 10) + b'"}'
    response = await server.client.post(
        "/api/user/favorites",
        content=big,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert "too large" in response.json()["message"]


async def test_unstorable_strings_are_refused_everywhere(server: Server) -> None:
    # A lone surrogate in a password used to reach bcrypt's UTF-8 encoding and fail with a 500.
    register = await server.client.post(
        "/api/auth/register",
        content=b'{"username": "bob_1", "password": "secret\\ud800pw"}',
        headers={"Content-Type": "application/json"},
    )
    assert register.status_code == 400
    token = await server.register("alice")
    review = await server.client.post(
        "/api/user/reviews/episodes",
        content=(
            b'{"dramaUrl": "%s", "episodeNumber": 1, "text": "ok\\u0000", "updatedAt": 0}'
            % URL.encode()
        ),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert review.status_code == 400
    data = (await server.get_as(token, "/api/user/data")).json()["data"]
    assert data["episodeReviews"] == {}
