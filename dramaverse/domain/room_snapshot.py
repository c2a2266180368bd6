"""A watch-party room as JSON, and back: what a restart needs to bring a room back.

:func:`snapshot` writes every field a restart needs (server times in seconds);
:func:`restore` checks a stored snapshot field by field and rebuilds the room, or raises
:class:`InvalidSnapshot` (a 4xx-style :class:`~dramaverse.errors.DramaverseError`) and builds
nothing. Members connected at snapshot time count as disconnected from the restore, so whoever
reconnects within the grace keeps membership and role.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from dramaverse.domain.playback import Phase, Playback, check_number, is_number
from dramaverse.domain.room_rules import (
    MAX_NAME_LENGTH,
    Control,
    MemberStatus,
    RoomConfig,
    check_member_id,
    check_text,
    normalize_room_code,
)
from dramaverse.domain.room_state import Barrier, Member, RoomState
from dramaverse.errors import DramaverseError

SNAPSHOT_VERSION = 1
R = TypeVar("R", bound=RoomState)


class InvalidSnapshot(DramaverseError):
    """A stored room snapshot cannot be restored."""


def snapshot(room: RoomState) -> dict[str, Any]:
    """Everything a restart needs, as JSON-safe values (server times in seconds)."""
    return {
        "v": SNAPSHOT_VERSION,
        "code": room.code,
        "createdAt": room.created_at,
        "revision": room.revision,
        "control": room.control.value,
        "waitForJoiners": room.wait_for_joiners,
        "host": room.host,
        "members": [
            {
                "id": m.id,
                "name": m.name,
                "joinedAt": m.joined_at,
                "order": m.order,
                "connected": m.connected,
                "disconnectedAt": m.disconnected_at,
                "status": m.status.value,
                "leftOut": m.left_out,
            }
            for m in sorted(room.members.values(), key=lambda m: m.order)
        ],
        "playback": room.playback.to_json(),
        "barrier": None
        if room.barrier is None
        else {"pending": sorted(room.barrier.pending), "deadline": room.barrier.deadline},
        "history": list(room.history),
        "nextChatId": room.next_chat_id,
        "nextOrder": room.next_order,
    }


def restore(cls: type[R], data: Mapping[str, Any], config: RoomConfig, *, now: float) -> R:
    """Rebuild a room of class ``cls`` from :func:`snapshot`. Members connected at snapshot
    time count as disconnected from ``now`` (their connections died with the old process), so
    whoever reconnects within the grace keeps membership and role. Raises
    :class:`InvalidSnapshot`.
    """
    try:
        return _restore(cls, data, config, now)
    except InvalidSnapshot:
        raise
    except (DramaverseError, KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = exc.message if isinstance(exc, DramaverseError) else repr(exc)
        raise InvalidSnapshot(f"Invalid room snapshot: {detail}") from exc


def _restore(cls: type[R], data: Mapping[str, Any], config: RoomConfig, now: float) -> R:
    if data.get("v") != SNAPSHOT_VERSION:
        raise InvalidSnapshot(f"Invalid room snapshot: unknown version {data.get('v')!r}.")
    code = normalize_room_code(data["code"])
    if not is_number(data["createdAt"]):
        raise ValueError("createdAt must be a number")
    room = cls(
        code,
        config,
        now=float(data["createdAt"]),
        control=Control(data["control"]),
        wait_for_joiners=bool(data["waitForJoiners"]),
    )
    for raw in data["members"]:
        member = Member(
            check_member_id(raw["id"]),
            check_text(raw["name"], "name", MAX_NAME_LENGTH),
            check_number(raw["joinedAt"], "joinedAt", -1e12, 1e12),
            int(raw["order"]),
            status=MemberStatus(raw["status"]),
            left_out=bool(raw["leftOut"]),
        )
        gone = raw["disconnectedAt"]
        member.disconnected_at = now if raw["connected"] or gone is None else float(gone)
        member.status = MemberStatus.LOADING  # a reconnecting player loads again
        room.members[member.id] = member
    host = data["host"]
    if host is not None and host not in room.members:
        raise ValueError(f"host {host!r} is not a member")
    room.host = host if host is not None else room.longest_present()
    room.playback = Playback.from_json(data["playback"])
    barrier = data["barrier"]
    if barrier is not None:
        if room.playback.phase is not Phase.WAITING or room.playback.start_at is not None:
            raise ValueError("a barrier needs a waiting room without a start time")
        # Nobody is connected after a restore, so nobody is pending: the first tick resumes.
        room.barrier = Barrier(set(), float(barrier["deadline"]))
    for entry in data["history"][-config.history_size :]:
        room.history.append(
            {
                "id": int(entry["id"]),
                "member": str(entry["member"]),
                "name": str(entry["name"]),
                "text": str(entry["text"]),
                "at": float(entry["at"]),
            }
        )
    room.next_chat_id = int(data["nextChatId"])
    room.next_order = max(
        int(data["nextOrder"]), 1 + max((m.order for m in room.members.values()), default=0)
    )
    room.revision = int(data["revision"])
    return room
