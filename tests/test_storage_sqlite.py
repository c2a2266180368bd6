"""The SQLite backend: migrations, catalog import, library writes, concurrency."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from dramaverse.domain.library import SaveEpisodeReview, SetFavorite, SetStatus
from dramaverse.errors import Conflict, NotFound, Unauthorized, UsernameTaken
from dramaverse.storage.sqlite import migration_files, open_sqlite
from tests.conftest import sample_records

ALL_MIGRATIONS = [name for _, name, _ in migration_files()]


async def test_fresh_database_gets_every_migration(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    async with open_sqlite(path) as storage:
        assert await storage.migrate() == ALL_MIGRATIONS
        assert await storage.migrate() == []
        assert await storage.applied_migrations() == ALL_MIGRATIONS
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    assert {"users", "dramas", "user_favorites", "user_statuses", "user_episode_reviews"} <= tables


async def test_partially_migrated_database_is_brought_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    first_version, first_name, first_sql = migration_files()[0]
    with sqlite3.connect(path) as conn:
        conn.executescript(first_sql)
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at INTEGER NOT NULL)"
        )
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (first_version, first_name))
        conn.execute("INSERT INTO users (username, password) VALUES ('kept', 'hash')")
    async with open_sqlite(path) as storage:
        assert await storage.migrate() == ALL_MIGRATIONS[1:]
        user = await storage.get_user_by_username("kept")
        assert user is not None
        assert user.password_hash == "hash"


async def test_database_made_by_the_original_server_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "dramas.db"
    with sqlite3.connect(path) as conn:  # the Node server's layout, with its own bookkeeping table
        conn.executescript(
            """
            CREATE TABLE migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE);
            CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, username TEXT UNIQUE,
                password TEXT);
            CREATE TABLE dramas (url TEXT PRIMARY KEY, title TEXT, data TEXT);
            CREATE TABLE user_favorites (user_id INTEGER, drama_url TEXT,
                PRIMARY KEY (user_id, drama_url));
            INSERT INTO users (username, password) VALUES ('old', '$2a$08$abc');
            INSERT INTO dramas VALUES ('https://d/1', 'One', '{"rating": 9}');
            INSERT INTO user_favorites VALUES (1, 'https://d/1');
            """
        )
    async with open_sqlite(path) as storage:
        await storage.migrate()
        library = await storage.get_library(1)
        assert library is not None
        assert library.favorites == ["https://d/1"]
        assert await storage.load_catalog() == [{"url": "https://d/1", "title": "One", "rating": 9}]


async def test_reimport_keeps_users_data_and_catalog_order(tmp_path: Path) -> None:
    records = sample_records()
    async with open_sqlite(tmp_path / "x.db") as storage:
        await storage.migrate()
        first = await storage.import_dramas(records)
        assert (first.inserted, first.updated, first.unchanged) == (14, 0, 0)
        user = await storage.create_user("alice", "hash")
        url = records[3]["url"]
        await storage.set_favorite(user, SetFavorite(url, True))
        await storage.set_status(user, SetStatus(url, "Watching", 2))
        await storage.save_episode_review(user, SaveEpisodeReview(url, 1, "good", 0, False), 1000)

        same = await storage.import_dramas(records)
        assert (same.inserted, same.updated, same.unchanged) == (0, 0, 14)
        assert same.revision == first.revision  # nothing changed, nothing to reload

        changed = [dict(r) for r in records]
        changed[3]["rating"] = 1.5
        changed.append({**records[0], "url": "https://example.com/new", "title": "New"})
        result = await storage.import_dramas(changed)
        assert (result.inserted, result.updated, result.unchanged) == (1, 1, 13)
        assert result.revision == first.revision + 1

        library = await storage.get_library(user)
        assert library is not None
        assert library.favorites == [url]
        assert library.statuses == {url: {"status": "Watching", "currentEpisode": 2}}
        assert library.episode_reviews == {url: {"1": {"text": "good", "updatedAt": 1000}}}
        catalog = await storage.load_catalog()
        assert [d["url"] for d in catalog] == [d["url"] for d in changed]
        assert catalog[3]["rating"] == 1.5
        assert list(catalog[0])[:2] == ["url", "title"]


async def test_library_write_errors(tmp_path: Path) -> None:
    async with open_sqlite(tmp_path / "x.db") as storage:
        await storage.migrate()
        await storage.import_dramas(sample_records())
        url = sample_records()[0]["url"]
        user = await storage.create_user("alice", "hash")
        with pytest.raises(UsernameTaken):
            await storage.create_user("alice", "other")
        with pytest.raises(NotFound):
            await storage.set_favorite(user, SetFavorite("https://missing", True))
        with pytest.raises(Unauthorized):
            await storage.set_favorite(user + 100, SetFavorite(url, True))
        assert await storage.get_library(user + 100) is None
        saved = await storage.save_episode_review(
            user, SaveEpisodeReview(url, 1, "a", 0, False), 5000
        )
        assert saved.updated_at == 5000
        with pytest.raises(Conflict) as info:
            await storage.save_episode_review(
                user, SaveEpisodeReview(url, 1, "b", 4999, False), 6000
            )
        assert info.value.extra == {"serverVersion": {"text": "a", "updatedAt": 5000}}
        # The server clock went backwards: the stored stamp still moves forward.
        later = await storage.save_episode_review(
            user, SaveEpisodeReview(url, 1, "c", 5000, False), 10
        )
        assert later.updated_at == 5001


async def test_events_follow_the_original_servers_rules(tmp_path: Path) -> None:
    async with open_sqlite(tmp_path / "x.db") as storage:
        await storage.migrate()
        await storage.import_dramas(sample_records())
        url = sample_records()[0]["url"]
        user = await storage.create_user("alice", "hash")
        added = await storage.set_favorite(user, SetFavorite(url, True))
        assert added.event is not None
        assert added.event.payload == {"dramaUrl": url, "isFavorite": True}
        assert (await storage.set_favorite(user, SetFavorite(url, True))).event is None
        first = await storage.set_status(user, SetStatus(url, "Watching", 0))
        repeat = await storage.set_status(user, SetStatus(url, "Watching", 0))
        assert first.event is not None
        assert repeat.event is not None
        assert first.event.payload == repeat.event.payload  # every set is announced
        assert (first.event.seq, repeat.event.seq) == (2, 3)
        removed = await storage.set_status(user, SetStatus(url, "", 0))
        assert removed.event is not None
        assert removed.event.payload == {"dramaUrl": url, "statusInfo": None}
        assert (await storage.set_status(user, SetStatus(url, "", 0))).event is None
        missing = await storage.save_episode_review(
            user, SaveEpisodeReview(url, 2, "  ", 0, False), 1
        )
        assert missing.event is None


async def test_concurrent_writers_do_not_lose_writes(tmp_path: Path) -> None:
    records = sample_records()
    async with open_sqlite(tmp_path / "x.db") as storage:
        await storage.migrate()
        await storage.import_dramas(records)
        user = await storage.create_user("alice", "hash")

        async with trio.open_nursery() as nursery:
            for record in records:
                nursery.start_soon(storage.set_favorite, user, SetFavorite(record["url"], True))
                nursery.start_soon(storage.get_library, user)
        library = await storage.get_library(user)
        assert library is not None
        assert sorted(library.favorites) == sorted(r["url"] for r in records)


async def test_concurrent_writers_get_gapless_unique_sequence_numbers(tmp_path: Path) -> None:
    records = sample_records()
    async with open_sqlite(tmp_path / "x.db") as storage:
        await storage.migrate()
        await storage.import_dramas(records)
        alice = await storage.create_user("alice", "hash")
        bob = await storage.create_user("bob", "hash")
        seqs: dict[int, list[int]] = {alice: [], bob: []}

        async def write(user: int, index: int) -> None:
            url = records[index % len(records)]["url"]
            result = await storage.set_status(user, SetStatus(url, f"s{index}", index))
            assert result.event is not None
            seqs[user].append(result.event.seq)

        async with trio.open_nursery() as nursery:
            for index in range(60):
                nursery.start_soon(write, alice, index)
                nursery.start_soon(write, bob, index)
        for user in (alice, bob):
            assert sorted(seqs[user]) == list(range(1, 61))
            assert await storage.event_head(user) == 60
            logged = await storage.read_events(user, 0, 1000)
            assert [e.seq for e in logged.events] == list(range(1, 61))
            assert logged.complete


async def test_read_events_ranges_and_pruning(tmp_path: Path) -> None:
    records = sample_records()
    async with open_sqlite(tmp_path / "x.db") as storage:
        await storage.migrate()
        await storage.import_dramas(records)
        user = await storage.create_user("alice", "hash")
        for record in records[:6]:
            await storage.set_favorite(user, SetFavorite(record["url"], True))
        middle = await storage.read_events(user, 2, 2)
        assert [e.seq for e in middle.events] == [3, 4]
        assert (middle.head, middle.complete) == (6, True)
        assert (await storage.read_events(user, 6, 10)).events == []
        assert not (await storage.read_events(user, 7, 10)).complete  # ahead of the head
        assert not (await storage.read_events(user, -1, 10)).complete

        assert await storage.prune_events(keep_per_user=4, older_than_ms=0) == 2
        assert not (await storage.read_events(user, 1, 10)).complete  # seq 2 is gone
        kept = await storage.read_events(user, 2, 10)
        assert [e.seq for e in kept.events] == [3, 4, 5, 6]
        assert kept.complete
        # Pruning by age removes the rest, but numbering continues after the head.
        assert await storage.prune_events(keep_per_user=100, older_than_ms=2**62) == 4
        later = await storage.set_favorite(user, SetFavorite(records[7]["url"], True))
        assert later.event is not None
        assert later.event.seq == 7
