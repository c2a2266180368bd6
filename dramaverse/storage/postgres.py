"""The PostgreSQL backend: a pool of asyncpg connections shared by every task of the process.

asyncpg is an asyncio library; the server runs on Trio. This module is the only place that
crosses: each storage operation is one asyncio coroutine (acquire a pooled connection, run the
whole transaction, release) run through ``trio_asyncio.aio_as_trio`` on the process's
trio-asyncio loop, so an operation costs one crossing however many statements it runs. The loop
is the one current when the storage is opened (``runtime.serve`` opens it first); a command-line
tool that opens the storage without one gets a private loop for the storage's lifetime.

Concurrency: library writes run in READ COMMITTED transactions whose first statement upserts the
user's ``user_event_heads`` row (``ON CONFLICT DO UPDATE`` takes its row lock even when the row
exists). Writers of one user therefore run one after another, in any number of processes, while
writers of different users never wait for each other. Everything a write reads after that
(the stored review for the conflict rule, the next sequence number) is protected by the lock, so
sequence numbers are gapless and unique, and two racing review saves cannot both win. Catalog
imports lock the ``catalog_revision`` row first, so they serialise too. Reads of more than one
statement run in a read-only REPEATABLE READ transaction: one snapshot, like SQLite's readers.

Error handling: connection failures (refused, reset, killed by the server, the server starting
up or shutting down, too many connections, pool exhausted, timeouts) raise
:class:`~dramaverse.errors.StorageUnavailable` (HTTP 503) naming the server, never an asyncpg or
asyncio exception. A failure that means the server closed our connections also expires every
pooled connection, so the next operation connects afresh instead of finding dead ones one by one;
once PostgreSQL is back, operations succeed again without a restart. Values PostgreSQL cannot
store (NUL characters) raise BadRequest.

Resource handling: :func:`open_postgres` creates the pool (at least one connection, so a server
that is down is reported at start) and closes it on exit, shielded and bounded; leftover
connections are terminated after the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg
import trio
import trio_asyncio
from asyncpg import exceptions as pg_errors

from dramaverse.domain.events import EventRange, UserEvent
from dramaverse.domain.library import (
    SaveEpisodeReview,
    SetFavorite,
    SetStatus,
    favorite_event,
    review_event,
    status_event,
)
from dramaverse.errors import (
    BadRequest,
    Conflict,
    DramaverseError,
    NotFound,
    StorageUnavailable,
    Unauthorized,
)
from dramaverse.storage.base import CatalogRow, ImportResult, Library, WriteResult
from dramaverse.storage.migrations import bundled
from dramaverse.storage.postgres_accounts import PostgresAccounts
from dramaverse.storage.postgres_sessions import Connection, Job, PostgresSessions, Transaction

log = logging.getLogger(__name__)
T = TypeVar("T")
ProgressFn = Callable[[int, int], None]

# Migrations of one schema from several processes at once take turns on this advisory lock.
_MIGRATION_LOCK = "dramaverse.migrate:"
IMPORT_CHUNK = 1000
CONNECT_TIMEOUT = 10.0
ACQUIRE_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0
CLOSE_TIMEOUT = 5.0
IDLE_LIFETIME = 300.0


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every bundled PostgreSQL migration, in order."""
    return bundled("postgres")


