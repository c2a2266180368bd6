"""The watch-party room: membership, roles, playback, buffering barrier, drift, chat. Pure.

A :class:`Room` is a plain object with no I/O and no clock of its own: every operation takes
``now`` (server time, seconds) and returns the messages to send as :class:`Send` effects,
addressed to one member or to every connected member. The room actor (``actors/room.py``) owns
one, feeds it joins, disconnects and client commands, calls :meth:`Room.tick` at
:meth:`Room.next_deadline`, and delivers the effects. Anything the room refuses raises a
:class:`~dramaverse.errors.DramaverseError` (400 malformed, 403 forbidden, 404 unknown member,
409 wrong state, 429 too fast) before anything was changed.

Model (details and defaults: ``docs/watch-parties.md``):

- Membership survives disconnects for ``reconnect_grace``: a member who comes back in time keeps
  its place and role. The creator is the host; the host can hand the role over; when the host
  leaves, or stays disconnected past ``host_grace`` while someone else is connected, the role
  passes to the longest-present connected member.
- Playback is one authoritative :class:`~dramaverse.domain.playback.Playback` anchor. Every
  (re)start is scheduled at ``now + lead`` with ``lead = clamp(2 x the largest member round
  trip, lead_min, lead_max)``, so the start message reaches everyone before the start.
- Buffering barrier: a member whose player stalls says so; the room waits (``waiting`` without a
  start time) until every member it waits for is ready again, or until ``barrier_timeout``, when
  the stragglers are left out and catch up on their own (they do not stall the room again until
  the content changes). Late joiners never stall a playing room unless ``wait_for_joiners``.
- Drift: members report their position; the room answers with a rate nudge for small errors and
  a seek for large ones.
- Clock sync: :mod:`dramaverse.domain.clocksync`, one per member.

The room is four small modules, joined here:

- :mod:`~dramaverse.domain.room_rules`: limits, tunables (:class:`RoomConfig`), roles, room
  codes and input checks;
- :mod:`~dramaverse.domain.room_state`: :class:`RoomState`, membership, time, the barrier and the
  messages describing the room;
- :mod:`~dramaverse.domain.room_verbs`: the client commands (:data:`HANDLERS`) and drift
  correction;
- :mod:`~dramaverse.domain.room_snapshot`: the room as JSON and back.

Import room names from this module; the others are its parts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dramaverse.domain import room_snapshot, room_verbs
from dramaverse.domain.room_rules import (
    MAX_MEMBER_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_REACTION_LENGTH,
    ROOM_CODE_ALPHABET,
    ROOM_CODE_LENGTH,
    Control,
    MemberStatus,
    RoomConfig,
    check_member_id,
    check_text,
    new_room_code,
    normalize_room_code,
)
from dramaverse.domain.room_snapshot import SNAPSHOT_VERSION, InvalidSnapshot
from dramaverse.domain.room_state import Barrier, Member, Outcome, RoomState, Send
from dramaverse.domain.room_verbs import HANDLERS, Handler

__all__ = [
    "HANDLERS",
    "MAX_MEMBER_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_REACTION_LENGTH",
    "ROOM_CODE_ALPHABET",
    "ROOM_CODE_LENGTH",
    "SNAPSHOT_VERSION",
    "Barrier",
    "Control",
    "Handler",
    "InvalidSnapshot",
    "Member",
    "MemberStatus",
    "Outcome",
    "Room",
    "RoomConfig",
    "Send",
    "check_member_id",
    "check_text",
    "new_room_code",
    "normalize_room_code",
]


class Room(RoomState):
    """One watch-party room: its state, its verbs and its snapshots."""

    def handle(self, member_id: str, kind: object, data: object, now: float) -> Outcome:
        """Apply one client command. Raises (changing nothing) when it is refused."""
        return room_verbs.handle(self, member_id, kind, data, now)

    def snapshot(self) -> dict[str, Any]:
        """Everything a restart needs, as JSON-safe values (server times in seconds)."""
        return room_snapshot.snapshot(self)

    @classmethod
    def restore(cls, data: Mapping[str, Any], config: RoomConfig, *, now: float) -> Room:
        """Rebuild a room from :meth:`snapshot`; raises :class:`InvalidSnapshot`."""
        return room_snapshot.restore(cls, data, config, now=now)
