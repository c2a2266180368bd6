"""Generated room verbs over the native WebSocket: the room survives whatever members send.

Hypothesis draws a sequence of frames (known and random ``room.*``/``clock.*`` types, payloads
with known and unknown fields, wrong types, nested junk, NaN and Infinity on the wire) and
sends them, each from the host or from a non-host member, to a real server (SQLite, loopback
sockets). Every frame carries an id and must be answered: ``ack``, or ``error`` with one of the
statuses the protocol documents (never 500, which would mean the room failed on it). A socket
the server closes must close with a documented code. Afterwards a fresh member joins: the room
is still there, answers, and its state is sane (host a member, phase known, position finite and
in range, snapshot JSON-safe and restorable).

Numbers are kept within ``|x| < 1e15`` (exact in JSON and in a double): numbers beyond what a
float holds are the edge's number check, fuzzed where that check lives. Bounded: ``FUZZ_EXAMPLES``
examples (default 12) of up to 25 frames, each on a fresh server; raise it for a longer run
(``FUZZ_EXAMPLES=500 pytest tests/test_fuzz_rooms.py``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import trio
from hypothesis import HealthCheck, Phase, given, settings
from trio_websocket import ConnectionClosed

from dramaverse.domain.playback import MAX_POSITION
from dramaverse.domain.rooms import HANDLERS, Room, RoomConfig
from tests.conftest import make_settings, running_server
from tests.test_ws_rooms import Member, connect, create, join

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
LIMIT = 10**15 - 1  # |numbers| drawn; see the module docstring
DOCUMENTED_STATUSES = {400, 403, 404, 409, 429, 503}
DOCUMENTED_CLOSES = {1000, 1001, 1009, 4000, 4001, 4002, 4103}
PHASES = {"idle", "paused", "waiting", "playing"}
VERBS = [*sorted(HANDLERS), "room.create", "room.join"]
FIELDS = [
    "position",
    "at",
    "rate",
    "content",
    "state",
    "text",
    "emoji",
    "member",
    "control",
    "waitForJoiners",
    "seq",
    "t1",
    "t2",
    "code",
    "name",
]
CONTENT_FIELDS = ["tmdbId", "type", "seasonNumber", "episodeNumber", "title", "duration"]

numbers = st.one_of(
    st.integers(-LIMIT, LIMIT),
    st.floats(-1e15, 1e15, allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 1, -1, 0.5, 2**31, 2**53 - 1, 8880, 7 * 86400, 1e-300]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    st.sampled_from([float("nan"), float("inf"), -float("inf")]),  # NaN / Infinity on the wire
    st.text(max_size=20),
    st.sampled_from(["NaN", "Infinity", "-0", "1e400", "", " ", "host", "all", "ready", "movie"]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
contents = st.dictionaries(st.sampled_from(CONTENT_FIELDS), junk, max_size=6)
payloads = st.one_of(
    junk,
    st.dictionaries(
        st.sampled_from(FIELDS) | st.text(max_size=8),
        st.one_of(junk, contents),
        max_size=4,
    ),
)
kinds = st.one_of(
    st.sampled_from(VERBS),
    st.text(max_size=12).map(lambda t: "room." + t),
    st.text(max_size=12).map(lambda t: "clock." + t),
)
frames = st.tuples(
    st.sampled_from(["host", "member"]),
    kinds,
    payloads,
    st.sampled_from(["right", "right", "right", "junk", "missing"]),
)


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame)  # NaN and Infinity go out as JavaScript would never send them


def valid_json(frame: dict[str, Any]) -> bool:
    try:
        json.dumps(frame, allow_nan=False)
    except ValueError:
        return False
    return True


async def answer_to(member: Member, request_id: str) -> dict[str, Any] | int:
    """The ack or error for ``request_id``, or the close code if the server closed the socket.

    A 400 without an id answers it too: the socket refuses a frame it cannot read as a message
    (not JSON, NaN or Infinity, strings with NUL) before it knows the id. (Other errors without
    an id answer the ``clock.pong`` the client helper sends by itself, e.g. after a leave.)"""
    try:
        while True:
            frame = await member.next()
            if frame["type"] == "error" and "id" not in frame and frame["status"] == 400:
                return frame
            if frame["type"] in ("ack", "error") and frame.get("id") == request_id:
                return frame
    except ConnectionClosed as closed:
        code: int = closed.reason.code
        return code


def check_sane(welcome: dict[str, Any]) -> None:
    member_ids = [m["id"] for m in welcome["members"]]
    assert welcome["host"] is None or welcome["host"] in member_ids
    state = welcome["state"]
    assert state["phase"] in PHASES
    assert math.isfinite(welcome["position"])
    assert 0 <= welcome["position"] <= MAX_POSITION
    assert 0.25 <= state["rate"] <= 4.0
    assert len(welcome["history"]) <= RoomConfig().history_size


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.generate],
)
@given(st.lists(frames, min_size=1, max_size=25))
async def test_generated_room_verbs_never_end_the_room(
    sequence: list[tuple[str, str, Any, str]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp, trio.fail_after(120):
        server_settings = make_settings(Path(tmp), ws_max_errors=100_000)
        async with running_server(server_settings, records=[]) as server:
            tokens = {name: await server.register(name) for name in ("host", "member", "fresh")}
            async with (
                connect(server, tokens["host"], "host") as host,
                connect(server, tokens["member"], "member") as member,
            ):
                code, _ = await create(host)
                await join(member, code)
                sockets = {"host": host, "member": member}
                closed: dict[str, int] = {}
                for number, (who, kind, data, room) in enumerate(sequence):
                    if who in closed:
                        continue
                    sender = sockets[who]
                    request_id = f"f{number}"
                    frame: dict[str, Any] = {"type": kind, "id": request_id, "data": data}
                    if room == "right":
                        frame["room"] = code
                    elif room == "junk":
                        frame["room"] = data
                    try:
                        await sender.ws.send_message(encode(frame))
                    except ConnectionClosed as gone:
                        closed[who] = gone.reason.code
                        continue
                    try:
                        answer = await answer_to(sender, request_id)
                    except trio.TooSlowError:
                        raise AssertionError(f"no answer to {frame!r}") from None
                    if isinstance(answer, int):
                        closed[who] = answer
                        continue
                    if "id" not in answer:
                        continue  # refused as unreadable: 400
                    if answer["type"] == "error":
                        assert valid_json(frame), (frame, answer)
                        assert answer["status"] in DOCUMENTED_STATUSES, (frame, answer)
                assert set(closed.values()) <= DOCUMENTED_CLOSES, closed

            rooms = server.handle.state.rooms
            assert rooms is not None
            actor = rooms.find(code)
            assert actor is not None, "the room is gone"
            async with connect(server, tokens["fresh"], "fresh") as fresh:
                welcome = await join(fresh, code)
                check_sane(welcome)
                assert (await fresh.ok("room.chat", {"text": "still there?"}))["id"] >= 1
            snapshot = await actor.snapshot()
            json.dumps(snapshot, allow_nan=False)
            Room.restore(snapshot, RoomConfig(), now=0.0)