def describe_url(url: str) -> str:
    """``host:port/dbname`` of a PostgreSQL URL, for messages: never the user or password."""
    parts = urlsplit(url)
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    host = parts.hostname or "the local socket"
    database = parts.path.lstrip("/") or parts.username or "postgres"
    return f"{host}:{port}/{database}"


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStorage(PostgresAccounts, PostgresSessions):
    """Storage on a PostgreSQL database. Create with :func:`open_postgres`.

    The account and session methods are in ``postgres_accounts.py`` and
    ``postgres_sessions.py``."""

    def __init__(
        self,
        pool: Any,
        loop: Any,
        where: str,
        pool_size: int,
        acquire_timeout: float = ACQUIRE_TIMEOUT,
    ) -> None:
        self.where = where
        self.pool_size = pool_size
        self._pool = pool
        self._loop = loop
        self._acquire_timeout = acquire_timeout
        self._closed = False

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, job: Job[T], transaction: Transaction = "write") -> T:
        """Run ``job`` on a pooled connection inside one asyncio coroutine: one crossing."""
        if self._closed:
            raise StorageUnavailable("The PostgreSQL storage is closed.")
        run = trio_asyncio.aio_as_trio(self._in_asyncio, loop=self._loop)
        try:
            result: T = await run(job, transaction)
        except asyncio.CancelledError:
            # The asyncio loop is shutting down under us (Trio's own cancellation arrives as
            # trio.Cancelled and passes through untouched).
            raise StorageUnavailable("The PostgreSQL storage is shutting down.") from None
        return result

    async def _in_asyncio(self, job: Job[T], transaction: Transaction) -> T:
        """asyncio side of :meth:`_run`: acquire, run the transaction, translate errors."""
        try:
            conn = await self._pool.acquire(timeout=self._acquire_timeout)
        except TimeoutError:
            raise StorageUnavailable(
                f"All {self.pool_size} connections to PostgreSQL at {self.where} stayed busy "
                f"for {self._acquire_timeout:g} s; try again."
            ) from None
        except Exception as exc:
            await self._raise_translated(exc)
        try:
            if transaction == "none":
                return await job(conn)
            options = {"isolation": "repeatable_read", "readonly": True}
            async with conn.transaction(**(options if transaction == "snapshot" else {})):
                return await job(conn)
        except DramaverseError:
            raise
        except Exception as exc:
            if _leaves_connection_unusable(exc):
                # Lost, timed out mid-statement, or the client protocol is in a state it cannot
                # explain: never hand such a connection back to the pool for reuse.
                with contextlib.suppress(pg_errors.InterfaceError):  # closed: already given back
                    conn.terminate()
            await self._raise_translated(exc)
        finally:
            try:
                await self._pool.release(conn)
            except Exception as exc:  # the pool drops a connection it cannot reset
                log.debug("dropping a PostgreSQL connection that failed to reset: %r", exc)

    async def _raise_translated(self, exc: Exception) -> NoReturn:
        """Raise ``exc`` mapped to our tree; errors that are not the database's pass as they are."""
        mapped = await self._translate(exc)
        if mapped is exc:
            raise exc
        raise mapped from exc

    async def _translate(self, exc: Exception) -> Exception:
        """Map an asyncpg/asyncio/OS error to our tree (unknown ones are returned as they are)."""
        where = self.where
        if isinstance(exc, TimeoutError):  # before OSError: TimeoutError is one
            return StorageUnavailable(f"PostgreSQL at {where} did not answer in time; try again.")
        if _is_connection_loss(exc):
            # The server closed our connections (restart, failover, pg_terminate_backend) or
            # cannot be reached: drop every pooled connection so none is tried again.
            await self._pool.expire_connections()
            return StorageUnavailable(f"PostgreSQL at {where} is unavailable ({_reason(exc)}).")
        if isinstance(
            exc,
            pg_errors.InsufficientResourcesError  # too many connections, disk full
            | pg_errors.TransactionRollbackError  # serialization failure, deadlock
            | pg_errors.QueryCanceledError  # statement_timeout set by an operator
            | pg_errors.LockNotAvailableError,
        ):
            return StorageUnavailable(f"PostgreSQL at {where} is busy ({_reason(exc)}); try again.")
        if isinstance(exc, pg_errors.UndefinedTableError):
            return StorageUnavailable(
                f"The database at {where} lacks tables ({_reason(exc)}); run `dramaverse migrate`."
            )
        if isinstance(exc, pg_errors.CharacterNotInRepertoireError) or (
            isinstance(exc, pg_errors.DataError) and "codec can't encode" in str(exc)
        ):
            return BadRequest("Invalid payload: text must be valid Unicode without NUL characters.")
        if isinstance(exc, pg_errors.DataError):
            return BadRequest(f"Invalid payload: the database refused a value ({_reason(exc)}).")
        if isinstance(
            exc, pg_errors.PostgresError | pg_errors.InterfaceError | pg_errors.InternalClientError
        ):
            log.error("unexpected PostgreSQL error", exc_info=exc)
            return DramaverseError(f"Unexpected database error ({type(exc).__name__}).")
        return exc

    # -- schema -----------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply pending migrations, each with its record in one transaction.

        Every transaction starts by taking a transaction-scoped advisory lock keyed by the
        schema, so several processes migrating at once take turns and each migration is applied
        exactly once; whoever comes second finds it recorded and skips it.
        """
        files = migration_files()

        async def job(conn: Connection) -> list[str]:
            applied = []
            for version, name, sql in files:
                async with conn.transaction():
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock("
                        "hashtext($1 || coalesce(current_schema(), '')))",
                        _MIGRATION_LOCK,
                    )
                    await conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                        " name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
                    )
                    done = await conn.fetchval(
                        "SELECT 1 FROM schema_migrations WHERE version = $1", version
                    )
                    if done:
                        continue
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) "
                        "VALUES ($1, $2, $3)",
                        version,
                        name,
                        int(time.time()),
                    )
                log.info("applied migration %s", name)
                applied.append(name)
            return applied

        return await self._run(job, "none")

    async def applied_migrations(self) -> list[str]:
        async def job(conn: Connection) -> list[str]:
            rows = await conn.fetch("SELECT name FROM schema_migrations ORDER BY version")
            return [row[0] for row in rows]

        return await self._run(job, "none")

    # -- users ------------------------------------------------------------------------------

    async def user_exists(self, user_id: int) -> bool:
        async def job(conn: Connection) -> bool:
            return await conn.fetchval("SELECT 1 FROM users WHERE id = $1", user_id) is not None

        return await self._run(job, "none")

    # -- catalog ----------------------------------------------------------------------------

    async def load_catalog_rows(self) -> list[CatalogRow]:
        async def job(conn: Connection) -> list[CatalogRow]:
            rows = await conn.fetch("SELECT url, title, data FROM dramas ORDER BY id")
            return [CatalogRow(url, title, data) for url, title, data in rows]

        return await self._run(job, "none")

    async def load_catalog(self) -> list[dict[str, Any]]:
        return [row.record() for row in await self.load_catalog_rows()]

    async def catalog_revision(self) -> int:
        async def job(conn: Connection) -> int:
            value = await conn.fetchval("SELECT value FROM meta WHERE key = 'catalog_revision'")
            return int(value or 0)

        return await self._run(job, "none")

    async def count_dramas(self) -> int:
        async def job(conn: Connection) -> int:
            return int(await conn.fetchval("SELECT count(*) FROM dramas"))

        return await self._run(job, "none")

    async def import_dramas(
        self, records: Sequence[Mapping[str, Any]], progress: ProgressFn | None = None
    ) -> ImportResult:
        """Upsert in chunks of ~1000 rows, one statement each; ``progress`` runs per chunk."""
        total = len(records)

        async def job(conn: Connection) -> ImportResult:
            # Locking the revision row serialises imports, so the counts below are exact.
            await conn.execute("SELECT value FROM meta WHERE key = 'catalog_revision' FOR UPDATE")
            before = await conn.fetchval("SELECT count(*) FROM dramas")
            changed = 0
            for start, end in _chunks(records):
                chunk = records[start:end]
                rows = await conn.fetch(
                    _UPSERT_DRAMAS,
                    [record["url"] for record in chunk],
                    [record["title"] for record in chunk],
                    [
                        _json({k: v for k, v in record.items() if k not in ("url", "title")})
                        for record in chunk
                    ],
                )
                changed += len(rows)
                if progress is not None and (end % IMPORT_CHUNK == 0 or end == total):
                    progress(end, total)
            after = await conn.fetchval("SELECT count(*) FROM dramas")
            if changed:
                revision = await conn.fetchval(
                    "UPDATE meta SET value = value + 1 WHERE key = 'catalog_revision' "
                    "RETURNING value"
                )
            else:
                revision = await conn.fetchval(
                    "SELECT value FROM meta WHERE key = 'catalog_revision'"
                )
            inserted = int(after - before)
            return ImportResult(inserted, changed - inserted, total - changed, int(revision))

        return await self._run(job)

    # -- library ----------------------------------------------------------------------------

    async def get_library(self, user_id: int) -> Library | None:
        return await self._run(lambda conn: self._library_in(conn, user_id), "snapshot")

    @staticmethod
    async def _library_in(conn: Connection, user_id: int) -> Library | None:
        if await conn.fetchval("SELECT 1 FROM users WHERE id = $1", user_id) is None:
            return None
        library = Library()
        # COLLATE "C" is byte order, which is SQLite's order for the same strings.
        favorites = await conn.fetch(
            "SELECT drama_url FROM user_favorites WHERE user_id = $1 "
            'ORDER BY drama_url COLLATE "C"',
            user_id,
        )
        library.favorites = [row[0] for row in favorites]
        for url, status, episode in await conn.fetch(
            "SELECT drama_url, status, current_episode FROM user_statuses "
            'WHERE user_id = $1 ORDER BY drama_url COLLATE "C"',
            user_id,
        ):
            library.statuses[url] = {"status": status, "currentEpisode": episode}
        for url, number, text, updated_at in await conn.fetch(
            "SELECT drama_url, episode_number, review_text, updated_at "
            "FROM user_episode_reviews WHERE user_id = $1 "
            'ORDER BY drama_url COLLATE "C", episode_number',
            user_id,
        ):
            library.episode_reviews.setdefault(url, {})[str(number)] = {
                "text": text,
                "updatedAt": updated_at,
            }
        return library

    # Library writes are single statements calling the functions of migration 0005: one round
    # trip each, in its own implicit transaction (see that migration for the why).

    async def set_favorite(self, user_id: int, change: SetFavorite) -> WriteResult:
        event = favorite_event(change.drama_url, change.is_favorite)

        async def job(conn: Connection) -> WriteResult:
            seq = await _call_write(
                conn,
                "SELECT dv_set_favorite($1, $2, $3, $4, $5)",
                user_id,
                change.drama_url,
                change.is_favorite,
                _json(event.payload),
                _now_ms(),
            )
            return WriteResult(None if seq is None else UserEvent.of(user_id, int(seq), event))

        return await self._run(job, "none")

    async def set_status(self, user_id: int, change: SetStatus) -> WriteResult:
        if change.status:
            event = status_event(change.drama_url, change.status, change.current_episode)
        else:
            event = status_event(change.drama_url, None)

        async def job(conn: Connection) -> WriteResult:
            seq = await _call_write(
                conn,
                "SELECT dv_set_status($1, $2, $3, $4, $5, $6)",
                user_id,
                change.drama_url,
                change.status,
                change.current_episode,
                _json(event.payload),
                _now_ms(),
            )
            return WriteResult(None if seq is None else UserEvent.of(user_id, int(seq), event))

        return await self._run(job, "none")

    async def save_episode_review(
        self, user_id: int, change: SaveEpisodeReview, now_ms: int
    ) -> WriteResult:
        async def job(conn: Connection) -> WriteResult:
            row = await _call_write(
                conn,
                "SELECT * FROM dv_save_review($1, $2, $3, $4, $5, $6, $7, $8)",
                user_id,
                change.drama_url,
                change.episode_number,
                change.text,
                change.is_delete,
                float(change.client_updated_at),
                change.force,
                now_ms,
                row=True,
            )
            seq, updated_at, conflict_text, conflict_updated = row
            if conflict_updated is not None:
                raise Conflict(
                    "Conflict detected.",
                    serverVersion={"text": conflict_text, "updatedAt": conflict_updated},
                )
            if seq is None:
                return WriteResult(None)
            if change.is_delete:
                event = review_event(change.drama_url, change.episode_number, None)
                return WriteResult(UserEvent.of(user_id, int(seq), event))
            event = review_event(change.drama_url, change.episode_number, change.text, updated_at)
            return WriteResult(UserEvent.of(user_id, int(seq), event), int(updated_at))

        return await self._run(job, "none")

    # -- event log --------------------------------------------------------------------------

    async def event_head(self, user_id: int) -> int:
        async def job(conn: Connection) -> int:
            return await _head(conn, user_id)

        return await self._run(job, "none")

    async def event_heads(self, user_ids: Sequence[int]) -> dict[int, int]:
        ids = list(dict.fromkeys(user_ids))

        async def job(conn: Connection) -> dict[int, int]:
            rows = await conn.fetch(
                "SELECT user_id, last_seq FROM user_event_heads WHERE user_id = ANY($1::bigint[])",
                ids,
            )
            return {int(row[0]): int(row[1]) for row in rows}

        return await self._run(job, "none") if ids else {}

    async def read_events(self, user_id: int, after: int, limit: int) -> EventRange:
        async def job(conn: Connection) -> EventRange:
            head = await _head(conn, user_id)
            if after > head or after < 0:
                return EventRange([], head, complete=False)
            rows = await conn.fetch(
                "SELECT seq, name, payload FROM user_events WHERE user_id = $1 AND seq > $2 "
                "ORDER BY seq LIMIT $3",
                user_id,
                after,
                limit,
            )
            events = [UserEvent(user_id, seq, name, json.loads(data)) for seq, name, data in rows]
            complete = after == head or (bool(events) and events[0].seq == after + 1)
            return EventRange(events, head, complete)

        return await self._run(job, "snapshot")

    async def prune_events(self, keep_per_user: int, older_than_ms: int) -> int:
        async def job(conn: Connection) -> int:
            by_age = await conn.execute(
                "DELETE FROM user_events WHERE created_at < $1", older_than_ms
            )
            by_count = await conn.execute(
                "DELETE FROM user_events e USING user_event_heads h "
                "WHERE h.user_id = e.user_id AND e.seq <= h.last_seq - $1",
                keep_per_user,
            )
            return _count(by_age) + _count(by_count)

        return await self._run(job)

    # -- watch parties ----------------------------------------------------------------------

    async def add_player_status(
        self, user_id: int, room_code: str, status_json: str, now_ms: int, keep: int = 5
    ) -> None:
        """Lock the user's row first, so adds for one user run one after another (also across
        processes) and the trim to ``keep`` sees every committed row. ``FOR NO KEY UPDATE``
        does not conflict with the key-share locks of foreign-key checks: library writes and
        statuses of other users never wait for it."""
        _check_keep(keep)

        async def job(conn: Connection) -> None:
            found = await conn.fetchval(
                "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE", user_id
            )
            if found is None:
                raise Unauthorized("Invalid or expired token")
            await conn.execute(
                "INSERT INTO player_statuses (user_id, room_code, status, created_at) "
                "VALUES ($1, $2, $3, $4)",
                user_id,
                room_code,
                status_json,
                now_ms,
            )
            await conn.execute(
                "DELETE FROM player_statuses WHERE user_id = $1 AND room_code = $2 AND id <= "
                "(SELECT id FROM player_statuses WHERE user_id = $1 AND room_code = $2 "
                "ORDER BY id DESC LIMIT 1 OFFSET $3)",
                user_id,
                room_code,
                keep,
            )

        await self._run(job)

    async def player_statuses(
        self, room_code: str, user_id: int | None, since_ms: int
    ) -> list[tuple[int, str]]:
        async def job(conn: Connection) -> list[tuple[int, str]]:
            if user_id is None:
                rows = await conn.fetch(
                    "SELECT user_id, status FROM player_statuses "
                    "WHERE room_code = $1 AND created_at >= $2 ORDER BY id",
                    room_code,
                    since_ms,
                )
            else:
                rows = await conn.fetch(
                    "SELECT user_id, status FROM player_statuses "
                    "WHERE user_id = $1 AND room_code = $2 AND created_at >= $3 ORDER BY id",
                    user_id,
                    room_code,
                    since_ms,
                )
            return [(int(user), status) for user, status in rows]

        return await self._run(job, "none")

    async def prune_player_statuses(self, older_than_ms: int) -> int:
        async def job(conn: Connection) -> int:
            status = await conn.execute(
                "DELETE FROM player_statuses WHERE created_at < $1", older_than_ms
            )
            return _count(status)

        return await self._run(job, "none")

    async def save_room_snapshot(self, room_code: str, snapshot_json: str, now_ms: int) -> None:
        async def job(conn: Connection) -> None:
            await conn.execute(
                "INSERT INTO room_snapshots (room_code, snapshot, updated_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (room_code) DO UPDATE SET "
                "snapshot = excluded.snapshot, updated_at = excluded.updated_at",
                room_code,
                snapshot_json,
                now_ms,
            )

        await self._run(job, "none")

    async def load_room_snapshots(self, updated_since_ms: int) -> list[tuple[str, str]]:
        async def job(conn: Connection) -> list[tuple[str, str]]:
            rows = await conn.fetch(
                "SELECT room_code, snapshot FROM room_snapshots WHERE updated_at >= $1 "
                'ORDER BY room_code COLLATE "C"',
                updated_since_ms,
            )
            return [(code, snapshot) for code, snapshot in rows]

        return await self._run(job, "none")

    async def load_room_snapshot(self, room_code: str) -> str | None:
        async def job(conn: Connection) -> str | None:
            value = await conn.fetchval(
                "SELECT snapshot FROM room_snapshots WHERE room_code = $1", room_code
            )
            return None if value is None else str(value)

        return await self._run(job, "none")

    async def delete_room_snapshot(self, room_code: str) -> bool:
        async def job(conn: Connection) -> bool:
            status = await conn.execute(
                "DELETE FROM room_snapshots WHERE room_code = $1", room_code
            )
            return _count(status) > 0

        return await self._run(job, "none")

    async def prune_room_snapshots(self, older_than_ms: int) -> int:
        async def job(conn: Connection) -> int:
            status = await conn.execute(
                "DELETE FROM room_snapshots WHERE updated_at < $1", older_than_ms
            )
            return _count(status)

        return await self._run(job, "none")


def _check_keep(keep: int) -> None:
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be a whole number of at least 1 (got {keep!r})")


_UPSERT_DRAMAS = (
    # An upsert that only touches rows whose content differs: unchanged rows are not rewritten
    # and not returned, so the returned rows are exactly the inserted plus the updated ones.
    # ORDER BY the ordinality hands out identity values, hence catalog places, in input order.
    "INSERT INTO dramas (url, title, data) "
    "SELECT u, t, d FROM unnest($1::text[], $2::text[], $3::text[]) "
    "WITH ORDINALITY AS r(u, t, d, n) "
    "ORDER BY n "
    "ON CONFLICT (url) DO UPDATE SET title = excluded.title, data = excluded.data "
    "WHERE dramas.title IS DISTINCT FROM excluded.title "
    "OR dramas.data IS DISTINCT FROM excluded.data "
    "RETURNING 1"
)


def _chunks(records: Sequence[Mapping[str, Any]]) -> Iterator[tuple[int, int]]:
    """[start, end) ranges of at most IMPORT_CHUNK records, ending on multiples of it.

    One INSERT ... ON CONFLICT cannot touch a row twice, so a url repeated in the input starts a
    new chunk: the later record then updates the earlier one, as a row-by-row upsert would.
    """
    start = 0
    seen: set[str] = set()
    for index, record in enumerate(records):
        url = record["url"]
        if url in seen or index - start == IMPORT_CHUNK:
            yield start, index
            start, seen = index, set()
        seen.add(url)
    if start < len(records):
        yield start, len(records)


async def _head(conn: Connection, user_id: int) -> int:
    value = await conn.fetchval("SELECT last_seq FROM user_event_heads WHERE user_id = $1", user_id)
    return int(value or 0)


async def _call_write(conn: Connection, sql: str, *args: Any, row: bool = False) -> Any:
    """Run one write function; map its refusals to the Storage protocol's errors."""
    try:
        if row:
            return await conn.fetchrow(sql, *args)
        return await conn.fetchval(sql, *args)
    except pg_errors.ForeignKeyViolationError:
        # The head row's foreign key: the user no longer exists (a valid token, deleted account).
        raise Unauthorized("Invalid or expired token") from None
    except pg_errors.PostgresError as exc:
        if getattr(exc, "sqlstate", None) == "P0002":
            raise NotFound(str(getattr(exc, "message", "") or exc)) from None
        raise


