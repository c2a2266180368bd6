"""Accounts and roles on PostgreSQL: the user methods of the Storage protocol.

A mixin of :class:`~dramaverse.storage.postgres.PostgresStorage` (``_run``: one crossing per
operation). The last-admin rule holds under concurrency: a demotion, ban or deletion of an admin
first locks every admin row (``FOR UPDATE``), so two of them racing run one after another and
the second sees the first's result (READ COMMITTED re-checks a locked row's new version).
Sessions are in ``postgres_sessions.py``.
"""

from __future__ import annotations

import json
import time
from typing import Any, TypeVar

from asyncpg import exceptions as pg_errors

from dramaverse.errors import LastAdmin, NotFound, UsernameTaken
from dramaverse.storage.accounts import (
    DAY_MS,
    AccountStats,
    SessionStart,
    UserExport,
    UserPage,
    UserSummary,
    check_days,
    check_ms,
    check_session_id,
    check_session_start,
    check_user_id,
    check_user_query,
    cutoff_at,
    like_pattern,
    user_json,
    utc_day,
)
from dramaverse.storage.base import Library, UserRecord
from dramaverse.storage.postgres_sessions import (
    SESSION_COLUMNS,
    Connection,
    Job,
    Transaction,
    end_sessions,
    insert_session,
    session_from,
)

T = TypeVar("T")
_USER_COLUMNS = "id, username, password, is_admin, is_banned, created_at, tokens_valid_after"
USER_NOT_FOUND = "User not found"
_ADMINS = "is_admin AND NOT is_banned"


def _user(row: Any) -> UserRecord:
    return UserRecord(
        int(row[0]), row[1], row[2], bool(row[3]), bool(row[4]), row[5], int(row[6] or 0)
    )


async def _refuse_last_admin(conn: Connection, user_id: int) -> None:
    """Lock every admin row; LastAdmin when ``user_id`` is the only admin not banned."""
    admins = await conn.fetch(f"SELECT id FROM users WHERE {_ADMINS} ORDER BY id FOR UPDATE")
    ids = {int(row[0]) for row in admins}
    if ids == {user_id}:
        raise LastAdmin("The last admin cannot be demoted, banned or deleted.")


