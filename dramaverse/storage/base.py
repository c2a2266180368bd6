"""The Storage protocol: every backend (SQLite now, PostgreSQL later) implements exactly this."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dramaverse.domain.events import EventRange, UserEvent
from dramaverse.domain.library import SaveEpisodeReview, SetFavorite, SetStatus
from dramaverse.storage.accounts import (
    AccountStats,
    RevocationSnapshot,
    SessionRecord,
    SessionStart,
    UserExport,
    UserPage,
)


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    username: str
    password_hash: str
    is_admin: bool = False
    is_banned: bool = False
    created_at: int | None = None  # ms; None for accounts older than the column
    tokens_valid_after: int = 0  # ms: tokens issued before it are refused (0: none)


@dataclass(frozen=True, slots=True)
class CatalogRow:
    """One stored drama: ``data`` is the JSON of every field but url and title."""

    url: str
    title: str
    data: str

    def record(self) -> dict[str, Any]:
        """The drama as a dict with ``url`` and ``title`` first, as the API returns it."""
        rest = json.loads(self.data)
        rest.pop("url", None)
        rest.pop("title", None)
        return {"url": self.url, "title": self.title, **rest}


@dataclass(frozen=True, slots=True)
class ImportResult:
    inserted: int
    updated: int
    unchanged: int
    revision: int


@dataclass(slots=True)
class Library:
    """One user's library in the shape of ``GET /api/user/data``'s ``data``."""

    favorites: list[str] = field(default_factory=list)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    episode_reviews: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "favorites": self.favorites,
            "statuses": self.statuses,
            "reviews": {},
            "episodeReviews": self.episode_reviews,
        }


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a library write did: the logged event to publish (None when nothing changed)."""

    event: UserEvent | None
    updated_at: int | None = None


