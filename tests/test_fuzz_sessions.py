"""Property-based fuzzing of the session endpoints: logout, the list, ending one, logout-others.

Generated session ids in the path (any text, percent-encoded), bodies, User-Agent and
X-Forwarded-For headers, and every kind of credential: none, garbage, a token of a fresh session
(logged in for the example, so ending it costs nothing), a legacy token. What must hold: no 5xx,
every error is ``{"message"}`` JSON, an id that is no session id is a 400 and one that is nobody's
a 404, and the server still answers the bystander afterwards. ``FUZZ_EXAMPLES`` as everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dramaverse.domain.sessions import is_session_id
from dramaverse.http.auth import TokenService
from tests.conftest import TEST_SECRET, make_settings
from tests.test_fuzz_http import FUZZ, check_answer, header_bytes, json_values, still_serving
from tests.threaded_server import ThreadedServer, server_in_thread

CREDENTIALS = st.sampled_from(["none", "fresh", "legacy", "garbage", "forged"]) | header_bytes
ROUTES = [
    ("POST", "/api/auth/logout"),
    ("GET", "/api/user/sessions"),
    ("POST", "/api/user/sessions/logout-others"),
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    path: Path = tmp_path_factory.mktemp("fuzz-sessions")
    with server_in_thread(make_settings(path)) as server:
        yield server


def authorization(client: httpx.Client, credential: str | bytes) -> dict[str, Any]:
    if credential == "none":
        return {}
    if credential == "fresh":
        login = client.post("/api/auth/login", json={"username": "fuzzer", "password": "secret-pw"})
        assert login.status_code == 200, login.text
        return {"Authorization": f"Bearer {login.json()['token']}"}
    if credential == "legacy":  # fuzzer's, as issued before sessions existed (user id 1)
        return {"Authorization": f"Bearer {TokenService(TEST_SECRET, 600).issue(1, 'fuzzer')}"}
    if credential == "forged":
        forged = TokenService("another-secret-" + "y" * 40, 600).issue(1, "fuzzer")
        return {"Authorization": f"Bearer {forged}"}
    if credential == "garbage":
        return {"Authorization": "Bearer not-a-token"}
    assert isinstance(credential, bytes)
    return {"Authorization": b"Bearer " + credential}


client_headers = st.fixed_dictionaries(
    {},
    optional={"User-Agent": header_bytes, "X-Forwarded-For": header_bytes},
)


@given(
    session_id=st.text(max_size=80) | st.sampled_from(["A" * 32, "a" * 16, "x" * 64, "-_" * 10]),
    credential=CREDENTIALS,
    extra=client_headers,
)
@FUZZ
def test_deleting_generated_session_ids(
    live: ThreadedServer, session_id: str, credential: str | bytes, extra: dict[str, bytes]
) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        headers = {**authorization(client, credential), **extra}
        path = "/api/user/sessions/" + quote(session_id, safe="")
        response = client.delete(path, headers=headers)
        check_answer(response)
        if credential in ("fresh", "legacy"):
            if is_session_id(session_id):
                assert response.status_code == 404  # nobody's
            else:  # 404 where the text is no path segment at all ("", "..", "a/b")
                assert response.status_code in (400, 404), response.text
        still_serving(client, live)


@given(
    route=st.sampled_from(ROUTES),
    credential=CREDENTIALS,
    body=json_values | st.binary(max_size=200),
    extra=client_headers,
)
@FUZZ
def test_session_routes_with_generated_requests(
    live: ThreadedServer,
    route: tuple[str, str],
    credential: str | bytes,
    body: Any,
    extra: dict[str, bytes],
) -> None:
    method, path = route
    with httpx.Client(base_url=live.url, timeout=30) as client:
        headers: dict[str, Any] = {**authorization(client, credential), **extra}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        if method == "POST":
            headers["Content-Type"] = "application/json"
            response = client.request(method, path, content=content, headers=headers)
        else:
            response = client.request(method, path, headers=headers)
        check_answer(response)
        if credential in ("none", "garbage", "forged"):
            assert response.status_code == 401
        still_serving(client, live)


@given(user_agent=header_bytes, forwarded=header_bytes)
@FUZZ
def test_logins_with_generated_client_headers(
    live: ThreadedServer, user_agent: bytes, forwarded: bytes
) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        login = client.post(
            "/api/auth/login",
            json={"username": "bystander", "password": "secret-pw"},
            headers={"User-Agent": user_agent, "X-Forwarded-For": forwarded},
        )
        check_answer(login)
        assert login.status_code == 200
        token = login.json()["token"]
        listed = client.get("/api/user/sessions", headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200
        (mine,) = [s for s in listed.json()["sessions"] if s["current"]]
        assert len(mine["userAgent"]) <= 512
        assert 0 < len(mine["device"]) <= 64
        still_serving(client, live)
