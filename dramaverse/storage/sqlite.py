"""The embedded SQLite backend: a file on disk, WAL mode, foreign keys on.

SQLite calls block, so each storage call runs in a worker thread (``trio.to_thread``) and the Trio
loop never waits on the disk. One writer connection serialises writes (SQLite allows one writer
anyway); a small pool of reader connections serves reads concurrently thanks to WAL.

Resource handling: :func:`open_sqlite` opens every connection and closes them on exit, shielded.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import outcome
import trio

from dramaverse.domain.events import EventRange, UserEvent
from dramaverse.domain.library import (
    LibraryEvent,
    SaveEpisodeReview,
    SetFavorite,
    SetStatus,
    favorite_event,
    review_event,
    status_event,
)
from dramaverse.errors import Conflict, NotFound, StorageUnavailable, Unauthorized
from dramaverse.storage.base import CatalogRow, ImportResult, Library, WriteResult
from dramaverse.storage.migrations import bundled
from dramaverse.storage.sqlite_accounts import SqliteAccounts
from dramaverse.storage.sqlite_sessions import SqliteSessions

log = logging.getLogger(__name__)
T = TypeVar("T")
ProgressFn = Callable[[int, int], None]

_BUSY_TIMEOUT_MS = 5000
_MAX_BATCH = 256  # writes per group-commit transaction
HEADS_CHUNK = 500  # user ids per IN (...) of event_heads (SQLite limits bound parameters)


@dataclass(eq=False)
class _WriteJob(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    wake: trio.Event = field(default_factory=trio.Event)  # done, or asked to lead
    outcome: outcome.Outcome[T] | None = None


def _batch_failure(exc: Exception) -> Exception:
    """A fresh exception per job for a failure shared by the whole batch."""
    if isinstance(exc, StorageUnavailable):
        return StorageUnavailable(exc.message)
    return StorageUnavailable(f"The database write failed: {exc}")


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every bundled migration, in order."""
    return bundled("sqlite")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


