"""Registration, login and tokens: the /api/auth contract and /api/user authentication."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import bcrypt
import jwt
import pytest

from dramaverse.errors import Unauthorized
from dramaverse.http.auth import REGISTER_INVALID, TokenService
from tests.conftest import TEST_SECRET, Server


async def test_register_then_login(server: Server) -> None:
    response = await server.client.post(
        "/api/auth/register", json={"username": "alice_1.x-y", "password": "secret-pw"}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["message"] == "User created successfully"
    assert body["user"] == {"username": "alice_1.x-y"}
    claims = jwt.decode(body["token"], TEST_SECRET, algorithms=["HS256"])
    assert claims["username"] == "alice_1.x-y"
    assert isinstance(claims["id"], int)
    assert claims["exp"] - claims["iat"] == 24 * 3600

    login = await server.client.post(
        "/api/auth/login", json={"username": "alice_1.x-y", "password": "secret-pw"}
    )
    assert login.status_code == 200
    assert set(login.json()) == {"user", "token"}
    assert login.json()["user"] == {"username": "alice_1.x-y"}


async def test_passwords_are_stored_as_bcrypt(server: Server) -> None:
    await server.register("alice", "secret-pw")
    with sqlite3.connect(server.settings.sqlite_path) as conn:
        (stored,) = conn.execute("SELECT password FROM users WHERE username='alice'").fetchone()
    assert stored.startswith("$2b$")
    assert bcrypt.checkpw(b"secret-pw", stored.encode())


async def test_duplicate_username_is_409(server: Server) -> None:
    await server.register("alice")
    again = await server.client.post(
        "/api/auth/register", json={"username": "alice", "password": "another-pw"}
    )
    assert again.status_code == 409
    assert again.json() == {"message": "Username already exists"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "ab", "password": "secret-pw"},
        {"username": "a" * 21, "password": "secret-pw"},
        {"username": "has space", "password": "secret-pw"},
        {"username": "émile", "password": "secret-pw"},
        {"username": "alice\n", "password": "secret-pw"},
        {"username": "alice", "password": "12345"},
        {"username": "alice", "password": "\U0001f600\U0001f600"},  # 4 UTF-16 units < 6
        {"username": "alice", "password": 123456},
        {"username": 12345, "password": "secret-pw"},
        {"username": None, "password": None},
        ["alice", "secret-pw"],
    ],
)
async def test_register_rejects_invalid_input(server: Server, body: Any) -> None:
    response = await server.client.post("/api/auth/register", json=body)
    assert response.status_code == 400
    assert response.json() == {"message": REGISTER_INVALID}


async def test_password_length_counts_utf16_units_like_javascript(server: Server) -> None:
    # Three emoji are six UTF-16 code units: long enough for JavaScript's `length >= 6`.
    response = await server.client.post(
        "/api/auth/register", json={"username": "emoji", "password": "\U0001f600" * 3}
    )
    assert response.status_code == 201


async def test_passwords_over_72_bytes_are_refused_at_registration(server: Server) -> None:
    response = await server.client.post(
        "/api/auth/register", json={"username": "longpw", "password": "p" * 73}
    )
    assert response.status_code == 400
    assert "72 bytes" in response.json()["message"]
    ok = await server.client.post(
        "/api/auth/register", json={"username": "pw72", "password": "p" * 72}
    )
    assert ok.status_code == 201


def _insert_user(server: Server, username: str, password_hash: str) -> None:
    with sqlite3.connect(server.settings.sqlite_path) as conn:
        conn.execute(
            "INSERT INTO users (username, password) VALUES (?, ?)", (username, password_hash)
        )


async def test_existing_2a_hashes_verify(server: Server) -> None:
    # A published bcrypt test vector with the $2a$ prefix bcryptjs writes.
    _insert_user(server, "legacy", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW")
    response = await server.client.post(
        "/api/auth/login", json={"username": "legacy", "password": "U*U"}
    )
    assert response.status_code == 200
    wrong = await server.client.post(
        "/api/auth/login", json={"username": "legacy", "password": "U*V"}
    )
    assert wrong.status_code == 401


async def test_legacy_long_password_logs_in_on_its_first_72_bytes(server: Server) -> None:
    long_password = "L" * 72 + "tail-ignored-by-bcryptjs"
    legacy_hash = bcrypt.hashpw(long_password.encode()[:72], bcrypt.gensalt(4)).decode()
    _insert_user(server, "legacy72", legacy_hash.replace("$2b$", "$2a$", 1))
    response = await server.client.post(
        "/api/auth/login", json={"username": "legacy72", "password": long_password}
    )
    assert response.status_code == 200


async def test_malformed_stored_hash_never_matches(server: Server) -> None:
    _insert_user(server, "broken", "not-a-bcrypt-hash")
    response = await server.client.post(
        "/api/auth/login", json={"username": "broken", "password": "whatever"}
    )
    assert response.status_code == 401
    assert response.json() == {"message": "Invalid credentials"}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"username": "alice", "password": "wrong-pw"}, 401, "Invalid credentials"),
        ({"username": "nobody", "password": "secret-pw"}, 401, "Invalid credentials"),
        ({"username": "", "password": "secret-pw"}, 400, "Username and password are required."),
        ({"username": "alice", "password": ""}, 400, "Username and password are required."),
        ({"username": "alice"}, 400, "Username and password are required."),
        ({"username": "alice", "password": 5}, 400, "Username and password are required."),
    ],
)
async def test_login_failures(server: Server, body: Any, status: int, message: str) -> None:
    await server.register("alice", "secret-pw")
    response = await server.client.post("/api/auth/login", json=body)
    assert response.status_code == status
    assert response.json() == {"message": message}


def _forge(claims: dict[str, Any], secret: str = TEST_SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "Authentication token required"),
        ("Token abc", "Authentication token required"),
        ("bearer abc", "Authentication token required"),
        ("Bearer  token-after-two-spaces", "Invalid or expired token"),
        ("Bearer not.a.jwt", "Invalid or expired token"),
        (
            "Bearer "
            + _forge({"id": 1, "username": "a", "exp": int(time.time()) + 60}, "other-secret-" * 4),
            "Invalid or expired token",
        ),
        (
            "Bearer " + _forge({"id": 1, "username": "a", "exp": int(time.time()) - 5}),
            "Invalid or expired token",
        ),
        ("Bearer " + _forge({"id": 1, "username": "a"}), "Invalid or expired token"),
        (
            "Bearer " + _forge({"id": "1", "username": "a", "exp": int(time.time()) + 60}),
            "Invalid or expired token",
        ),
        (
            "Bearer " + _forge({"id": True, "username": "a", "exp": int(time.time()) + 60}),
            "Invalid or expired token",
        ),
        (
            "Bearer "
            + jwt.encode(
                {"id": 1, "username": "a", "exp": int(time.time()) + 60},
                TEST_SECRET,
                algorithm="HS512",
            ),
            "Invalid or expired token",
        ),
    ],
)
async def test_user_routes_require_a_valid_token(
    server: Server, header: str | None, message: str
) -> None:
    headers = {} if header is None else {"Authorization": header}
    for method, path in [
        ("GET", "/api/user/data"),
        ("POST", "/api/user/favorites"),
        ("POST", "/api/user/statuses"),
        ("POST", "/api/user/reviews/episodes"),
    ]:
        response = await server.client.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (method, path)
        assert response.json() == {"message": message}


async def test_unsigned_alg_none_token_is_refused(server: Server) -> None:
    token = jwt.encode(
        {"id": 1, "username": "a", "exp": int(time.time()) + 60}, None, algorithm="none"
    )
    response = await server.get_as(token, "/api/user/data")
    assert response.status_code == 401


async def test_token_of_deleted_user_is_refused(server: Server) -> None:
    token = await server.register("ghost")
    with sqlite3.connect(server.settings.sqlite_path) as conn:
        conn.execute("DELETE FROM users WHERE username='ghost'")
    assert (await server.get_as(token, "/api/user/data")).status_code == 401
    write = await server.post_as(
        token, "/api/user/favorites", {"dramaUrl": "x", "isFavorite": True}
    )
    assert write.status_code == 401


def test_token_service_round_trip_and_expiry() -> None:
    service = TokenService(TEST_SECRET, 60)
    user = service.verify(service.issue(7, "bob"))
    assert (user.id, user.username) == (7, "bob")
    old = service.issue(7, "bob", now=time.time() - 120)
    with pytest.raises(Exception, match="Invalid or expired token"):
        service.verify(old)


def test_a_remembered_token_still_expires() -> None:
    now = [time.time()]
    service = TokenService(TEST_SECRET, 60, clock=lambda: now[0])
    token = service.issue(7, "bob")
    assert service.verify(token).id == 7
    assert service.verify(token).id == 7  # from the cache
    now[0] += 61  # past exp: the cache must not keep it alive
    with pytest.raises(Unauthorized, match="Invalid or expired token"):
        service.verify(token)
    with pytest.raises(Unauthorized, match="Invalid or expired token"):
        service.verify(token)  # and not a second time either


def test_the_token_cache_is_bounded_and_refuses_forgeries() -> None:
    service = TokenService(TEST_SECRET, 60, cache_size=3)
    tokens = [service.issue(i, f"user{i}") for i in range(5)]
    for token in tokens:
        service.verify(token)
    assert len(service._cache) == 3
    assert service.verify(tokens[0]).id == 0  # dropped, verified again, still fine
    forged = tokens[1][:-2] + ("AA" if not tokens[1].endswith("AA") else "BB")
    with pytest.raises(Unauthorized):
        service.verify(forged)
    assert forged not in service._cache


@pytest.mark.parametrize("exp", ["tomorrow", True, None, [1]])
def test_a_token_with_a_malformed_exp_is_refused(exp: object) -> None:
    import jwt

    service = TokenService(TEST_SECRET, 60)
    token = jwt.encode({"id": 1, "username": "x", "exp": exp}, TEST_SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="Invalid or expired token"):
        service.verify(token)
