"""Watch parties over the native WebSocket, end to end: real server, real sockets, real SQLite.

Every client answers the server's ``clock.ping`` like a real one (so clock sync runs), and the
checks that a refused command changes nothing compare the room's full snapshot before and after.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection

from dramaverse.actors.room import MAX_RESTARTS, RoomActor
from dramaverse.config import RateLimit, Settings
from dramaverse.domain.close_codes import CloseCode
from dramaverse.domain.rooms import HANDLERS
from tests.conftest import Server, flushed, make_settings, running_server
from tests.wsclient import open_client

PROTOCOL = "dramaverse.v1"
MOVIE = {"tmdbId": 27205, "type": "movie", "title": "Inception", "duration": 8880}
EPISODE = {"tmdbId": 1399, "type": "episode", "seasonNumber": 1, "episodeNumber": 2}


class Member:
    """One member's socket: sends room frames, reads frames while answering the clock pings."""

    def __init__(self, ws: WebSocketConnection, name: str) -> None:
        self.ws = ws
        self.name = name
        self.room: str | None = None
        self.seen: list[dict[str, Any]] = []
        self._ids = 0

    async def send(
        self,
        kind: str,
        data: Any = None,
        *,
        room: str | None = None,
        request_id: Any = "auto",
        raw: dict[str, Any] | None = None,
    ) -> Any:
        """Send ``{type, id, room, data}``; returns the id used (None: no id sent)."""
        frame: dict[str, Any] = {"type": kind}
        if request_id == "auto":
            self._ids += 1
            request_id = f"{self.name}-{self._ids}"
        if request_id is not None:
            frame["id"] = request_id
        if room is None and kind not in ("room.create", "room.join"):
            room = self.room
        if room is not None:
            frame["room"] = room
        if data is not None:
            frame["data"] = data
        frame.update(raw or {})
        await self.ws.send_message(json.dumps(frame))
        return request_id

    async def next(self) -> dict[str, Any]:
        """The next frame that is not clock sync or heartbeat (those are answered here)."""
        while True:
            with trio.fail_after(10):
                frame: dict[str, Any] = json.loads(await self.ws.get_message())
            kind = frame["type"]
            if kind == "clock.ping":
                now = time.time() * 1000
                await self.send(
                    "clock.pong",
                    {"seq": frame["seq"], "t1": now, "t2": now},
                    room=frame["room"],
                    request_id=None,
                )
            elif kind == "ping":
                await self.ws.send_message('{"type": "pong"}')
            elif kind != "clock.sync":
                self.seen.append(frame)
                return frame

    async def expect(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The next frame of ``kind`` whose fields match; others are skipped."""
        while True:
            frame = await self.next()
            if frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()):
                return frame

    async def call(self, kind: str, data: Any = None, **options: Any) -> dict[str, Any]:
        """Send a command and return its answer (``ack`` or ``error`` with the same id)."""
        request_id = await self.send(kind, data, **options)
        while True:
            frame = await self.next()
            if frame["type"] in ("ack", "error") and frame.get("id") == request_id:
                return frame

    async def ok(self, kind: str, data: Any = None, **options: Any) -> dict[str, Any]:
        answer = await self.call(kind, data, **options)
        assert answer["type"] == "ack", answer
        result: dict[str, Any] = answer["result"]
        return result

    async def still_usable(self) -> None:
        await self.ws.send_message('{"type": "ping"}')
        await self.expect("pong")


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://") + "/api/ws"


@asynccontextmanager
async def connect(server: Server, token: str, name: str) -> AsyncIterator[Member]:
    # A deep queue: frames a test does not read must not stall the client's close handshake.
    async with open_client(ws_url(server), subprotocols=[PROTOCOL], message_queue_size=4096) as ws:
        await ws.send_message(json.dumps({"type": "hello", "token": token}))
        member = Member(ws, name)
        assert (await member.next())["type"] == "ready"
        yield member


async def create(member: Member, **data: Any) -> tuple[str, dict[str, Any]]:
    request_id = await member.send("room.create", data or None)
    welcome = await member.expect("room.welcome")
    ack = await member.expect("ack", id=request_id)
    code: str = ack["result"]["room"]
    assert welcome["room"] == code
    member.room = code
    return code, welcome


async def join(member: Member, code: str, **data: Any) -> dict[str, Any]:
    request_id = await member.send("room.join", {"code": code, **data})
    welcome = await member.expect("room.welcome")
    ack = await member.expect("ack", id=request_id)
    assert ack["result"] == {"room": welcome["room"]}
    member.room = welcome["room"]
    return welcome


def actor(server: Server, code: str) -> RoomActor:
    rooms = server.handle.state.rooms
    assert rooms is not None
    return rooms.get(code)


async def snapshot(server: Server, code: str) -> dict[str, Any]:
    return await actor(server, code).snapshot()


async def close_code(ws: WebSocketConnection) -> int:
    with trio.fail_after(10):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            code: int = closed.reason.code
            return code


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, watch_lead_min_seconds=0.2, watch_barrier_seconds=5.0)


@pytest.fixture
async def tokens(server: Server) -> dict[str, str]:
    return {name: await server.register(name) for name in ("alice", "bob", "carol")}


async def ready_all(*members: Member) -> None:
    for member in members:
        await member.ok("room.status", {"state": "ready"})


async def playing(*members: Member) -> dict[str, Any]:
    """Wait until every member saw the room playing; return the first one's state."""
    states = [await m.expect("room.state", phase="playing") for m in members]
    assert all(s == states[0] for s in states)
    return states[0]


# --- membership ------------------------------------------------------------------------


async def test_create_join_members_and_presence(server: Server, tokens: dict[str, str]) -> None:
    with trio.fail_after(30):
        async with connect(server, tokens["alice"], "alice") as alice:
            code, welcome = await create(alice)
            assert welcome["you"] == "1"
            assert welcome["host"] == "1"
            assert welcome["settings"] == {"control": "host", "waitForJoiners": False}
            assert welcome["state"]["phase"] == "idle"
            assert welcome["history"] == []
            assert welcome["reportInterval"] == 2000
            async with connect(server, tokens["bob"], "bob") as bob:
                typed = f"{code[:4].lower()}-{code[4:].lower()}"  # as people type it
                welcome = await join(bob, typed, name="Bobby")
                assert welcome["room"] == code
                assert [
                    (m["id"], m["name"], m["host"], m["connected"]) for m in welcome["members"]
                ] == [
                    ("1", "alice", True, True),
                    ("2", "Bobby", False, True),
                ]
                members = await alice.expect("room.members")
                assert [m["connected"] for m in members["members"]] == [True, True]
                joined_at = members["members"][1]["joinedAt"]
            # Bob's socket closed: he stays a member, disconnected, within the grace.
            members = await alice.expect("room.members")
            assert members["members"][1]["id"] == "2"
            assert members["members"][1]["connected"] is False
            async with connect(server, tokens["bob"], "bob") as bob:
                welcome = await join(bob, code)
                again = welcome["members"][1]
                assert (again["connected"], again["joinedAt"]) == (True, joined_at)
                assert (await alice.expect("room.members"))["members"][1]["connected"] is True


async def test_a_second_device_replaces_the_first(server: Server, tokens: dict[str, str]) -> None:
    with trio.fail_after(30):
        async with (
            connect(server, tokens["alice"], "alice") as alice,
            connect(server, tokens["bob"], "bob") as phone,
            connect(server, tokens["bob"], "bob") as laptop,
        ):
            code, _ = await create(alice)
            await join(phone, code)
            welcome = await join(laptop, code)
            assert [m["id"] for m in welcome["members"]] == ["1", "2"]  # still one bob
            assert await phone.expect("room.left") == {
                "type": "room.left",
                "room": code,
                "reason": "replaced",
            }
            before = await snapshot(server, code)
            answer = await phone.call("room.chat", {"text": "from the old phone"})
            assert (answer["type"], answer["status"]) == ("error", 403)
            assert before == await snapshot(server, code)
            assert (await laptop.ok("room.chat", {"text": "hi"}))["id"] == 1


async def test_connection_limit_of_rooms(server: Server, tokens: dict[str, str]) -> None:
    with trio.fail_after(30):
        async with connect(server, tokens["alice"], "alice") as alice:
            for _ in range(4):
                await create(alice)
            rooms = server.handle.state.rooms
            assert rooms is not None
            count = len(rooms.rooms)
            answer = await alice.call("room.create")
            assert (answer["status"], answer["type"]) == (409, "error")
            assert "at most 4 rooms" in answer["message"]
            assert len(rooms.rooms) == count  # nothing was created
            await alice.ok("room.leave")  # leaving one frees a place
            await create(alice)


# --- playback --------------------------------------------------------------------------


async def test_play_pause_seek_rate_and_content_keep_everyone_on_one_schedule(
    server: Server, tokens: dict[str, str]
) -> None:
    with trio.fail_after(30):
        async with (
            connect(server, tokens["alice"], "alice") as alice,
            connect(server, tokens["bob"], "bob") as bob,
        ):
            code, _ = await create(alice)
            await join(bob, code)
            assert await alice.ok("room.content", {"content": MOVIE}) == {"phase": "paused"}
            for member in (alice, bob):
                state = await member.expect("room.state", phase="paused")
                assert state["content"]["tmdbId"] == 27205
                assert state["position"] == 0
            await ready_all(alice, bob)

            assert await alice.ok("room.play") == {"phase": "waiting"}
            waiting = [await m.expect("room.state", phase="waiting") for m in (alice, bob)]
            assert waiting[0] == waiting[1]  # one start time for everyone
            start_at = waiting[0]["startAt"]
            assert start_at - waiting[0]["at"] >= 200  # the lead: in the future
            state = await playing(alice, bob)
            assert state["at"] == start_at
            assert state["rate"] == 1

            assert await alice.ok("room.pause") == {"phase": "paused"}
            paused = await playing_or(alice, bob, "paused")
            assert paused["position"] > 0
            assert paused["startAt"] is None

            assert await alice.ok("room.seek", {"position": 600}) == {"phase": "paused"}
            seeked = await playing_or(alice, bob, "paused")
            assert seeked["position"] == 600

            assert await alice.ok("room.rate", {"rate": 1.5}) == {"rate": 1.5}
            assert (await playing_or(alice, bob, "paused"))["rate"] == 1.5

            await alice.ok("room.play")
            await playing(alice, bob)
            assert await alice.ok("room.seek", {"position": 1200}) == {"phase": "waiting"}
            seek = await playing_or(alice, bob, "waiting")
            assert (seek["position"], seek["startAt"] is not None) == (1200, True)
            assert (await playing(alice, bob))["position"] == 1200

            # New content while playing: everyone loads it first (a barrier), then it starts.
            assert await alice.ok("room.content", {"content": EPISODE}) == {"phase": "waiting"}
            barrier = await playing_or(alice, bob, "waiting")
            assert barrier["waitingFor"] == ["1", "2"]
            assert barrier["startAt"] is None
            assert barrier["content"]["episodeNumber"] == 2
            await ready_all(alice, bob)
            state = await playing(alice, bob)
            assert (state["content"]["seasonNumber"], state["position"]) == (1, 0)


async def test_steady_reports_relax_the_pace_until_the_room_changes(
    server: Server, tokens: dict[str, str]
) -> None:
    with trio.fail_after(30):
        async with (
            connect(server, tokens["alice"], "alice") as alice,
            connect(server, tokens["bob"], "bob") as bob,
        ):
            code, state = await playing_together(alice, bob)

            async def steady(times: int, anchor: dict[str, Any]) -> None:
                for k in range(times):
                    at = anchor["at"] + 10 * (k + 1)
                    position = anchor["position"] + (at - anchor["at"]) / 1000 * anchor["rate"]
                    report = {"position": position, "at": at}
                    assert await bob.ok("room.position", report) == {"corrected": False}

            await steady(3, state)
            pace = await bob.expect("room.pace")
            assert pace == {"type": "room.pace", "room": code, "reportInterval": 6000}
            # A change of the room puts bob back on the welcome's pace (2 s): after it, three
            # steady reports relax him again, with a new room.pace.
            await alice.ok("room.seek", {"position": 300})
            await bob.expect("room.state", phase="waiting")
            state = await playing(bob)
            await steady(3, state)
            assert (await bob.expect("room.pace"))["reportInterval"] == 6000


async def playing_together(alice: Member, bob: Member) -> tuple[str, dict[str, Any]]:
    """Alice creates a room, bob joins, a movie plays: the code and the playing state."""
    code, _ = await create(alice)
    await join(bob, code)
    await alice.ok("room.content", {"content": MOVIE})
    await ready_all(alice, bob)
    await alice.ok("room.play")
    return code, await playing(alice, bob)


async def playing_or(alice: Member, bob: Member, phase: str) -> dict[str, Any]:
    states = [await m.expect("room.state", phase=phase) for m in (alice, bob)]
    assert states[0] == states[1]
    return states[0]


async def test_buffering_waits_for_the_member_then_resumes(
    server: Server, tokens: dict[str, str]
) -> None:
    with trio.fail_after(30):
        async with (
            connect(server, tokens["alice"], "alice") as alice,
            connect(server, tokens["bob"], "bob") as bob,
        ):
            code, _ = await playing_together(alice, bob)

            assert await bob.ok("room.status", {"state": "buffering"}) == {"status": "buffering"}
            stalled = await playing_or(alice, bob, "waiting")
            assert stalled["waitingFor"] == ["2"]
            assert stalled["startAt"] is None
            assert stalled["deadline"] is not None
            members = await alice.expect("room.members")
            assert members["members"][1]["status"] == "buffering"

            await bob.ok("room.status", {"state": "ready"})
            resumed = await playing_or(alice, bob, "waiting")
            assert resumed["waitingFor"] == []
            assert resumed["startAt"] is not None
            assert resumed["position"] == pytest.approx(stalled["position"])
            await playing(alice, bob)


async def test_barrier_deadline_leaves_the_straggler_out(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, watch_lead_min_seconds=0.2, watch_barrier_seconds=0.5)
    async with running_server(settings) as server:
        alice_token, bob_token = await server.register("alice"), await server.register("bob")
        with trio.fail_after(30):
            async with (
                connect(server, alice_token, "alice") as alice,
                connect(server, bob_token, "bob") as bob,
            ):
                code, _ = await create(alice)
                await join(bob, code)
                await alice.ok("room.content", {"content": MOVIE})
                await ready_all(alice, bob)
                await alice.ok("room.play")
                await playing(alice, bob)
                await bob.ok("room.status", {"state": "buffering"})
                stalled = await alice.expect("room.state", phase="waiting")
                assert stalled["deadline"] - stalled["at"] == pytest.approx(500, abs=1)
                # Bob never says ready: at the deadline the room goes on without him.
                members = await alice.expect("room.members", host="1")
                while not members["members"][1]["leftOut"]:
                    members = await alice.expect("room.members")
                assert await alice.expect("room.state", phase="playing")
                # A left-out member does not stall the room again until the content changes.
                await bob.ok("room.status", {"state": "ready"})
                await bob.ok("room.status", {"state": "buffering"})
                assert (await snapshot(server, code))["playback"]["phase"] == "playing"


# --- chat ------------------------------------------------------------------------------


async def test_chat_and_reactions_with_history_for_late_joiners(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, watch_chat_max_length=20, watch_chat_rate=RateLimit(3, 60))
    async with running_server(settings) as server:
        tokens = [await server.register(name) for name in ("alice", "bob", "carol")]
        with trio.fail_after(30):
            async with (
                connect(server, tokens[0], "alice") as alice,
                connect(server, tokens[1], "bob") as bob,
            ):
                code, _ = await create(alice)
                await join(bob, code)
                assert await alice.ok("room.chat", {"text": "  hello  "}) == {"id": 1}
                chat = await bob.expect("room.chat")
                assert (chat["id"], chat["member"], chat["name"], chat["text"]) == (
                    1,
                    "1",
                    "alice",
                    "hello",
                )
                assert await bob.ok("room.reaction", {"emoji": "🍿"}) == {}
                reaction = await alice.expect("room.reaction")
                assert (reaction["member"], reaction["emoji"]) == ("2", "🍿")
                await bob.ok("room.chat", {"text": "line one\nline two"})

                before = await snapshot(server, code)
                for data, fragment in [
                    ({"text": "x" * 21}, "longer than 20"),
                    ({"text": "   "}, "empty"),
                    ({"text": "bell\x07"}, "control characters"),
                    ({"text": 5}, "string"),
                    ({"text": "hi", "color": "red"}, "Unknown field"),
                ]:
                    answer = await alice.call("room.chat", data)
                    assert (answer["type"], answer["status"]) == ("error", 400), answer
                    assert fragment in answer["message"]
                answer = await bob.call("room.reaction", {"emoji": "two words"})
                assert answer["status"] == 400
                # The limit: alice has spent 1 of 3, bob 2 of 3 (chat and reactions together).
                await alice.ok("room.chat", {"text": "two"})
                await alice.ok("room.chat", {"text": "three"})
                during = await snapshot(server, code)
                answer = await alice.call("room.chat", {"text": "four"})
                assert (answer["type"], answer["status"]) == ("error", 429)
                assert "at most 3 per 60 s" in answer["message"]
                answer = await bob.call("room.chat", {"text": "bob again"})
                assert answer["type"] == "ack"
                answer = await bob.call("room.reaction", {"emoji": "🎉"})
                assert answer["status"] == 429
                after = await snapshot(server, code)
                texts = [entry["text"] for entry in after["history"]]
                assert texts == ["hello", "line one\nline two", "two", "three", "bob again"]
                assert len(before["history"]) == 2
                assert len(during["history"]) == 4

                async with connect(server, tokens[2], "carol") as carol:
                    welcome = await join(carol, code)
                    assert [e["text"] for e in welcome["history"]] == texts
                    assert welcome["history"][0]["name"] == "alice"


# --- roles and control -----------------------------------------------------------------


async def test_host_hand_over_control_and_migration(server: Server, tokens: dict[str, str]) -> None:
    with trio.fail_after(30):
        async with (
            connect(server, tokens["alice"], "alice") as alice,
            connect(server, tokens["bob"], "bob") as bob,
            connect(server, tokens["carol"], "carol") as carol,
        ):
            code, _ = await create(alice)
            await join(bob, code)
            await join(carol, code)
            await alice.ok("room.content", {"content": MOVIE})

            # control=host: only the host controls playback; a refusal changes nothing.
            before = await snapshot(server, code)
            for member, kind, data in [
                (bob, "room.play", None),
                (bob, "room.seek", {"position": 5}),
                (bob, "room.rate", {"rate": 2}),
                (bob, "room.content", {"content": EPISODE}),
                (carol, "room.pause", None),
                (bob, "room.settings", {"control": "all"}),
                (bob, "room.host", {"member": "2"}),
            ]:
                answer = await member.call(kind, data)
                assert (answer["type"], answer["status"]) == ("error", 403), (kind, answer)
            assert before == await snapshot(server, code)

            assert await alice.ok("room.settings", {"control": "all"}) == {
                "control": "all",
                "waitForJoiners": False,
            }
            assert (await carol.expect("room.settings"))["control"] == "all"
            assert await bob.ok("room.seek", {"position": 42}) == {"phase": "paused"}
            assert (await carol.expect("room.state", position=42))["phase"] == "paused"
            await alice.ok("room.settings", {"control": "host"})

            assert await alice.ok("room.host", {"member": "2"}) == {"host": "2"}
            members = await carol.expect("room.members", host="2")
            assert [m["host"] for m in members["members"]] == [False, True, False]
            answer = await alice.call("room.play")
            assert answer["status"] == 403  # alice is no longer the host
            assert (await bob.ok("room.play"))["phase"] in ("waiting", "paused")

            # The host leaves for good: the longest-present connected member takes over.
            assert await bob.ok("room.leave") == {"left": True}
            members = await alice.expect("room.members", host="1")
            assert [m["id"] for m in members["members"]] == ["1", "3"]
            answer = await bob.call("room.chat", {"text": "still here?"})
            assert answer["status"] == 403  # joined no more (the room still exists)
            assert "join it first" in answer["message"]


async def test_host_role_passes_after_the_host_grace(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, watch_host_grace_seconds=0.3)
    async with running_server(settings) as server:
        alice_token, bob_token = await server.register("alice"), await server.register("bob")
        with trio.fail_after(30):
            async with connect(server, bob_token, "bob") as bob:
                async with connect(server, alice_token, "alice") as alice:
                    code, _ = await create(alice)
                    await join(bob, code)
                members = await bob.expect("room.members", host="2")  # alice's socket is gone
                assert members["members"][0]["connected"] is False


# --- refusals ----------------------------------------------------------------------------


BAD_COMMANDS: list[tuple[str, Any, dict[str, Any], int, str]] = [
    # (type, data, extra envelope fields, status, message fragment)
    ("room.play", None, {"room": "ZZZZZZZZ"}, 404, "not found"),
    ("room.play", None, {"room": "abc"}, 400, "room code"),
    ("room.play", None, {"room": 12345678}, 400, "room code"),
    ("room.play", None, {"room": None}, 400, "needs 'room'"),
    ("room.fly", None, {}, 400, "Unknown message type"),
    ("clock.ping", {"seq": 1}, {}, 400, "Unknown message type"),
    ("room.play", None, {"id": True}, 400, "id must be"),
    ("room.play", None, {"id": "x" * 65}, 400, "id must be"),
    ("room.seek", {"position": "soon"}, {}, 400, "position"),
    ("room.seek", {"position": -1}, {}, 400, "position"),
    ("room.seek", {"position": 9999}, {}, 400, "past the end"),
    ("room.seek", [1], {}, 400, "must be an object"),
    ("room.seek", {"position": 1, "at": 2}, {}, 400, "Unknown field"),
    ("room.rate", {"rate": 10}, {}, 400, "rate"),
    ("room.rate", {"rate": "fast"}, {}, 400, "rate"),
    ("room.content", {"content": {"tmdbId": 1, "type": "show"}}, {}, 400, "type"),
    ("room.content", {"content": "Inception"}, {}, 400, "content"),
    ("room.settings", {"control": "everyone"}, {}, 400, "control"),
    ("room.settings", {}, {}, 400, "needs control"),
    ("room.host", {"member": "99"}, {}, 404, "No member"),
    ("room.host", {"member": "1"}, {}, 400, "already the host"),
    ("room.status", {"state": "maybe"}, {}, 400, "state"),
    ("room.position", {"position": "x"}, {}, 400, "position"),
    ("room.position", {"position": 1, "at": 1}, {}, 400, "too far"),
    ("clock.pong", {"seq": 999, "t1": 1, "t2": 1}, {}, 400, "never sent"),
    ("clock.pong", {"seq": "1"}, {}, 400, "seq"),
    ("room.chat", {"text": ""}, {}, 400, "empty"),
    ("room.join", {}, {}, 400, "needs data.code"),
    ("room.join", {"code": "nope"}, {}, 400, "room code"),
    ("room.join", {"code": "ZZZZ-ZZZZ"}, {}, 404, "not found"),
    ("room.join", {"code": "ZZZZZZZZ", "as": "host"}, {}, 400, "Unknown field"),
    ("room.join", "ZZZZZZZZ", {}, 400, "must be an object"),
    ("room.create", {"control": "everyone"}, {}, 400, "control"),
    ("room.create", {"waitForJoiners": "yes"}, {}, 400, "waitForJoiners"),
    ("room.create", {"name": ""}, {}, 400, "name"),
    ("room.create", {"name": "x" * 65}, {}, 400, "name"),
    ("room.create", {"title": "party"}, {}, 400, "Unknown field"),
]


@pytest.mark.parametrize(
    ("kind", "data", "extra", "status", "fragment"),
    BAD_COMMANDS,
    ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(BAD_COMMANDS)],
)
async def test_bad_room_messages_get_a_clear_error_and_change_nothing(
    server: Server,
    tokens: dict[str, str],
    kind: str,
    data: Any,
    extra: dict[str, Any],
    status: int,
    fragment: str,
) -> None:
    with trio.fail_after(30):
        async with (
            connect(server, tokens["alice"], "alice") as alice,
            connect(server, tokens["bob"], "bob") as bob,
        ):
            code, _ = await create(alice)
            await join(bob, code)
            await alice.ok("room.content", {"content": {**MOVIE, "duration": 3600}})
            rooms = server.handle.state.rooms
            assert rooms is not None
            count = len(rooms.rooms)
            before = await snapshot(server, code)
            request_id = extra.get("id", "bad")
            await alice.send(kind, data, request_id=None, raw={"id": request_id, **extra})
            answer = await alice.expect("error")
            assert answer["status"] == status, answer
            assert fragment in answer["message"], answer
            valid_id = isinstance(request_id, str) and len(request_id) <= 64
            assert answer.get("id") == (request_id if valid_id else None)
            assert before == await snapshot(server, code)
            assert len(rooms.rooms) == count
            await alice.still_usable()
            assert (await alice.ok("room.chat", {"text": "after"}))["id"] == 1