def _now_ms() -> int:
    return int(time.time() * 1000)


def _leaves_connection_unusable(exc: BaseException) -> bool:
    return isinstance(
        exc, TimeoutError | pg_errors.InterfaceError | pg_errors.InternalClientError
    ) or _is_connection_loss(exc)


def _is_connection_loss(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection (or the server) is gone, not a bad statement."""
    if isinstance(exc, pg_errors.InterfaceError):  # "connection is closed", "pool is closing"
        return "closed" in str(exc) or "closing" in str(exc)
    if isinstance(exc, pg_errors.InternalClientError):
        # e.g. "cannot switch to state 12; another operation (2) is in progress": the server's
        # FATAL goodbye (pg_terminate_backend, shutdown) arrived on an idle connection just
        # before its end of stream did.
        return True
    return isinstance(
        exc,
        OSError
        | pg_errors.PostgresConnectionError  # connection does not exist / failure / rejected
        | pg_errors.CannotConnectNowError  # starting up, shutting down, in recovery
        | pg_errors.AdminShutdownError  # pg_terminate_backend, fast shutdown
        | pg_errors.CrashShutdownError
        | pg_errors.TooManyConnectionsError,
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


class _LeanConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection handed back without asyncpg's reset query.

    The default release sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET
    ALL`` to the server: one more round trip on every operation. This module never leaves session
    state behind (no LISTEN, no session advisory locks, no SET, no cursors outside transactions;
    migrations use transaction-scoped locks), and asyncpg still rolls back a transaction left
    open, so there is nothing to reset.
    """

    def get_reset_query(self) -> str:
        return ""


async def _create_pool(url: str, pool_size: int, connect_timeout: float) -> Any:
    query = parse_qs(urlsplit(url).query)
    settings = {} if "application_name" in query else {"application_name": "dramaverse"}
    return await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=pool_size,
        timeout=connect_timeout,
        command_timeout=COMMAND_TIMEOUT,
        max_inactive_connection_lifetime=IDLE_LIFETIME,
        server_settings=settings,
        connection_class=_LeanConnection,
    )


