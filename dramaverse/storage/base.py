"""The Storage protocol: every backend (SQLite now, PostgreSQL later) implements exactly this."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dramaverse.domain.events import EventRange, UserEvent
from dramaverse.domain.library import SaveEpisodeReview, SetFavorite, SetStatus


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    username: str
    password_hash: str


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

    async def create_user(self, username: str, password_hash: str) -> int: ...

    async def get_user_by_username(self, username: str) -> UserRecord | None: ...

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
