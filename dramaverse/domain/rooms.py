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
"""

from __future__ import annotations

import secrets
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dramaverse.domain.clocksync import ClockSync, to_ms
from dramaverse.domain.numbers import finite
from dramaverse.domain.playback import (
    Content,
    Phase,
    Playback,
    check_number,
    check_position,
    check_rate,
    is_number,
)
from dramaverse.errors import (
    BadRequest,
    Conflict,
    DramaverseError,
    Forbidden,
    NotFound,
    TooManyRequests,
)

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
SNAPSHOT_VERSION = 1


class Control(StrEnum):
    """Who may control playback."""

    HOST = "host"
    ALL = "all"


class MemberStatus(StrEnum):
    LOADING = "loading"  # joined, reconnected or content changed; not ready yet
    READY = "ready"  # its player can play the current content at the room's position
    BUFFERING = "buffering"  # was ready, then stalled


class InvalidSnapshot(DramaverseError):
    """A stored room snapshot cannot be restored."""


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


@dataclass(frozen=True, slots=True)
class Send:
    """Deliver ``message`` to member ``to``, or to every connected member but ``exclude``."""

    to: str | None
    message: dict[str, Any]
    exclude: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command did: messages to send, and the result for the requester's ``ack``."""

    sends: list[Send]
    result: dict[str, Any]


@dataclass(slots=True)
class Member:
    id: str
    name: str
    joined_at: float
    order: int  # join order: "longest present" is the lowest
    connected: bool = False
    disconnected_at: float | None = None
    status: MemberStatus = MemberStatus.LOADING
    left_out: bool = False  # left out of a barrier: catches up alone until the content changes
    nudge: float = 0.0  # the rate correction last sent, as a fraction of the room's rate
    steady: int = 0  # position reports in a row within half the nudge threshold
    relaxed: bool = False  # told to report every report_relaxed (room.pace)
    clock: ClockSync = field(default_factory=ClockSync)
    chat_times: deque[float] = field(default_factory=deque)

    def to_json(self, host: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "host": self.id == host,
            "connected": self.connected,
            "status": self.status.value,
            "leftOut": self.left_out,
            "joinedAt": to_ms(self.joined_at),
        }


@dataclass(slots=True)
class Barrier:
    """The members the room waits for, and when it stops waiting for them."""

    pending: set[str]
    deadline: float


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