async def _close_pool(pool: Any) -> None:
    try:
        # close() waits for connections in use; on timeout or error it terminates them all.
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
    except (Exception, asyncio.CancelledError) as exc:
        log.warning("PostgreSQL pool did not close cleanly: %r", exc)
        pool.terminate()


@asynccontextmanager
async def open_postgres(
    url: str,
    pool_size: int = 10,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    acquire_timeout: float = ACQUIRE_TIMEOUT,
) -> AsyncIterator[PostgresStorage]:
    """Open a pool of up to ``pool_size`` connections to the database at ``url``.

    Uses the current trio-asyncio loop, or opens one for the storage's lifetime when there is
    none. Raises StorageUnavailable with the server's address (never its password) when
    PostgreSQL cannot be reached or refuses us.
    """
    loop = trio_asyncio.current_loop.get()
    if loop is not None:
        async with _open_pool(url, pool_size, loop, connect_timeout, acquire_timeout) as storage:
            yield storage
        return
    lone: BaseException | None = None
    try:
        async with (
            trio_asyncio.open_loop() as own_loop,
            _open_pool(url, pool_size, own_loop, connect_timeout, acquire_timeout) as storage,
        ):
            yield storage
    except BaseExceptionGroup as group:
        # The private loop's nurseries wrap whatever passes through them, ours or the caller's
        # (Trio's strict exception groups), in a group per nursery: hand a lone error back as
        # it was raised, as the shared-loop path does.
        lone = group
        while isinstance(lone, BaseExceptionGroup) and len(lone.exceptions) == 1:
            lone = lone.exceptions[0]
        if isinstance(lone, BaseExceptionGroup):
            raise
    if lone is not None:
        raise lone


@asynccontextmanager
async def _open_pool(
    url: str, pool_size: int, loop: Any, connect_timeout: float, acquire_timeout: float
) -> AsyncIterator[PostgresStorage]:
    where = describe_url(url)
    create = trio_asyncio.aio_as_trio(_create_pool, loop=loop)
    try:
        pool = await create(url, pool_size, connect_timeout)
    except TimeoutError:
        raise StorageUnavailable(
            f"Cannot connect to PostgreSQL at {where}: no answer within {connect_timeout:g} s."
        ) from None
    except (OSError, pg_errors.PostgresError, pg_errors.InterfaceError) as exc:
        raise StorageUnavailable(
            f"Cannot connect to PostgreSQL at {where}: {_reason(exc)}."
        ) from exc
    storage = PostgresStorage(pool, loop, where, pool_size, acquire_timeout)
    try:
        yield storage
    finally:
        storage._closed = True
        with trio.CancelScope(shield=True):
            await trio_asyncio.aio_as_trio(_close_pool, loop=loop)(pool)