class Storage(Protocol):
    """Async persistence. Every method is one transaction; none blocks the Trio loop.

    Error handling: unknown dramas raise NotFound, a vanished user raises Unauthorized, a lost
    review race raises Conflict, duplicate usernames raise UsernameTaken, and an unreachable
    database raises StorageUnavailable.
    """

    async def migrate(self) -> list[str]:
        """Apply pending numbered migrations; return the names applied."""
        ...

    async def applied_migrations(self) -> list[str]: ...

    # -- accounts (docs/auth.md; arguments are checked as storage/accounts.py says: a value
    # out of range is a ValueError, never stored) -------------------------------------------

    async def create_user(
        self,
        username: str,
        password_hash: str,
        *,
        now_ms: int | None = None,
        session: SessionStart | None = None,
    ) -> int:
        """Store a new user registered at ``now_ms`` (default: now) and, in the same
        transaction, its first ``session``. Raises UsernameTaken."""
        ...

    async def get_user_by_username(self, username: str) -> UserRecord | None: ...

    async def get_user(self, user_id: int) -> UserRecord | None:
        """The user with its roles and token cut-off; None when there is none."""
        ...

    async def set_admin(self, user_id: int, is_admin: bool) -> None:
        """Raises NotFound for an unknown user, LastAdmin when demoting the last admin (an
        admin who is not banned)."""
        ...

    async def set_banned(self, user_id: int, is_banned: bool, now_ms: int) -> list[str]:
        """Ban (moving the user's cut-off to ``now_ms`` and ending every session: their ids are
        returned) or unban (nothing else changes). NotFound, LastAdmin as for set_admin."""
        ...

    async def count_admins(self) -> int:
        """Admins who are not banned."""
        ...

    async def set_password_hash(
        self, user_id: int, password_hash: str, now_ms: int, *, keep_session: str | None = None
    ) -> list[str]:
        """Store a new hash, move the cut-off to ``now_ms`` and end every session but
        ``keep_session``; return the ended ids. The kept session's token predates the cut-off:
        issue it a new one (and ``renew_session``). Raises NotFound for an unknown user."""
        ...

    async def delete_user(self, user_id: int) -> bool:
        """Remove the user and everything stored about them: library, events, sessions,
        player statuses (watch-party rooms hold members in their snapshots, not as rows).
        False when there was no such user; LastAdmin for the last admin."""
        ...

    async def list_users(self, search: str, page: int, limit: int) -> UserPage:
        """Users whose name contains ``search`` (case-insensitive), by id, one page of
        ``limit`` (at most 100), with roles, last seen and library sizes."""
        ...

    async def account_stats(self, now_ms: int, days: int) -> AccountStats:
        """Registrations per UTC day over the last ``days`` days (1-366, today included),
        the number of users and of active sessions at ``now_ms``."""
        ...

    async def export_user(self, user_id: int) -> UserExport | None:
        """Everything stored about the user (no password hash), in one snapshot."""
        ...

    # -- sessions ---------------------------------------------------------------------------

    async def create_session(self, user_id: int, start: SessionStart) -> None:
        """Raises Unauthorized when the user does not exist."""
        ...

    async def renew_session(self, user_id: int, session_id: str, expires_at: int) -> bool:
        """Move a live session's expiry (a new token was issued for it); False if none."""
        ...

    async def list_sessions(
        self, user_id: int, now_ms: int, *, include_ended: bool = False
    ) -> list[SessionRecord]:
        """The user's live sessions (not ended, not expired at ``now_ms``), or all of them,
        newest first. Raises Unauthorized when the user does not exist."""
        ...

    async def end_session(self, user_id: int, session_id: str, now_ms: int) -> bool:
        """End ``session_id`` if it is one of ``user_id``'s live sessions; False otherwise
        (someone else's, unknown, already ended or expired: the caller cannot tell which)."""
        ...

    async def end_other_sessions(self, user_id: int, keep_session: str, now_ms: int) -> list[str]:
        """End every session of the user but ``keep_session``; return the ended ids."""
        ...

    async def end_all_sessions(
        self, user_id: int, now_ms: int, *, cut_off: bool = False
    ) -> list[str]:
        """End every session of the user; with ``cut_off`` also move the cut-off to ``now_ms``
        (signs out tokens that carry no session id). Returns the ended ids."""
        ...

    async def touch_sessions(self, seen: Mapping[str, int]) -> int:
        """Session id -> last-seen time, at most 10,000 per call (the batched touches of
        ``http/session_activity.py``); a time never moves back, ended sessions are left."""
        ...

    async def load_revocations(self, since_ms: int) -> RevocationSnapshot:
        """Sessions ended and user cut-offs set at or after ``since_ms`` (now minus the token
        lifetime: older ones only refuse tokens that have expired anyway)."""
        ...

    async def prune_sessions(self, older_than_ms: int) -> int:
        """Drop sessions that expired or ended before the cut-off; return how many."""
        ...

    async def load_catalog_rows(self) -> list[CatalogRow]:
        """All dramas in catalog order, unparsed (parse lazily: a parsed catalog is big)."""
        ...

    async def load_catalog(self) -> list[dict[str, Any]]:
        """All dramas in catalog order, each with ``url`` and ``title`` first."""
        ...

    async def catalog_revision(self) -> int: ...

    async def import_dramas(
        self,
        records: Sequence[Mapping[str, Any]],
        progress: Callable[[int, int], None] | None = None,
    ) -> ImportResult:
        """Upsert validated records in one transaction; never touches users' data.

        ``progress(done, total)`` is called from the worker thread now and then.
        """
        ...

    async def count_dramas(self) -> int: ...

    async def get_library(self, user_id: int) -> Library | None:
        """None when the user does not exist."""
        ...

    async def set_favorite(self, user_id: int, change: SetFavorite) -> WriteResult: ...

    async def set_status(self, user_id: int, change: SetStatus) -> WriteResult: ...

    async def save_episode_review(
        self, user_id: int, change: SaveEpisodeReview, now_ms: int
    ) -> WriteResult: ...

    async def user_exists(self, user_id: int) -> bool: ...

    async def event_head(self, user_id: int) -> int:
        """The user's latest event seq (0 before the first event)."""
        ...

    async def event_heads(self, user_ids: Sequence[int]) -> dict[int, int]:
        """The latest event seq of each of ``user_ids`` that has one (one query for all: the
        session hub's periodic check; users without events are left out)."""
        ...

    async def read_events(self, user_id: int, after: int, limit: int) -> EventRange:
        """Events with seq > ``after``, oldest first, at most ``limit``.

        ``complete`` is False when the log no longer holds seq ``after + 1`` (pruned), or when
        ``after`` is ahead of the head: the reader must resync from the full library.
        """
        ...

    async def prune_events(self, keep_per_user: int, older_than_ms: int) -> int:
        """Drop events beyond the newest ``keep_per_user`` or created before the cut-off."""
        ...

    # -- watch parties (docs/player-status.md) --------------------------------------------------

    async def add_player_status(
        self, user_id: int, room_code: str, status_json: str, now_ms: int, keep: int = 5
    ) -> None:
        """Store one player status, then drop that user and room's rows beyond the newest
        ``keep``, in one transaction (concurrent adds for one user never leave more).

        Raises Unauthorized when the user does not exist, ValueError when ``keep`` < 1.
        """
        ...

    async def player_statuses(
        self, room_code: str, user_id: int | None, since_ms: int
    ) -> list[tuple[int, str]]:
        """(user id, status JSON) stored at or after ``since_ms`` in exactly ``room_code``
        (for one user, or everyone when ``user_id`` is None), oldest first."""
        ...

    async def prune_player_statuses(self, older_than_ms: int) -> int:
        """Drop statuses stored before the cut-off; return how many."""
        ...

    async def save_room_snapshot(self, room_code: str, snapshot_json: str, now_ms: int) -> None:
        """Insert or replace the room's snapshot (last write wins)."""
        ...

    async def load_room_snapshots(self, updated_since_ms: int) -> list[tuple[str, str]]:
        """(room code, snapshot JSON) of every room saved at or after the cut-off, by code."""
        ...

    async def load_room_snapshot(self, room_code: str) -> str | None: ...

    async def delete_room_snapshot(self, room_code: str) -> bool:
        """Whether there was a snapshot to delete."""
        ...

    async def prune_room_snapshots(self, older_than_ms: int) -> int:
        """Drop snapshots last saved before the cut-off; return how many."""
        ...
