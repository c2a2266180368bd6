"""The authoritative playback state of a watch-party room: content, phase and anchor. Pure.

A room's playback is one immutable :class:`Playback` value, replaced on every change. Its anchor
reads "``position`` seconds into ``content`` at server time ``at``, advancing at ``rate`` while
playing": the server and every member compute the position at any instant from it, instead of
trusting anyone's reported position. The phases and their transitions (:data:`TRANSITIONS`)::

    idle ──content──▶ paused ◀────────── pause, end of content ───────────┐
                      │  ▲  ⟲ seek, content                               │
                   play  pause                                            │
                      ▼  │                                                │
                    waiting ─────────── start time reached ──────────▶ playing ⟲ rate
                    ⟲ seek, content,  ◀── seek, content, stall, joiner ───┘
                      stall, joiner

``waiting`` means "will play": at the scheduled ``start_at`` (``now + lead``, so every member
starts at the same instant), or, with ``start_at`` unset, when the room's buffering barrier clears.
A rate change while playing stays ``playing`` with an anchor ``at`` slightly in the future; until
then the position advances at ``rate_before``.

A transition not in :data:`TRANSITIONS` raises :class:`IllegalTransition`: that is a bug, not bad
input, because commands check their preconditions and refuse with a clear error before they get
here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from dramaverse.domain.numbers import finite, number_in, whole_in
from dramaverse.errors import BadRequest

MAX_POSITION = 7 * 86400.0  # seconds; nothing anyone watches together is a week long
MIN_RATE = 0.25
MAX_RATE = 4.0
MAX_TMDB_ID = 2**31 - 1
MAX_SEASON = 10_000
MAX_EPISODE = 100_000
MAX_TITLE_LENGTH = 300
CONTENT_KINDS = ("movie", "episode")
CONTENT_FIELDS = frozenset({"tmdbId", "type", "seasonNumber", "episodeNumber", "title", "duration"})


class Phase(StrEnum):
    IDLE = "idle"
    WAITING = "waiting"
    PAUSED = "paused"
    PLAYING = "playing"

    def check(self, target: Phase) -> Phase:
        """Return ``target`` if the state machine allows moving there from here."""
        if target not in TRANSITIONS[self]:
            raise IllegalTransition(f"playback cannot go from {self} to {target}")
        return target


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.PAUSED}),
    Phase.PAUSED: frozenset({Phase.PAUSED, Phase.WAITING}),
    Phase.WAITING: frozenset({Phase.WAITING, Phase.PLAYING, Phase.PAUSED}),
    Phase.PLAYING: frozenset({Phase.PLAYING, Phase.WAITING, Phase.PAUSED}),
}


class IllegalTransition(RuntimeError):
    """A code path tried a transition the state machine does not have."""


def is_number(value: object) -> bool:
    """A finite JSON number: ``int`` or ``float``, not ``bool`` (JavaScript's typeof rule)."""
    return finite(value) is not None


def check_whole(value: object, name: str, low: int, high: int) -> int:
    """A whole number in ``[low, high]``; ``4.0`` counts as 4."""
    number = whole_in(value, low, high)
    if number is None:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}.")
    return number


def check_number(value: object, name: str, low: float, high: float, unit: str = "") -> float:
    number = number_in(value, low, high)
    if number is None:
        raise BadRequest(f"{name} must be a number{unit} from {low:g} to {high:g}.")
    return number


def check_position(value: object, name: str = "position") -> float:
    return check_number(value, name, 0.0, MAX_POSITION, " of seconds")


def check_rate(value: object) -> float:
    return check_number(value, "rate", MIN_RATE, MAX_RATE)


@dataclass(frozen=True, slots=True)
class Content:
    """What the room watches: a TMDB movie, or one episode of a TMDB show."""

    tmdb_id: int
    kind: str
    season: int | None = None
    episode: int | None = None
    title: str | None = None
    duration: float | None = None  # seconds, when known: positions are clamped to it

    @classmethod
    def parse(cls, raw: object) -> Content:
        """Validate the wire form (the seed's field names)::

        {tmdbId, type: "movie" | "episode", seasonNumber?, episodeNumber?, title?, duration?}
        """
        if not isinstance(raw, Mapping):
            raise BadRequest("content must be an object.")
        unknown = sorted(set(raw) - CONTENT_FIELDS)
        if unknown:
            raise BadRequest(f"Unknown field {unknown[0]!r} in content.")
        tmdb_id = check_whole(raw.get("tmdbId"), "content.tmdbId", 1, MAX_TMDB_ID)
        kind = raw.get("type")
        if kind not in CONTENT_KINDS:
            raise BadRequest("content.type must be 'movie' or 'episode'.")
        season = episode = None
        if kind == "episode":
            season = check_whole(raw.get("seasonNumber"), "content.seasonNumber", 0, MAX_SEASON)
            episode = check_whole(raw.get("episodeNumber"), "content.episodeNumber", 1, MAX_EPISODE)
        elif raw.get("seasonNumber") is not None or raw.get("episodeNumber") is not None:
            raise BadRequest("A movie has no seasonNumber or episodeNumber.")
        title = raw.get("title")
        if title is not None and (not isinstance(title, str) or len(title) > MAX_TITLE_LENGTH):
            raise BadRequest(
                f"content.title must be a string of at most {MAX_TITLE_LENGTH} characters."
            )
        duration = raw.get("duration")
        if duration is not None:
            duration = check_position(duration, "content.duration")
            if duration <= 0:
                raise BadRequest("content.duration must be more than 0 seconds.")
        return cls(tmdb_id, str(kind), season, episode, title, duration)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tmdbId": self.tmdb_id, "type": self.kind}
        if self.kind == "episode":
            out["seasonNumber"] = self.season
            out["episodeNumber"] = self.episode
        if self.title is not None:
            out["title"] = self.title
        if self.duration is not None:
            out["duration"] = self.duration
        return out


