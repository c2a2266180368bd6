"""The rules every watch-party room follows: limits, tunables, roles, codes and input checks.

Pure constants and validators shared by the room's state (:mod:`~dramaverse.domain.room_state`),
its verbs (:mod:`~dramaverse.domain.room_verbs`) and its snapshots
(:mod:`~dramaverse.domain.room_snapshot`), and by the WebSocket layer that parses room codes and
names before a room is involved. Anything refused raises
:class:`~dramaverse.errors.BadRequest` with a message for the client.
"""

from __future__ import annotations

import secrets
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dramaverse.errors import BadRequest

ROOM_CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"  # no 0/O, 1/I/L: read aloud and typed
ROOM_CODE_LENGTH = 8  # 31**8 ≈ 8.5e11 codes (39 bits)
MAX_MEMBER_ID_LENGTH = 64
MAX_NAME_LENGTH = 64
MAX_REACTION_LENGTH = 16
NUDGE_HORIZON = 2.0  # a nudge aims to remove the drift over this many seconds
NUDGE_STEP = 0.005  # smaller changes to a member's nudge are not worth a message
MAX_REPORT_AGE = 5.0  # seconds: older position reports are stale
MAX_REPORT_AHEAD = 1.0  # seconds: a report "from the future" beyond this is a broken clock
STEADY_REPORTS = 3  # reports in a row within half the nudge threshold before the pace relaxes


class Control(StrEnum):
    """Who may control playback."""

    HOST = "host"
    ALL = "all"


class MemberStatus(StrEnum):
    LOADING = "loading"  # joined, reconnected or content changed; not ready yet
    READY = "ready"  # its player can play the current content at the room's position
    BUFFERING = "buffering"  # was ready, then stalled


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """Tunables of every room (``config.py``'s WATCH_* settings; defaults justified in docs)."""

    lead_min: float = 0.3
    lead_max: float = 3.0
    drift_nudge: float = 0.04
    drift_seek: float = 0.5
    drift_max_nudge: float = 0.08
    barrier_timeout: float = 8.0
    host_grace: float = 15.0
    reconnect_grace: float = 60.0
    chat_max_length: int = 500
    chat_rate_count: int = 10
    chat_rate_window: float = 10.0
    history_size: int = 50
    max_members: int = 50
    report_interval: float = 2.0
    report_relaxed: float = 6.0  # a steady member's interval; <= report_interval: never relax


def new_room_code() -> str:
    """A random code from the unambiguous alphabet (``secrets``: codes are capabilities)."""
    return "".join(secrets.choice(ROOM_CODE_ALPHABET) for _ in range(ROOM_CODE_LENGTH))


def normalize_room_code(raw: object) -> str:
    """Accept what people type (any case, spaces, dashes); refuse anything else."""
    if isinstance(raw, str):
        code = raw.strip().upper().replace("-", "").replace(" ", "")
        if len(code) == ROOM_CODE_LENGTH and all(c in ROOM_CODE_ALPHABET for c in code):
            return code
    raise BadRequest(f"A room code is {ROOM_CODE_LENGTH} letters and digits, like 7KQ3-M8TD.")


def check_member_id(raw: object) -> str:
    if not isinstance(raw, str) or not 1 <= len(raw) <= MAX_MEMBER_ID_LENGTH:
        raise BadRequest(f"A member id is a string of 1 to {MAX_MEMBER_ID_LENGTH} characters.")
    return raw


def check_text(raw: object, name: str, max_length: int) -> str:
    """Non-blank text without control characters (newlines and tabs allowed), stripped."""
    if not isinstance(raw, str):
        raise BadRequest(f"{name} must be a string.")
    text = raw.strip()
    if not text:
        raise BadRequest(f"{name} must not be empty.")
    if len(text) > max_length:
        raise BadRequest(f"{name} is longer than {max_length} characters.")
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text):
        raise BadRequest(f"{name} must not contain control characters.")
    return text


def message_fields(kind: str, data: object, allowed: Iterable[str]) -> Mapping[str, Any]:
    """A message's ``data``: an object (absent means empty) with no field beyond ``allowed``."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise BadRequest(f"{kind}.data must be an object.")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise BadRequest(f"Unknown field {unknown[0]!r} in {kind}.")
    return data
