"""Property-based fuzzing of cookie authentication and its CSRF headers (Hypothesis).

Generated ``Cookie``, ``X-CSRF-Token``, ``Origin`` and ``Referer`` headers, well-formed and
not: valid values mixed with garbage, duplicates, quotes, stray separators, non-ASCII bytes and
values of kilobytes, on every door that reads them (the Quart routes, the raw-ASGI library
writes, the native WebSocket handshake, the Engine.IO handshake with a Socket.IO CONNECT). What
must hold: never a 5xx, every refusal a documented one (401/403 JSON, 4100, ``connect_error``),
and the server still serves afterwards. The parsers themselves get arbitrary text and never
raise but the CSRF rules' 403. ``FUZZ_EXAMPLES`` sets the examples per target.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, RejectConnection, Request, TextMessage

from dramaverse.errors import Forbidden
from dramaverse.http.cookies import AUTH_COOKIE, CSRF_COOKIE, CookieRequest, parse_cookies
from dramaverse.http.csrf import CsrfSigner, check_cookie_request, origin_of
from dramaverse.http.security import CorsPolicy
from tests.conftest import TEST_SECRET, make_settings, sample_records
from tests.test_fuzz_http import check_answer, still_serving
from tests.threaded_server import EXAMPLES, ThreadedServer, server_in_thread

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ALLOWED = "http://localhost:5173"
URL = sample_records()[0]["url"]
BODIES = {
    "/api/user/favorites": {"dramaUrl": URL, "isFavorite": True},
    "/api/user/statuses": {"dramaUrl": URL, "status": "Watching"},
    "/api/user/reviews/episodes": {
        "dramaUrl": URL,
        "episodeNumber": 1,
        "text": "x",
        "clientUpdatedAt": 0,
    },
    "/api/player/status": {"roomCode": "AB"},
    "/api/user/data": None,
}
# Header bytes h11 sends: no controls (CR, LF, NUL...), anything from 0x20 up, non-ASCII too.
header_bytes = st.binary(max_size=60).map(lambda raw: bytes(b for b in raw if b >= 0x20))
huge = st.integers(1000, 6000).map(lambda n: b"\xe9" * n)  # under Hypercorn's 16 KiB head


@dataclass(frozen=True)
class Login:
    token: str
    csrf: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadedServer, Login]]:
    path: Path = tmp_path_factory.mktemp("fuzz-cookies")
    with server_in_thread(make_settings(path)) as server:
        body = {"username": "fuzzer", "password": "secret-pw", "cookie": True}
        response = httpx.post(f"{server.url}/api/auth/login", json=body, timeout=30)
        assert response.status_code == 200
        yield server, Login(response.cookies[AUTH_COOKIE], response.cookies[CSRF_COOKIE])


def cookie_parts(login: Login) -> st.SearchStrategy[bytes]:
    name = st.sampled_from([AUTH_COOKIE, CSRF_COOKIE, "theme", ""]).map(str.encode)
    value = st.one_of(
        st.just(login.token.encode()),
        st.just(login.csrf.encode()),
        st.just(b'"' + login.token.encode() + b'"'),
        header_bytes,
        huge,
    )
    pair = st.builds(lambda n, v, eq: n + eq + v, name, value, st.sampled_from([b"=", b" = ", b""]))
    # The real cookies get a branch of their own each, so whole valid headers come up often.
    real = st.sampled_from(
        [f"{AUTH_COOKIE}={login.token}".encode(), f"{CSRF_COOKIE}={login.csrf}".encode()]
    )
    return real | pair | header_bytes


def cookie_header(login: Login) -> st.SearchStrategy[bytes | None]:
    separators = st.sampled_from([b"; ", b";", b" ;; ", b","])
    joined = st.builds(
        lambda parts, sep: sep.join(parts), st.lists(cookie_parts(login), max_size=5), separators
    )
    return st.none() | joined


def csrf_header(login: Login) -> st.SearchStrategy[bytes | None]:
    return st.sampled_from([None, login.csrf.encode(), login.csrf.encode()]) | header_bytes | huge


origins = st.sampled_from([None, ALLOWED.encode(), ALLOWED.encode()]) | header_bytes
referers = st.none() | st.just(f"{ALLOWED}/page".encode()) | header_bytes | huge


def headers_of(**values: bytes | None) -> dict[str, bytes]:
    """Request headers; no surrounding blanks, which the client's h11 refuses to send."""
    return {
        name.replace("_", "-"): value.strip(b" \t")
        for name, value in values.items()
        if value is not None
    }


def request_headers(data: st.DataObject, login: Login) -> dict[str, bytes]:
    """Either a browser's valid headers with up to two of them changed or dropped, or every
    header generated on its own."""
    generated = {
        "Cookie": cookie_header(login),
        "X-CSRF-Token": csrf_header(login),
        "Origin": origins,
        "Referer": referers,
    }
    if data.draw(st.booleans()):
        values: dict[str, bytes | None] = {
            "Cookie": f"{AUTH_COOKIE}={login.token}; {CSRF_COOKIE}={login.csrf}".encode(),
            "X-CSRF-Token": login.csrf.encode(),
            "Origin": ALLOWED.encode(),
        }
        for name in data.draw(st.sets(st.sampled_from(sorted(generated)), max_size=2)):
            values[name] = data.draw(generated[name])
    else:
        values = {name: data.draw(strategy) for name, strategy in generated.items()}
    return headers_of(**{name.replace("-", "_"): value for name, value in values.items()})