def _fields(kind: str, data: object, allowed: Iterable[str]) -> Mapping[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise BadRequest(f"{kind}.data must be an object.")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise BadRequest(f"Unknown field {unknown[0]!r} in {kind}.")
    return data


Handler = Callable[["Room", Member, Mapping[str, Any], float], Outcome]
HANDLERS: dict[str, tuple[tuple[str, ...], Handler]] = {}


def command(kind: str, *fields: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        HANDLERS[kind] = (fields, handler)
        return handler

    return register


class Room:
    """One room's state. Create with the creator as host (not yet connected), then ``join``."""

    def __init__(
        self,
        code: str,
        config: RoomConfig,
        *,
        now: float,
        control: Control = Control.HOST,
        wait_for_joiners: bool = False,
    ) -> None:
        self.code = code
        self.config = config
        self.created_at = now
        self.control = control
        self.wait_for_joiners = wait_for_joiners
        self.host: str | None = None
        self.members: dict[str, Member] = {}
        self.playback = Playback(at=now)
        self.barrier: Barrier | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=config.history_size)
        self.next_chat_id = 1
        self.next_order = 1
        self.revision = 0  # bumped by every change a snapshot would record

    @classmethod
    def create(
        cls,
        code: str,
        config: RoomConfig,
        *,
        creator: str,
        name: str,
        now: float,
        control: Control = Control.HOST,
        wait_for_joiners: bool = False,
    ) -> Room:
        """A new room whose creator is its host, counted as disconnected until it joins."""
        room = cls(code, config, now=now, control=control, wait_for_joiners=wait_for_joiners)
        member = Member(check_member_id(creator), check_text(name, "name", MAX_NAME_LENGTH), now, 0)
        member.disconnected_at = now
        room.members[member.id] = member
        room.host = member.id
        return room

    # --- queries -------------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        return not self.members

    @property
    def connected(self) -> list[Member]:
        return [m for m in self.members.values() if m.connected]

    def lead(self) -> float:
        """How far ahead a start is scheduled: covers the slowest connected member's round trip."""
        worst = max((m.clock.rtt or 0.0 for m in self.members.values() if m.connected), default=0)
        return min(max(2.0 * worst, self.config.lead_min), self.config.lead_max)

    def next_deadline(self) -> float | None:
        """The earliest server time at which :meth:`tick` has something to do."""
        times: list[float] = []
        for member in self.members.values():
            if member.connected:
                if member.clock.next_ping_at is not None:
                    times.append(member.clock.next_ping_at)
            elif member.disconnected_at is not None:
                times.append(member.disconnected_at + self.config.reconnect_grace)
        if (host_grace_end := self._host_grace_end()) is not None:
            times.append(host_grace_end)
        if self.barrier is not None:
            times.append(self.barrier.deadline if self.barrier.pending else 0.0)
        if self.playback.start_at is not None:
            times.append(self.playback.start_at)
        if (end := self.playback.ends_at) is not None:
            times.append(end)
        return min(times, default=None)

    def view(self, now: float) -> dict[str, Any]:
        """The room as one JSON object (welcome, HTTP views); ``position`` is the current one."""
        return {
            "room": self.code,
            "host": self.host,
            "settings": self._settings_json(),
            "members": self._members_json(),
            "state": self._state_json(),
            "position": self.playback.position_at(now),
            "serverTime": to_ms(now),
        }

    # --- membership ----------------------------------------------------------------------

    def join(self, member_id: str, name: str, now: float) -> list[Send]:
        """A connection for ``member_id`` arrived: a new member, a reconnect, or a replacement."""
        member_id = check_member_id(member_id)
        name = check_text(name, "name", MAX_NAME_LENGTH)
        member = self.members.get(member_id)
        if member is None:
            if len(self.members) >= self.config.max_members:
                raise Forbidden(f"This room is full ({self.config.max_members} members).")
            member = Member(member_id, name, now, self.next_order)
            self.next_order += 1
            self.members[member_id] = member
        member.name = name
        member.connected = True
        member.disconnected_at = None
        member.status = MemberStatus.LOADING
        member.nudge = 0.0
        member.steady, member.relaxed = 0, False  # the welcome sets the fast pace
        member.clock.start(now)
        if self.host is None:
            self.host = member_id
        sends: list[Send] = []
        if self.wait_for_joiners and not member.left_out:
            if self.barrier is not None:
                self.barrier.pending.add(member_id)
                sends.append(self._state_send(exclude=member_id))
            elif self._will_play():
                sends += self._enter_barrier(now, {member_id}, exclude=member_id)
        self.revision += 1
        welcome = {"type": "room.welcome", "you": member_id, **self.view(now)}
        welcome["history"] = list(self.history)
        welcome["reportInterval"] = to_ms(self.config.report_interval)
        sends.insert(0, Send(member_id, welcome))
        sends.append(self._members_send(exclude=member_id))
        sends += self._pings(now, [member])
        return sends

    def disconnect(self, member_id: str, now: float) -> list[Send]:
        """The member's connection is gone; its membership waits ``reconnect_grace``."""
        member = self.members.get(member_id)
        if member is None or not member.connected:
            return []
        member.connected = False
        member.disconnected_at = now
        member.status = MemberStatus.LOADING
        member.nudge = 0.0
        member.clock.stop()
        self.revision += 1
        sends = [self._members_send()]
        if self.barrier is not None and member_id in self.barrier.pending:
            self.barrier.pending.discard(member_id)
            sends += self._settle_barrier(now)
        return sends

    def leave(self, member_id: str, now: float) -> list[Send]:
        """The member leaves for good; the host role passes on if it was the host."""
        member = self.members.pop(member_id, None)
        if member is None:
            raise NotFound("You are not in this room.")
        self.revision += 1
        if self.host == member_id:
            self.host = self._longest_present()
        sends = [self._members_send()] if self.members else []
        if self.barrier is not None and member_id in self.barrier.pending:
            self.barrier.pending.discard(member_id)
            sends += self._settle_barrier(now)
        return sends

    def _host_grace_end(self) -> float | None:
        """When a disconnected host loses the role, if someone connected could take it."""
        host = self.members.get(self.host) if self.host else None
        if host is None or host.connected or host.disconnected_at is None:
            return None
        if not any(m.connected for m in self.members.values()):
            return None
        return host.disconnected_at + self.config.host_grace

    def _longest_present(self, exclude: str | None = None) -> str | None:
        """The connected member who joined first, else the first member at all, else None."""
        candidates = [m for m in self.members.values() if m.id != exclude]
        connected = [m for m in candidates if m.connected]
        best = min(connected or candidates, key=lambda m: m.order, default=None)
        return best.id if best else None

    # --- time ----------------------------------------------------------------------------

    def tick(self, now: float) -> list[Send]:
        """Do what is due at ``now``: expiries, host grace, barrier deadline, start, end, pings."""
        sends: list[Send] = []
        grace = self.config.reconnect_grace
        for member in list(self.members.values()):
            gone_at = member.disconnected_at
            if not member.connected and gone_at is not None and gone_at + grace <= now:
                sends += self.leave(member.id, now)
        host_grace_end = self._host_grace_end()
        if host_grace_end is not None and host_grace_end <= now:
            self.host = self._longest_present()
            self.revision += 1
            sends.append(self._members_send())
        if self.barrier is not None and (not self.barrier.pending or self.barrier.deadline <= now):
            for member_id in self.barrier.pending:
                self.members[member_id].left_out = True
            if self.barrier.pending:
                sends.append(self._members_send())
            self.barrier.pending.clear()
            sends += self._settle_barrier(now)
        if self.playback.start_at is not None and self.playback.start_at <= now:
            sends.append(self._set_playback(self.playback.started()))
        end = self.playback.ends_at
        if end is not None and end <= now:
            sends.append(self._set_playback(self.playback.paused(end)))
        sends += self._pings(now, self.members.values())
        return sends

    def _pings(self, now: float, members: Iterable[Member]) -> list[Send]:
        return [
            Send(m.id, self._message(m.clock.ping(now)))
            for m in members
            if m.connected and m.clock.due(now)
        ]

    # --- commands ------------------------------------------------------------------------

    def handle(self, member_id: str, kind: object, data: object, now: float) -> Outcome:
        """Apply one client command. Raises (changing nothing) when it is refused."""
        member = self.members.get(member_id) if isinstance(member_id, str) else None
        if member is None or not member.connected:
            raise Forbidden("You are not in this room.")
        entry = HANDLERS.get(kind) if isinstance(kind, str) else None
        if entry is None:
            raise BadRequest(f"Unknown room message type {kind!r}.")
        allowed, handler = entry
        return handler(self, member, _fields(str(kind), data, allowed), now)

    def _require_control(self, member: Member) -> None:
        if self.control is Control.HOST and member.id != self.host:
            raise Forbidden("Only the host controls playback in this room.")

    def _require_host(self, member: Member, what: str) -> None:
        if member.id != self.host:
            raise Forbidden(f"Only the host can {what}.")

    def _will_play(self) -> bool:
        """Playing, or waiting for a scheduled start (not for a barrier)."""
        return self.playback.phase is Phase.PLAYING or self.playback.start_at is not None

    def _not_ready(self) -> set[str]:
        return {
            m.id
            for m in self.members.values()
            if m.connected and m.status is not MemberStatus.READY and not m.left_out
        }

    def _enter_barrier(
        self, now: float, pending: set[str], exclude: str | None = None
    ) -> list[Send]:
        position = self.playback.position_at(now)
        self.barrier = Barrier(pending, now + self.config.barrier_timeout)
        return [self._set_playback(self.playback.waiting(now, position, None), exclude=exclude)]

    def _start_when_ready(self, now: float, pending: set[str]) -> list[Send]:
        """Wait for ``pending`` behind a barrier, or schedule the start if nobody is pending."""
        if pending:
            return self._enter_barrier(now, pending)
        return [self._schedule_start(now)]

    def _settle_barrier(self, now: float) -> list[Send]:
        """Once nobody is pending any more, schedule the start."""
        if self.barrier is None or self.barrier.pending:
            return [self._state_send()] if self.barrier is not None else []
        self.barrier = None
        return [self._schedule_start(now)]

    def _schedule_start(self, now: float) -> Send:
        start = now + self.lead()
        return self._set_playback(self.playback.waiting(now, self.playback.position, start))

    def _set_playback(self, playback: Playback, exclude: str | None = None) -> Send:
        self.playback = playback
        self.revision += 1
        for member in self.members.values():
            member.nudge = 0.0  # every client resets its rate on a new state
        return self._state_send(exclude=exclude)

    @command("room.play")
    def _play(self, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
        self._require_control(member)
        phase = self.playback.phase
        if phase is Phase.IDLE:
            raise Conflict("Nothing to play: choose content first.")
        if phase is not Phase.PAUSED:
            return Outcome([], {"phase": phase.value})
        sends = self._start_when_ready(now, self._not_ready())
        return Outcome(sends, {"phase": self.playback.phase.value})

    @command("room.pause")
    def _pause(self, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
        self._require_control(member)
        if self.playback.phase is Phase.IDLE:
            raise Conflict("Nothing is playing.")
        if self.playback.phase is Phase.PAUSED:
            return Outcome([], {"phase": "paused"})
        self.barrier = None
        return Outcome([self._set_playback(self.playback.paused(now))], {"phase": "paused"})

    @command("room.seek", "position")
    def _seek(self, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
        self._require_control(member)
        position = self._check_target(data.get("position"))
        playback = self.playback
        if playback.phase is Phase.PAUSED:
            new = playback.paused(now, position)
        elif self.barrier is not None:
            new = playback.waiting(now, position, None)
        else:
            new = playback.waiting(now, position, now + self.lead())
        return Outcome([self._set_playback(new)], {"phase": new.phase.value})

    def _check_target(self, raw: object) -> float:
        content = self.playback.content
        if content is None:
            raise Conflict("Choose content before seeking.")
        position = check_position(raw)
        if content.duration is not None and position > content.duration:
            raise BadRequest(f"position is past the end of the content ({content.duration:g} s).")
        return position

    @command("room.rate", "rate")
    def _rate(self, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
        self._require_control(member)
        rate = check_rate(data.get("rate"))
        if self.playback.phase is Phase.IDLE:
            raise Conflict("Choose content before setting the rate.")
        if rate == self.playback.rate:
            return Outcome([], {"rate": rate})
        send = self._set_playback(self.playback.rescaled(now, self.lead(), rate))
        return Outcome([send], {"rate": rate})

    @command("room.content", "content", "position")
    def _content(self, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
        self._require_control(member)
        content = Content.parse(data.get("content"))
        position = 0.0
        if data.get("position") is not None:
            position = check_position(data.get("position"))
            if content.duration is not None and position > content.duration:
                raise BadRequest(
                    f"position is past the end of the content ({content.duration:g} s)."
                )
        play = self.playback.phase in (Phase.PLAYING, Phase.WAITING)
        for m in self.members.values():
            m.status = MemberStatus.LOADING  # everyone loads the new item
            m.left_out = False
        playback = self.playback.with_content(content)
        if not play:
            send = self._set_playback(playback.paused(now, position))
            return Outcome([send, self._members_send()], {"phase": "paused"})
        # Everyone loads the new item first: a barrier over every connected member.
        self.barrier = None
        self.playback = playback.waiting(now, position, None)
        sends = self._start_when_ready(now, {m.id for m in self.connected})
        return Outcome([*sends, self._members_send()], {"phase": "waiting"})

    @command("room.settings", "control", "waitForJoiners")
    def _settings(self, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
        self._require_host(member, "change the room settings")
        if not data:
            raise BadRequest("room.settings needs control or waitForJoiners.")
        control = self.control
        if "control" in data:
            if data["control"] not in (Control.HOST.value, Control.ALL.value):
                raise BadRequest("control must be 'host' or 'all'.")
            control = Control(data["control"])
        wait = self.wait_for_joiners
        if "waitForJoiners" in data:
            if not isinstance(data["waitForJoiners"], bool):
                raise BadRequest("waitForJoiners must be true or false.")
            wait = data["waitForJoiners"]
        self.control, self.wait_for_joiners = control, wait
        self.revision += 1
        settings = self._settings_json()
        return Outcome([Send(None, self._message({"type": "room.settings", **settings}))], settings)

    @command("room.host", "member")
    def _handover(self, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
        self._require_host(member, "hand the host role over")
        target = data.get("member")
        if not isinstance(target, str) or target not in self.members:
            raise NotFound(f"No member {target!r} in this room.")
        if target == member.id:
            raise BadRequest("You are already the host.")
        if not self.members[target].connected:
            raise Conflict(f"Member {target!r} is not connected.")
        self.host = target
        self.revision += 1
        return Outcome([self._members_send()], {"host": target})

    @command("room.status", "state")
    def _status(self, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
        state = data.get("state")
        if state not in ("ready", "buffering"):
            raise BadRequest("state must be 'ready' or 'buffering'.")
        sends: list[Send] = []
        before = member.status
        if state == "ready":
            member.status = MemberStatus.READY
            if self.barrier is not None and member.id in self.barrier.pending:
                self.barrier.pending.discard(member.id)
                sends += self._settle_barrier(now)
        elif before is MemberStatus.READY:
            member.status = MemberStatus.BUFFERING
            if not member.left_out:
                if self.barrier is not None:
                    self.barrier.pending.add(member.id)
                    sends.append(self._state_send())
                elif self._will_play():
                    sends += self._enter_barrier(now, {member.id})
        if member.status is not before:
            self.revision += 1
            sends.append(self._members_send())
        return Outcome(sends, {"status": member.status.value})

    @command("room.position", "position", "at")
    def _position(self, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
        reported = check_position(data.get("position"))
        at = data.get("at")
        if at is None:
            t = now - (member.clock.rtt or 0.0) / 2.0
        else:
            at_ms = finite(at)
            if at_ms is None:
                raise BadRequest("at must be a server time in milliseconds.")
            t = at_ms / 1000.0
            if not now - MAX_REPORT_AGE <= t <= now + MAX_REPORT_AHEAD:
                raise BadRequest("at is too far from the server's clock: resynchronise first.")
        playback = self.playback
        if member.status is not MemberStatus.READY or t < playback.at:
            return Outcome([], {"corrected": False})
        if playback.phase is Phase.PLAYING:
            error = reported - playback.position_at(t)
            outcome = self._correct(member, error, now)
            if outcome.sends:  # a room.drift: the member is back on the fast pace
                member.steady, member.relaxed = 0, False
            else:
                outcome.sends.extend(self._pace(member, error))
            return outcome
        if playback.phase is Phase.PAUSED:
            error = reported - playback.position
            if abs(error) >= self.config.drift_seek:
                return Outcome([self._drift(member, "seek", error, now)], {"corrected": True})
        return Outcome([], {"corrected": False})

    def _correct(self, member: Member, error: float, now: float) -> Outcome:
        """Seek for a large error, nudge the rate for a small one, release the nudge when done."""
        config = self.config
        if abs(error) >= config.drift_seek:
            member.nudge = 0.0
            return Outcome([self._drift(member, "seek", error, now)], {"corrected": True})
        nudge = 0.0
        if abs(error) >= config.drift_nudge:
            nudge = max(
                -config.drift_max_nudge, min(config.drift_max_nudge, -error / NUDGE_HORIZON)
            )
        if abs(nudge - member.nudge) < NUDGE_STEP and (nudge != 0.0 or member.nudge == 0.0):
            return Outcome([], {"corrected": False})
        member.nudge = nudge
        return Outcome([self._drift(member, "rate", error, now)], {"corrected": True})

    def _pace(self, member: Member, error: float) -> list[Send]:
        """Relax a steady member's reports: after STEADY_REPORTS in a row within half the nudge
        threshold (and no nudge running), one ``room.pace`` with ``report_relaxed``. Drift is
        slow (media clocks are off by well under 0.1 %, a few ms per relaxed interval), so the
        reports that matter are the ones after a change, and those come at the fast pace:
        ``room.welcome``, ``room.state`` and ``room.drift`` put the member back on it."""
        config = self.config
        if abs(error) >= config.drift_nudge / 2 or member.nudge != 0.0:
            member.steady = 0
            return []
        member.steady += 1
        if (
            member.relaxed
            or member.steady < STEADY_REPORTS
            or config.report_relaxed <= config.report_interval
        ):
            return []
        member.relaxed = True
        pace = {"type": "room.pace", "reportInterval": to_ms(config.report_relaxed)}
        return [Send(member.id, self._message(pace))]

    def _drift(self, member: Member, action: str, error: float, now: float) -> Send:
        playback = self.playback
        message = {
            "type": "room.drift",
            "action": action,
            "rate": round(playback.rate * (1.0 + member.nudge), 6),
            "position": playback.position_at(now),
            "at": to_ms(now),
            "error": round(error, 6),
        }
        return Send(member.id, self._message(message))

    @command("clock.pong", "seq", "t1", "t2")
    def _pong(self, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
        checked = member.clock.check_pong(data)
        if checked is None:
            return Outcome([], {})  # a late answer to an expired ping: nothing to learn
        seq, t1, t2 = checked
        member.clock.pong(seq, t1, t2, now)
        sends: list[Send] = []
        sync = member.clock.sync_message()
        if sync is not None:
            sends.append(Send(member.id, self._message(sync)))
        sends += self._pings(now, [member])
        return Outcome(sends, {})

    @command("room.chat", "text")
    def _chat(self, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
        text = check_text(data.get("text"), "text", self.config.chat_max_length)
        self._spend(member, now)
        entry = {
            "id": self.next_chat_id,
            "member": member.id,
            "name": member.name,
            "text": text,
            "at": to_ms(now),
        }
        self.next_chat_id += 1
        self.history.append(entry)
        self.revision += 1
        return Outcome(
            [Send(None, self._message({"type": "room.chat", **entry}))], {"id": entry["id"]}
        )

    @command("room.reaction", "emoji")
    def _reaction(self, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
        emoji = data.get("emoji")
        if (
            not isinstance(emoji, str)
            or not 1 <= len(emoji) <= MAX_REACTION_LENGTH
            or any(c.isspace() or unicodedata.category(c) == "Cc" for c in emoji)
        ):
            raise BadRequest(f"emoji must be 1 to {MAX_REACTION_LENGTH} characters without spaces.")
        self._spend(member, now)
        message = {"type": "room.reaction", "member": member.id, "emoji": emoji, "at": to_ms(now)}
        return Outcome([Send(None, self._message(message))], {})

    def _spend(self, member: Member, now: float) -> None:
        """Chat and reactions share a sliding-window limit per member."""
        window = self.config.chat_rate_window
        times = member.chat_times
        while times and times[0] <= now - window:
            times.popleft()
        if len(times) >= self.config.chat_rate_count:
            raise TooManyRequests(
                f"Too many messages: at most {self.config.chat_rate_count} per {window:g} s."
            )
        times.append(now)

    @command("room.leave")
    def _leave(self, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
        return Outcome(self.leave(member.id, now), {"left": True})

    # --- messages ------------------------------------------------------------------------

    def _message(self, message: dict[str, Any]) -> dict[str, Any]:
        message["room"] = self.code
        return message

    def _settings_json(self) -> dict[str, Any]:
        return {"control": self.control.value, "waitForJoiners": self.wait_for_joiners}

    def _members_json(self) -> list[dict[str, Any]]:
        ordered = sorted(self.members.values(), key=lambda m: m.order)
        return [m.to_json(self.host) for m in ordered]

    def _members_send(self, exclude: str | None = None) -> Send:
        message = {"type": "room.members", "host": self.host, "members": self._members_json()}
        return Send(None, self._message(message), exclude)

    def _state_json(self) -> dict[str, Any]:
        playback = self.playback
        barrier = self.barrier
        return {
            "phase": playback.phase.value,
            "content": playback.content.to_json() if playback.content else None,
            "position": playback.position,
            "at": to_ms(playback.at),
            "rate": playback.rate,
            "startAt": None if playback.start_at is None else to_ms(playback.start_at),
            "waitingFor": sorted(barrier.pending) if barrier else [],
            "deadline": to_ms(barrier.deadline) if barrier else None,
        }

    def _state_send(self, exclude: str | None = None) -> Send:
        for member in self.members.values():
            if member.id != exclude:  # a room.state puts its receivers back on the fast pace
                member.steady, member.relaxed = 0, False
        return Send(None, self._message({"type": "room.state", **self._state_json()}), exclude)

    # --- persistence ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything a restart needs, as JSON-safe values (server times in seconds)."""
        return {
            "v": SNAPSHOT_VERSION,
            "code": self.code,
            "createdAt": self.created_at,
            "revision": self.revision,
            "control": self.control.value,
            "waitForJoiners": self.wait_for_joiners,
            "host": self.host,
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
                for m in sorted(self.members.values(), key=lambda m: m.order)
            ],
            "playback": self.playback.to_json(),
            "barrier": None
            if self.barrier is None
            else {"pending": sorted(self.barrier.pending), "deadline": self.barrier.deadline},
            "history": list(self.history),
            "nextChatId": self.next_chat_id,
            "nextOrder": self.next_order,
        }

    @classmethod
    def restore(cls, data: Mapping[str, Any], config: RoomConfig, *, now: float) -> Room:
        """Rebuild a room from :meth:`snapshot`. Members connected at snapshot time count as
        disconnected from ``now`` (their connections died with the old process), so whoever
        reconnects within the grace keeps membership and role. Raises :class:`InvalidSnapshot`.
        """
        try:
            return cls._restore(data, config, now)
        except InvalidSnapshot:
            raise
        except (DramaverseError, KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = exc.message if isinstance(exc, DramaverseError) else repr(exc)
            raise InvalidSnapshot(f"Invalid room snapshot: {detail}") from exc

    @classmethod
    def _restore(cls, data: Mapping[str, Any], config: RoomConfig, now: float) -> Room:
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
        room.host = host if host is not None else room._longest_present()
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
