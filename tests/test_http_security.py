"""The HTTP perimeter: CORS, security headers, rate limits, proxies, JSON errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dramaverse.config import RateLimit
from dramaverse.http.security import RateLimiter, client_address
from tests.conftest import Server, make_settings, running_server


async def test_health(server: Server) -> None:
    response = await server.client.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["content-type"] == "application/json; charset=utf-8"


async def test_security_headers_on_every_response(server: Server) -> None:
    for path in ("/api/health", "/api/nope", "/api/user/data"):
        response = await server.client.get(path)
        headers = response.headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "SAMEORIGIN"
        assert headers["strict-transport-security"].startswith("max-age=31536000")
        assert "default-src 'self'" in headers["content-security-policy"]
        assert headers["referrer-policy"] == "no-referrer"
        assert "server" not in headers
        assert "x-powered-by" not in headers


async def test_allowed_origin_gets_a_grant(server: Server) -> None:
    response = await server.client.get("/api/health", headers={"Origin": "http://localhost:5173"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "Origin" in response.headers["vary"]


async def test_no_origin_means_no_grant(server: Server) -> None:
    response = await server.client.get("/api/health")
    assert "access-control-allow-origin" not in response.headers


async def test_disallowed_origin_is_403_json(server: Server) -> None:
    for method in ("GET", "POST", "OPTIONS"):
        response = await server.client.request(
            method, "/api/dramas", headers={"Origin": "https://evil.example"}
        )
        assert response.status_code == 403
        assert "https://evil.example" in response.json()["message"]
        assert "access-control-allow-origin" not in response.headers


async def test_preflight(server: Server) -> None:
    response = await server.client.options(
        "/api/user/favorites",
        headers={
            "Origin": "http://127.0.0.1:5173",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "http://127.0.0.1:5173"
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["access-control-allow-methods"] == "GET,POST,PUT,PATCH,DELETE,OPTIONS"
    assert response.headers["access-control-allow-headers"] == (
        "Content-Type,Authorization,X-CSRF-Token"
    )


async def test_configured_origins_replace_the_defaults(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, cors_allowed_origins=("https://app.example.com",))
    async with running_server(settings) as server:
        ok = await server.client.get("/api/health", headers={"Origin": "https://app.example.com"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
        old = await server.client.get("/api/health", headers={"Origin": "http://localhost:5173"})
        assert old.status_code == 403


async def test_unknown_route_is_json_404(server: Server) -> None:
    response = await server.client.get("/api/does-not-exist")
    assert response.status_code == 404
    assert response.json() == {"message": "Not found: GET /api/does-not-exist"}


async def test_wrong_method_is_json_405(server: Server) -> None:
    response = await server.client.delete("/api/user/favorites")
    assert response.status_code == 405
    assert "DELETE" in response.json()["message"]
    assert "POST" in response.headers["allow"]


async def test_auth_rate_limit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rate_limit_auth=RateLimit(3, 1800))
    async with running_server(settings) as server:
        statuses = []
        for _ in range(3):
            response = await server.client.post("/api/auth/login", json={})
            statuses.append(response.status_code)
            assert response.headers["ratelimit-limit"] == "3"
            assert response.headers["ratelimit-policy"] == "3;w=1800"
        assert statuses == [400, 400, 400]
        limited = await server.client.post(
            "/api/auth/register", json={"username": "alice", "password": "secret-pw"}
        )
        assert limited.status_code == 429
        assert limited.json() == {
            "message": "Too many authentication attempts, please try again after 30 minutes."
        }
        assert limited.headers["ratelimit-remaining"] == "0"
        assert int(limited.headers["retry-after"]) > 0
        # Nothing was created by the refused request.
        health = await server.client.get("/api/health")
        assert health.status_code == 200


async def test_user_rate_limit_counts_only_authenticated_requests(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rate_limit_user=RateLimit(2, 900))
    async with running_server(settings) as server:
        token = await server.register("alice")
        for _ in range(5):  # unauthenticated requests are refused before the limiter
            assert (await server.client.get("/api/user/data")).status_code == 401
        first = await server.get_as(token, "/api/user/data")
        assert first.status_code == 200
        assert first.headers["ratelimit-remaining"] == "1"
        assert (await server.get_as(token, "/api/user/data")).status_code == 200
        limited = await server.get_as(token, "/api/user/data")
        assert limited.status_code == 429
        assert limited.json() == {
            "message": "Too many requests, please try again after 15 minutes."
        }


async def test_forwarded_for_is_ignored_unless_trusted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rate_limit_auth=RateLimit(1, 1800))
    async with running_server(settings) as server:
        first = await server.client.post(
            "/api/auth/login", json={}, headers={"X-Forwarded-For": "1.1.1.1"}
        )
        assert first.status_code == 400
        spoofed = await server.client.post(
            "/api/auth/login", json={}, headers={"X-Forwarded-For": "2.2.2.2"}
        )
        assert spoofed.status_code == 429


async def test_forwarded_for_is_used_behind_a_trusted_proxy(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rate_limit_auth=RateLimit(1, 1800), trust_proxy=1)
    async with running_server(settings) as server:
        for address in ("1.1.1.1", "2.2.2.2"):
            response = await server.client.post(
                "/api/auth/login", json={}, headers={"X-Forwarded-For": address}
            )
            assert response.status_code == 400
        again = await server.client.post(
            "/api/auth/login", json={}, headers={"X-Forwarded-For": "1.1.1.1"}
        )
        assert again.status_code == 429


@pytest.mark.parametrize(
    ("peer", "header", "hops", "expected"),
    [
        ("10.0.0.1", None, 1, "10.0.0.1"),
        ("10.0.0.1", "1.1.1.1", 0, "10.0.0.1"),
        ("10.0.0.1", "1.1.1.1", 1, "1.1.1.1"),
        ("10.0.0.1", "9.9.9.9, 1.1.1.1", 1, "1.1.1.1"),
        ("10.0.0.1", "9.9.9.9, 1.1.1.1", 2, "9.9.9.9"),
        ("10.0.0.1", "1.1.1.1", 5, "1.1.1.1"),
    ],
)
def test_client_address(peer: str, header: str | None, hops: int, expected: str) -> None:
    assert client_address(peer, header, hops) == expected


def test_rate_limiter_windows_and_memory_bound() -> None:
    now = [0.0]
    limiter = RateLimiter(RateLimit(2, 10), clock=lambda: now[0], max_keys=100)
    assert [limiter.hit("a").allowed for _ in range(3)] == [True, True, False]
    now[0] = 10.5
    assert limiter.hit("a").allowed
    for index in range(1000):
        limiter.hit(f"spray-{index}")
    assert len(limiter) <= 100
