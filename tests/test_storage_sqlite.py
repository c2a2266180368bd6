"""What is specific to the SQLite backend: the file, WAL, adopting old databases.

The behaviour every backend shares is tested once for all in ``test_storage_contract.py``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dramaverse.storage.sqlite import migration_files, open_sqlite

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
