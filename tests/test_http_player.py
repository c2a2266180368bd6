"""/api/player/status: the original's shapes, made authenticated, exact and validated.

Every test runs a real server on a loopback socket over a real SQLite file; the server's clock
(``AppState.clock_ms``) is replaced by a settable one so expiry is tested without waiting.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from dramaverse.actors.hub import run_event_pruner
from dramaverse.config import RateLimit, load_settings
from dramaverse.errors import BadRequest, ConfigError
from dramaverse.storage import open_storage
from dramaverse.storage.base import Storage
from tests.conftest import Server, make_settings, running_server

PATH = "/api/player/status"
T0 = 1_700_000_000_000

DEFAULT_PLAYER = {
    "isPlaying": False,
    "isPaused": False,
    "isLoading": False,
    "hasPlayedOnce": False,
    "time": 0,
    "duration": 0,
    "volume": 0,
    "playbackRate": 1,
    "buffered": 0,
}


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def server(tmp_path: Path, clock: Clock) -> AsyncIterator[Server]:
    async with running_server(make_settings(tmp_path)) as running:
        running.handle.state.clock_ms = clock
        yield running


def user_id(server: Server, token: str) -> int:
    return server.handle.state.tokens.verify(token).id


async def post(server: Server, token: str, body: Any) -> Any:
    return await server.post_as(token, PATH, body)


async def read(server: Server, token: str, query: str) -> Any:
    return await server.get_as(token, f"{PATH}?{query}")


async def stored(server: Server, room: str = "AB") -> list[tuple[int, str]]:
    return await server.handle.state.storage.player_statuses(room, None, 0)


# -- shapes and defaults ---------------------------------------------------------------------


async def test_minimal_report_gets_the_original_defaults(server: Server, clock: Clock) -> None:
    token = await server.register("alice")
    alice = user_id(server, token)
    response = await post(server, token, {"roomCode": "AB"})
    assert response.status_code == 200
    assert response.json() == {"success": True, "timestamp": T0}
    mine = await read(server, token, f"roomCode=AB&userId={alice}")
    assert mine.status_code == 200
    status = {
        "userId": str(alice),
        "roomCode": "AB",
        "isHost": False,
        "content": {"title": "Unknown", "type": "Unknown"},
        "player": DEFAULT_PLAYER,
        "timestamp": T0,
    }
    assert mine.json() == {"userId": str(alice), "roomCode": "AB", "statuses": [status]}
    assert list(mine.json()["statuses"][0]) == [
        "userId",
        "roomCode",
        "isHost",
        "content",
        "player",
        "timestamp",
    ]
    room = await read(server, token, "roomCode=AB")
    assert room.json() == {"roomCode": "AB", "users": {str(alice): [status]}}


async def test_full_report_round_trips(server: Server, clock: Clock) -> None:
    token = await server.register("alice")
    alice = user_id(server, token)
    body = {
        "userId": "999",  # ignored: the reporter is the token's user
        "roomCode": "Room_1-x",
        "isHost": True,  # ignored: nobody hosts unless the room registry says so
        "timestamp": 5,  # ignored: the server's clock stamps the report
        "extra": {"ignored": True},
        "content": {
            "title": "Ép 1 🎬",
            "type": "episode",
            "tmdbId": "tv-1399",
            "seasonId": 3624,
            "episodeId": 63056.0,
            "seasonNumber": 1,
            "episodeNumber": 2,
            "poster": "ignored",
        },
        "player": {
            "isPlaying": True,
            "isPaused": False,
            "isLoading": False,
            "hasPlayedOnce": True,
            "time": 61.25,
            "duration": 3600.0,
            "volume": 0.5,
            "playbackRate": 1.5,
            "buffered": 90,
        },
    }
    assert (await post(server, token, body)).status_code == 200
    statuses = (await read(server, token, f"roomCode=Room_1-x&userId={alice}")).json()["statuses"]
    assert statuses == [
        {
            "userId": str(alice),
            "roomCode": "Room_1-x",
            "isHost": False,
            "content": {
                "title": "Ép 1 🎬",
                "type": "episode",
                "tmdbId": "tv-1399",
                "seasonId": 3624,
                "episodeId": 63056,
                "seasonNumber": 1,
                "episodeNumber": 2,
            },
            "player": {
                "isPlaying": True,
                "isPaused": False,
                "isLoading": False,
                "hasPlayedOnce": True,
                "time": 61.25,
                "duration": 3600,
                "volume": 0.5,
                "playbackRate": 1.5,
                "buffered": 90,
            },
            "timestamp": T0,
        }
    ]
    # Whole numbers are written the way JavaScript writes them.
    raw = (await stored(server, "Room_1-x"))[0][1]
    assert '"episodeId":63056,' in raw
    assert '"duration":3600,' in raw
    # Nothing is stored under the body's userId.
    assert (await read(server, token, "roomCode=Room_1-x&userId=999")).json()["statuses"] == []


async def test_falsy_and_null_fields_take_the_defaults(server: Server) -> None:
    token = await server.register("alice")
    body = {
        "roomCode": "AB",
        "content": {"title": "", "type": None, "tmdbId": None, "seasonNumber": None},
        "player": {"isPlaying": None, "time": None, "volume": 0, "playbackRate": None},
    }
    assert (await post(server, token, body)).status_code == 200
    (status,) = [json.loads(text) for _, text in await stored(server)]
    assert status["content"] == {"title": "Unknown", "type": "Unknown"}
    assert status["player"] == DEFAULT_PLAYER
    for body in ({"roomCode": "AB", "content": None, "player": None}, {"roomCode": "AB"}):
        assert (await post(server, token, body)).status_code == 200
    assert len(await stored(server)) == 3
    number = {"roomCode": "AB", "content": {"tmdbId": 1399, "title": "T", "type": "movie"}}
    assert (await post(server, token, number)).status_code == 200
    assert json.loads((await stored(server))[-1][1])["content"] == {
        "title": "T",
        "type": "movie",
        "tmdbId": 1399,
    }


# -- history and expiry ----------------------------------------------------------------------


async def test_only_the_newest_five_are_kept(server: Server, clock: Clock) -> None:
    token = await server.register("alice")
    alice = user_id(server, token)
    for second in range(8):
        clock.now = T0 + second * 1000
        body = {"roomCode": "AB", "player": {"time": second}}
        assert (await post(server, token, body)).json() == {"success": True, "timestamp": clock.now}
    statuses = (await read(server, token, f"roomCode=AB&userId={alice}")).json()["statuses"]
    assert [s["player"]["time"] for s in statuses] == [3, 4, 5, 6, 7]  # oldest first
    assert [s["timestamp"] for s in statuses] == [T0 + s * 1000 for s in range(3, 8)]
    assert len(await stored(server)) == 5  # trimmed in storage, not only in the answer


async def test_keep_is_a_setting(tmp_path: Path, clock: Clock) -> None:
    async with running_server(make_settings(tmp_path, player_status_keep=2)) as server:
        server.handle.state.clock_ms = clock
        token = await server.register("alice")
        for second in range(4):
            await post(server, token, {"roomCode": "AB", "player": {"time": second}})
        rows = await stored(server)
        assert [json.loads(text)["player"]["time"] for _, text in rows] == [2, 3]


async def test_statuses_expire_after_the_ttl(server: Server, clock: Clock) -> None:
    alice_token = await server.register("alice")
    bob_token = await server.register("bob")
    alice, bob = user_id(server, alice_token), user_id(server, bob_token)
    await post(server, alice_token, {"roomCode": "AB", "player": {"time": 1}})
    clock.now = T0 + 30_000
    await post(server, bob_token, {"roomCode": "AB", "player": {"time": 2}})

    async def users_at(now: int) -> dict[str, list[int]]:
        clock.now = now
        users = (await read(server, alice_token, "roomCode=AB")).json()["users"]
        return {who: [s["player"]["time"] for s in statuses] for who, statuses in users.items()}

    assert await users_at(T0 + 60_000) == {str(alice): [1], str(bob): [2]}  # exactly 60 s: kept
    assert await users_at(T0 + 60_001) == {str(bob): [2]}
    mine = await read(server, alice_token, f"roomCode=AB&userId={alice}")
    assert mine.json() == {"userId": str(alice), "roomCode": "AB", "statuses": []}
    assert await users_at(T0 + 90_001) == {}


async def test_ttl_is_a_setting(tmp_path: Path, clock: Clock) -> None:
    async with running_server(make_settings(tmp_path, player_status_ttl_seconds=5)) as server:
        server.handle.state.clock_ms = clock
        token = await server.register("alice")
        await post(server, token, {"roomCode": "AB"})
        clock.now = T0 + 5_000
        assert len((await read(server, token, "roomCode=AB")).json()["users"]) == 1
        clock.now = T0 + 5_001
        assert (await read(server, token, "roomCode=AB")).json()["users"] == {}


# -- rooms and users -------------------------------------------------------------------------


async def test_rooms_match_exactly(server: Server) -> None:
    alice_token = await server.register("alice")
    bob_token = await server.register("bob")
    alice, bob = user_id(server, alice_token), user_id(server, bob_token)
    await post(server, alice_token, {"roomCode": "XAB"})
    await post(server, alice_token, {"roomCode": "ABX"})
    await post(server, bob_token, {"roomCode": "AB"})
    await post(server, bob_token, {"roomCode": "ab"})
    room = (await read(server, bob_token, "roomCode=AB")).json()
    assert list(room["users"]) == [str(bob)]
    assert room["users"][str(bob)][0]["roomCode"] == "AB"
    assert list((await read(server, bob_token, "roomCode=XAB")).json()["users"]) == [str(alice)]
    assert list((await read(server, bob_token, "roomCode=ab")).json()["users"]) == [str(bob)]
    for other in ("A", "B", "X", "Ab", "A_"):
        assert (await read(server, bob_token, f"roomCode={other}")).json()["users"] == {}
    mine = await read(server, alice_token, f"roomCode=AB&userId={alice}")
    assert mine.json()["statuses"] == []


async def test_room_lists_users_in_javascript_key_order(server: Server) -> None:
    tokens = [await server.register(f"user{index}") for index in range(10)]
    ids = [user_id(server, token) for token in tokens]
    assert ids == list(range(1, 11))
    for index in (9, 1, 4):  # users 10, 2 and 5 report, in that order
        await post(server, tokens[index], {"roomCode": "AB"})
    response = await read(server, tokens[0], "roomCode=AB")
    assert list(response.json()["users"]) == ["2", "5", "10"]  # numeric, not "10" < "2"
    assert response.text.index('"2":') < response.text.index('"10":')
    # Anyone signed in may read anyone's statuses in a room, as in the original.
    other = await read(server, tokens[0], "roomCode=AB&userId=10")
    assert [s["userId"] for s in other.json()["statuses"]] == ["10"]


async def test_is_host_comes_from_the_room_registry(server: Server) -> None:
    alice_token = await server.register("alice")
    bob_token = await server.register("bob")
    alice = user_id(server, alice_token)
    asked: list[tuple[str, int]] = []

    async def lookup(room_code: str, user: int) -> bool:
        asked.append((room_code, user))
        if room_code == "BROKEN":
            raise BadRequest("A room code is 8 letters and digits.")
        return room_code == "AB" and user == alice

    server.handle.state.room_host_lookup = lookup
    await post(server, alice_token, {"roomCode": "AB", "isHost": False})
    await post(server, bob_token, {"roomCode": "AB", "isHost": True})
    await post(server, alice_token, {"roomCode": "CD", "isHost": True})
    assert (await post(server, alice_token, {"roomCode": "BROKEN"})).status_code == 200
    users = (await read(server, bob_token, "roomCode=AB")).json()["users"]
    assert [(who, s[0]["isHost"]) for who, s in users.items()] == [("1", True), ("2", False)]
    cd = (await read(server, bob_token, "roomCode=CD")).json()["users"]
    assert cd["1"][0]["isHost"] is False
    broken = (await read(server, bob_token, "roomCode=BROKEN")).json()["users"]
    assert broken["1"][0]["isHost"] is False
    assert asked == [("AB", 1), ("AB", 2), ("CD", 1), ("BROKEN", 1)]


# -- authentication --------------------------------------------------------------------------


async def test_both_endpoints_need_a_valid_token(server: Server) -> None:
    token = await server.register("alice")
    ghost = server.handle.state.tokens.issue(999, "ghost")  # a user that does not exist
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": token}):
        posted = await server.client.post(PATH, json={"roomCode": "AB"}, headers=headers)
        assert posted.status_code == 401
        assert set(posted.json()) == {"message"}
        fetched = await server.client.get(f"{PATH}?roomCode=AB", headers=headers)
        assert fetched.status_code == 401
    posted = await post(server, ghost, {"roomCode": "AB"})
    assert (posted.status_code, posted.json()) == (401, {"message": "Invalid or expired token"})
    fetched = await read(server, ghost, "roomCode=AB")
    assert (fetched.status_code, fetched.json()) == (401, {"message": "Invalid or expired token"})
    # 401 comes before validation.
    assert (await server.client.post(PATH, json={})).status_code == 401
    assert (await server.client.get(PATH)).status_code == 401
    assert await stored(server) == []


# -- validation ------------------------------------------------------------------------------

BAD_REPORTS: list[tuple[Any, str]] = [
    ({}, "Missing required fields: roomCode"),
    ({"roomCode": ""}, "Missing required fields: roomCode"),
    ({"roomCode": None}, "Missing required fields: roomCode"),
    ([{"roomCode": "AB"}], "Invalid payload: expected a JSON object."),
    ("AB", "Invalid payload: expected a JSON object."),
    ({"roomCode": 12}, "Invalid roomCode:"),
    ({"roomCode": ["AB"]}, "Invalid roomCode:"),
    ({"roomCode": "A B"}, "Invalid roomCode:"),
    ({"roomCode": "AB:1"}, "Invalid roomCode:"),
    ({"roomCode": "AB%"}, "Invalid roomCode:"),
    ({"roomCode": "é"}, "Invalid roomCode:"),
    ({"roomCode": "A" * 65}, "Invalid roomCode:"),
    ({"content": "movie"}, "Invalid content: must be an object."),
    ({"content": []}, "Invalid content: must be an object."),
    ({"player": 1}, "Invalid player: must be an object."),
    ({"content": {"title": 5}}, "Invalid content.title:"),
    ({"content": {"title": "x" * 501}}, "Invalid content.title:"),
    ({"content": {"type": True}}, "Invalid content.type:"),
    ({"content": {"type": "t" * 65}}, "Invalid content.type:"),
    ({"content": {"tmdbId": True}}, "Invalid content.tmdbId:"),
    ({"content": {"tmdbId": 1.5}}, "Invalid content.tmdbId:"),
    ({"content": {"tmdbId": -1}}, "Invalid content.tmdbId:"),
    ({"content": {"tmdbId": 2**53}}, "Invalid content.tmdbId:"),
    ({"content": {"tmdbId": "x" * 65}}, "Invalid content.tmdbId:"),
    ({"content": {"tmdbId": {"id": 1}}}, "Invalid content.tmdbId:"),
    ({"content": {"seasonId": "3"}}, "Invalid content.seasonId:"),
    ({"content": {"episodeId": 0.5}}, "Invalid content.episodeId:"),
    ({"content": {"seasonNumber": 100_001}}, "Invalid content.seasonNumber:"),
    ({"content": {"episodeNumber": False}}, "Invalid content.episodeNumber:"),
    ({"player": {"isPlaying": 1}}, "Invalid player.isPlaying: must be true or false."),
    ({"player": {"isPaused": "false"}}, "Invalid player.isPaused:"),
    ({"player": {"isLoading": 0}}, "Invalid player.isLoading:"),
    ({"player": {"hasPlayedOnce": []}}, "Invalid player.hasPlayedOnce:"),
    ({"player": {"time": "12"}}, "Invalid player.time:"),
    ({"player": {"time": False}}, "Invalid player.time:"),
    ({"player": {"time": -0.5}}, "Invalid player.time:"),
    ({"player": {"time": 1e300}}, "Invalid player.time:"),
    ({"player": {"duration": 10**400}}, "Invalid player.duration:"),
    ({"player": {"duration": ""}}, "Invalid player.duration:"),
    ({"player": {"volume": 101}}, "Invalid player.volume: must be a number from 0 to 100."),
    ({"player": {"volume": -1}}, "Invalid player.volume:"),
    ({"player": {"playbackRate": 0}}, "Invalid player.playbackRate:"),
    ({"player": {"playbackRate": -1}}, "Invalid player.playbackRate:"),
    ({"player": {"playbackRate": 16.5}}, "Invalid player.playbackRate:"),
    ({"player": {"playbackRate": "1"}}, "Invalid player.playbackRate:"),
    ({"player": {"buffered": [1]}}, "Invalid player.buffered:"),
]


@pytest.mark.parametrize(("body", "message"), BAD_REPORTS)
async def test_bad_reports_are_refused_and_change_nothing(
    server: Server, body: Any, message: str
) -> None:
    token = await server.register("alice")
    if isinstance(body, dict) and "roomCode" not in body and message.startswith("Invalid"):
        body = {"roomCode": "AB", **body}
    response = await post(server, token, body)
    assert response.status_code == 400
    assert response.json()["message"].startswith(message), response.json()
    assert set(response.json()) == {"message"}
    assert await stored(server) == []


async def test_bounds_are_inclusive(server: Server) -> None:
    token = await server.register("alice")
    body = {
        "roomCode": "A" * 64,
        "content": {"title": "🎬" * 250, "tmdbId": 2**53 - 1, "episodeNumber": 100_000},
        "player": {"volume": 100, "playbackRate": 16, "time": 10_000_000, "buffered": 0.0},
    }
    assert (await post(server, token, body)).status_code == 200
    assert len(await stored(server, "A" * 64)) == 1


async def test_malformed_bodies(server: Server) -> None:
    token = await server.register("alice")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for content in (b"{", b'{"roomCode": NaN}', b"\xff\xfe"):
        response = await server.client.post(PATH, content=content, headers=headers)
        assert response.status_code == 400
        assert response.json()["message"].startswith("Malformed JSON body")
    # A body not declared as JSON counts as empty, as everywhere else.
    plain = await server.client.post(
        PATH,
        content=b'{"roomCode": "AB"}',
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
    )
    assert (plain.status_code, plain.json()) == (
        400,
        {"message": "Missing required fields: roomCode"},
    )
    too_big = await post(server, token, {"roomCode": "AB", "pad": "x" * (101 * 1024)})
    assert too_big.status_code == 413
    assert await stored(server) == []


BAD_QUERIES = [
    ("", "Missing required query parameters: roomCode and/or userId"),
    ("userId=1", "Missing required query parameters: roomCode and/or userId"),
    ("roomCode=", "Missing required query parameters: roomCode and/or userId"),
    ("roomCode=A%20B", "Invalid roomCode:"),
    ("roomCode=" + "A" * 65, "Invalid roomCode:"),
    ("roomCode=AB&roomCode=CD", "Invalid query parameter 'roomCode'"),
    ("roomCode=AB&userId=1&userId=2", "Invalid query parameter 'userId'"),
    ("roomCode=AB&userId=0", "Invalid userId:"),
    ("roomCode=AB&userId=-1", "Invalid userId:"),
    ("roomCode=AB&userId=01", "Invalid userId:"),
    ("roomCode=AB&userId=1.0", "Invalid userId:"),
    ("roomCode=AB&userId=abc", "Invalid userId:"),
    ("roomCode=AB&userId=%201", "Invalid userId:"),
    ("roomCode=AB&userId=" + "9" * 19, "Invalid userId:"),
    ("&".join(f"x{i}=1" for i in range(9)) + "&roomCode=AB", "Too many query parameters"),
]


@pytest.mark.parametrize(("query", "message"), BAD_QUERIES)
async def test_bad_queries(server: Server, query: str, message: str) -> None:
    token = await server.register("alice")
    response = await read(server, token, query)
    assert response.status_code == 400
    assert response.json()["message"].startswith(message), response.json()


async def test_empty_user_id_means_the_whole_room(server: Server) -> None:
    token = await server.register("alice")
    await post(server, token, {"roomCode": "AB"})
    response = await read(server, token, "roomCode=AB&userId=")
    assert list(response.json()) == ["roomCode", "users"]
    assert list(response.json()["users"]) == ["1"]


async def test_other_methods_get_405(server: Server) -> None:
    response = await server.client.put(PATH, json={})
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) >= {"GET", "POST"}


# -- rate limits -----------------------------------------------------------------------------


async def test_rate_limit_is_per_user_and_apart_from_the_user_limit(
    tmp_path: Path, clock: Clock
) -> None:
    settings = make_settings(
        tmp_path, player_status_rate=RateLimit(3, 60), rate_limit_user=RateLimit(1, 900)
    )
    async with running_server(settings) as server:
        server.handle.state.clock_ms = clock
        alice = await server.register("alice")
        bob = await server.register("bob")
        for count in range(3):
            response = await post(server, alice, {"roomCode": "AB", "player": {"time": count}})
            assert response.status_code == 200
            assert response.headers["ratelimit-policy"] == "3;w=60"
            assert response.headers["ratelimit-remaining"] == str(2 - count)
        limited = await post(server, alice, {"roomCode": "AB", "player": {"time": 99}})
        assert limited.status_code == 429
        assert limited.json() == {"message": "Too many requests, please try again after 1 minute."}
        assert int(limited.headers["retry-after"]) > 0
        # Refused before validation, and nothing stored.
        assert (await post(server, alice, {"roomCode": 5})).status_code == 429
        times = [json.loads(text)["player"]["time"] for _, text in await stored(server)]
        assert times == [0, 1, 2]
        # Another user has a bucket of their own; reads count apart from reports.
        assert (await post(server, bob, {"roomCode": "AB"})).status_code == 200
        for _ in range(3):
            assert (await read(server, alice, "roomCode=AB")).status_code == 200
        assert (await read(server, alice, "roomCode=AB")).status_code == 429
        # RATE_LIMIT_USER (1 request here) is not spent by the player endpoints.
        assert (await server.get_as(bob, "/api/user/data")).status_code == 200


async def test_rate_limit_can_be_off(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, player_status_rate=None)) as server:
        token = await server.register("alice")
        for _ in range(130):
            response = await post(server, token, {"roomCode": "AB"})
            assert response.status_code == 200
            assert "ratelimit-limit" not in response.headers


# -- pruning ---------------------------------------------------------------------------------


class PruneWatcher:
    """A Storage that tells when the pruner has finished a pass (the room snapshot prune)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.passes = 0
        self.changed = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def prune_room_snapshots(self, older_than_ms: int) -> int:
        removed = await self._storage.prune_room_snapshots(older_than_ms)
        self.passes += 1
        self.changed.set()
        return removed

    async def wait_for_passes(self, count: int) -> None:
        while self.passes < count:
            self.changed = trio.Event()
            await self.changed.wait()