class SqliteStorage(SqliteAccounts, SqliteSessions):
    """Storage on one SQLite file. Create with :func:`open_sqlite`.

    The account and session methods are in ``sqlite_accounts.py`` and ``sqlite_sessions.py``."""

    def __init__(self, path: Path, readers: int = 2) -> None:
        self.path = path
        self._reader_count = readers
        self._writer: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        self._write_limiter = trio.CapacityLimiter(1)
        self._queue: list[_WriteJob[Any]] = []  # writes waiting for the next transaction
        self._leading = False  # a caller is running batches right now
        self._read_limiter = trio.CapacityLimiter(readers)

    # -- plumbing ---------------------------------------------------------------------------

    def _open_all(self) -> None:
        if self.path.parent != Path():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = _connect(self.path)
        mode = writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warning("SQLite refused WAL mode (got %s); reads will wait for writes", mode)
        self._writer = writer
        self._readers = [_connect(self.path) for _ in range(self._reader_count)]

    def _close_all(self) -> None:
        for conn in [*self._readers, *([self._writer] if self._writer else [])]:
            conn.close()
        self._readers.clear()
        self._writer = None

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a write transaction on the writer connection; return after its commit.

        Group commit: writes that queue up while a transaction is running are run together in
        the next one (one thread hop), each inside its own savepoint, so a write that raises (a
        409 conflict, an unknown drama) is rolled back alone. No caller hears "done" before the
        COMMIT that holds its write; a failed COMMIT fails every write of the batch.

        There is no writer task: the first caller becomes the leader and runs batches (shielded:
        a batch once taken always completes and reports) until its own write is done, then hands
        the lead to the oldest queued write's caller. A caller cancelled while its write is still
        queued takes it out of the queue, so a cancelled write never runs late.
        """
        if self._writer is None:
            raise StorageUnavailable("The database is closed.")
        job: _WriteJob[T] = _WriteJob(fn)
        self._queue.append(job)
        if self._leading:
            try:
                await job.wake.wait()
            except BaseException:
                if job.outcome is None and job in self._queue:
                    self._queue.remove(job)
                    if job.wake.is_set():  # handed the lead just as it was cancelled: pass it on
                        self._pass_lead()
                raise
        if job.outcome is None:  # woken to lead
            self._leading = True
            with trio.CancelScope(shield=True):
                while job.outcome is None:
                    batch = self._queue[:_MAX_BATCH]
                    del self._queue[:_MAX_BATCH]
                    try:
                        await trio.to_thread.run_sync(
                            self._run_batch, batch, limiter=self._write_limiter
                        )
                    finally:
                        for done in batch:
                            if done.outcome is None:  # the batch itself blew up
                                failure = StorageUnavailable("The database write failed.")
                                done.outcome = outcome.Error(failure)
                            done.wake.set()
            self._pass_lead()
        assert job.outcome is not None
        return job.outcome.unwrap()

    def _pass_lead(self) -> None:
        if self._queue:
            self._queue[0].wake.set()
        else:
            self._leading = False

    def _run_batch(self, batch: list[_WriteJob[Any]]) -> None:
        """In the worker thread: BEGIN, each job in a savepoint, COMMIT."""
        conn = self._writer
        if conn is None:
            for job in batch:
                job.outcome = outcome.Error(StorageUnavailable("The database is closed."))
            return
        try:
            with _translate_errors():
                conn.execute("BEGIN IMMEDIATE")
        except Exception as exc:
            for job in batch:
                job.outcome = outcome.Error(_batch_failure(exc))
            return
        alone = len(batch) == 1
        for job in batch:
            if not alone:
                conn.execute("SAVEPOINT job")
            try:
                with _translate_errors():
                    value = job.fn(conn)
            except Exception as exc:
                if alone:
                    conn.execute("ROLLBACK")
                    job.outcome = outcome.Error(exc)
                    return
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                job.outcome = outcome.Error(exc)
            else:
                if not alone:
                    conn.execute("RELEASE job")
                job.outcome = outcome.Value(value)
        try:
            with _translate_errors():
                conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for job in batch:
                if isinstance(job.outcome, outcome.Value):
                    job.outcome = outcome.Error(_batch_failure(exc))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a read transaction (one consistent snapshot) on a pooled reader."""
        async with self._read_limiter:
            conn = self._readers.pop()
            try:

                def run() -> T:
                    with _translate_errors():
                        conn.execute("BEGIN")
                        try:
                            return fn(conn)
                        finally:
                            conn.execute("COMMIT")

                return await trio.to_thread.run_sync(run)
            finally:
                self._readers.append(conn)

    # -- schema -----------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        def run() -> list[str]:
            conn = self._writer
            assert conn is not None
            with _translate_errors():
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
                )
                done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
                applied = []
                for version, name, sql in migration_files():
                    if version in done:
                        continue
                    # executescript commits first and runs the script verbatim, so the script
                    # itself carries BEGIN/COMMIT: the migration and its record land together.
                    # The record goes first: if another process applied this migration since
                    # we looked (BEGIN IMMEDIATE waited for it), the insert fails and we skip.
                    try:
                        conn.executescript(
                            "BEGIN IMMEDIATE;\n"
                            "INSERT INTO schema_migrations (version, name, applied_at) "
                            f"VALUES ({version}, '{name}', {int(time.time())});\n"
                            f"{sql}\n;"
                            "COMMIT;"
                        )
                    except sqlite3.IntegrityError:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        if _migration_recorded(conn, version):
                            continue  # applied concurrently by another process
                        raise
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                    log.info("applied migration %s", name)
                    applied.append(name)
                return applied

        return await trio.to_thread.run_sync(run, limiter=self._write_limiter)

    async def applied_migrations(self) -> list[str]:
        def run(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT name FROM schema_migrations ORDER BY version").fetchall()
            return [row[0] for row in rows]

        return await self._read(run)

    # -- catalog ----------------------------------------------------------------------------

    async def load_catalog_rows(self) -> list[CatalogRow]:
        def run(conn: sqlite3.Connection) -> list[CatalogRow]:
            # rowid order is insertion order; an upsert keeps a drama's rowid, so its place.
            rows = conn.execute("SELECT url, title, data FROM dramas ORDER BY rowid").fetchall()
            return [CatalogRow(url, title, data or "{}") for url, title, data in rows]

        return await self._read(run)

    async def load_catalog(self) -> list[dict[str, Any]]:
        return [row.record() for row in await self.load_catalog_rows()]

    async def catalog_revision(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT value FROM meta WHERE key = 'catalog_revision'").fetchone()
            return int(row[0]) if row else 0

        return await self._read(run)

    async def count_dramas(self) -> int:
        return await self._read(
            lambda conn: int(conn.execute("SELECT count(*) FROM dramas").fetchone()[0])
        )

    async def import_dramas(
        self, records: Sequence[Mapping[str, Any]], progress: ProgressFn | None = None
    ) -> ImportResult:
        def run(conn: sqlite3.Connection) -> ImportResult:
            before = conn.execute("SELECT count(*) FROM dramas").fetchone()[0]
            changed = 0
            total = len(records)
            for index, record in enumerate(records):
                rest = {k: v for k, v in record.items() if k not in ("url", "title")}
                data = json.dumps(rest, ensure_ascii=False, separators=(",", ":"))
                # An upsert, never INSERT OR REPLACE: REPLACE deletes the old row first, and
                # with foreign keys on that cascades into every user's favorites and reviews.
                cur = conn.execute(
                    "INSERT INTO dramas (url, title, data) VALUES (?, ?, ?) "
                    "ON CONFLICT (url) DO UPDATE SET title = excluded.title, data = excluded.data "
                    "WHERE dramas.title IS NOT excluded.title OR dramas.data IS NOT excluded.data",
                    (record["url"], record["title"], data),
                )
                changed += cur.rowcount
                if progress is not None and (index % 1000 == 999 or index == total - 1):
                    progress(index + 1, total)
            after = conn.execute("SELECT count(*) FROM dramas").fetchone()[0]
            if changed:
                conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'catalog_revision'")
            revision = conn.execute(
                "SELECT value FROM meta WHERE key = 'catalog_revision'"
            ).fetchone()[0]
            inserted = after - before
            return ImportResult(inserted, changed - inserted, total - changed, int(revision))

        return await self._write(run)

    # -- library ----------------------------------------------------------------------------

    async def get_library(self, user_id: int) -> Library | None:
        return await self._read(lambda conn: self._library_in(conn, user_id))

    @staticmethod
    def _library_in(conn: sqlite3.Connection, user_id: int) -> Library | None:
        if conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
            return None
        library = Library()
        library.favorites = [
            row[0]
            for row in conn.execute(
                "SELECT drama_url FROM user_favorites WHERE user_id = ? ORDER BY drama_url",
                (user_id,),
            )
        ]
        for url, status, episode in conn.execute(
            "SELECT drama_url, status, currentEpisode FROM user_statuses "
            "WHERE user_id = ? ORDER BY drama_url",
            (user_id,),
        ):
            library.statuses[url] = {"status": status, "currentEpisode": episode}
        for url, number, text, updated_at in conn.execute(
            "SELECT drama_url, episode_number, review_text, updated_at "
            "FROM user_episode_reviews WHERE user_id = ? ORDER BY drama_url, episode_number",
            (user_id,),
        ):
            library.episode_reviews.setdefault(url, {})[str(number)] = {
                "text": text,
                "updatedAt": updated_at,
            }
        return library

    async def set_favorite(self, user_id: int, change: SetFavorite) -> WriteResult:
        def run(conn: sqlite3.Connection) -> WriteResult:
            _check_user_and_drama(conn, user_id, change.drama_url)
            if change.is_favorite:
                sql = "INSERT OR IGNORE INTO user_favorites (user_id, drama_url) VALUES (?, ?)"
            else:
                sql = "DELETE FROM user_favorites WHERE user_id = ? AND drama_url = ?"
            cur = conn.execute(sql, (user_id, change.drama_url))
            if cur.rowcount > 0:
                event = favorite_event(change.drama_url, change.is_favorite)
                return WriteResult(_append_event(conn, user_id, event))
            return WriteResult(None)

        return await self._write(run)

    async def set_status(self, user_id: int, change: SetStatus) -> WriteResult:
        def run(conn: sqlite3.Connection) -> WriteResult:
            _check_user_and_drama(conn, user_id, change.drama_url)
            if not change.status:
                cur = conn.execute(
                    "DELETE FROM user_statuses WHERE user_id = ? AND drama_url = ?",
                    (user_id, change.drama_url),
                )
                if not cur.rowcount:
                    return WriteResult(None)
                return WriteResult(
                    _append_event(conn, user_id, status_event(change.drama_url, None))
                )
            conn.execute(
                "INSERT INTO user_statuses (user_id, drama_url, status, currentEpisode) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (user_id, drama_url) DO UPDATE SET "
                "status = excluded.status, currentEpisode = excluded.currentEpisode",
                (user_id, change.drama_url, change.status, change.current_episode),
            )
            # Every accepted set is announced, changed or not, as the original server does.
            event = status_event(change.drama_url, change.status, change.current_episode)
            return WriteResult(_append_event(conn, user_id, event))

        return await self._write(run)

    async def save_episode_review(
        self, user_id: int, change: SaveEpisodeReview, now_ms: int
    ) -> WriteResult:
        key = (user_id, change.drama_url, change.episode_number)

        def run(conn: sqlite3.Connection) -> WriteResult:
            _check_user_and_drama(conn, user_id, change.drama_url)
            if change.is_delete:
                cur = conn.execute(
                    "DELETE FROM user_episode_reviews "
                    "WHERE user_id = ? AND drama_url = ? AND episode_number = ?",
                    key,
                )
                if not cur.rowcount:
                    return WriteResult(None)
                event = review_event(change.drama_url, change.episode_number, None)
                return WriteResult(_append_event(conn, user_id, event))
            row = conn.execute(
                "SELECT updated_at, review_text FROM user_episode_reviews "
                "WHERE user_id = ? AND drama_url = ? AND episode_number = ?",
                key,
            ).fetchone()
            if row is not None and not change.force and row[0] > change.client_updated_at:
                raise Conflict(
                    "Conflict detected.", serverVersion={"text": row[1], "updatedAt": row[0]}
                )
            # Never move a review's clock backwards, even if the server clock does.
            updated_at = now_ms if row is None else max(now_ms, int(row[0]) + 1)
            conn.execute(
                "INSERT INTO user_episode_reviews "
                "(user_id, drama_url, episode_number, review_text, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, drama_url, episode_number) "
                "DO UPDATE SET review_text = excluded.review_text, "
                "updated_at = excluded.updated_at",
                (*key, change.text, updated_at),
            )
            event = review_event(change.drama_url, change.episode_number, change.text, updated_at)
            return WriteResult(_append_event(conn, user_id, event), updated_at)

        return await self._write(run)

    async def user_exists(self, user_id: int) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is not None
            )

        return await self._read(run)

    # -- event log --------------------------------------------------------------------------

    async def event_head(self, user_id: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return _head(conn, user_id)

        return await self._read(run)

    async def event_heads(self, user_ids: Sequence[int]) -> dict[int, int]:
        ids = list(dict.fromkeys(user_ids))

        def run(conn: sqlite3.Connection) -> dict[int, int]:
            heads: dict[int, int] = {}
            for start in range(0, len(ids), HEADS_CHUNK):
                chunk = ids[start : start + HEADS_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT user_id, last_seq FROM user_event_heads WHERE user_id IN ({marks})",
                    chunk,
                )
                heads.update((int(user), int(seq)) for user, seq in rows)
            return heads

        return await self._read(run) if ids else {}

    async def read_events(self, user_id: int, after: int, limit: int) -> EventRange:
        def run(conn: sqlite3.Connection) -> EventRange:
            head = _head(conn, user_id)
            if after > head or after < 0:
                return EventRange([], head, complete=False)
            rows = conn.execute(
                "SELECT seq, name, payload FROM user_events WHERE user_id = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (user_id, after, limit),
            ).fetchall()
            events = [UserEvent(user_id, seq, name, json.loads(data)) for seq, name, data in rows]
            complete = after == head or (bool(events) and events[0].seq == after + 1)
            return EventRange(events, head, complete)

        return await self._read(run)

    async def prune_events(self, keep_per_user: int, older_than_ms: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            by_age = conn.execute("DELETE FROM user_events WHERE created_at < ?", (older_than_ms,))
            by_count = conn.execute(
                "DELETE FROM user_events WHERE seq <= (SELECT h.last_seq FROM user_event_heads h "
                "WHERE h.user_id = user_events.user_id) - ?",
                (keep_per_user,),
            )
            return int(by_age.rowcount + by_count.rowcount)

        return await self._write(run)

    # -- watch parties ----------------------------------------------------------------------

    async def add_player_status(
        self, user_id: int, room_code: str, status_json: str, now_ms: int, keep: int = 5
    ) -> None:
        _check_keep(keep)

        def run(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
                raise Unauthorized("Invalid or expired token")
            conn.execute(
                "INSERT INTO player_statuses (user_id, room_code, status, created_at) "
                "VALUES (?, ?, ?, ?)",
                (user_id, room_code, status_json, now_ms),
            )
            # Writes are serialised (one writer), so no concurrent add can slip in between.
            conn.execute(
                "DELETE FROM player_statuses WHERE user_id = ? AND room_code = ? AND id <= "
                "(SELECT id FROM player_statuses WHERE user_id = ? AND room_code = ? "
                "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (user_id, room_code, user_id, room_code, keep),
            )

        await self._write(run)

    async def player_statuses(
        self, room_code: str, user_id: int | None, since_ms: int
    ) -> list[tuple[int, str]]:
        def run(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            if user_id is None:
                rows = conn.execute(
                    "SELECT user_id, status FROM player_statuses "
                    "WHERE room_code = ? AND created_at >= ? ORDER BY id",
                    (room_code, since_ms),
                )
            else:
                rows = conn.execute(
                    "SELECT user_id, status FROM player_statuses "
                    "WHERE user_id = ? AND room_code = ? AND created_at >= ? ORDER BY id",
                    (user_id, room_code, since_ms),
                )
            return [(int(user), status) for user, status in rows]

        return await self._read(run)

    async def prune_player_statuses(self, older_than_ms: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute("DELETE FROM player_statuses WHERE created_at < ?", (older_than_ms,))
            return int(cur.rowcount)

        return await self._write(run)

    async def save_room_snapshot(self, room_code: str, snapshot_json: str, now_ms: int) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO room_snapshots (room_code, snapshot, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (room_code) DO UPDATE SET "
                "snapshot = excluded.snapshot, updated_at = excluded.updated_at",
                (room_code, snapshot_json, now_ms),
            )

        await self._write(run)

    async def load_room_snapshots(self, updated_since_ms: int) -> list[tuple[str, str]]:
        def run(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = conn.execute(
                "SELECT room_code, snapshot FROM room_snapshots WHERE updated_at >= ? "
                "ORDER BY room_code",
                (updated_since_ms,),
            )
            return [(code, snapshot) for code, snapshot in rows]

        return await self._read(run)

    async def load_room_snapshot(self, room_code: str) -> str | None:
        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT snapshot FROM room_snapshots WHERE room_code = ?", (room_code,)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._read(run)

    async def delete_room_snapshot(self, room_code: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM room_snapshots WHERE room_code = ?", (room_code,))
            return cur.rowcount > 0

        return await self._write(run)

    async def prune_room_snapshots(self, older_than_ms: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute("DELETE FROM room_snapshots WHERE updated_at < ?", (older_than_ms,))
            return int(cur.rowcount)

        return await self._write(run)


def _check_keep(keep: int) -> None:
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be a whole number of at least 1 (got {keep!r})")


def _migration_recorded(conn: sqlite3.Connection, version: int) -> bool:
    found = conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,))
    return found.fetchone() is not None


def _head(conn: sqlite3.Connection, user_id: int) -> int:
    row = conn.execute(
        "SELECT last_seq FROM user_event_heads WHERE user_id = ?", (user_id,)
    ).fetchone()
    return int(row[0]) if row else 0


def _append_event(conn: sqlite3.Connection, user_id: int, event: LibraryEvent) -> UserEvent:
    """Log ``event`` with the user's next seq, inside the caller's write transaction.

    Writes are serialised (one writer, BEGIN IMMEDIATE), so the increment of the head row can
    neither skip nor repeat a number even with many concurrent writers.
    """
    seq = conn.execute(
        "INSERT INTO user_event_heads (user_id, last_seq) VALUES (?, 1) "
        "ON CONFLICT (user_id) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
        (user_id,),
    ).fetchone()[0]
    payload = json.dumps(event.payload, ensure_ascii=False, separators=(",", ":"))
    conn.execute(
        "INSERT INTO user_events (user_id, seq, name, payload, created_at) VALUES (?, ?, ?, ?, ?)",
        (user_id, seq, event.name, payload, int(time.time() * 1000)),
    )
    return UserEvent.of(user_id, int(seq), event)


def _check_user_and_drama(conn: sqlite3.Connection, user_id: int, drama_url: str) -> None:
    if conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
        raise Unauthorized("Invalid or expired token")
    if conn.execute("SELECT 1 FROM dramas WHERE url = ?", (drama_url,)).fetchone() is None:
        raise NotFound(f"Drama not found: {drama_url}")


class _translate_errors:
    """Turn SQLite's 'busy'/'locked' after the busy timeout into a retryable 503."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, sqlite3.OperationalError) and (
            "locked" in str(exc) or "busy" in str(exc) or "unable to open" in str(exc)
        ):
            raise StorageUnavailable("The database is busy or unavailable; try again.") from exc


@asynccontextmanager
async def open_sqlite(path: Path, *, readers: int = 2) -> AsyncIterator[SqliteStorage]:
    """Open (creating if needed) the SQLite database at ``path``."""
    storage = SqliteStorage(path, readers)
    try:
        await trio.to_thread.run_sync(storage._open_all)
    except sqlite3.Error as exc:
        raise StorageUnavailable(f"Cannot open the SQLite database at {path}: {exc}") from exc
    try:
        yield storage
    finally:
        with trio.CancelScope(shield=True):
            async with storage._write_limiter:  # let a running batch finish first
                await trio.to_thread.run_sync(storage._close_all)


def library_from(mapping: Mapping[str, Any]) -> Library:
    """Build a Library from a ``/api/user/data`` ``data`` object (tests and tools)."""
    return Library(
        list(mapping.get("favorites", [])),
        dict(mapping.get("statuses", {})),
        dict(mapping.get("episodeReviews", {})),
    )