async def test_non_members_and_wrong_phase(server: Server, tokens: dict[str, str]) -> None:
    with trio.fail_after(30):
        async with (
            connect(server, tokens["alice"], "alice") as alice,
            connect(server, tokens["carol"], "carol") as carol,
        ):
            code, _ = await create(alice)
            before = await snapshot(server, code)
            for kind, data in [
                ("room.play", None),
                ("room.chat", {"text": "let me in"}),
                ("room.status", {"state": "ready"}),
                ("room.leave", None),
                ("clock.pong", {"seq": 1, "t1": 0, "t2": 0}),
            ]:
                answer = await carol.call(kind, data, room=code)
                assert (answer["status"], answer["type"]) == (403, "error"), answer
                assert "join it first" in answer["message"]
            # Nothing to play, pause, seek or slow down in an idle room: 409.
            for kind, data in [
                ("room.play", None),
                ("room.pause", None),
                ("room.seek", {"position": 1}),
                ("room.rate", {"rate": 2}),
            ]:
                answer = await alice.call(kind, data)
                assert answer["status"] == 409, answer
            answer = await alice.call("room.join", {"code": code})
            assert answer["status"] == 409
            assert "already in room" in answer["message"]
            assert before == await snapshot(server, code)
            await carol.still_usable()


async def test_hand_over_to_a_disconnected_member_is_a_conflict(
    server: Server, tokens: dict[str, str]
) -> None:
    with trio.fail_after(30):
        async with connect(server, tokens["alice"], "alice") as alice:
            code, _ = await create(alice)
            async with connect(server, tokens["bob"], "bob") as bob:
                await join(bob, code)
            members = await alice.expect("room.members")
            while members["members"][1]["connected"]:  # wait until bob's socket is gone
                members = await alice.expect("room.members")
            answer = await alice.call("room.host", {"member": "2"})
            assert (answer["status"], answer["message"]) == (409, "Member '2' is not connected.")


