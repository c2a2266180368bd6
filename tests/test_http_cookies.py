"""Cookie authentication over HTTP and its CSRF rules (http/cookies.py, http/csrf.py).

Real server, real sockets: login and register set the cookies when asked; a request with the
auth cookie and no ``Authorization`` header is authenticated by it; one that changes state must
come from an allowed origin and double-submit the CSRF value signed for its token, on the Quart
routes and on the raw-ASGI library writes alike; Bearer requests are untouched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Response

from dramaverse.errors import Forbidden
from dramaverse.http import fastpath
from dramaverse.http.cookies import (
    AUTH_COOKIE,
    COOKIE_FIELD_INVALID,
    CSRF_COOKIE,
    CookieAuth,
    CookieRequest,
    clear_auth_cookies,
    parse_cookies,
)
from dramaverse.http.csrf import (
    CSRF_INVALID,
    CSRF_MISSING,
    ORIGIN_REQUIRED,
    CsrfSigner,
    origin_of,
)
from dramaverse.http.security import CorsPolicy
from tests.conftest import TEST_SECRET, Server, make_settings, running_server, sample_records

URLS = [r["url"] for r in sample_records()]
ALLOWED = "http://localhost:5173"
WRITES: list[tuple[str, dict[str, Any]]] = [
    ("/api/user/favorites", {"dramaUrl": URLS[0], "isFavorite": True}),
    ("/api/user/statuses", {"dramaUrl": URLS[0], "status": "Watching"}),
    (
        "/api/user/reviews/episodes",
        {"dramaUrl": URLS[0], "episodeNumber": 1, "text": "ok", "clientUpdatedAt": 0},
    ),
    ("/api/player/status", {"roomCode": "AB"}),  # a Quart route
]
assert {path for path, _ in WRITES[:3]} == set(fastpath.ROUTES)


def set_cookies(response: httpx.Response) -> dict[str, tuple[str, dict[str, str]]]:
    """``Set-Cookie`` headers as name -> (value, {attribute (lower case): value})."""
    found: dict[str, tuple[str, dict[str, str]]] = {}
    for header in response.headers.get_list("set-cookie"):
        first, *rest = header.split("; ")
        name, _, value = first.partition("=")
        attributes = {}
        for attribute in rest:
            key, _, setting = attribute.partition("=")
            attributes[key.lower()] = setting
        found[name] = (value, attributes)
    return found


@dataclass
class Browser:
    """What a browser holds after a cookie login: the two cookies (never sent automatically)."""

    token: str
    csrf: str

    def headers(
        self,
        *,
        origin: str | None = ALLOWED,
        csrf: str | None = "cookie",
        cookie: str | None = None,
        **extra: str,
    ) -> dict[str, str]:
        headers = {"Cookie": cookie or f"{AUTH_COOKIE}={self.token}; {CSRF_COOKIE}={self.csrf}"}
        if origin is not None:
            headers["Origin"] = origin
        if csrf is not None:
            headers["X-CSRF-Token"] = self.csrf if csrf == "cookie" else csrf
        return {**headers, **extra}


async def cookie_login(server: Server, username: str, *, register: bool = True) -> Browser:
    body = {"username": username, "password": "secret-pw", "cookie": True}
    path = "/api/auth/register" if register else "/api/auth/login"
    response = await server.client.post(path, json=body)
    assert response.status_code == (201 if register else 200), response.text
    server.client.cookies.clear()  # the tests send cookies explicitly
    cookies = set_cookies(response)
    assert cookies[AUTH_COOKIE][0] == response.json()["token"]
    return Browser(cookies[AUTH_COOKIE][0], cookies[CSRF_COOKIE][0])


async def favorites(server: Server, browser: Browser) -> list[str]:
    data = await server.get_as(browser.token, "/api/user/data")
    assert data.status_code == 200
    found: list[str] = data.json()["data"]["favorites"]
    return found


# -- setting the cookies ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/auth/register", "/api/auth/login"])
async def test_login_and_register_set_both_cookies_when_asked(server: Server, path: str) -> None:
    if path.endswith("login"):
        await server.register("alice")
    body = {"username": "alice", "password": "secret-pw", "cookie": True}
    response = await server.client.post(path, json=body)
    assert response.status_code in (200, 201)
    token = response.json()["token"]
    assert set(response.json()) <= {"message", "user", "token"}  # the same answer as ever
    cookies = set_cookies(response)
    assert set(cookies) == {AUTH_COOKIE, CSRF_COOKIE}
    value, auth = cookies[AUTH_COOKIE]
    assert value == token
    assert "httponly" in auth
    assert auth["samesite"] == "Lax"
    assert auth["path"] == "/"
    assert auth["max-age"] == str(server.settings.jwt_ttl_seconds)
    assert "secure" not in auth  # not in production
    csrf, attributes = cookies[CSRF_COOKIE]
    assert "httponly" not in attributes  # the page reads it
    assert attributes["samesite"] == "Lax"
    assert attributes["path"] == "/"
    assert attributes["max-age"] == str(server.settings.jwt_ttl_seconds)
    assert CsrfSigner(TEST_SECRET).valid(csrf, token)


async def test_cookies_are_secure_in_production(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, env="production")) as server:
        body = {"username": "alice", "password": "secret-pw", "cookie": True}
        response = await server.client.post("/api/auth/register", json=body)
        cookies = set_cookies(response)
        assert "secure" in cookies[AUTH_COOKIE][1]
        assert "secure" in cookies[CSRF_COOKIE][1]


@pytest.mark.parametrize("cookie", [None, False])
async def test_no_cookies_unless_asked(server: Server, cookie: bool | None) -> None:
    body: dict[str, Any] = {"username": "alice", "password": "secret-pw"}
    if cookie is not None:
        body["cookie"] = cookie
    response = await server.client.post("/api/auth/register", json=body)
    assert response.status_code == 201
    assert "set-cookie" not in response.headers
    login = await server.client.post("/api/auth/login", json=body)
    assert login.status_code == 200
    assert "set-cookie" not in login.headers


@pytest.mark.parametrize("cookie", ["true", 1, 0, None, [], {}])
async def test_the_cookie_field_must_be_a_boolean(server: Server, cookie: object) -> None:
    body = {"username": "alice", "password": "secret-pw", "cookie": cookie}
    response = await server.client.post("/api/auth/register", json=body)
    assert response.status_code == 400
    assert response.json() == {"message": COOKIE_FIELD_INVALID}
    await server.register("alice")  # nothing was created
    login = await server.client.post("/api/auth/login", json=body)
    assert login.status_code == 400


def test_clear_auth_cookies_expires_both() -> None:
    response = Response(b"")
    clear_auth_cookies(response)
    cleared = {}
    for header in response.headers.getlist("Set-Cookie"):
        first, *attributes = header.split("; ")
        cleared[first] = attributes
    assert set(cleared) == {f"{AUTH_COOKIE}=", f"{CSRF_COOKIE}="}
    for attributes in cleared.values():
        assert "Max-Age=0" in attributes
        assert "Path=/" in attributes


# -- reading with the cookie -----------------------------------------------------------------


async def test_a_cookie_authenticates_reads_without_csrf(server: Server) -> None:
    alice = await cookie_login(server, "alice")
    for headers in (alice.headers(), alice.headers(origin=None, csrf=None)):
        response = await server.client.get("/api/user/data", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["user"] == {"username": "alice"}
    player = await server.client.get("/api/player/status?roomCode=AB", headers=alice.headers())
    assert player.status_code == 200


@pytest.mark.parametrize(
    ("cookie", "message"),
    [
        (f"{AUTH_COOKIE}=not-a-token", "Invalid or expired token"),
        (f"{AUTH_COOKIE}=", "Authentication token required"),
        ("other=1", "Authentication token required"),
        (f"{AUTH_COOKIE}x=abc", "Authentication token required"),
    ],
)
async def test_a_bad_or_missing_cookie_is_401(server: Server, cookie: str, message: str) -> None:
    response = await server.client.get("/api/user/data", headers={"Cookie": cookie})
    assert response.status_code == 401
    assert response.json() == {"message": message}


async def test_a_cookie_logged_in_again_still_works(server: Server) -> None:
    await cookie_login(server, "alice")
    again = await cookie_login(server, "alice", register=False)
    response = await server.client.get("/api/user/data", headers=again.headers())
    assert response.json()["user"] == {"username": "alice"}


# -- writing with the cookie: CSRF -----------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), WRITES)
async def test_a_cookie_write_with_origin_and_csrf_succeeds(
    server: Server, path: str, body: dict[str, Any]
) -> None:
    alice = await cookie_login(server, "alice")
    response = await server.client.post(path, json=body, headers=alice.headers())
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert response.headers["access-control-allow-credentials"] == "true"


async def test_the_write_is_the_cookie_users(server: Server) -> None:
    alice = await cookie_login(server, "alice")
    bob = await cookie_login(server, "bob")
    path, body = WRITES[0]
    assert (await server.client.post(path, json=body, headers=alice.headers())).status_code == 200
    assert await favorites(server, alice) == [URLS[0]]
    assert await favorites(server, bob) == []


@pytest.mark.parametrize(("path", "body"), WRITES)
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-csrf-header", CSRF_MISSING),
        ("no-csrf-cookie", CSRF_MISSING),
        ("header-differs", CSRF_INVALID),
        ("other-users-csrf", CSRF_INVALID),
        ("older-tokens-csrf", CSRF_INVALID),
        ("forged-csrf", CSRF_INVALID),
        ("no-origin", ORIGIN_REQUIRED),
        ("null-origin", "Origin null is not allowed by CORS policy."),
        ("referer-elsewhere", ORIGIN_REQUIRED),
        ("evil-origin", "Origin https://evil.example is not allowed by CORS policy."),
    ],
)
async def test_a_cookie_write_failing_csrf_is_403_and_changes_nothing(
    server: Server, path: str, body: dict[str, Any], case: str, message: str
) -> None:
    alice = await cookie_login(server, "alice")
    bob = await cookie_login(server, "bob")
    # Alice's token from an earlier login (tokens of the same second are identical).
    tokens = server.handle.state.tokens
    older_token = tokens.issue(tokens.verify(alice.token).id, "alice", now=time.time() - 10)
    older = Browser(older_token, CsrfSigner(TEST_SECRET).issue(older_token))
    both = f"{AUTH_COOKIE}={alice.token}"
    headers = {
        "no-csrf-header": alice.headers(csrf=None),
        "no-csrf-cookie": alice.headers(cookie=both),
        "header-differs": alice.headers(csrf=bob.csrf),
        "other-users-csrf": alice.headers(
            cookie=f"{both}; {CSRF_COOKIE}={bob.csrf}", csrf=bob.csrf
        ),
        "older-tokens-csrf": alice.headers(
            cookie=f"{both}; {CSRF_COOKIE}={older.csrf}", csrf=older.csrf
        ),
        "forged-csrf": alice.headers(
            cookie=f"{both}; {CSRF_COOKIE}=AAAAAAAAAAAAAAAAAAAAAA.{'B' * 43}",
            csrf=f"AAAAAAAAAAAAAAAAAAAAAA.{'B' * 43}",
        ),
        "no-origin": alice.headers(origin=None),
        "null-origin": alice.headers(origin="null"),
        "referer-elsewhere": alice.headers(origin=None, Referer="https://evil.example/page"),
        "evil-origin": alice.headers(origin="https://evil.example"),
    }[case]
    response = await server.client.post(path, json=body, headers=headers)
    assert response.status_code == 403, response.text
    assert response.json() == {"message": message}
    assert await favorites(server, alice) == []
    mine = await server.get_as(alice.token, "/api/player/status?roomCode=AB")
    assert mine.json()["users"] == {}  # no player report was stored either


@pytest.mark.parametrize(("path", "body"), WRITES)
async def test_a_referer_from_an_allowed_origin_stands_in_for_origin(
    server: Server, path: str, body: dict[str, Any]
) -> None:
    alice = await cookie_login(server, "alice")
    headers = alice.headers(origin=None, Referer=f"{ALLOWED}/drama/1?x=y")
    response = await server.client.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.text


async def test_csrf_is_checked_before_the_token(server: Server) -> None:
    response = await server.client.post(
        WRITES[0][0], json=WRITES[0][1], headers={"Cookie": f"{AUTH_COOKIE}=garbage"}
    )
    assert response.status_code == 403
    assert response.json() == {"message": ORIGIN_REQUIRED}


async def test_a_valid_csrf_does_not_rescue_an_invalid_token(server: Server) -> None:
    signer = CsrfSigner(TEST_SECRET)
    csrf = signer.issue("garbage")
    response = await server.client.post(
        WRITES[0][0],
        json=WRITES[0][1],
        headers={
            "Cookie": f"{AUTH_COOKIE}=garbage; {CSRF_COOKIE}={csrf}",
            "X-CSRF-Token": csrf,
            "Origin": ALLOWED,
        },
    )
    assert response.status_code == 401
    assert response.json() == {"message": "Invalid or expired token"}


# -- Bearer is untouched ---------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), WRITES)
async def test_bearer_writes_need_no_origin_nor_csrf(
    server: Server, path: str, body: dict[str, Any]
) -> None:
    token = await server.register("alice")
    response = await server.post_as(token, path, body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("path", "body"), WRITES)
async def test_bearer_wins_over_the_cookie(server: Server, path: str, body: dict[str, Any]) -> None:
    alice = await cookie_login(server, "alice")
    bob = await server.register("bob")
    # Bob's Bearer with Alice's cookies and no CSRF header: Bob's write, no CSRF asked.
    headers = alice.headers(csrf=None, Authorization=f"Bearer {bob}")
    response = await server.client.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    if path == WRITES[0][0]:
        assert await favorites(server, alice) == []
        assert (await server.get_as(bob, "/api/user/data")).json()["data"]["favorites"] == [URLS[0]]
    # An invalid Bearer is not rescued by a valid cookie.
    headers = alice.headers(Authorization="Bearer nope")
    refused = await server.client.post(path, json=body, headers=headers)
    assert refused.status_code == 401


# -- the rules as functions: every state-changing method, the parsers -------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_every_state_changing_method_needs_csrf(method: str) -> None:
    rules = CookieAuth(CorsPolicy([ALLOWED]), CsrfSigner(TEST_SECRET), 60, False)
    csrf = rules.signer.issue("tok")
    cookie = f"{AUTH_COOKIE}=tok; {CSRF_COOKIE}={csrf}"
    good = CookieRequest(cookie, ALLOWED, None, csrf)
    assert rules.request_token(method, good) == "tok"
    for bad, message in [
        (CookieRequest(cookie, ALLOWED, None, None), CSRF_MISSING),
        (CookieRequest(cookie, None, None, csrf), ORIGIN_REQUIRED),
        (CookieRequest(cookie, ALLOWED, None, csrf[:-1] + "x"), CSRF_INVALID),
    ]:
        with pytest.raises(Forbidden) as refused:
            rules.request_token(method, bad)
        assert refused.value.message == message
    for safe in ("GET", "HEAD", "OPTIONS"):
        assert rules.request_token(safe, CookieRequest(cookie, None, None, None)) == "tok"
    assert rules.request_token(method, CookieRequest(None, None, None, None)) is None


@pytest.mark.parametrize(
    ("header", "token", "csrf"),
    [
        (f"{AUTH_COOKIE}=a.b.c; {CSRF_COOKIE}=x", "a.b.c", "x"),
        (f"  {AUTH_COOKIE} = a.b.c ;{CSRF_COOKIE}=x  ", "a.b.c", "x"),
        (f'{AUTH_COOKIE}="a.b.c"', "a.b.c", None),
        (f"{AUTH_COOKIE}=first; {AUTH_COOKIE}=second", "first", None),
        (f"{AUTH_COOKIE}=; {AUTH_COOKIE}=second", None, None),
        (f"theme=dark; {CSRF_COOKIE}=x; lang", None, "x"),
        (f"{AUTH_COOKIE}", None, None),
        ("", None, None),
        (None, None, None),
        (f"{AUTH_COOKIE}=a=b=c", "a=b=c", None),
        (f"{AUTH_COOKIE}=é€\x00", "é€\x00", None),
        (f"{AUTH_COOKIE}={'a' * (16 * 1024)}", None, None),  # over the bound: ignored
    ],
)
def test_parse_cookies(header: str | None, token: str | None, csrf: str | None) -> None:
    found = parse_cookies(header)
    assert (found.token, found.csrf) == (token, csrf)


def test_cookie_fields_are_joined_and_other_headers_first_wins() -> None:
    request = CookieRequest.from_scope(
        [
            (b"cookie", f"{AUTH_COOKIE}=t".encode()),
            (b"origin", b"http://a"),
            (b"origin", b"http://b"),
            (b"cookie", f"{CSRF_COOKIE}=c".encode()),
            (b"x-csrf-token", "\xe9".encode("latin-1")),
        ]
    )
    assert parse_cookies(request.cookie) == parse_cookies(f"{AUTH_COOKIE}=t; {CSRF_COOKIE}=c")
    assert request.origin == "http://a"
    assert request.csrf_header == "\xe9"


@pytest.mark.parametrize(
    ("origin", "referer", "expected"),
    [
        (ALLOWED, "https://evil.example/", ALLOWED),
        (None, f"{ALLOWED}/a/b?c#d", ALLOWED),
        (None, "https://user:pw@app.example.com:8443/x", "https://app.example.com:8443"),
        (None, "ftp://app.example.com/", None),
        (None, "/relative/only", None),
        (None, "http://[::1/", None),
        (None, "", None),
        (None, None, None),
        (None, "http://" + "a" * 9000, None),
    ],
)
def test_origin_of(origin: str | None, referer: str | None, expected: str | None) -> None:
    assert origin_of(origin, referer) == expected


def test_csrf_values_are_bound_to_the_token_and_the_secret() -> None:
    signer = CsrfSigner(TEST_SECRET)
    value = signer.issue("token-a")
    assert signer.valid(value, "token-a")
    assert not signer.valid(value, "token-b")
    assert not CsrfSigner("another-secret-" + "y" * 40).valid(value, "token-a")
    assert signer.issue("token-a") != value  # a fresh nonce each time
    for garbage in ["", ".", value + "x", value.upper(), "é" * 66, value.replace(".", "")]:
        assert not signer.valid(garbage, "token-a")
