"""Numbers from outside that no double can hold, or that decode to infinity, over every door.

Each of these once answered 500, closed a socket without an error frame, crashed a room actor
or let a token live forever (issue 12). They must get a clear 4xx / error frame, change nothing
stored, and leave the server, the connection and the room serving.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from dramaverse.domain.clocksync import ClockSync
from dramaverse.domain.numbers import (
    MAX_SAFE_INTEGER,
    finite,
    is_request_id,
    number_in,
    safe_integer,
    whole_in,
)
from dramaverse.errors import BadRequest
from tests.conftest import TEST_SECRET, Server, sample_records
from tests.test_ws_rooms import MOVIE, Member, connect, create, join, snapshot

URL = sample_records()[0]["url"]
HUGE = 10**400  # json.dumps writes all 401 digits; json.loads gives an int float() cannot take
HUGE_FLOAT_TEXT = "1e400"  # json.loads gives inf


# --- the helper ---------------------------------------------------------------------------


@given(st.integers())
def test_finite_takes_every_int_a_double_holds_and_refuses_the_rest(value: int) -> None:
    result = finite(value)
    if abs(value) <= sys.float_info.max:
        assert result == float(value)
    else:
        assert result is None


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_finite_refuses_nan_and_infinity(value: float) -> None:
    assert (finite(value) is None) == (value != value or value in (float("inf"), float("-inf")))


@pytest.mark.parametrize("value", [True, False, None, "1", [1], {"a": 1}])
def test_nothing_but_numbers_is_a_number(value: object) -> None:
    assert finite(value) is None
    assert number_in(value, -1e9, 1e9) is None
    assert whole_in(value, -(10**9), 10**9) is None
    assert safe_integer(value) is None


@given(st.one_of(st.integers(), st.floats()), st.integers(-1000, 1000), st.integers(0, 1000))
def test_whole_in_is_the_whole_numbers_of_the_range(value: float, low: int, span: int) -> None:
    high = low + span
    result = whole_in(value, low, high)
    number = finite(value)
    if number is not None and number.is_integer() and low <= number <= high:
        assert result == int(number)
        assert type(result) is int
    else:
        assert result is None


def test_request_ids_are_short_strings_or_safe_integers() -> None:
    assert is_request_id("x" * 64)
    assert is_request_id(MAX_SAFE_INTEGER)
    assert is_request_id(-7)
    assert not is_request_id("x" * 65)
    assert not is_request_id(MAX_SAFE_INTEGER + 1)
    for value in (2.5, True, None):
        assert not is_request_id(value)


# --- HTTP ---------------------------------------------------------------------------------


def raw_json(body: dict[str, Any], replace: dict[str, str]) -> bytes:
    text = json.dumps(body)
    for marker, literal in replace.items():
        text = text.replace(json.dumps(marker), literal)
    return text.encode()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/user/statuses", {"dramaUrl": URL, "status": "Watching", "currentEpisode": HUGE}),
        ("/api/user/statuses", {"dramaUrl": URL, "status": "Watching", "currentEpisode": "INF"}),
        (
            "/api/user/reviews/episodes",
            {"dramaUrl": URL, "episodeNumber": HUGE, "text": "t", "clientUpdatedAt": 1},
        ),
        (
            "/api/user/reviews/episodes",
            {"dramaUrl": URL, "episodeNumber": 1, "text": "t", "clientUpdatedAt": HUGE},
        ),
        (
            "/api/user/reviews/episodes",
            {"dramaUrl": URL, "episodeNumber": 1, "text": "t", "clientUpdatedAt": "INF"},
        ),
    ],
)
async def test_http_library_writes_refuse_unrepresentable_numbers(
    server: Server, path: str, body: dict[str, Any]
) -> None:
    token = await server.register("alice")
    await server.post_as(token, "/api/user/statuses", {"dramaUrl": URL, "status": "Completed"})
    before = (await server.get_as(token, "/api/user/data")).json()
    response = await server.client.post(
        path,
        content=raw_json(body, {"INF": HUGE_FLOAT_TEXT}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith("Invalid payload")
    assert (await server.get_as(token, "/api/user/data")).json() == before


def forged_token(claims_json: str) -> str:
    """An HS256 token signed with the test secret around a payload written by hand."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(claims_json.encode())
    signature = hmac.new(TEST_SECRET.encode(), head, hashlib.sha256).digest()
    return (head + b"." + b64(signature)).decode()


