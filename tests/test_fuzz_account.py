"""Property-based fuzzing of the user's own account: password change, export, deletion, and the
per-account login limit.

Each example that needs an account registers a fresh one, so a generated body that happens to
be right (the password "secret-pw" is among the generated values) changes or deletes only that
account. What must hold: no 5xx, every error is ``{"message"}`` JSON, a missing or bad token is
401, a refused change or deletion leaves the account working as before, an accepted one does
exactly what it says; a locked-out login answers the same for an account that exists and one
that does not. ``FUZZ_EXAMPLES`` as everywhere.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dramaverse.config import RateLimit
from dramaverse.http.auth import TokenService
from tests.conftest import TEST_SECRET, make_settings
from tests.test_fuzz_http import FUZZ, HUGE, check_answer, header_bytes, json_values, still_serving
from tests.test_fuzz_sessions import authorization
from tests.threaded_server import ThreadedServer, server_in_thread

NAMES = itertools.count()
# "own": the example's account's token; "own-legacy": one of its tokens without a session.
CREDENTIALS = st.sampled_from(["own", "own-legacy", "none", "garbage", "forged"]) | header_bytes
REFUSED = ("none", "garbage", "forged")
PASSWORDS = (
    st.sampled_from(["secret-pw", "", "brand-new-pw", "x" * 73, "é" * 37, "\x00" * 8])
    | st.text(max_size=80)
    | st.none()
    | st.booleans()
    | st.integers()
    | HUGE
    | st.lists(st.text(max_size=8), max_size=2)
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    path: Path = tmp_path_factory.mktemp("fuzz-account")
    with server_in_thread(make_settings(path, rate_limit_login_account=None)) as server:
        yield server


def own_account(client: httpx.Client) -> tuple[str, str]:
    """A fresh account for this example: (name, token)."""
    name = f"fz{next(NAMES)}"
    response = client.post("/api/auth/register", json={"username": name, "password": "secret-pw"})
    assert response.status_code == 201, response.text
    return name, response.json()["token"]


def credential_headers(client: httpx.Client, credential: str | bytes, token: str) -> dict[str, Any]:
    if credential == "own":
        return {"Authorization": f"Bearer {token}"}
    if credential == "own-legacy":
        claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
        legacy = TokenService(TEST_SECRET, 600).issue(claims["id"], claims["username"])
        return {"Authorization": f"Bearer {legacy}"}
    return authorization(client, credential)


def encode(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def works(client: httpx.Client, token: str) -> bool:
    response = client.get("/api/user/data", headers={"Authorization": f"Bearer {token}"})
    return response.status_code == 200


def logs_in(client: httpx.Client, name: str, password: str) -> bool:
    response = client.post("/api/auth/login", json={"username": name, "password": password})
    return response.status_code == 200


change_bodies = (
    st.fixed_dictionaries({}, optional={"currentPassword": PASSWORDS, "newPassword": PASSWORDS})
    | json_values
    | st.binary(max_size=120)
)


@given(credential=CREDENTIALS, body=change_bodies)
@FUZZ
def test_password_changes_with_generated_requests(
    live: ThreadedServer, credential: str | bytes, body: Any
) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        name, token = own_account(client)
        headers = {
            **credential_headers(client, credential, token),
            "Content-Type": "application/json",
        }
        response = client.post("/api/user/password", content=encode(body), headers=headers)
        check_answer(response)
        if credential in REFUSED or isinstance(credential, bytes):
            assert response.status_code == 401
        if response.status_code == 200:
            assert credential in ("own", "own-legacy")
            assert isinstance(body, dict)
            assert body["currentPassword"] == "secret-pw"
            assert works(client, response.json()["token"])
            assert logs_in(client, name, body["newPassword"])
            assert not logs_in(client, name, "secret-pw")
        else:
            assert response.status_code in (400, 401, 403, 404, 413), response.text
            assert works(client, token)
            assert logs_in(client, name, "secret-pw")
        still_serving(client, live)


delete_bodies = (
    st.fixed_dictionaries({}, optional={"password": PASSWORDS})
    | json_values
    | st.binary(max_size=120)
)


@given(credential=CREDENTIALS, body=delete_bodies)
@FUZZ
def test_deletions_with_generated_requests(
    live: ThreadedServer, credential: str | bytes, body: Any
) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        name, token = own_account(client)
        headers = {
            **credential_headers(client, credential, token),
            "Content-Type": "application/json",
        }
        response = client.request("DELETE", "/api/user", content=encode(body), headers=headers)
        check_answer(response)
        if credential in REFUSED or isinstance(credential, bytes):
            assert response.status_code == 401
        if response.status_code == 200:
            assert credential in ("own", "own-legacy")
            assert isinstance(body, dict)
            assert body["password"] == "secret-pw"
            assert not works(client, token)
            assert not logs_in(client, name, "secret-pw")
        else:
            assert response.status_code in (400, 401, 403, 413), response.text
            assert works(client, token)
        still_serving(client, live)


@given(
    credential=CREDENTIALS,
    query=st.dictionaries(
        st.sampled_from(["userId", "id", "user", "format"]), st.text(max_size=20)
    ),
    extra=st.fixed_dictionaries(
        {}, optional={"X-Forwarded-For": header_bytes, "Cookie": header_bytes}
    ),
)
@FUZZ
def test_exports_with_generated_requests(
    live: ThreadedServer, credential: str | bytes, query: dict[str, str], extra: dict[str, bytes]
) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        name, token = own_account(client)
        headers = {**credential_headers(client, credential, token), **extra}
        response = client.get("/api/user/export", params=query, headers=headers)
        check_answer(response)
        if credential in ("own", "own-legacy"):
            assert response.status_code == 200
            assert response.json()["user"]["username"] == name  # never anyone else's
            assert response.headers["Content-Disposition"].startswith("attachment; ")
        elif credential in REFUSED or isinstance(credential, bytes):
            assert response.status_code == 401
        still_serving(client, live)


# -- the per-account login limit ------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    path: Path = tmp_path_factory.mktemp("fuzz-login-limits")
    settings = make_settings(path, trust_proxy=1, rate_limit_login_account=RateLimit(2, 900))
    with server_in_thread(settings) as server:
        yield server


STEM_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"


def stranger_address(forwarded: bytes) -> bool:
    """Whether ``X-Forwarded-For: forwarded`` names an address (TRUST_PROXY=1 takes the last
    entry) other than 127.0.0.1, where the accounts were registered from: an address an
    account signed in from keeps a budget of its own while the account is locked (by design,
    docs/auth.md), and an entry-less header means the peer's address, 127.0.0.1."""
    text = forwarded.decode("latin-1")  # as the server reads it, and strips it (str.strip)
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    return bool(entries) and entries[-1] != "127.0.0.1"