@given(data=st.data())
@FUZZ
def test_cookie_requests_get_a_documented_answer(
    live: tuple[ThreadedServer, Login], data: st.DataObject
) -> None:
    server, login = live
    path = data.draw(st.sampled_from(sorted(BODIES)))
    method = data.draw(st.sampled_from(["GET", "POST", "POST", "POST", "PUT", "DELETE"]))
    headers = request_headers(data, login)
    body = BODIES[path]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.request(
            method, path, json=body if method != "GET" else None, headers=headers
        )
        check_answer(response)
        event(f"{method} {response.status_code}")
        assert response.status_code in (200, 400, 401, 403, 405, 409), response.text[:300]
        still_serving(client, server)


def ws_handshake(port: int, extra: list[tuple[bytes, bytes]]) -> tuple[str, int | None]:
    """Open /api/ws with ``extra`` headers and say hello without a token: ("ready", None),
    ("closed", code) or ("rejected", status)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        ws = WSConnection(ConnectionType.CLIENT)
        request = Request(
            host="127.0.0.1",
            target="/api/ws",
            subprotocols=["dramaverse.v1"],
            extra_headers=extra,
        )
        sock.sendall(ws.send(request))
        sent_hello = False
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("dropped without a close frame")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, RejectConnection):
                    return "rejected", event.status_code
                if isinstance(event, AcceptConnection) and not sent_hello:
                    sock.sendall(ws.send(TextMessage(json.dumps({"type": "hello"}))))
                    sent_hello = True
                elif isinstance(event, TextMessage):
                    if json.loads(event.data)["type"] == "ready":
                        return "ready", None
                elif isinstance(event, CloseConnection):
                    return "closed", event.code


@given(data=st.data())
@FUZZ
def test_native_socket_handshakes_with_cookies(
    live: tuple[ThreadedServer, Login], data: st.DataObject
) -> None:
    server, login = live
    drawn = headers_of(cookie=data.draw(cookie_header(login)), origin=data.draw(origins))
    extra = list(drawn.items())
    origin = drawn.get("origin")
    outcome = ws_handshake(server.port, extra)
    event(str(outcome))
    assert outcome in (("ready", None), ("closed", 4100), ("rejected", 403)), outcome
    if outcome == ("ready", None):  # only a real cookie with an allowed Origin gets in
        assert origin == ALLOWED.encode()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        still_serving(client, server)


@given(data=st.data())
@FUZZ
def test_socketio_handshakes_with_cookies(
    live: tuple[ThreadedServer, Login], data: st.DataObject
) -> None:
    server, login = live
    headers = headers_of(Cookie=data.draw(cookie_header(login)), Origin=data.draw(origins))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        params = {"EIO": "4", "transport": "polling"}
        opened = client.get("/socket.io/", params=params, headers=headers)
        assert opened.status_code in (200, 403), opened.text[:300]
        if opened.status_code == 200:
            sid = json.loads(opened.text[1:])["sid"]
            posted = client.post(
                "/socket.io/", params={**params, "sid": sid}, content=b"40", headers=headers
            )
            assert posted.status_code in (200, 403), posted.text[:300]
            if posted.status_code == 200:
                answer = client.get("/socket.io/", params={**params, "sid": sid}, headers=headers)
                assert answer.status_code == 200
                # 40: connected (a real cookie with an allowed Origin); 44: connect_error.
                assert answer.text[:2] in ("40", "44"), answer.text[:300]
                event(answer.text[:2])
                if answer.text.startswith("40"):
                    assert headers.get("Origin") == ALLOWED.encode()
        still_serving(client, server)


@given(
    header=st.none() | st.text(max_size=300),
    origin=st.none() | st.text(max_size=80),
    referer=st.none() | st.text(max_size=300),
    csrf=st.none() | st.text(max_size=100),
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "x"]),
)
@FUZZ
def test_the_parsers_never_raise_but_the_csrf_refusal(
    header: str | None, origin: str | None, referer: str | None, csrf: str | None, method: str
) -> None:
    cookies = parse_cookies(header)
    for value in (cookies.token, cookies.csrf):
        assert value is None or (value and len(value) <= len(header or ""))
    origin_of(origin, referer)
    signer = CsrfSigner(TEST_SECRET)
    assert not signer.valid(csrf or "", cookies.token or "")
    with contextlib.suppress(Forbidden):  # the one exception the rules raise
        check_cookie_request(
            CorsPolicy([ALLOWED]),
            signer,
            method=method,
            origin=origin,
            referer=referer,
            csrf_header=csrf,
            csrf_cookie=cookies.csrf,
            token=cookies.token or "",
        )
    CookieRequest.from_scope([(b"cookie", (header or "").encode("utf-8", "surrogatepass"))])
