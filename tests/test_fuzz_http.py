"""Property-based fuzzing of every HTTP endpoint and of the raw HTTP / WebSocket handshake.

Generated requests, well-formed and not, with the numbers that broke us before (integers no
double holds, ``1e400``, ``NaN``), odd types, deep nesting, undecodable bytes and headers. What
must hold for every one of them: no 5xx (503 aside: nothing here takes storage away), and the
server still answers correctly afterwards. ``FUZZ_EXAMPLES`` sets the examples per target
(``make fuzz`` runs many more).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_settings, sample_records
from tests.threaded_server import EXAMPLES, ThreadedServer, server_in_thread

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
URLS = [r["url"] for r in sample_records()]
HUGE = st.sampled_from([10**400, -(10**400), 2**53, 2**64, 2**1024, 10**308, -1])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | HUGE
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(URLS)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=10,
)
FIELDS = {
    "/api/auth/register": ["username", "password"],
    "/api/auth/login": ["username", "password"],
    "/api/user/favorites": ["dramaUrl", "isFavorite"],
    "/api/user/statuses": ["dramaUrl", "status", "currentEpisode"],
    "/api/user/reviews/episodes": ["dramaUrl", "episodeNumber", "text", "clientUpdatedAt", "force"],
    "/api/player/status": ["roomCode", "userId", "content", "player", "isHost"],
}
GETS = [
    "/api/health",
    "/api/dramas",
    "/api/dramas/metadata",
    "/api/user/data",
    "/api/player/status",
]
QUERY_KEYS = [
    "page", "limit", "search", "minRating", "genres", "excludeGenres", "tags", "excludeTags",
    "countries", "cast", "sort", "roomCode", "userId",
]  # fmt: skip
header_bytes = st.binary(max_size=40).map(
    # No CR, LF, NUL nor surrounding blanks: the client's h11 refuses to send them.
    lambda raw: bytes(b for b in raw if b > 0x20 and b != 0x7F) or b"x"
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    path: Path = tmp_path_factory.mktemp("fuzz-http")
    with server_in_thread(make_settings(path)) as server:
        yield server


def check_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.content:  # every answer of the API is JSON with a message on errors
        body = response.json()
        if response.status_code >= 400:
            assert isinstance(body.get("message"), str), body


def still_serving(client: httpx.Client, live: ThreadedServer) -> None:
    health = client.get("/api/health")
    assert health.status_code == 200
    data = client.get("/api/user/data", headers={"Authorization": f"Bearer {live.other_token}"})
    assert data.status_code == 200
    assert data.json()["user"] == {"username": "bystander"}


def body_for(path: str) -> st.SearchStrategy[Any]:
    known = st.fixed_dictionaries({}, optional=dict.fromkeys(FIELDS[path], json_values))
    extra = st.dictionaries(st.text(max_size=8), json_values, max_size=2)
    return st.one_of(
        st.builds(lambda a, b: {**b, **a}, known, extra),
        json_values,
    )


auth_header = st.one_of(
    st.none(),
    st.just("token"),
    st.just("other"),
    header_bytes.map(lambda raw: b"Bearer " + raw),
)


def headers_for(live: ThreadedServer, auth: bytes | str | None) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    if auth == "token":
        headers["Authorization"] = f"Bearer {live.token}"
    elif auth == "other":
        headers["Authorization"] = f"Bearer {live.other_token}"
    elif isinstance(auth, bytes):
        headers["Authorization"] = auth
    return headers


@given(data=st.data())
@FUZZ
def test_posts_with_generated_json_bodies(live: ThreadedServer, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(sorted(FIELDS)))
    body = data.draw(body_for(path))
    auth = data.draw(auth_header)
    content = json.dumps(body).encode()  # NaN and Infinity literals included, as a client may
    with httpx.Client(base_url=live.url, timeout=30) as client:
        headers = {**headers_for(live, auth), "Content-Type": "application/json"}
        check_answer(client.post(path, content=content, headers=headers))
        still_serving(client, live)


@given(
    path=st.sampled_from(sorted(FIELDS)),
    content=st.binary(max_size=300),
    content_type=st.sampled_from(
        [
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin-1",
        ]
    ),
)
@FUZZ
def test_posts_with_raw_bodies(
    live: ThreadedServer, path: str, content: bytes, content_type: str
) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        headers = {"Authorization": f"Bearer {live.token}", "Content-Type": content_type}
        check_answer(client.post(path, content=content, headers=headers))
        still_serving(client, live)


@given(
    path=st.sampled_from(GETS),
    params=st.lists(
        st.tuples(st.sampled_from(QUERY_KEYS) | st.text(max_size=6), st.text(max_size=30)),
        max_size=6,
    ),
    auth=auth_header,
    origin=st.none() | header_bytes,
)
@FUZZ
def test_gets_with_generated_queries_and_headers(
    live: ThreadedServer,
    path: str,
    params: list[tuple[str, str]],
    auth: bytes | str | None,
    origin: bytes | None,
) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        headers = headers_for(live, auth)
        if origin is not None:
            headers["Origin"] = origin
        check_answer(client.get(path, params=params, headers=headers))
        still_serving(client, live)


@given(
    method=st.sampled_from(["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"]),
    path=st.sampled_from(GETS + sorted(FIELDS) + ["/api/nope", "/", "/api/ws"]),
)
@FUZZ
def test_other_methods_and_unknown_paths(live: ThreadedServer, method: str, path: str) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        response = client.request(method, path)
        assert response.status_code < 500, (response.status_code, response.text[:300])
        still_serving(client, live)


# --- the raw handshake ------------------------------------------------------------------------

HANDSHAKE_HEADERS = [
    b"Upgrade", b"Connection", b"Sec-WebSocket-Version", b"Sec-WebSocket-Key",
    b"Sec-WebSocket-Protocol", b"Sec-WebSocket-Extensions", b"Origin", b"Authorization",
    b"Content-Length", b"Transfer-Encoding", b"Host", b"X-Forwarded-For",
]  # fmt: skip
GOOD = {
    b"Upgrade": b"websocket",
    b"Connection": b"Upgrade",
    b"Sec-WebSocket-Version": b"13",
    b"Sec-WebSocket-Key": b"dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Protocol": b"dramaverse.v1",
    b"Sec-WebSocket-Extensions": b"permessage-deflate; client_max_window_bits",
}


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection; the first bytes of the answer (b"" if none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return answer


@given(
    method=st.sampled_from([b"GET", b"POST", b"get", b"CONNECT"]),
    path=st.sampled_from(
        [
            b"/api/ws",
            b"/api/health",
            b"/socket.io/?EIO=4&transport=websocket",
            b"/api/dramas",
            b"/x",
        ]
    ),
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x"]),
    changes=st.dictionaries(st.sampled_from(HANDSHAKE_HEADERS), header_bytes, max_size=4),
    drop=st.sets(st.sampled_from(sorted(GOOD))),
    tail=st.binary(max_size=64),
)
@FUZZ
def test_raw_handshakes(
    live: ThreadedServer,
    method: bytes,
    path: bytes,
    version: bytes,
    changes: dict[bytes, bytes],
    drop: set[bytes],
    tail: bytes,
) -> None:
    headers = {b"Host": b"127.0.0.1", **{k: v for k, v in GOOD.items() if k not in drop}}
    headers.update(changes)
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers.items())
    answer = exchange(
        live.port, method + b" " + path + b" " + version + b"\r\n" + head + b"\r\n" + tail
    )
    status_line = answer.split(b"\r\n", 1)[0]
    if status_line.startswith(b"HTTP/1.1 "):
        status = int(status_line.split()[1])
        # 501 (an unknown Transfer-Encoding) and 505 (an HTTP version) are h11's RFC 9112 answers
        # to what no server implements, not failures.
        assert status < 500 or status in (501, 505), answer[:300]
    with httpx.Client(base_url=live.url, timeout=30) as client:
        still_serving(client, live)
