"""Accounts and roles on SQLite: the user methods of the Storage protocol.

A mixin of :class:`~dramaverse.storage.sqlite.SqliteStorage`, which provides ``_read`` (a
pooled reader, one snapshot) and ``_write`` (the group-committing writer: writes run one after
another, so the last-admin rule needs no lock of its own). Arguments are checked first
(``storage/accounts.py``); what the methods mean is documented on the protocol. Sessions
are in ``sqlite_sessions.py``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

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
from dramaverse.storage.sqlite_sessions import (
    SESSION_COLUMNS,
    end_sessions,
    insert_session,
    session_from,
    user_exists_in,
)

T = TypeVar("T")
Conn = sqlite3.Connection

_USER_COLUMNS = "id, username, password, is_admin, is_banned, created_at, tokens_valid_after"
USER_NOT_FOUND = "User not found"


def _user(row: Any) -> UserRecord:
    return UserRecord(
        int(row[0]), row[1], row[2], bool(row[3]), bool(row[4]), row[5], int(row[6] or 0)
    )


def _refuse_last_admin(conn: Conn, user_id: int) -> None:
    """LastAdmin when ``user_id`` is the only admin who is not banned."""
    row = conn.execute("SELECT is_admin, is_banned FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None or not row[0] or row[1]:
        return
    others = conn.execute(
        "SELECT count(*) FROM users WHERE is_admin <> 0 AND is_banned = 0 AND id <> ?", (user_id,)
    ).fetchone()[0]
    if not others:
        raise LastAdmin("The last admin cannot be demoted, banned or deleted.")


class SqliteAccounts:
    """The account methods; ``SqliteStorage`` supplies the plumbing declared below."""

    async def _read(self, fn: Callable[[Conn], T]) -> T:
        raise NotImplementedError

    async def _write(self, fn: Callable[[Conn], T]) -> T:
        raise NotImplementedError

    @staticmethod
    def _library_in(conn: Conn, user_id: int) -> Library | None:
        raise NotImplementedError

    # -- users ------------------------------------------------------------------------------

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

        def run(conn: Conn) -> int:
            try:
                cur = conn.execute(
                    "INSERT INTO users (username, password, created_at) VALUES (?, ?, ?)",
                    (username, password_hash, created),
                )
            except sqlite3.IntegrityError:
                raise UsernameTaken("Username already exists") from None
            assert cur.lastrowid is not None
            if session is not None:
                insert_session(conn, cur.lastrowid, session)
            return cur.lastrowid

        return await self._write(run)

    async def get_user_by_username(self, username: str) -> UserRecord | None:
        def run(conn: Conn) -> UserRecord | None:
            row = conn.execute(
                f"SELECT {_USER_COLUMNS} FROM users WHERE username = ?", (username,)
            ).fetchone()
            return None if row is None else _user(row)

        return await self._read(run)

    async def get_user(self, user_id: int) -> UserRecord | None:
        check_user_id(user_id)

        def run(conn: Conn) -> UserRecord | None:
            row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,))
            found = row.fetchone()
            return None if found is None else _user(found)

        return await self._read(run)

    async def set_admin(self, user_id: int, is_admin: bool) -> None:
        check_user_id(user_id)

        def run(conn: Conn) -> None:
            if not user_exists_in(conn, user_id):
                raise NotFound(USER_NOT_FOUND)
            if not is_admin:
                _refuse_last_admin(conn, user_id)
            conn.execute("UPDATE users SET is_admin = ? WHERE id = ?", (int(is_admin), user_id))

        await self._write(run)

    async def set_banned(self, user_id: int, is_banned: bool, now_ms: int) -> list[str]:
        check_user_id(user_id)
        check_ms(now_ms)

        def run(conn: Conn) -> list[str]:
            if not user_exists_in(conn, user_id):
                raise NotFound(USER_NOT_FOUND)
            if not is_banned:
                conn.execute("UPDATE users SET is_banned = 0 WHERE id = ?", (user_id,))
                return []
            _refuse_last_admin(conn, user_id)
            conn.execute(
                "UPDATE users SET is_banned = 1, tokens_valid_after = "
                "max(tokens_valid_after, ?) WHERE id = ?",
                (cutoff_at(now_ms), user_id),
            )
            return end_sessions(conn, user_id, now_ms, None)

        return await self._write(run)

    async def count_admins(self) -> int:
        def run(conn: Conn) -> int:
            query = "SELECT count(*) FROM users WHERE is_admin <> 0 AND is_banned = 0"
            return int(conn.execute(query).fetchone()[0])

        return await self._read(run)

    async def set_password_hash(
        self, user_id: int, password_hash: str, now_ms: int, *, keep_session: str | None = None
    ) -> list[str]:
        check_user_id(user_id)
        check_ms(now_ms)
        if keep_session is not None:
            check_session_id(keep_session)

        def run(conn: Conn) -> list[str]:
            cur = conn.execute(
                "UPDATE users SET password = ?, tokens_valid_after = max(tokens_valid_after, ?) "
                "WHERE id = ?",
                (password_hash, cutoff_at(now_ms), user_id),
            )
            if not cur.rowcount:
                raise NotFound(USER_NOT_FOUND)
            return end_sessions(conn, user_id, now_ms, keep_session)

        return await self._write(run)

    async def delete_user(self, user_id: int) -> bool:
        check_user_id(user_id)

        def run(conn: Conn) -> bool:
            if not user_exists_in(conn, user_id):
                return False
            _refuse_last_admin(conn, user_id)
            # Explicitly, child tables first: a database adopted from the original server may
            # predate some foreign keys, and this must leave nothing behind either way.
            for table in (
                "user_favorites",
                "user_statuses",
                "user_episode_reviews",
                "user_events",
                "user_event_heads",
                "player_statuses",
                "sessions",
            ):
                conn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
            conn.execute("DELETE FROM users WHERE id = ?", (user_id,))
            return True

        return await self._write(run)

    async def list_users(self, search: str, page: int, limit: int) -> UserPage:
        text = check_user_query(search, page, limit)
        pattern = like_pattern(text)

        def run(conn: Conn) -> UserPage:
            where = "WHERE lower(username) LIKE ? ESCAPE '\\'"
            total = conn.execute(f"SELECT count(*) FROM users {where}", (pattern,)).fetchone()[0]
            rows = conn.execute(
                "SELECT u.id, u.username, u.created_at, u.is_admin, u.is_banned, "
                "(SELECT max(s.last_seen_at) FROM sessions s WHERE s.user_id = u.id), "
                "(SELECT count(*) FROM user_favorites f WHERE f.user_id = u.id), "
                "(SELECT count(*) FROM user_statuses t WHERE t.user_id = u.id), "
                "(SELECT count(*) FROM user_episode_reviews r WHERE r.user_id = u.id) "
                f"FROM users u {where} ORDER BY u.id LIMIT ? OFFSET ?",
                (pattern, limit, (page - 1) * limit),
            ).fetchall()
            users = [
                UserSummary(int(r[0]), r[1], r[2], bool(r[3]), bool(r[4]), r[5], r[6], r[7], r[8])
                for r in rows
            ]
            return UserPage(int(total), users)

        return await self._read(run)

    async def account_stats(self, now_ms: int, days: int) -> AccountStats:
        check_ms(now_ms)
        since = (now_ms // DAY_MS - check_days(days) + 1) * DAY_MS

        def run(conn: Conn) -> AccountStats:
            users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
            per_day = conn.execute(
                "SELECT created_at / ? AS day, count(*) FROM users WHERE created_at >= ? "
                "GROUP BY day ORDER BY day",
                (DAY_MS, since),
            ).fetchall()
            active = conn.execute(
                "SELECT count(*) FROM sessions WHERE ended_at IS NULL AND expires_at > ?",
                (now_ms,),
            ).fetchone()[0]
            registrations = [(utc_day(int(day)), int(count)) for day, count in per_day]
            return AccountStats(int(users), registrations, int(active))

        return await self._read(run)

    async def export_user(self, user_id: int) -> UserExport | None:
        check_user_id(user_id)
        library_in = self._library_in

        def run(conn: Conn) -> UserExport | None:
            row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,))
            found = row.fetchone()
            library = library_in(conn, user_id)
            if found is None or library is None:
                return None
            user = _user(found)
            events = [
                {"seq": seq, "name": name, "payload": json.loads(payload), "createdAt": at}
                for seq, name, payload, at in conn.execute(
                    "SELECT seq, name, payload, created_at FROM user_events WHERE user_id = ? "
                    "ORDER BY seq",
                    (user_id,),
                )
            ]
            sessions = [
                session_from(r).to_json()
                for r in conn.execute(
                    f"SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ? "
                    "ORDER BY created_at DESC, id",
                    (user_id,),
                )
            ]
            statuses = [
                {"roomCode": code, "status": json.loads(status), "createdAt": at}
                for code, status, at in conn.execute(
                    "SELECT room_code, status, created_at FROM player_statuses "
                    "WHERE user_id = ? ORDER BY id",
                    (user_id,),
                )
            ]
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
                events,
                sessions,
                statuses,
            )

        return await self._read(run)