async def test_the_pruner_drops_expired_statuses_and_stale_snapshots(
    tmp_path: Path, clock: Clock
) -> None:
    settings = make_settings(
        tmp_path,
        event_prune_seconds=0.01,
        player_status_ttl_seconds=60,
        room_snapshot_retention_seconds=3600,
    )
    async with open_storage(settings) as storage:
        alice = await storage.create_user("alice", "hash")
        await storage.add_player_status(alice, "AB", '{"old":1}', T0 - 60_001)
        await storage.add_player_status(alice, "AB", '{"fresh":1}', T0 - 60_000)
        await storage.save_room_snapshot("OLDROOM1", "{}", T0 - 3_600_001)
        await storage.save_room_snapshot("NEWROOM1", "{}", T0 - 3_600_000)
        watcher = PruneWatcher(storage)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(run_event_pruner, watcher, settings, clock_ms=clock))
                await watcher.wait_for_passes(1)
                nursery.cancel_scope.cancel()
        assert await storage.player_statuses("AB", None, 0) == [(alice, '{"fresh":1}')]
        assert [code for code, _ in await storage.load_room_snapshots(0)] == ["NEWROOM1"]


# -- settings --------------------------------------------------------------------------------


def test_settings_defaults_and_validation() -> None:
    settings = load_settings({}, dotenv_path=None)
    assert settings.player_status_ttl_seconds == 60
    assert settings.player_status_keep == 5
    assert settings.player_status_rate == RateLimit(120, 60)
    assert settings.room_snapshot_retention_seconds == 86400
    custom = load_settings(
        {
            "PLAYER_STATUS_TTL_SECONDS": "15",
            "PLAYER_STATUS_KEEP": "10",
            "PLAYER_STATUS_RATE": "off",
            "ROOM_SNAPSHOT_RETENTION_SECONDS": "3600",
        },
        dotenv_path=None,
    )
    assert (
        custom.player_status_ttl_seconds,
        custom.player_status_keep,
        custom.player_status_rate,
        custom.room_snapshot_retention_seconds,
    ) == (15, 10, None, 3600)
    for name, value in [
        ("PLAYER_STATUS_TTL_SECONDS", "0"),
        ("PLAYER_STATUS_TTL_SECONDS", "1.5"),
        ("PLAYER_STATUS_KEEP", "0"),
        ("PLAYER_STATUS_KEEP", "101"),
        ("PLAYER_STATUS_RATE", "120"),
        ("PLAYER_STATUS_RATE", "0/60"),
        ("ROOM_SNAPSHOT_RETENTION_SECONDS", "10"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_settings({name: value}, dotenv_path=None)
        assert name in info.value.message
        assert "\n" not in info.value.message