class PostgresAccounts:
    """The user methods; ``PostgresStorage`` supplies the plumbing declared below."""

    async def _run(self, job: Job[T], transaction: Transaction = "write") -> T:
        raise NotImplementedError

    @staticmethod
    async def _library_in(conn: Connection, user_id: int) -> Library | None:
        raise NotImplementedError

    async def create_user(
        self,
        username: str,
        password_hash: str,
        *,
        now_ms: int | None = None,
        session: SessionStart | None = None,
    ) -> int:
        created = check_ms(int(time.time() * 1000) if now_ms is None else now_ms)
        if session is not None:
            check_session_start(session)

        async def job(conn: Connection) -> int:
            try:
                user_id = int(
                    await conn.fetchval(
                        "INSERT INTO users (username, password, created_at) VALUES ($1, $2, $3) "
                        "RETURNING id",
                        username,
                        password_hash,
                        created,
                    )
                )
            except pg_errors.UniqueViolationError:
                raise UsernameTaken("Username already exists") from None
            if session is not None:
                await insert_session(conn, user_id, session)
            return user_id

        return await self._run(job, "write" if session is not None else "none")

    async def get_user_by_username(self, username: str) -> UserRecord | None:
        async def job(conn: Connection) -> UserRecord | None:
            row = await conn.fetchrow(
                f"SELECT {_USER_COLUMNS} FROM users WHERE username = $1", username
            )
            return None if row is None else _user(row)

        return await self._run(job, "none")

    async def get_user(self, user_id: int) -> UserRecord | None:
        check_user_id(user_id)

        async def job(conn: Connection) -> UserRecord | None:
            row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1", user_id)
            return None if row is None else _user(row)

        return await self._run(job, "none")

    async def set_admin(self, user_id: int, is_admin: bool) -> None:
        check_user_id(user_id)

        async def job(conn: Connection) -> None:
            if not is_admin:
                await _refuse_last_admin(conn, user_id)
            status = await conn.execute(
                "UPDATE users SET is_admin = $1 WHERE id = $2", bool(is_admin), user_id
            )
            if status.endswith(" 0"):
                raise NotFound(USER_NOT_FOUND)

        await self._run(job)

    async def set_banned(self, user_id: int, is_banned: bool, now_ms: int) -> list[str]:
        check_user_id(user_id)
        check_ms(now_ms)

        async def job(conn: Connection) -> list[str]:
            if not is_banned:
                status = await conn.execute(
                    "UPDATE users SET is_banned = FALSE WHERE id = $1", user_id
                )
                if status.endswith(" 0"):
                    raise NotFound(USER_NOT_FOUND)
                return []
            await _refuse_last_admin(conn, user_id)
            status = await conn.execute(
                "UPDATE users SET is_banned = TRUE, "
                "tokens_valid_after = GREATEST(tokens_valid_after, $1) WHERE id = $2",
                cutoff_at(now_ms),
                user_id,
            )
            if status.endswith(" 0"):
                raise NotFound(USER_NOT_FOUND)
            return await end_sessions(conn, user_id, now_ms, None)

        return await self._run(job)

    async def count_admins(self) -> int:
        async def job(conn: Connection) -> int:
            return int(await conn.fetchval(f"SELECT count(*) FROM users WHERE {_ADMINS}"))

        return await self._run(job, "none")

    async def set_password_hash(
        self, user_id: int, password_hash: str, now_ms: int, *, keep_session: str | None = None
    ) -> list[str]:
        check_user_id(user_id)
        check_ms(now_ms)
        if keep_session is not None:
            check_session_id(keep_session)

        async def job(conn: Connection) -> list[str]:
            status = await conn.execute(
                "UPDATE users SET password = $1, "
                "tokens_valid_after = GREATEST(tokens_valid_after, $2) WHERE id = $3",
                password_hash,
                cutoff_at(now_ms),
                user_id,
            )
            if status.endswith(" 0"):
                raise NotFound(USER_NOT_FOUND)
            return await end_sessions(conn, user_id, now_ms, keep_session)

        return await self._run(job)

    async def delete_user(self, user_id: int) -> bool:
        """Every table that names a user has ``ON DELETE CASCADE``: one DELETE removes it all."""
        check_user_id(user_id)

        async def job(conn: Connection) -> bool:
            await _refuse_last_admin(conn, user_id)
            status = await conn.execute("DELETE FROM users WHERE id = $1", user_id)
            return not status.endswith(" 0")

        return await self._run(job)

    async def list_users(self, search: str, page: int, limit: int) -> UserPage:
        pattern = like_pattern(check_user_query(search, page, limit))

        async def job(conn: Connection) -> UserPage:
            where = "WHERE lower(username) LIKE $1 ESCAPE '\\'"
            total = await conn.fetchval(f"SELECT count(*) FROM users {where}", pattern)
            rows = await conn.fetch(
                "SELECT u.id, u.username, u.created_at, u.is_admin, u.is_banned, "
                "(SELECT max(s.last_seen_at) FROM sessions s WHERE s.user_id = u.id), "
                "(SELECT count(*) FROM user_favorites f WHERE f.user_id = u.id), "
                "(SELECT count(*) FROM user_statuses t WHERE t.user_id = u.id), "
                "(SELECT count(*) FROM user_episode_reviews r WHERE r.user_id = u.id) "
                f"FROM users u {where} ORDER BY u.id LIMIT $2 OFFSET $3",
                pattern,
                limit,
                (page - 1) * limit,
            )
            users = [
                UserSummary(
                    int(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6]), int(r[7]), int(r[8])
                )
                for r in rows
            ]
            return UserPage(int(total), users)

        return await self._run(job, "snapshot")

    async def account_stats(self, now_ms: int, days: int) -> AccountStats:
        check_ms(now_ms)
        since = (now_ms // DAY_MS - check_days(days) + 1) * DAY_MS

        async def job(conn: Connection) -> AccountStats:
            users = await conn.fetchval("SELECT count(*) FROM users")
            per_day = await conn.fetch(
                "SELECT created_at / $1 AS day, count(*) FROM users WHERE created_at >= $2 "
                "GROUP BY day ORDER BY day",
                DAY_MS,
                since,
            )
            active = await conn.fetchval(
                "SELECT count(*) FROM sessions WHERE ended_at IS NULL AND expires_at > $1",
                now_ms,
            )
            registrations = [(utc_day(int(day)), int(count)) for day, count in per_day]
            return AccountStats(int(users), registrations, int(active))

        return await self._run(job, "snapshot")

    async def export_user(self, user_id: int) -> UserExport | None:
        check_user_id(user_id)
        library_in = self._library_in

        async def job(conn: Connection) -> UserExport | None:
            found = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1", user_id)
            library = await library_in(conn, user_id)
            if found is None or library is None:
                return None
            user = _user(found)
            events = await conn.fetch(
                "SELECT seq, name, payload, created_at FROM user_events WHERE user_id = $1 "
                "ORDER BY seq",
                user_id,
            )
            sessions = await conn.fetch(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = $1 "
                "ORDER BY created_at DESC, id",
                user_id,
            )
            statuses = await conn.fetch(
                "SELECT room_code, status, created_at FROM player_statuses WHERE user_id = $1 "
                "ORDER BY id",
                user_id,
            )
            return UserExport(
                user_json(
                    user.id,
                    user.username,
                    user.created_at,
                    user.is_admin,
                    user.is_banned,
                    user.tokens_valid_after,
                ),
                library.to_json(),
                [
                    {"seq": seq, "name": name, "payload": json.loads(data), "createdAt": at}
                    for seq, name, data, at in events
                ],
                [session_from(row).to_json() for row in sessions],
                [
                    {"roomCode": code, "status": json.loads(status), "createdAt": at}
                    for code, status, at in statuses
                ],
            )

        return await self._run(job, "snapshot")
