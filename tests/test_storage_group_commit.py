"""Group commit in the SQLite writer: concurrent writes share a transaction, not their fate."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from dramaverse.domain.library import SaveEpisodeReview, SetFavorite
from dramaverse.errors import Conflict, NotFound, StorageUnavailable
from dramaverse.storage.sqlite import SqliteStorage, open_sqlite
from tests.conftest import sample_records


async def _prepared(storage: SqliteStorage) -> tuple[int, list[str]]:
    await storage.migrate()
    await storage.import_dramas(sample_records())
    user = await storage.create_user("ana", "hash")
    return user, [record["url"] for record in sample_records()]


async def test_a_failing_write_in_a_batch_rolls_back_alone(tmp_path: Path) -> None:
    async with open_sqlite(tmp_path / "g.db") as storage:
        user, urls = await _prepared(storage)
        outcomes: dict[str, object] = {}

        async def write(name: str, url: str) -> None:
            try:
                outcomes[name] = await storage.set_favorite(user, SetFavorite(url, True))
            except NotFound as exc:
                outcomes[name] = exc

        # Started together, so the writer task finds them queued and commits them as one batch.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, "a", urls[0])
            nursery.start_soon(write, "bad", "https://example.invalid/none")
            nursery.start_soon(write, "b", urls[1])
        assert isinstance(outcomes["bad"], NotFound)
        library = await storage.get_library(user)
        assert library is not None
        assert sorted(library.favorites) == sorted(urls[:2])
        found = await storage.read_events(user, 0, 10)
        assert [event.seq for event in found.events] == [1, 2]  # the failed write took no seq


async def test_conflicts_in_one_batch_follow_the_rule(tmp_path: Path) -> None:
    async with open_sqlite(tmp_path / "g.db") as storage:
        user, urls = await _prepared(storage)
        first = await storage.save_episode_review(
            user, SaveEpisodeReview(urls[0], 1, "first", 0, False), now_ms=1000
        )
        assert first.updated_at == 1000
        results: list[object] = []

        async def save(text: str) -> None:
            change = SaveEpisodeReview(urls[0], 1, text, 1000, False)
            try:
                results.append(await storage.save_episode_review(user, change, now_ms=2000))
            except Conflict as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(save, "second")
            nursery.start_soon(save, "third")
        # Both were based on version 1000: the first applied wins, the other must get a 409.
        assert sum(isinstance(r, Conflict) for r in results) == 1
        library = await storage.get_library(user)
        assert library is not None
        assert library.episode_reviews[urls[0]]["1"]["text"] in ("second", "third")


async def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    async with open_sqlite(tmp_path / "g.db") as storage:
        user, urls = await _prepared(storage)
    with pytest.raises(StorageUnavailable, match="closed"):
        await storage.set_favorite(user, SetFavorite(urls[0], True))


async def test_a_busy_database_fails_the_batch_and_recovers(tmp_path: Path) -> None:
    async with open_sqlite(tmp_path / "g.db") as storage:
        user, urls = await _prepared(storage)
        # Another connection holds the write lock past the busy timeout: BEGIN IMMEDIATE fails.
        blocker = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            storage._writer.execute("PRAGMA busy_timeout = 50")  # type: ignore[union-attr]
            with pytest.raises(StorageUnavailable, match="busy"):
                await storage.set_favorite(user, SetFavorite(urls[0], True))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        result = await storage.set_favorite(user, SetFavorite(urls[0], True))
        assert result.event is not None
        assert result.event.seq == 1


async def test_a_write_cancelled_while_queued_never_runs(tmp_path: Path) -> None:
    async with open_sqlite(tmp_path / "g.db") as storage:
        user, urls = await _prepared(storage)
        blocker = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the leader's BEGIN waits on this lock
        first: list[object] = []

        async def leader() -> None:
            first.append(await storage.set_favorite(user, SetFavorite(urls[0], True)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader)
            await trio.sleep(0.05)
            with trio.move_on_after(0.05) as scope:  # queued behind the blocked batch
                await storage.set_favorite(user, SetFavorite(urls[1], True))
            assert scope.cancelled_caught
            blocker.execute("ROLLBACK")
            blocker.close()
        assert len(first) == 1
        library = await storage.get_library(user)
        assert library is not None
        assert library.favorites == [urls[0]]
        # The lead passed on cleanly: later writes still work.
        result = await storage.set_favorite(user, SetFavorite(urls[2], True))
        assert result.event is not None
        assert result.event.seq == 2


def test_concurrent_migrations_from_several_processes_are_safe(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import sys, trio\n"
        "from pathlib import Path\n"
        "from dramaverse.storage.sqlite import open_sqlite\n"
        "async def main():\n"
        "    async with open_sqlite(Path(sys.argv[1])) as s:\n"
        "        print(len(await s.migrate()))\n"
        "trio.run(main)\n"
    )
    db = str(tmp_path / "m.db")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, db], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    results = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], [err for _, err in results]
    applied = sum(int(out) for out, _ in results)
    conn = sqlite3.connect(db)
    try:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
    finally:
        conn.close()
    assert applied == len(versions) == len(set(versions))  # each applied exactly once
