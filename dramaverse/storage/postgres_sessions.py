"""Sign-in sessions on PostgreSQL: the session methods of the Storage protocol.

A mixin of :class:`~dramaverse.storage.postgres.PostgresStorage`, which provides ``_run`` (one
asyncio crossing per operation, the job in a transaction of the given kind). Statements that
change one row, or many rows with one statement, run without an explicit transaction; a
session row is ended once (``ended_at``) and never revived.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar

from dramaverse.errors import Unauthorized
from dramaverse.storage.accounts import (
    RevocationSnapshot,
    SessionRecord,
    SessionStart,
    check_ms,
    check_session_id,
    check_session_start,
    check_touches,
    check_user_id,
    cutoff_at,
)

T = TypeVar("T")
Connection = Any  # asyncpg ships no type information
Job = Callable[[Connection], Awaitable[T]]
Transaction = Literal["write", "snapshot", "none"]

SESSION_COLUMNS = (
    "id, user_id, created_at, last_seen_at, expires_at, ended_at, address, device, user_agent"
)


def row_count(status: str) -> int:
    """Rows affected, from a command tag such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])


def session_from(row: Any) -> SessionRecord:
    return SessionRecord(
        row[0], int(row[1]), row[2], row[3], row[4], row[5], row[6], row[7], row[8]
    )


async def insert_session(conn: Connection, user_id: int, start: SessionStart) -> None:
    await conn.execute(
        f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $3, $4, NULL, $5, $6, $7)",
        start.id,
        user_id,
        start.created_at,
        start.expires_at,
        start.address,
        start.device,
        start.user_agent,
    )


async def end_sessions(conn: Connection, user_id: int, now_ms: int, keep: str | None) -> list[str]:
    rows = await conn.fetch(
        "UPDATE sessions SET ended_at = $1 WHERE user_id = $2 AND ended_at IS NULL "
        "AND id IS DISTINCT FROM $3 RETURNING id",
        now_ms,
        user_id,
        keep,
    )
    return sorted(row[0] for row in rows)


async def user_exists_in(conn: Connection, user_id: int) -> bool:
    return await conn.fetchval("SELECT 1 FROM users WHERE id = $1", user_id) is not None


class PostgresSessions:
    """The session methods; ``PostgresStorage`` supplies ``_run``."""

    async def _run(self, job: Job[T], transaction: Transaction = "write") -> T:
        raise NotImplementedError

    async def create_session(self, user_id: int, start: SessionStart) -> None:
        check_user_id(user_id)
        check_session_start(start)

        async def job(conn: Connection) -> None:
            if not await user_exists_in(conn, user_id):
                raise Unauthorized("Invalid or expired token")
            await insert_session(conn, user_id, start)

        await self._run(job)

    async def renew_session(self, user_id: int, session_id: str, expires_at: int) -> bool:
        check_user_id(user_id)
        check_session_id(session_id)
        check_ms(expires_at, "expires_at")

        async def job(conn: Connection) -> bool:
            found = await conn.fetchval(
                "UPDATE sessions SET expires_at = GREATEST(expires_at, $1) "
                "WHERE id = $2 AND user_id = $3 AND ended_at IS NULL RETURNING 1",
                expires_at,
                session_id,
                user_id,
            )
            return found is not None

        return await self._run(job, "none")

    async def list_sessions(
        self, user_id: int, now_ms: int, *, include_ended: bool = False
    ) -> list[SessionRecord]:
        check_user_id(user_id)
        check_ms(now_ms)

        async def job(conn: Connection) -> list[SessionRecord]:
            if not await user_exists_in(conn, user_id):
                raise Unauthorized("Invalid or expired token")
            rows = await conn.fetch(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = $1 "
                "AND ($2 OR (ended_at IS NULL AND expires_at > $3)) "
                "ORDER BY created_at DESC, id",
                user_id,
                include_ended,
                now_ms,
            )
            return [session_from(row) for row in rows]

        return await self._run(job, "snapshot")

    async def end_session(self, user_id: int, session_id: str, now_ms: int) -> bool:
        check_user_id(user_id)
        check_session_id(session_id)
        check_ms(now_ms)

        async def job(conn: Connection) -> bool:
            found = await conn.fetchval(
                "UPDATE sessions SET ended_at = $1 WHERE id = $2 AND user_id = $3 "
                "AND ended_at IS NULL AND expires_at > $1 RETURNING 1",
                now_ms,
                session_id,
                user_id,
            )
            return found is not None

        return await self._run(job, "none")

    async def end_other_sessions(self, user_id: int, keep_session: str, now_ms: int) -> list[str]:
        check_user_id(user_id)
        check_session_id(keep_session)
        check_ms(now_ms)

        async def job(conn: Connection) -> list[str]:
            return await end_sessions(conn, user_id, now_ms, keep_session)

        return await self._run(job, "none")

    async def end_all_sessions(
        self, user_id: int, now_ms: int, *, cut_off: bool = False
    ) -> list[str]:
        check_user_id(user_id)
        check_ms(now_ms)

        async def job(conn: Connection) -> list[str]:
            if cut_off:
                await conn.execute(
                    "UPDATE users SET tokens_valid_after = GREATEST(tokens_valid_after, $1) "
                    "WHERE id = $2",
                    cutoff_at(now_ms),
                    user_id,
                )
            return await end_sessions(conn, user_id, now_ms, None)

        return await self._run(job)

    async def touch_sessions(self, seen: Mapping[str, int]) -> int:
        touches = check_touches(seen)

        async def job(conn: Connection) -> int:
            status = await conn.execute(
                "UPDATE sessions s SET last_seen_at = v.at "
                "FROM unnest($1::text[], $2::bigint[]) AS v(id, at) "
                "WHERE s.id = v.id AND s.ended_at IS NULL AND s.last_seen_at < v.at",
                [sid for sid, _ in touches],
                [at for _, at in touches],
            )
            return row_count(status)

        return await self._run(job, "none") if touches else 0

    async def load_revocations(self, since_ms: int) -> RevocationSnapshot:
        check_ms(since_ms)

        async def job(conn: Connection) -> RevocationSnapshot:
            ended = await conn.fetch(
                "SELECT id, user_id, ended_at FROM sessions WHERE ended_at >= $1", since_ms
            )
            cutoffs = await conn.fetch(
                "SELECT id, tokens_valid_after FROM users "
                "WHERE tokens_valid_after > 0 AND tokens_valid_after >= $1",
                since_ms,
            )
            return RevocationSnapshot(
                {sid: (int(user), int(at)) for sid, user, at in ended},
                {int(user): int(at) for user, at in cutoffs},
            )

        return await self._run(job, "snapshot")

    async def prune_sessions(self, older_than_ms: int) -> int:
        check_ms(older_than_ms)

        async def job(conn: Connection) -> int:
            status = await conn.execute(
                "DELETE FROM sessions WHERE expires_at < $1 OR ended_at < $1", older_than_ms
            )
            return row_count(status)

        return await self._run(job, "none")
