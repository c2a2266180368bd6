"""The raw-ASGI library-write path answers exactly like the Quart routes around it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dramaverse.config import RateLimit
from dramaverse.http import fastpath
from dramaverse.http.security import SECURITY_HEADERS
from tests.conftest import Server, make_settings, running_server, sample_records

URL = sample_records()[0]["url"]
WRITE_PATHS = sorted(fastpath.ROUTES)


def _auth(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


async def test_security_headers_match_the_quart_routes(server: Server) -> None:
    token = await server.register("alice")
    fast = await server.post_as(token, "/api/user/favorites", {"dramaUrl": URL, "isFavorite": True})
    slow = await server.get_as(token, "/api/user/data")
    assert fast.status_code == 200
    assert fast.json() == {"success": True}
    assert fast.headers["content-type"] == slow.headers["content-type"]
    for name, value in SECURITY_HEADERS:
        assert fast.headers[name] == value == slow.headers[name]
    assert "server" not in fast.headers


@pytest.mark.parametrize("path", WRITE_PATHS)
async def test_disallowed_origin_is_refused_before_anything_else(server: Server, path: str) -> None:
    token = await server.register("alice")
    response = await server.client.post(
        path,
        json={"dramaUrl": URL, "isFavorite": True},
        headers=_auth(token, Origin="https://evil.example"),
    )
    assert response.status_code == 403
    assert response.json() == {
        "message": "Origin https://evil.example is not allowed by CORS policy."
    }
    data = (await server.get_as(token, "/api/user/data")).json()["data"]
    assert data["favorites"] == []  # nothing was written


async def test_allowed_origin_gets_cors_grant(server: Server) -> None:
    token = await server.register("alice")
    origin = server.settings.cors_allowed_origins[0]
    response = await server.client.post(
        "/api/user/favorites",
        json={"dramaUrl": URL, "isFavorite": True},
        headers=_auth(token, Origin=origin),
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    assert response.headers["vary"] == "Origin"
    error = await server.client.post(
        "/api/user/favorites", json={}, headers=_auth(token, Origin=origin)
    )
    assert error.status_code == 400
    assert error.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize("path", WRITE_PATHS)
async def test_missing_and_bad_tokens_are_401(server: Server, path: str) -> None:
    missing = await server.client.post(path, json={})
    assert missing.status_code == 401
    assert missing.json() == {"message": "Authentication token required"}
    bad = await server.client.post(path, json={}, headers=_auth("nope"))
    assert bad.status_code == 401
    assert bad.json() == {"message": "Invalid or expired token"}


async def test_rate_limit_on_writes_has_headers_and_429(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rate_limit_user=RateLimit(2, 900))
    async with running_server(settings) as server:
        token = await server.register("alice")
        body = {"dramaUrl": URL, "isFavorite": True}
        first = await server.post_as(token, "/api/user/favorites", body)
        assert first.status_code == 200
        assert first.headers["ratelimit-limit"] == "2"
        assert first.headers["ratelimit-remaining"] == "1"
        assert (
            await server.post_as(
                token,
                "/api/user/statuses",
                {"dramaUrl": URL, "status": "Watching", "currentEpisode": 1},
            )
        ).status_code == 200
        limited = await server.post_as(
            token, "/api/user/favorites", {"dramaUrl": URL, "isFavorite": False}
        )
        assert limited.status_code == 429
        assert limited.json() == {
            "message": "Too many requests, please try again after 15 minutes."
        }
        assert int(limited.headers["retry-after"]) > 0
        # The refused write did not happen.
        assert (await server.get_as(token, "/api/user/data")).status_code == 429
    async with running_server(settings, records=[]) as again:
        token = (
            await again.client.post(
                "/api/auth/login", json={"username": "alice", "password": "secret-pw"}
            )
        ).json()["token"]
        data = (await again.get_as(token, "/api/user/data")).json()["data"]
        assert data["favorites"] == [URL]


async def _chunks(total: int) -> AsyncIterator[bytes]:
    yield b'{"dramaUrl": "'
    for _ in range(total // 1000):
        yield b"a" * 1000
    yield b'", "isFavorite": true}'


async def test_streamed_body_over_the_limit_is_413(server: Server) -> None:
    token = await server.register("alice")
    response = await server.client.post(
        "/api/user/favorites",
        content=_chunks(server.settings.max_body_bytes + 5000),  # chunked: no Content-Length
        headers=_auth(token, **{"Content-Type": "application/json"}),
    )
    assert response.status_code == 413
    assert response.json()["message"] == (
        f"Request body too large (limit {server.settings.max_body_bytes} bytes)."
    )


async def test_streamed_body_under_the_limit_is_parsed(server: Server) -> None:
    token = await server.register("alice")

    async def body() -> AsyncIterator[bytes]:
        yield b'{"dramaUrl": "'
        yield URL.encode()
        yield b'", "isFavorite": true}'

    response = await server.client.post(
        "/api/user/favorites",
        content=body(),
        headers=_auth(token, **{"Content-Type": "application/json"}),
    )
    assert response.status_code == 200


@pytest.mark.parametrize("path", WRITE_PATHS)
async def test_other_methods_still_get_405(server: Server, path: str) -> None:
    response = await server.client.get(path)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["message"] == f"Method GET is not allowed on {path}."


async def test_trailing_slash_is_not_the_route(server: Server) -> None:
    token = await server.register("alice")
    response = await server.post_as(
        token, "/api/user/favorites/", {"dramaUrl": URL, "isFavorite": True}
    )
    assert response.status_code == 404


async def test_an_unexpected_error_is_a_json_500_and_the_server_lives_on(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await server.register("alice")

    async def broken(*_: Any) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setitem(fastpath.ROUTES, "/api/user/favorites", broken)
    response = await server.post_as(
        token, "/api/user/favorites", {"dramaUrl": URL, "isFavorite": True}
    )
    assert response.status_code == 500
    assert response.json() == {"message": "Something broke! A server error occurred."}
    monkeypatch.undo()
    again = await server.post_as(
        token, "/api/user/favorites", {"dramaUrl": URL, "isFavorite": True}
    )
    assert again.status_code == 200
