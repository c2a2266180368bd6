"""Sequenced user events: what the event log stores and the broker carries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dramaverse.domain.library import LibraryEvent


@dataclass(frozen=True, slots=True)
class UserEvent:
    """One entry of a user's event log: ``seq`` is gapless and increasing per user."""

    user_id: int
    seq: int
    name: str
    payload: dict[str, Any]

    @classmethod
    def of(cls, user_id: int, seq: int, event: LibraryEvent) -> UserEvent:
        return cls(user_id, seq, event.name, event.payload)

    def encode(self) -> bytes:
        """The broker's wire form."""
        return json.dumps(
            {"u": self.user_id, "s": self.seq, "n": self.name, "p": self.payload},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def decode(cls, raw: bytes) -> UserEvent:
        fields = json.loads(raw)
        return cls(int(fields["u"]), int(fields["s"]), str(fields["n"]), dict(fields["p"]))

    def frame(self) -> str:
        """The native protocol's ``event`` frame, encoded once and shared by every device."""
        return json.dumps(
            {"type": "event", "seq": self.seq, "event": self.name, "data": self.payload},
            ensure_ascii=False,
            separators=(",", ":"),
        )


@dataclass(frozen=True, slots=True)
class EventRange:
    """Events after a resume point, or the news that the log no longer holds them all."""

    events: list[UserEvent]
    head: int
    complete: bool