@pytest.mark.parametrize(
    "claims",
    [
        '{"id": 1180591620717411303424, "username": "alice", "exp": 4102444800}',  # 2**70
        '{"id": 1, "username": "alice", "exp": 1e400}',
        '{"id": 1, "username": "alice", "exp": 1e300}',
        '{"id": 1, "username": "alice", "exp": 4102444800, "iat": 1e400}',
        '{"id": 1, "username": "alice", "exp": 4102444800, "nbf": 1e400}',
        '{"id": 1.0, "username": "alice", "exp": 4102444800}',
        '{"id": -1, "username": "alice", "exp": 4102444800}',
    ],
)
async def test_tokens_with_numbers_out_of_range_are_refused(server: Server, claims: str) -> None:
    await server.register("alice")  # user 1 exists: only the numbers are wrong
    response = await server.get_as(forged_token(claims), "/api/user/data")
    assert response.status_code == 401, response.text
    assert response.json() == {"message": "Invalid or expired token"}


async def test_a_forged_token_with_good_numbers_is_accepted(server: Server) -> None:
    """The forging above is faithful: the same token with sane claims works."""
    await server.register("alice")
    token = forged_token('{"id": 1, "username": "alice", "exp": 4102444800}')
    assert (await server.get_as(token, "/api/user/data")).status_code == 200


# --- native WebSocket ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("status.set", {"dramaUrl": URL, "status": "Watching", "currentEpisode": HUGE}),
        (
            "review.save",
            {"dramaUrl": URL, "episodeNumber": 1, "text": "x", "clientUpdatedAt": HUGE},
        ),
        (
            "review.save",
            {"dramaUrl": URL, "episodeNumber": HUGE, "text": "x", "clientUpdatedAt": 1},
        ),
    ],
)
async def test_native_library_writes_answer_an_error_frame(
    server: Server, kind: str, data: dict[str, Any]
) -> None:
    token = await server.register("alice")
    with trio.fail_after(20):
        async with connect(server, token, "alice") as alice:
            answer = await alice.call(kind, data)
            assert answer["type"] == "error"
            assert answer["status"] == 400
            assert "Invalid payload" in answer["message"]
            await alice.still_usable()
            ok = await alice.call("status.set", {"dramaUrl": URL, "status": "Watching"})
            assert ok["type"] == "ack"


async def test_huge_request_ids_are_refused_not_echoed_as_other_numbers(server: Server) -> None:
    token = await server.register("alice")
    with trio.fail_after(20):
        async with connect(server, token, "alice") as alice:
            data = {"dramaUrl": URL, "status": "Watching"}
            await alice.send("status.set", data, request_id=2**60)
            answer = await alice.expect("error")
            assert answer["status"] == 400
            assert "'id'" in answer["message"]
            await alice.still_usable()


# --- watch-party rooms --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "kind", "data"),
    [
        ("member", "room.position", {"position": HUGE}),
        ("member", "room.position", {"position": 1, "at": HUGE}),
        ("host", "room.seek", {"position": HUGE}),
        ("host", "room.rate", {"rate": HUGE}),
        ("host", "room.content", {"content": {**MOVIE, "duration": HUGE}}),
        ("host", "room.content", {"content": MOVIE, "position": HUGE}),
        ("host", "room.content", {"content": {**MOVIE, "tmdbId": HUGE}}),
    ],
)
async def test_room_verbs_refuse_huge_numbers_and_the_room_lives_on(
    server: Server, who: str, kind: str, data: dict[str, Any]
) -> None:
    tokens = [await server.register(name) for name in ("alice", "bob")]
    with trio.fail_after(30):
        async with (
            connect(server, tokens[0], "alice") as alice,
            connect(server, tokens[1], "bob") as bob,
        ):
            code, _ = await create(alice)
            await alice.ok("room.content", {"content": MOVIE})
            await join(bob, code)
            before = await snapshot(server, code)
            sender: Member = alice if who == "host" else bob
            answer = await sender.call(kind, data)
            assert answer["type"] == "error", answer
            assert answer["status"] == 400
            assert await snapshot(server, code) == before
            # The room still serves both members.
            await bob.ok("room.status", {"state": "ready"})
            assert (await alice.ok("room.seek", {"position": 12}))["phase"] == "paused"


@pytest.mark.parametrize("t1", [HUGE, float("inf"), True, "1"])
def test_clock_pong_with_unusable_times_is_refused(t1: object) -> None:
    clock = ClockSync()
    clock.start(100.0)
    ping = clock.ping(100.0)
    with pytest.raises(BadRequest, match="t1 must be a finite number"):
        clock.check_pong({"seq": ping["seq"], "t1": t1, "t2": ping["t0"]})
    assert clock.check_pong({"seq": ping["seq"], "t1": ping["t0"], "t2": ping["t0"]}) is not None