@dataclass(frozen=True, slots=True)
class Playback:
    """The anchor. ``position`` is seconds of content; ``at`` and ``start_at`` are server time."""

    phase: Phase = Phase.IDLE
    content: Content | None = None
    position: float = 0.0
    at: float = 0.0
    rate: float = 1.0
    rate_before: float = 1.0
    start_at: float | None = None

    def position_at(self, t: float) -> float:
        """Where playback is at server time ``t`` (clamped to the content's length)."""
        position = self.position
        if self.phase is Phase.PLAYING:
            if t >= self.at:
                position += (t - self.at) * self.rate
            else:
                position -= (self.at - t) * self.rate_before
        return self.clamp(position)

    def clamp(self, position: float) -> float:
        end = self.content.duration if self.content and self.content.duration else MAX_POSITION
        return min(max(position, 0.0), end)

    @property
    def ends_at(self) -> float | None:
        """Server time at which a playing item reaches its known end."""
        if self.phase is not Phase.PLAYING or self.content is None or not self.content.duration:
            return None
        return self.at + max(0.0, self.content.duration - self.position) / self.rate

    # Transitions: each returns the next value, checked against the state machine.

    def paused(self, now: float, position: float | None = None) -> Playback:
        where = self.position_at(now) if position is None else self.clamp(position)
        return replace(
            self, phase=self.phase.check(Phase.PAUSED), position=where, at=now, start_at=None
        )

    def waiting(self, now: float, position: float, start_at: float | None) -> Playback:
        return replace(
            self,
            phase=self.phase.check(Phase.WAITING),
            position=self.clamp(position),
            at=now,
            start_at=start_at,
        )

    def started(self) -> Playback:
        if self.start_at is None:
            raise IllegalTransition("only a scheduled start can begin playing")
        return replace(
            self,
            phase=self.phase.check(Phase.PLAYING),
            at=self.start_at,
            rate_before=self.rate,
            start_at=None,
        )

    def rescaled(self, now: float, lead: float, rate: float) -> Playback:
        """A new rate: paused and waiting rooms take it as is; playing ones switch at now+lead."""
        if self.phase is not Phase.PLAYING:
            return replace(self, rate=rate)
        switch = max(now + lead, self.at)
        return replace(
            self,
            phase=self.phase.check(Phase.PLAYING),
            position=self.position_at(switch),
            at=switch,
            rate_before=self.rate if now >= self.at else self.rate_before,
            rate=rate,
        )

    def with_content(self, content: Content) -> Playback:
        return replace(self, content=content)

    def to_json(self) -> dict[str, Any]:
        """The snapshot form (server times in seconds)."""
        return {
            "phase": self.phase.value,
            "content": self.content.to_json() if self.content else None,
            "position": self.position,
            "at": self.at,
            "rate": self.rate,
            "rateBefore": self.rate_before,
            "startAt": self.start_at,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Playback:
        """Inverse of :meth:`to_json`; raises ``BadRequest``/``ValueError``/``KeyError``."""
        phase = Phase(raw["phase"])
        content = Content.parse(raw["content"]) if raw["content"] is not None else None
        start_at = raw["startAt"]
        numbers = [raw["position"], raw["at"], raw["rate"], raw["rateBefore"]]
        if start_at is not None:
            numbers.append(start_at)
        if not all(is_number(n) for n in numbers):
            raise ValueError("playback times, position and rates must be finite numbers")
        if (phase is Phase.IDLE) != (content is None):
            raise ValueError("a room has content exactly when it is not idle")
        if start_at is not None and phase is not Phase.WAITING:
            raise ValueError("only a waiting room has a start time")
        check_position(raw["position"])
        check_rate(raw["rate"])
        check_rate(raw["rateBefore"])
        return cls(
            phase,
            content,
            float(raw["position"]),
            float(raw["at"]),
            float(raw["rate"]),
            float(raw["rateBefore"]),
            None if start_at is None else float(start_at),
        )