addresses = header_bytes.filter(stranger_address)
# What login takes as a password at all (a non-empty string JSON can carry and storage keep):
# anything else is a 400 before any counting.
storable_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=60,
)


@given(
    stem=st.text(alphabet=STEM_CHARS, min_size=1, max_size=10),
    stranger=storable_text,
    guesses=st.lists(
        storable_text.filter(lambda p: p not in ("", "secret-pw")), min_size=3, max_size=3
    ),
    sources=st.lists(addresses, min_size=4, max_size=4),
)
@FUZZ
def test_a_locked_account_answers_like_one_that_does_not_exist(
    limited: ThreadedServer,
    stem: str,
    stranger: str,
    guesses: list[Any],
    sources: list[bytes],
) -> None:
    serial = next(NAMES)
    existing = f"{stem}-{serial}"  # unique: the stem has no "-"
    missing = f"{stranger}~{serial}"  # never a valid username: nobody has it
    with httpx.Client(base_url=limited.url, timeout=30) as client:
        registered = client.post(
            "/api/auth/register", json={"username": existing, "password": "secret-pw"}
        )
        assert registered.status_code == 201, registered.text
        answers: dict[str, list[tuple[int, Any, bool]]] = {}
        for name in (existing, missing):
            seen = []
            attempts = [*guesses, "secret-pw"]  # the right password last: locked all the same
            for password, source in zip(attempts, sources, strict=True):
                response = client.post(
                    "/api/auth/login",
                    json={"username": name, "password": password},
                    headers={"X-Forwarded-For": source},
                )
                check_answer(response)
                retry = response.headers.get("Retry-After")
                if retry is not None:
                    assert 0 <= int(retry) <= 900
                seen.append((response.status_code, response.json(), retry is not None))
            answers[name] = seen
        assert answers[existing] == answers[missing]
        statuses = [status for status, _, _ in answers[missing]]
        assert statuses == [401, 401, 429, 429]
        assert client.get("/api/health").status_code == 200
