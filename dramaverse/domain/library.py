"""Library rules: validation of favorite, status and episode-review writes, and their events.

Validation follows JavaScript ``typeof`` as the original server does: a boolean is not a number,
``1`` is not a boolean, and ``null`` fails every type check. On top of the type checks we bound
every size, so one request cannot store megabytes or absurd episode numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dramaverse.domain.numbers import finite, is_number, whole_in
from dramaverse.errors import BadRequest

INVALID_PAYLOAD = "Invalid payload."
MAX_URL_LENGTH = 2048
MAX_STATUS_LENGTH = 64
MAX_EPISODE = 100_000
MAX_REVIEW_LENGTH = 10_000

# JavaScript's String.prototype.trim removes WhiteSpace and LineTerminator code points, which is
# not the same set as Python's str.strip() (JS also trims U+FEFF, Python also trims U+001C-U+001F).
_JS_SPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_JS_BLANK = re.compile(f"[{re.escape(_JS_SPACE)}]*")


is_js_number = is_number  # ``typeof value === 'number'`` for a value decoded from JSON


def is_js_blank(text: str) -> bool:
    """``text.trim() === ''`` in JavaScript."""
    return _JS_BLANK.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class SetFavorite:
    drama_url: str
    is_favorite: bool


@dataclass(frozen=True, slots=True)
class SetStatus:
    """An empty ``status`` deletes the stored status."""

    drama_url: str
    status: str
    current_episode: int


@dataclass(frozen=True, slots=True)
class SaveEpisodeReview:
    """Blank ``text`` deletes the stored review; otherwise the conflict rule applies."""

    drama_url: str
    episode_number: int
    text: str
    client_updated_at: float
    force: bool

    @property
    def is_delete(self) -> bool:
        return is_js_blank(self.text)


@dataclass(frozen=True, slots=True)
class LibraryEvent:
    """A change to one user's library, named and shaped exactly as the frontend expects."""

    name: str
    payload: dict[str, Any]


def favorite_event(drama_url: str, is_favorite: bool) -> LibraryEvent:
    return LibraryEvent("favorite_updated", {"dramaUrl": drama_url, "isFavorite": is_favorite})


def status_event(drama_url: str, status: str | None, current_episode: int = 0) -> LibraryEvent:
    info = None if status is None else {"status": status, "currentEpisode": current_episode}
    return LibraryEvent("status_updated", {"dramaUrl": drama_url, "statusInfo": info})


def review_event(
    drama_url: str, episode_number: int, text: str | None, updated_at: int = 0
) -> LibraryEvent:
    review = None if text is None else {"text": text, "updatedAt": updated_at}
    return LibraryEvent(
        "episode_review_updated",
        {"dramaUrl": drama_url, "episodeNumber": episode_number, "review": review},
    )


def _invalid(detail: str) -> BadRequest:
    return BadRequest(f"Invalid payload: {detail}.")


def _drama_url(body: dict[str, Any]) -> str:
    url = body.get("dramaUrl")
    if not isinstance(url, str):
        raise BadRequest(INVALID_PAYLOAD)
    if not url or len(url) > MAX_URL_LENGTH:
        raise _invalid(f"dramaUrl must be 1 to {MAX_URL_LENGTH} characters")
    return url


def _episode(value: object, name: str) -> int:
    """A JS number that is also a whole episode count within bounds."""
    number = whole_in(value, 0, MAX_EPISODE)
    if number is None:
        raise _invalid(f"{name} must be a whole number from 0 to {MAX_EPISODE}")
    return number


def parse_favorite(body: object) -> SetFavorite:
    fields = body if isinstance(body, dict) else {}
    url = fields.get("dramaUrl")
    if not isinstance(url, str) or not isinstance(fields.get("isFavorite"), bool):
        raise BadRequest(INVALID_PAYLOAD)
    return SetFavorite(_drama_url(fields), fields["isFavorite"])


def parse_status(body: object) -> SetStatus:
    fields = body if isinstance(body, dict) else {}
    status = fields.get("status")
    episode = fields.get("currentEpisode", _MISSING)
    if (
        not isinstance(fields.get("dramaUrl"), str)
        or not isinstance(status, str)
        or (episode is not _MISSING and not is_js_number(episode))
    ):
        raise BadRequest(INVALID_PAYLOAD)
    url = _drama_url(fields)
    if len(status) > MAX_STATUS_LENGTH:
        raise _invalid(f"status must be at most {MAX_STATUS_LENGTH} characters")
    current = 0 if episode is _MISSING else _episode(episode, "currentEpisode")
    return SetStatus(url, status, current)


def parse_episode_review(body: object) -> SaveEpisodeReview:
    fields = body if isinstance(body, dict) else {}
    episode = fields.get("episodeNumber")
    text = fields.get("text")
    client_updated_at = fields.get("clientUpdatedAt")
    force = fields.get("force", False)
    if (
        not isinstance(fields.get("dramaUrl"), str)
        or not is_js_number(episode)
        or not isinstance(text, str)
        or not is_js_number(client_updated_at)
        or not isinstance(force, bool)
    ):
        raise BadRequest(INVALID_PAYLOAD)
    url = _drama_url(fields)
    number = _episode(episode, "episodeNumber")
    if len(text) > MAX_REVIEW_LENGTH:
        raise _invalid(f"text must be at most {MAX_REVIEW_LENGTH} characters")
    updated_at = finite(client_updated_at)
    if updated_at is None:
        raise _invalid("clientUpdatedAt must be a finite number")
    return SaveEpisodeReview(url, number, text, updated_at, force)


class _Missing:
    pass


_MISSING: Any = _Missing()