async def test_malformed_room_commands_count_toward_the_abuse_limit(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, ws_max_errors=3)) as server:
        token = await server.register("alice")
        with trio.fail_after(30):
            async with connect(server, token, "alice") as alice:
                await create(alice)
                for _ in range(3):  # refused by the room actor, not by the connection
                    answer = await alice.call("room.status", {"state": "maybe"})
                    assert answer["status"] == 400
                await alice.send("room.play", None, room="nope")  # the fourth in 10 s
                assert await close_code(alice.ws) == 4103


async def test_forbidden_and_unknown_rooms_do_not_count_as_abuse(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, ws_max_errors=2)) as server:
        token = await server.register("alice")
        with trio.fail_after(30):
            async with connect(server, token, "alice") as alice:
                for _ in range(5):
                    answer = await alice.call("room.join", {"code": "ZZZZZZZZ"})
                    assert answer["status"] == 404
                await alice.still_usable()


async def test_creating_and_joining_spend_the_request_limit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rate_limit_user=RateLimit(2, 900))
    async with running_server(settings) as server:
        token = await server.register("alice")
        with trio.fail_after(30):
            async with connect(server, token, "alice") as alice:
                code, _ = await create(alice)
                answer = await alice.call("room.join", {"code": "ZZZZZZZZ"})
                assert answer["status"] == 404
                answer = await alice.call("room.create")
                assert answer["status"] == 429
                await alice.ok("room.chat", {"text": "commands are not limited"}, room=code)


