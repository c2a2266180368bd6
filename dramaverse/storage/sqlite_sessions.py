"""Sign-in sessions on SQLite: the session methods of the Storage protocol.

A mixin of :class:`~dramaverse.storage.sqlite.SqliteStorage`, like ``sqlite_accounts.py``:
``_read`` is a pooled reader (one snapshot), ``_write`` the group-committing writer. A session
row is ended once (``ended_at``) and never revived; the revocation core loads the ended ones
still within a token lifetime (``load_revocations``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

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
Conn = sqlite3.Connection

SESSION_COLUMNS = (
    "id, user_id, created_at, last_seen_at, expires_at, ended_at, address, device, user_agent"
)


def user_exists_in(conn: Conn, user_id: int) -> bool:
    return conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is not None


def session_from(row: Any) -> SessionRecord:
    return SessionRecord(
        row[0], int(row[1]), row[2], row[3], row[4], row[5], row[6], row[7], row[8]
    )


def insert_session(conn: Conn, user_id: int, start: SessionStart) -> None:
    conn.execute(
        f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?)",
        (
            start.id,
            user_id,
            start.created_at,
            start.created_at,
            start.expires_at,
            start.address,
            start.device,
            start.user_agent,
        ),
    )


def end_sessions(conn: Conn, user_id: int, now_ms: int, keep: str | None) -> list[str]:
    rows = conn.execute(
        "UPDATE sessions SET ended_at = ? WHERE user_id = ? AND ended_at IS NULL "
        "AND id IS NOT ? RETURNING id",
        (now_ms, user_id, keep),
    ).fetchall()
    return sorted(row[0] for row in rows)


class SqliteSessions:
    """The session methods; ``SqliteStorage`` supplies the plumbing declared below."""

    async def _read(self, fn: Callable[[Conn], T]) -> T:
        raise NotImplementedError

    async def _write(self, fn: Callable[[Conn], T]) -> T:
        raise NotImplementedError

    async def create_session(self, user_id: int, start: SessionStart) -> None:
        check_user_id(user_id)
        check_session_start(start)

        def run(conn: Conn) -> None:
            if not user_exists_in(conn, user_id):
                raise Unauthorized("Invalid or expired token")
            insert_session(conn, user_id, start)

        await self._write(run)

    async def renew_session(self, user_id: int, session_id: str, expires_at: int) -> bool:
        check_user_id(user_id)
        check_session_id(session_id)
        check_ms(expires_at, "expires_at")

        def run(conn: Conn) -> bool:
            cur = conn.execute(
                "UPDATE sessions SET expires_at = max(expires_at, ?) "
                "WHERE id = ? AND user_id = ? AND ended_at IS NULL",
                (expires_at, session_id, user_id),
            )
            return cur.rowcount > 0

        return await self._write(run)

    async def list_sessions(
        self, user_id: int, now_ms: int, *, include_ended: bool = False
    ) -> list[SessionRecord]:
        check_user_id(user_id)
        check_ms(now_ms)

        def run(conn: Conn) -> list[SessionRecord]:
            if not user_exists_in(conn, user_id):
                raise Unauthorized("Invalid or expired token")
            live = "" if include_ended else "AND ended_at IS NULL AND expires_at > ?"
            rows = conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ? {live} "
                "ORDER BY created_at DESC, id",
                (user_id,) if include_ended else (user_id, now_ms),
            )
            return [session_from(row) for row in rows]

        return await self._read(run)

    async def end_session(self, user_id: int, session_id: str, now_ms: int) -> bool:
        check_user_id(user_id)
        check_session_id(session_id)
        check_ms(now_ms)

        def run(conn: Conn) -> bool:
            cur = conn.execute(
                "UPDATE sessions SET ended_at = ? "
                "WHERE id = ? AND user_id = ? AND ended_at IS NULL AND expires_at > ?",
                (now_ms, session_id, user_id, now_ms),
            )
            return cur.rowcount > 0

        return await self._write(run)

    async def end_other_sessions(self, user_id: int, keep_session: str, now_ms: int) -> list[str]:
        check_user_id(user_id)
        check_session_id(keep_session)
        check_ms(now_ms)
        return await self._write(lambda conn: end_sessions(conn, user_id, now_ms, keep_session))

    async def end_all_sessions(
        self, user_id: int, now_ms: int, *, cut_off: bool = False
    ) -> list[str]:
        check_user_id(user_id)
        check_ms(now_ms)

        def run(conn: Conn) -> list[str]:
            if cut_off:
                conn.execute(
                    "UPDATE users SET tokens_valid_after = max(tokens_valid_after, ?) WHERE id = ?",
                    (cutoff_at(now_ms), user_id),
                )
            return end_sessions(conn, user_id, now_ms, None)

        return await self._write(run)

    async def touch_sessions(self, seen: Mapping[str, int]) -> int:
        touches = check_touches(seen)

        def run(conn: Conn) -> int:
            changed = 0
            for session_id, at in touches:
                cur = conn.execute(
                    "UPDATE sessions SET last_seen_at = ? "
                    "WHERE id = ? AND ended_at IS NULL AND last_seen_at < ?",
                    (at, session_id, at),
                )
                changed += cur.rowcount
            return changed

        return await self._write(run) if touches else 0

    async def load_revocations(self, since_ms: int) -> RevocationSnapshot:
        check_ms(since_ms)

        def run(conn: Conn) -> RevocationSnapshot:
            ended = {
                sid: (int(user), int(at))
                for sid, user, at in conn.execute(
                    "SELECT id, user_id, ended_at FROM sessions WHERE ended_at >= ?", (since_ms,)
                )
            }
            cutoffs = {
                int(user): int(at)
                for user, at in conn.execute(
                    "SELECT id, tokens_valid_after FROM users "
                    "WHERE tokens_valid_after > 0 AND tokens_valid_after >= ?",
                    (since_ms,),
                )
            }
            return RevocationSnapshot(ended, cutoffs)

        return await self._read(run)

    async def prune_sessions(self, older_than_ms: int) -> int:
        check_ms(older_than_ms)

        def run(conn: Conn) -> int:
            cur = conn.execute(
                "DELETE FROM sessions WHERE expires_at < ? OR ended_at < ?",
                (older_than_ms, older_than_ms),
            )
            return int(cur.rowcount)

        return await self._write(run)
