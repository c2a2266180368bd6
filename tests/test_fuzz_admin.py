"""Property-based fuzzing of the admin API: generated ids, actions, query strings, credentials.

"fuzzer" is made an admin; "bystander" stays a plain user whose token must keep working. Ids are
any text (percent-encoded into the path), any integer, or a user registered for the example (a
"victim", so a ban or deletion costs nothing); the two standing users are never the target of an
action. Query strings carry generated ``search``, ``page``, ``limit`` and ``days`` values and
extra fields. What must hold: no 5xx, every error is ``{"message"}`` JSON, 401 without a valid
token, 403 for the plain user, 400 for an id that is no safe integer from 1, 404 for one nobody
has, 200 for a victim, and the server still answers afterwards. ``FUZZ_EXAMPLES`` as everywhere.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dramaverse.domain.numbers import MAX_SAFE_INTEGER
from dramaverse.http.auth import TokenService
from tests.conftest import make_settings
from tests.test_fuzz_http import FUZZ, check_answer, header_bytes, json_values, still_serving
from tests.threaded_server import ThreadedServer, server_in_thread

ACTIONS = ["promote", "demote", "ban", "unban", "reset-password", "data", "delete"]
CREDENTIALS = st.sampled_from(["none", "garbage", "forged", "admin", "user"]) | header_bytes
STANDING = {1, 2}  # fuzzer (the admin) and bystander
numbers_as_text = st.integers(-(10**30), 10**30).map(str) | st.sampled_from(
    ["0", "1", "2", str(MAX_SAFE_INTEGER), str(MAX_SAFE_INTEGER + 1), "1e3", "0x10", "", " 1"]
)
query_values = st.text(max_size=70) | numbers_as_text
queries = st.fixed_dictionaries(
    {},
    optional={
        "search": query_values,
        "page": query_values,
        "limit": query_values,
        "days": query_values,
    },
) | st.dictionaries(st.text(max_size=8), query_values, max_size=3)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    path: Path = tmp_path_factory.mktemp("fuzz-admin")
    settings = make_settings(path)
    with server_in_thread(settings) as server:
        with sqlite3.connect(settings.sqlite_path) as conn:  # as `dramaverse user promote`
            conn.execute("UPDATE users SET is_admin = 1 WHERE username = 'fuzzer'")
        yield server


def authorization(live: ThreadedServer, credential: str | bytes) -> dict[str, Any]:
    if credential == "none":
        return {}
    if credential == "admin":
        return {"Authorization": f"Bearer {live.token}"}
    if credential == "user":
        return {"Authorization": f"Bearer {live.other_token}"}
    if credential == "forged":
        forged = TokenService("another-secret-" + "y" * 40, 600).issue(1, "fuzzer")
        return {"Authorization": f"Bearer {forged}"}
    if credential == "garbage":
        return {"Authorization": "Bearer not-a-token"}
    assert isinstance(credential, bytes)
    return {"Authorization": b"Bearer " + credential}


def victim(client: httpx.Client, live: ThreadedServer) -> str:
    """A user registered for this example; its id as text."""
    name = "v" + uuid.uuid4().hex[:12]
    response = client.post("/api/auth/register", json={"username": name, "password": "secret-pw"})
    assert response.status_code == 201, response.text
    listed = client.get(
        "/api/admin/users", params={"search": name}, headers=authorization(live, "admin")
    )
    (user,) = listed.json()["users"]
    return str(user["id"])


def check_refusals(response: httpx.Response, credential: str | bytes) -> None:
    if credential in ("none", "garbage", "forged") or isinstance(credential, bytes):
        assert response.status_code in (401, 404, 405), response.text
    if credential == "user":
        assert response.status_code in (403, 404, 405), response.text


@given(
    action=st.sampled_from(ACTIONS),
    user_id=st.text(max_size=30) | numbers_as_text | st.just("victim"),
    credential=CREDENTIALS,
    body=json_values | st.binary(max_size=100),
)
@FUZZ
def test_user_routes_with_generated_ids(
    live: ThreadedServer, action: str, user_id: str, credential: str | bytes, body: Any
) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        if user_id == "victim":
            user_id = victim(client, live)
        valid = re.fullmatch(r"[0-9]{1,20}", user_id) is not None
        assume(not (valid and int(user_id) in STANDING and action != "data"))
        base = "/api/admin/users/" + quote(user_id, safe="")
        method, path = {
            "data": ("GET", base + "/data"),
            "delete": ("DELETE", base),
        }.get(action, ("POST", f"{base}/{action}"))
        headers = authorization(live, credential)
        content = body if isinstance(body, bytes) else repr(body).encode()
        response = client.request(method, path, headers=headers, content=content)
        check_answer(response)
        check_refusals(response, credential)
        if credential == "admin":
            if valid and 1 <= int(user_id) <= MAX_SAFE_INTEGER:
                assert response.status_code in (200, 404), response.text
                if response.status_code == 404:
                    assert response.json() == {"message": "User not found"}
            elif user_id and "/" not in user_id and user_id not in (".", ".."):
                assert response.status_code == 400, response.text
            else:  # no path segment at all ("", "..", "a/b"): another route or none
                assert response.status_code in (400, 404, 405), response.text
        still_serving(client, live)


@given(
    path=st.sampled_from(["/api/admin/users", "/api/admin/stats"]),
    query=queries,
    credential=CREDENTIALS,
    extra=st.fixed_dictionaries({}, optional={"X-Forwarded-For": header_bytes}),
)
@FUZZ
def test_list_and_stats_with_generated_queries(
    live: ThreadedServer,
    path: str,
    query: dict[str, str],
    credential: str | bytes,
    extra: dict[str, bytes],
) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        headers = {**authorization(live, credential), **extra}
        response = client.get(f"{path}?{urlencode(query)}", headers=headers)
        check_answer(response)
        check_refusals(response, credential)
        if credential == "admin":
            assert response.status_code in (200, 400), response.text
            if response.status_code == 200:
                answer = response.json()
                if path == "/api/admin/users":
                    assert len(answer["users"]) <= answer["limit"] <= 100
                else:
                    assert 1 <= answer["days"] <= 366
        still_serving(client, live)