def failing(monkeypatch: pytest.MonkeyPatch, kind: str, times: int) -> None:
    """Make the pure handler of ``kind`` raise (after applying itself) ``times`` times."""
    fields, handler = HANDLERS[kind]
    calls: list[int] = []

    def faulty(room: Any, member: Any, data: Any, now: float) -> Any:
        calls.append(1)
        outcome = handler(room, member, data, now)
        if len(calls) <= times:
            raise RuntimeError(f"a bug in {kind}")
        return outcome

    monkeypatch.setitem(HANDLERS, kind, (fields, faulty))


async def test_a_verb_that_fails_is_answered_500_and_the_room_keeps_working(
    server: Server,
    tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(30):
        async with (
            connect(server, tokens["alice"], "alice") as alice,
            connect(server, tokens["bob"], "bob") as bob,
        ):
            code, _ = await create(alice)
            await join(bob, code)
            await alice.ok("room.content", {"content": MOVIE})
            room = actor(server, code)
            before = await room.snapshot()
            failing(monkeypatch, "room.chat", 1)
            with caplog.at_level(logging.ERROR):
                answer = await bob.call("room.chat", {"text": "boom"})
                welcomes = [await m.expect("room.welcome") for m in (alice, bob)]
            assert (answer["type"], answer["status"]) == ("error", 500)
            assert all(w["history"] == [] for w in welcomes)  # not applied
            assert all(w["state"]["content"]["tmdbId"] == MOVIE["tmdbId"] for w in welcomes)
            assert [m["id"] for m in welcomes[0]["members"]] == ["1", "2"]
            assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
            assert actor(server, code) is room  # the same room, restarted in place
            after = await room.snapshot()
            assert after["host"] == before["host"] == "1"
            assert after["playback"] == before["playback"]
            # It keeps working for the other member, and for the sender.
            await alice.ok("room.chat", {"text": "still here"})
            assert (await bob.expect("room.chat"))["text"] == "still here"
            await bob.ok("room.chat", {"text": "me too"})
            assert (await alice.expect("room.chat", text="me too"))["member"] == "2"
            await bob.still_usable()


async def test_a_room_that_keeps_failing_closes_with_4002_and_comes_back(
    server: Server,
    tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(30):
        async with (
            connect(server, tokens["alice"], "alice") as alice,
            connect(server, tokens["bob"], "bob") as bob,
        ):
            code, _ = await create(alice)
            await join(bob, code)
            await alice.ok("room.chat", {"text": "kept"})
            failing(monkeypatch, "room.chat", MAX_RESTARTS + 1)
            with caplog.at_level(logging.ERROR):
                for _ in range(MAX_RESTARTS):
                    assert (await alice.call("room.chat", {"text": "boom"}))["status"] == 500
                await alice.send("room.chat", {"text": "boom"})  # one failure too many
                assert await close_code(alice.ws) == CloseCode.ROOM_FAILED
                assert await close_code(bob.ws) == CloseCode.ROOM_FAILED
            assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 6
            writer = server.handle.state.room_snapshots
            assert writer is not None
            assert writer.taken(code)  # its snapshot stays
        # Reconnect and rejoin: the room comes back from its snapshot, chat and host kept.
        async with connect(server, tokens["bob"], "bob") as bob:
            with trio.fail_after(10):
                while True:
                    answer = await bob.call("room.join", {"code": code})
                    if answer["type"] == "ack":
                        break
                    assert answer["status"] == 503  # still writing the snapshot
                    await trio.sleep(0.05)
            welcome = next(f for f in bob.seen if f["type"] == "room.welcome")
            assert welcome["host"] == "1"
            assert [c["text"] for c in welcome["history"]] == ["kept"]
            bob.room = code
            await bob.ok("room.chat", {"text": "back"})


# --- the player-status endpoint --------------------------------------------------------


async def test_player_status_is_host_comes_from_the_room(
    server: Server, tokens: dict[str, str]
) -> None:
    async def is_host(token: str, room: str, user_id: int) -> bool:
        body = {"roomCode": room, "player": {"time": 1}, "isHost": True}
        assert (await server.post_as(token, "/api/player/status", body)).status_code == 200
        answer = await server.get_as(token, f"/api/player/status?roomCode={room}&userId={user_id}")
        flag: bool = answer.json()["statuses"][-1]["isHost"]
        return flag

    with trio.fail_after(30):
        async with (
            connect(server, tokens["alice"], "alice") as alice,
            connect(server, tokens["bob"], "bob") as bob,
        ):
            code, _ = await create(alice)
            await join(bob, code)
            assert await is_host(tokens["alice"], code, 1) is True
            assert await is_host(tokens["bob"], code, 2) is False
            dashed = f"{code[:4].lower()}-{code[4:]}"
            assert await is_host(tokens["alice"], dashed, 1) is True  # the code as typed
            assert await is_host(tokens["alice"], "ZZZZZZZZ", 1) is False  # no such room
            assert await is_host(tokens["alice"], "some_other-room", 1) is False  # not a code
            await alice.ok("room.host", {"member": "2"})
            assert await is_host(tokens["alice"], code, 1) is False
            assert await is_host(tokens["bob"], code, 2) is True


# --- restarts ----------------------------------------------------------------------------


async def test_a_restart_restores_rooms_with_members_and_roles(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, watch_lead_min_seconds=0.2)
    with trio.fail_after(60):
        async with running_server(settings) as server:
            alice_token, bob_token = await server.register("alice"), await server.register("bob")
            async with (
                connect(server, alice_token, "alice") as alice,
                connect(server, bob_token, "bob") as bob,
            ):
                code, _ = await create(alice)
                await join(bob, code)
                await alice.ok("room.content", {"content": MOVIE})
                await ready_all(alice, bob)
                await alice.ok("room.play")
                before = await playing(alice, bob)
                await alice.ok("room.chat", {"text": "see you after the restart"})
                await alice.ok("room.host", {"member": "2"})
                await alice.expect("room.members", host="2")
                server.handle.stop()
                assert await close_code(alice.ws) == 1001
        stored = await load_snapshot(settings, code)
        assert [m["connected"] for m in stored["members"]] == [True, True]  # not the shutdown's

        async with running_server(settings) as server:
            rooms = server.handle.state.rooms
            assert rooms is not None
            assert code in rooms.rooms
            async with connect(server, alice_token, "alice") as alice:
                welcome = await join(alice, code)
                assert welcome["host"] == "2"  # the role survived
                assert [(m["id"], m["connected"]) for m in welcome["members"]] == [
                    ("1", True),
                    ("2", False),  # bob has the reconnect grace to come back
                ]
                assert welcome["history"][-1]["text"] == "see you after the restart"
                state = welcome["state"]
                assert (state["phase"], state["at"], state["content"]) == (
                    "playing",
                    before["at"],
                    before["content"],
                )
                assert welcome["position"] > 0
                async with connect(server, bob_token, "bob") as bob:
                    welcome = await join(bob, code)
                    assert welcome["you"] == "2"
                    assert welcome["host"] == "2"
                    assert (await bob.ok("room.pause")) == {"phase": "paused"}
                    answer = await alice.call("room.play")
                    assert answer["status"] == 403
            # A new room never gets a code that has a stored snapshot.
            writer = server.handle.state.room_snapshots
            assert writer is not None
            assert writer.taken(code)


async def test_members_who_do_not_come_back_in_time_lose_their_place(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, watch_reconnect_grace_seconds=0.3, watch_empty_room_seconds=0.2
    )
    with trio.fail_after(60):
        async with running_server(settings) as server:
            token = await server.register("alice")
            async with connect(server, token, "alice") as alice:
                code, _ = await create(alice)
                server.handle.stop()
                assert await close_code(alice.ws) == 1001
        assert (await load_snapshot(settings, code))["members"][0]["connected"] is True
        async with running_server(settings) as server:
            rooms = server.handle.state.rooms
            writer = server.handle.state.room_snapshots
            assert rooms is not None
            assert writer is not None
            room = rooms.find(code)
            if room is not None:  # alice's grace runs out, then the room's empty grace
                await room.stopped.wait()
            await trio.testing.wait_all_tasks_blocked()  # the registry's on_end ran
            await flushed(writer)
            assert await server.handle.state.storage.load_room_snapshot(code) is None
            async with connect(server, token, "alice") as alice:
                answer = await alice.call("room.join", {"code": code})
                assert answer["status"] == 404


async def load_snapshot(settings: Settings, code: str) -> dict[str, Any]:
    with sqlite3.connect(settings.sqlite_path) as conn:
        row = conn.execute(
            "SELECT snapshot FROM room_snapshots WHERE room_code = ?", (code,)
        ).fetchone()
    assert row is not None
    snapshot: dict[str, Any] = json.loads(row[0])
    return snapshot
