"""What storage knows about accounts and sessions: the records and the bounds of every argument.

Every backend implements the account methods of :class:`~dramaverse.storage.base.Storage`
(``sqlite_accounts.py``, ``postgres_accounts.py``) and checks its arguments with the helpers
here, so a bad value from a route is a ``ValueError`` (a bug in the caller, never stored) on
both backends alike. Times are milliseconds since the epoch (UTC).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from dramaverse.domain.sessions import (
    MAX_ADDRESS_LENGTH,
    MAX_DEVICE_LENGTH,
    MAX_USER_AGENT_LENGTH,
    is_session_id,
)

MAX_MS: Final = 2**53 - 1  # a time every client (JavaScript) holds exactly
MAX_USER_ID: Final = 2**63 - 1
MAX_SEARCH_LENGTH: Final = 64
MAX_PAGE: Final = 1_000_000
MAX_PAGE_SIZE: Final = 100
MAX_STATS_DAYS: Final = 366
MAX_TOUCH_BATCH: Final = 10_000  # last-seen updates per call
DAY_MS: Final = 86_400_000


@dataclass(frozen=True, slots=True)
class SessionStart:
    """A session about to be stored (a login or registration)."""

    id: str
    created_at: int
    expires_at: int  # when the token issued with it expires
    address: str
    device: str
    user_agent: str


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    user_id: int
    created_at: int
    last_seen_at: int
    expires_at: int
    ended_at: int | None
    address: str
    device: str
    user_agent: str

    def live(self, now_ms: int) -> bool:
        """Not ended, and its token has not expired."""
        return self.ended_at is None and self.expires_at > now_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "createdAt": self.created_at,
            "lastSeenAt": self.last_seen_at,
            "expiresAt": self.expires_at,
            "endedAt": self.ended_at,
            "device": self.device,
            "userAgent": self.user_agent,
            "address": self.address,
        }


@dataclass(frozen=True, slots=True)
class RevocationSnapshot:
    """What every process must refuse: sessions ended since a time (id -> (user id, ended at))
    and the per-user cut-offs set since then (user id -> tokens_valid_after)."""

    ended: dict[str, tuple[int, int]] = field(default_factory=dict)
    cutoffs: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UserSummary:
    """One row of the administrators' user list."""

    id: int
    username: str
    created_at: int | None
    is_admin: bool
    is_banned: bool
    last_seen_at: int | None  # the latest of its sessions' last-seen times
    favorites: int
    statuses: int
    episode_reviews: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "createdAt": self.created_at,
            "isAdmin": self.is_admin,
            "isBanned": self.is_banned,
            "lastSeenAt": self.last_seen_at,
            "library": {
                "favorites": self.favorites,
                "statuses": self.statuses,
                "episodeReviews": self.episode_reviews,
            },
        }


@dataclass(frozen=True, slots=True)
class UserPage:
    total: int  # users matching the search, on every page
    users: list[UserSummary]


@dataclass(frozen=True, slots=True)
class AccountStats:
    """Registrations per UTC day (days with none left out, oldest first), and sessions."""

    users: int
    registrations: list[tuple[str, int]]  # ("2024-05-01", count)
    active_sessions: int  # not ended, token not expired

    def to_json(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "registrationsPerDay": [{"day": d, "count": n} for d, n in self.registrations],
            "activeSessions": self.active_sessions,
        }


@dataclass(frozen=True, slots=True)
class UserExport:
    """Everything stored about one user, as JSON-ready values. The password hash is left out:
    it is a secret of the server's, not data about the user."""

    user: dict[str, Any]
    library: dict[str, Any]
    events: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    player_statuses: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "library": self.library,
            "events": self.events,
            "sessions": self.sessions,
            "playerStatuses": self.player_statuses,
        }


def user_json(
    user_id: int,
    username: str,
    created_at: int | None,
    is_admin: bool,
    is_banned: bool,
    tokens_valid_after: int,
) -> dict[str, Any]:
    return {
        "id": user_id,
        "username": username,
        "createdAt": created_at,
        "isAdmin": is_admin,
        "isBanned": is_banned,
        "tokensValidAfter": tokens_valid_after,
    }


def cutoff_at(now_ms: int) -> int:
    """The ``tokens_valid_after`` a revocation at ``now_ms`` stores: the start of its second.

    Tokens carry their issue time in whole seconds (``iat``). A cut-off at the start of the
    second refuses every token issued in an earlier second and keeps one issued again right
    after the change (a password change hands the kept session a fresh token). Tokens issued
    within that same second before the change are the only ones it cannot tell apart; they all
    carry a session id and are ended by it (docs/auth.md).
    """
    return now_ms - now_ms % 1000


def utc_day(day_number: int) -> str:
    """Days since the epoch -> ``YYYY-MM-DD``."""
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day_number)).isoformat()


# -- argument checks (ValueError: a caller's bug) ---------------------------------------------


def _whole(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high} (got {value!r})")
    return value


def check_ms(value: object, name: str = "time") -> int:
    return _whole(value, name, 0, MAX_MS)


def check_user_id(value: object) -> int:
    return _whole(value, "user id", 1, MAX_USER_ID)


def check_session_id(value: object) -> str:
    if not is_session_id(value):
        raise ValueError(f"not a session id: {value!r}"[:120])
    assert isinstance(value, str)
    return value


def _text(value: object, name: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise ValueError(f"{name} must be text of at most {limit} characters without NUL")
    return value


def check_session_start(start: SessionStart) -> None:
    check_session_id(start.id)
    check_ms(start.created_at, "created_at")
    check_ms(start.expires_at, "expires_at")
    _text(start.address, "address", MAX_ADDRESS_LENGTH)
    _text(start.device, "device", MAX_DEVICE_LENGTH)
    _text(start.user_agent, "user agent", MAX_USER_AGENT_LENGTH)


def check_user_query(search: object, page: object, limit: object) -> str:
    search_text = _text(search, "search", MAX_SEARCH_LENGTH)
    _whole(page, "page", 1, MAX_PAGE)
    _whole(limit, "limit", 1, MAX_PAGE_SIZE)
    return search_text


def check_touches(seen: Mapping[str, int]) -> list[tuple[str, int]]:
    if len(seen) > MAX_TOUCH_BATCH:
        raise ValueError(f"at most {MAX_TOUCH_BATCH} last-seen times per call")
    return [(check_session_id(sid), check_ms(at, "last seen")) for sid, at in seen.items()]


def check_days(days: object) -> int:
    return _whole(days, "days", 1, MAX_STATS_DAYS)


def like_pattern(search: str) -> str:
    """A case-insensitive substring pattern for ``LIKE ... ESCAPE '\\'`` (lower-cased)."""
    escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
