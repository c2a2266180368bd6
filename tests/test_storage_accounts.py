"""The Storage contract for accounts, roles and sessions, on SQLite and PostgreSQL alike.

Every test runs once per backend (a fresh SQLite file, a fresh PostgreSQL schema). Times are
passed in explicitly (milliseconds), so nothing here depends on the clock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from dramaverse.domain.library import SaveEpisodeReview, SetFavorite, SetStatus
from dramaverse.domain.sessions import new_session_id
from dramaverse.errors import LastAdmin, NotFound, Unauthorized
from dramaverse.storage import open_storage
from dramaverse.storage import postgres as postgres_backend
from dramaverse.storage import sqlite as sqlite_backend
from dramaverse.storage.accounts import DAY_MS, SessionStart, cutoff_at
from dramaverse.storage.base import Storage
from tests.conftest import make_settings, sample_records
from tests.postgres_tools import admin_execute, fresh_schema
from tests.test_storage_contract import BACKENDS, open_backend

T0 = 1_700_000_000_000  # a fixed "now", ms
HOUR = 3_600_000
URLS = [r["url"] for r in sample_records()]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def storage(backend: str, tmp_path: Path) -> AsyncIterator[Storage]:
    async with open_backend(backend, tmp_path) as opened:
        yield opened


def start(at: int = T0, *, ttl: int = 24 * HOUR, **fields: Any) -> SessionStart:
    values: dict[str, Any] = {
        "id": new_session_id(),
        "created_at": at,
        "expires_at": at + ttl,
        "address": "127.0.0.1",
        "device": "Firefox on Windows",
        "user_agent": "Mozilla/5.0 (Windows NT 10.0) Gecko/20100101 Firefox/128.0",
    }
    values.update(fields)
    return SessionStart(**values)


# -- users and roles -----------------------------------------------------------------------------


async def test_new_users_have_no_roles_a_creation_time_and_no_cutoff(storage: Storage) -> None:
    first = start()
    alice = await storage.create_user("alice", "h1", now_ms=T0, session=first)
    bob = await storage.create_user("bob", "h2")
    user = await storage.get_user(alice)
    assert user is not None
    assert (user.username, user.password_hash, user.is_admin, user.is_banned) == (
        "alice",
        "h1",
        False,
        False,
    )
    assert (user.created_at, user.tokens_valid_after) == (T0, 0)
    assert await storage.get_user_by_username("alice") == user
    # The session came with the user, in the same transaction.
    (session,) = await storage.list_sessions(alice, T0)
    assert (session.id, session.user_id, session.last_seen_at) == (first.id, alice, T0)
    # Without now_ms the backend stamps the time itself.
    stamped = await storage.get_user(bob)
    assert stamped is not None
    assert stamped.created_at is not None
    assert stamped.created_at > T0
    assert await storage.get_user(bob + 1000) is None


async def test_a_taken_username_stores_neither_user_nor_session(storage: Storage) -> None:
    await storage.create_user("alice", "h", now_ms=T0)
    lost = start()
    with pytest.raises(Exception, match="Username already exists"):
        await storage.create_user("alice", "h", now_ms=T0, session=lost)
    snapshot = await storage.load_revocations(0)
    assert lost.id not in snapshot.ended
    assert [s.id for s in await storage.list_sessions(1, T0, include_ended=True)] == []


async def test_admin_and_ban_and_the_last_admin_rule(storage: Storage) -> None:
    alice = await storage.create_user("alice", "h", now_ms=T0)
    bob = await storage.create_user("bob", "h", now_ms=T0)
    assert await storage.count_admins() == 0
    await storage.set_admin(bob, False)  # demoting a non-admin with no admins at all: fine
    await storage.set_admin(alice, True)
    assert await storage.count_admins() == 1
    for refused in (
        storage.set_admin(alice, False),
        storage.set_banned(alice, True, T0),
        storage.delete_user(alice),
    ):
        with pytest.raises(LastAdmin) as info:
            await refused
        assert info.value.status == 409
    user = await storage.get_user(alice)
    assert user is not None
    assert (user.is_admin, user.is_banned) == (True, False)

    await storage.set_admin(bob, True)
    assert await storage.count_admins() == 2
    await storage.set_admin(alice, False)
    with pytest.raises(LastAdmin):
        await storage.set_banned(bob, True, T0)
    await storage.set_admin(alice, True)
    assert await storage.set_banned(bob, True, T0 + 1500) == []
    assert await storage.count_admins() == 1  # a banned admin does not count
    banned = await storage.get_user(bob)
    assert banned is not None
    assert (banned.is_banned, banned.tokens_valid_after) == (True, T0 + 1000)
    assert await storage.set_banned(bob, False, T0 + 5000) == []
    unbanned = await storage.get_user(bob)
    assert unbanned is not None
    assert (unbanned.is_banned, unbanned.tokens_valid_after) == (False, T0 + 1000)

    for unknown in (
        storage.set_admin(999, True),
        storage.set_banned(999, True, T0),
        storage.set_banned(999, False, T0),
        storage.set_password_hash(999, "h", T0),
    ):
        with pytest.raises(NotFound) as missing:
            await unknown
        assert missing.value.message == "User not found"


async def test_racing_demotions_never_leave_no_admin(storage: Storage) -> None:
    ids = [await storage.create_user(f"admin{n}", "h", now_ms=T0) for n in range(4)]
    for user_id in ids:
        await storage.set_admin(user_id, True)
    refused: list[int] = []

    async def demote(user_id: int) -> None:
        try:
            await storage.set_admin(user_id, False)
        except LastAdmin:
            refused.append(user_id)

    async with trio.open_nursery() as nursery:
        for user_id in ids:
            nursery.start_soon(demote, user_id)
    assert len(refused) == 1
    assert await storage.count_admins() == 1


async def test_ban_ends_every_session_and_moves_the_cutoff(storage: Storage) -> None:
    alice = await storage.create_user("alice", "h", now_ms=T0)
    one, two = start(), start(T0 + 10)
    await storage.create_session(alice, one)
    await storage.create_session(alice, two)
    ended = await storage.set_banned(alice, True, T0 + 2345)
    assert ended == sorted([one.id, two.id])
    assert await storage.list_sessions(alice, T0 + 3000) == []
    snapshot = await storage.load_revocations(T0)
    assert snapshot.ended == {one.id: (alice, T0 + 2345), two.id: (alice, T0 + 2345)}
    assert snapshot.cutoffs == {alice: T0 + 2000}


async def test_password_change_keeps_one_session_and_cuts_off_the_rest(storage: Storage) -> None:
    alice = await storage.create_user("alice", "old", now_ms=T0)
    kept, other = start(), start(T0 + 1)
    await storage.create_session(alice, kept)
    await storage.create_session(alice, other)
    assert await storage.set_password_hash(alice, "new", T0 + 7777, keep_session=kept.id) == [
        other.id
    ]
    user = await storage.get_user(alice)
    assert user is not None
    assert (user.password_hash, user.tokens_valid_after) == ("new", T0 + 7000)
    assert [s.id for s in await storage.list_sessions(alice, T0 + 8000)] == [kept.id]
    # The kept session gets a fresh token, and its expiry follows it; never backwards.
    assert await storage.renew_session(alice, kept.id, T0 + 48 * HOUR)
    assert await storage.renew_session(alice, kept.id, T0 + 1)
    (renewed,) = await storage.list_sessions(alice, T0 + 30 * HOUR)
    assert renewed.expires_at == T0 + 48 * HOUR
    assert not await storage.renew_session(alice, other.id, T0 + 48 * HOUR)  # ended
    assert not await storage.renew_session(alice + 1, kept.id, T0 + 48 * HOUR)  # not theirs
    # A cut-off never moves back.
    await storage.set_password_hash(alice, "newer", T0)
    again = await storage.get_user(alice)
    assert again is not None
    assert again.tokens_valid_after == T0 + 7000


async def test_cutoffs_are_whole_seconds() -> None:
    assert cutoff_at(T0 + 999) == T0
    assert cutoff_at(T0) == T0


# -- sessions ------------------------------------------------------------------------------------


async def test_sessions_are_listed_newest_first_and_only_live_ones(storage: Storage) -> None:
    alice = await storage.create_user("alice", "h", now_ms=T0)
    bob = await storage.create_user("bob", "h", now_ms=T0)
    old = start(T0, ttl=HOUR)
    mid = start(T0 + 10, device="Safari on iOS")
    new = start(T0 + 20)
    for session in (mid, old, new):
        await storage.create_session(alice, session)
    await storage.create_session(bob, start(T0 + 30))
    listed = await storage.list_sessions(alice, T0 + 100)
    assert [s.id for s in listed] == [new.id, mid.id, old.id]
    assert listed[1].device == "Safari on iOS"
    assert all(s.live(T0 + 100) for s in listed)
    # An hour later the first one's token has expired: it is not live any more.
    assert [s.id for s in await storage.list_sessions(alice, T0 + HOUR)] == [new.id, mid.id]
    everything = await storage.list_sessions(alice, T0 + HOUR, include_ended=True)
    assert [s.id for s in everything] == [new.id, mid.id, old.id]
    with pytest.raises(Unauthorized):
        await storage.list_sessions(999, T0)
    with pytest.raises(Unauthorized):
        await storage.create_session(999, start())


async def test_ending_sessions_checks_the_owner(storage: Storage) -> None:
    alice = await storage.create_user("alice", "h", now_ms=T0)
    bob = await storage.create_user("bob", "h", now_ms=T0)
    mine, kept, spare = start(), start(T0 + 1), start(T0 + 2)
    theirs = start()
    for session in (mine, kept, spare):
        await storage.create_session(alice, session)
    await storage.create_session(bob, theirs)
    assert not await storage.end_session(alice, theirs.id, T0 + 5)  # someone else's
    assert not await storage.end_session(alice, new_session_id(), T0 + 5)  # nobody's
    assert await storage.end_session(alice, mine.id, T0 + 5)
    assert not await storage.end_session(alice, mine.id, T0 + 6)  # only once
    assert await storage.end_other_sessions(alice, kept.id, T0 + 7) == [spare.id]
    assert await storage.end_other_sessions(alice, kept.id, T0 + 8) == []
    assert [s.id for s in await storage.list_sessions(alice, T0 + 9)] == [kept.id]
    assert [s.id for s in await storage.list_sessions(bob, T0 + 9)] == [theirs.id]
    assert await storage.end_all_sessions(alice, T0 + 10) == [kept.id]
    user = await storage.get_user(alice)
    assert user is not None
    assert user.tokens_valid_after == 0  # without cut_off the cut-off stays
    assert await storage.end_all_sessions(bob, T0 + 2500, cut_off=True) == [theirs.id]
    other = await storage.get_user(bob)
    assert other is not None
    assert other.tokens_valid_after == T0 + 2000
    snapshot = await storage.load_revocations(T0 + 6)
    assert snapshot.ended == {
        spare.id: (alice, T0 + 7),
        kept.id: (alice, T0 + 10),
        theirs.id: (bob, T0 + 2500),
    }
    assert snapshot.cutoffs == {bob: T0 + 2000}
    assert (await storage.load_revocations(T0 + 3000)).cutoffs == {}


async def test_last_seen_is_batched_and_never_moves_back(storage: Storage) -> None:
    alice = await storage.create_user("alice", "h", now_ms=T0)
    one, two, gone = start(), start(), start()
    for session in (one, two, gone):
        await storage.create_session(alice, session)
    await storage.end_session(alice, gone.id, T0 + 1)
    assert await storage.touch_sessions({}) == 0
    changed = await storage.touch_sessions(
        {one.id: T0 + 500, two.id: T0 - 5, gone.id: T0 + 500, new_session_id(): T0}
    )
    assert changed == 1  # two's time is older than it has; gone is ended; the last is unknown
    seen = {s.id: s.last_seen_at for s in await storage.list_sessions(alice, T0 + 600)}
    assert seen == {one.id: T0 + 500, two.id: T0}
    with pytest.raises(ValueError, match="at most 10000"):
        await storage.touch_sessions({new_session_id(): T0 for _ in range(10_001)})


async def test_pruning_drops_long_gone_sessions_only(storage: Storage) -> None:
    alice = await storage.create_user("alice", "h", now_ms=T0)
    expired, ended, live = start(T0, ttl=HOUR), start(T0), start(T0)
    for session in (expired, ended, live):
        await storage.create_session(alice, session)
    await storage.end_session(alice, ended.id, T0 + 10)
    assert await storage.prune_sessions(T0 + 5) == 0
    assert await storage.prune_sessions(T0 + 2 * HOUR) == 2
    remaining = await storage.list_sessions(alice, T0 + 2 * HOUR, include_ended=True)
    assert [s.id for s in remaining] == [live.id]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.create_session(1, start(id="short")), "session id"),
        (lambda s: s.create_session(1, start(address="x" * 65)), "address"),
        (lambda s: s.create_session(1, start(user_agent="x" * 513)), "user agent"),
        (lambda s: s.create_session(1, start(device="a\x00b")), "device"),
        (lambda s: s.create_session(1, start(created_at=-1)), "created_at"),
        (lambda s: s.create_session(1, start(expires_at=2**53)), "expires_at"),
        (lambda s: s.create_session(True, start()), "user id"),
        (lambda s: s.list_sessions(1, 1.5), "time"),
        (lambda s: s.end_session(1, "../../etc", 0), "session id"),
        (lambda s: s.touch_sessions({"nope": 1}), "session id"),
        (lambda s: s.touch_sessions({new_session_id(): 10**400}), "last seen"),
        (lambda s: s.load_revocations(-5), "time"),
        (lambda s: s.list_users("x" * 65, 1, 10), "search"),
        (lambda s: s.list_users("", 0, 10), "page"),
        (lambda s: s.list_users("", 1, 101), "limit"),
        (lambda s: s.list_users("", 1, True), "limit"),
        (lambda s: s.account_stats(T0, 0), "days"),
        (lambda s: s.account_stats(T0, 367), "days"),
        (lambda s: s.get_user(0), "user id"),
        (lambda s: s.delete_user(2**63), "user id"),
    ],
)
async def test_arguments_out_of_range_are_refused_before_storing(
    storage: Storage, call: Any, message: str
) -> None:
    await storage.create_user("alice", "h", now_ms=T0)
    with pytest.raises(ValueError, match=message):
        await call(storage)
    assert await storage.list_sessions(1, T0, include_ended=True) == []


# -- administration ------------------------------------------------------------------------------


async def library_for(storage: Storage, user_id: int) -> None:
    await storage.set_favorite(user_id, SetFavorite(URLS[0], True))
    await storage.set_favorite(user_id, SetFavorite(URLS[1], True))
    await storage.set_status(user_id, SetStatus(URLS[2], "Watching", 3))
    await storage.save_episode_review(user_id, SaveEpisodeReview(URLS[2], 1, "good", 0, False), T0)


async def test_users_are_listed_with_search_pages_and_library_sizes(storage: Storage) -> None:
    await storage.import_dramas(sample_records())
    names = ["alice", "Alicia", "bob", "al_x", "alpha%"]
    ids = [await storage.create_user(name, "h", now_ms=T0 + n) for n, name in enumerate(names)]
    await library_for(storage, ids[0])
    seen = start()
    await storage.create_session(ids[0], seen)
    await storage.touch_sessions({seen.id: T0 + 99})
    await storage.set_admin(ids[2], True)

    page = await storage.list_users("", 1, 2)
    assert page.total == 5
    assert [u.username for u in page.users] == ["alice", "Alicia"]
    first = page.users[0]
    assert (first.favorites, first.statuses, first.episode_reviews) == (2, 1, 1)
    assert (first.last_seen_at, first.created_at, first.is_admin) == (T0 + 99, T0, False)
    assert page.users[1].last_seen_at is None
    assert first.to_json()["library"] == {"favorites": 2, "statuses": 1, "episodeReviews": 1}
    second = await storage.list_users("", 2, 2)
    assert [u.username for u in second.users] == ["bob", "al_x"]
    assert second.users[0].is_admin
    assert (await storage.list_users("", 4, 2)).users == []

    assert [u.username for u in (await storage.list_users("ALI", 1, 10)).users] == [
        "alice",
        "Alicia",
    ]
    # LIKE's wildcards are plain characters in a search.
    assert [u.username for u in (await storage.list_users("_", 1, 10)).users] == ["al_x"]
    assert [u.username for u in (await storage.list_users("%", 1, 10)).users] == ["alpha%"]
    assert (await storage.list_users("zzz", 1, 10)).total == 0


async def test_stats_count_registrations_per_day_and_active_sessions(storage: Storage) -> None:
    today = (T0 // DAY_MS) * DAY_MS
    for n, at in enumerate([today - 3 * DAY_MS, today - DAY_MS + 5, today - DAY_MS + 9, today]):
        await storage.create_user(f"user{n}", "h", now_ms=at)
    await storage.create_session(1, start(T0))
    await storage.create_session(2, start(T0, ttl=1))  # expired by now
    ended = start(T0)
    await storage.create_session(3, ended)
    await storage.end_session(3, ended.id, T0 + 1)
    stats = await storage.account_stats(T0 + 10, 2)
    assert stats.users == 4
    assert stats.active_sessions == 1
    assert stats.registrations == [("2023-11-13", 2), ("2023-11-14", 1)]
    week = await storage.account_stats(T0 + 10, 7)
    assert [count for _, count in week.registrations] == [1, 2, 1]
    assert week.to_json()["registrationsPerDay"][0] == {"day": "2023-11-11", "count": 1}


async def test_export_holds_everything_stored_and_no_hash(storage: Storage) -> None:
    await storage.import_dramas(sample_records())
    alice = await storage.create_user("alice", "secret-hash", now_ms=T0, session=start())
    await library_for(storage, alice)
    await storage.add_player_status(alice, "ROOM1", '{"roomCode":"ROOM1"}', T0)
    exported = await storage.export_user(alice)
    assert exported is not None
    data = exported.to_json()
    assert data["user"] == {
        "id": alice,
        "username": "alice",
        "createdAt": T0,
        "isAdmin": False,
        "isBanned": False,
        "tokensValidAfter": 0,
    }
    assert "secret-hash" not in repr(data)
    assert data["library"]["favorites"] == sorted(URLS[:2])
    assert [e["seq"] for e in data["events"]] == [1, 2, 3, 4]
    assert data["events"][0]["name"] == "favorite_updated"
    assert data["sessions"][0]["device"] == "Firefox on Windows"
    assert data["playerStatuses"] == [
        {"roomCode": "ROOM1", "status": {"roomCode": "ROOM1"}, "createdAt": T0}
    ]
    assert await storage.export_user(alice + 1) is None


async def test_deleting_a_user_removes_everything_about_them(storage: Storage) -> None:
    await storage.import_dramas(sample_records())
    alice = await storage.create_user("alice", "h", now_ms=T0, session=start())
    bob = await storage.create_user("bob", "h", now_ms=T0, session=start())
    await library_for(storage, alice)
    await library_for(storage, bob)
    await storage.add_player_status(alice, "ROOM1", "{}", T0)
    ended = await storage.end_all_sessions(alice, T0 + 1)
    assert await storage.delete_user(alice)
    assert not await storage.delete_user(alice)
    assert await storage.get_user(alice) is None
    assert await storage.get_library(alice) is None
    assert await storage.export_user(alice) is None
    assert not (await storage.read_events(alice, 0, 10)).events
    assert await storage.player_statuses("ROOM1", None, 0) == []
    assert ended[0] not in (await storage.load_revocations(0)).ended
    # Bob is untouched, and alice's name is free again.
    assert (await storage.list_users("", 1, 10)).total == 1
    bob_export = await storage.export_user(bob)
    assert bob_export is not None
    assert len(bob_export.events) == 4
    assert await storage.create_user("alice", "h", now_ms=T0) > bob


# -- databases from before accounts --------------------------------------------------------------


async def test_a_database_from_before_accounts_is_migrated_and_keeps_its_users(
    backend: str, tmp_path: Path
) -> None:
    if backend == "sqlite":
        files = sqlite_backend.migration_files()
        path = tmp_path / "before.db"
        with sqlite3.connect(path) as conn:
            conn.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
            )
            for version, name, sql in files:
                if "accounts" in name:
                    break
                conn.executescript(sql)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (version, name))
            conn.execute("INSERT INTO users (username, password) VALUES ('old', 'old-hash')")
        settings = make_settings(tmp_path, database_url=f"sqlite:///{path}")
        async with open_storage(settings) as storage:
            await check_adopted(storage)
        return
    files = postgres_backend.migration_files()
    async with fresh_schema() as (url, _name):
        script = [
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at BIGINT NOT NULL);"
        ]
        for version, name, sql in files:
            if "accounts" in name:
                break
            script += [sql, f"INSERT INTO schema_migrations VALUES ({version}, '{name}', 0);"]
        script.append("INSERT INTO users (username, password) VALUES ('old', 'old-hash');")
        await admin_execute(url, "\n".join(script))
        settings = make_settings(tmp_path, database_url=url)
        async with open_storage(settings) as storage:
            await check_adopted(storage)


async def check_adopted(storage: Storage) -> None:
    old = await storage.get_user_by_username("old")
    assert old is not None
    assert (old.password_hash, old.is_admin, old.is_banned) == ("old-hash", False, False)
    assert (old.created_at, old.tokens_valid_after) == (None, 0)  # never recorded: NULL
    assert await storage.list_sessions(old.id, T0) == []
    session = start()
    await storage.create_session(old.id, session)
    assert [s.id for s in await storage.list_sessions(old.id, T0)] == [session.id]
    (row,) = (await storage.list_users("old", 1, 10)).users
    assert row.created_at is None
