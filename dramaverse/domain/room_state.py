"""A watch-party room's state: members and roles, the playback anchor, the buffering barrier,
time, and the messages that describe them. Pure: every operation takes ``now``.

:class:`RoomState` owns the data and the mechanics every verb shares (join, disconnect, leave,
tick, the barrier, scheduling a start, the ``room.state``/``room.members`` messages). Client
commands live in :mod:`~dramaverse.domain.room_verbs`; snapshots in
:mod:`~dramaverse.domain.room_snapshot`; :class:`~dramaverse.domain.rooms.Room` joins the three.
Operations return :class:`Send` effects; the room actor delivers them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Self

from dramaverse.domain.clocksync import ClockSync, to_ms
from dramaverse.domain.playback import Phase, Playback
from dramaverse.domain.room_rules import (
    MAX_NAME_LENGTH,
    Control,
    MemberStatus,
    RoomConfig,
    check_member_id,
    check_text,
)
from dramaverse.errors import Forbidden, NotFound


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


class RoomState:
    """One room's state. Create with the creator as host (not yet connected), then ``join``.

    The verbs (:mod:`~dramaverse.domain.room_verbs`) change it through the public methods below;
    :class:`~dramaverse.domain.rooms.Room` adds the verbs and snapshots.
    """

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
    ) -> Self:
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
            "settings": self.settings_json(),
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
                sends.append(self.state_send(exclude=member_id))
            elif self.will_play():
                sends += self.enter_barrier(now, {member_id}, exclude=member_id)
        self.revision += 1
        welcome = {"type": "room.welcome", "you": member_id, **self.view(now)}
        welcome["history"] = list(self.history)
        welcome["reportInterval"] = to_ms(self.config.report_interval)
        sends.insert(0, Send(member_id, welcome))
        sends.append(self.members_send(exclude=member_id))
        sends += self.pings(now, [member])
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
        sends = [self.members_send()]
        if self.barrier is not None and member_id in self.barrier.pending:
            self.barrier.pending.discard(member_id)
            sends += self.settle_barrier(now)
        return sends

    def leave(self, member_id: str, now: float) -> list[Send]:
        """The member leaves for good; the host role passes on if it was the host."""
        member = self.members.pop(member_id, None)
        if member is None:
            raise NotFound("You are not in this room.")
        self.revision += 1
        if self.host == member_id:
            self.host = self.longest_present()
        sends = [self.members_send()] if self.members else []
        if self.barrier is not None and member_id in self.barrier.pending:
            self.barrier.pending.discard(member_id)
            sends += self.settle_barrier(now)
        return sends

    def _host_grace_end(self) -> float | None:
        """When a disconnected host loses the role, if someone connected could take it."""
        host = self.members.get(self.host) if self.host else None
        if host is None or host.connected or host.disconnected_at is None:
            return None
        if not any(m.connected for m in self.members.values()):
            return None
        return host.disconnected_at + self.config.host_grace

    def longest_present(self, exclude: str | None = None) -> str | None:
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
            self.host = self.longest_present()
            self.revision += 1
            sends.append(self.members_send())
        if self.barrier is not None and (not self.barrier.pending or self.barrier.deadline <= now):
            for member_id in self.barrier.pending:
                self.members[member_id].left_out = True
            if self.barrier.pending:
                sends.append(self.members_send())
            self.barrier.pending.clear()
            sends += self.settle_barrier(now)
        if self.playback.start_at is not None and self.playback.start_at <= now:
            sends.append(self.set_playback(self.playback.started()))
        end = self.playback.ends_at
        if end is not None and end <= now:
            sends.append(self.set_playback(self.playback.paused(end)))
        sends += self.pings(now, self.members.values())
        return sends

    def pings(self, now: float, members: Iterable[Member]) -> list[Send]:
        return [
            Send(m.id, self.message(m.clock.ping(now)))
            for m in members
            if m.connected and m.clock.due(now)
        ]

    def require_control(self, member: Member) -> None:
        if self.control is Control.HOST and member.id != self.host:
            raise Forbidden("Only the host controls playback in this room.")

    def require_host(self, member: Member, what: str) -> None:
        if member.id != self.host:
            raise Forbidden(f"Only the host can {what}.")

    def will_play(self) -> bool:
        """Playing, or waiting for a scheduled start (not for a barrier)."""
        return self.playback.phase is Phase.PLAYING or self.playback.start_at is not None

    def not_ready(self) -> set[str]:
        return {
            m.id
            for m in self.members.values()
            if m.connected and m.status is not MemberStatus.READY and not m.left_out
        }

    def enter_barrier(
        self, now: float, pending: set[str], exclude: str | None = None
    ) -> list[Send]:
        position = self.playback.position_at(now)
        self.barrier = Barrier(pending, now + self.config.barrier_timeout)
        return [self.set_playback(self.playback.waiting(now, position, None), exclude=exclude)]

    def start_when_ready(self, now: float, pending: set[str]) -> list[Send]:
        """Wait for ``pending`` behind a barrier, or schedule the start if nobody is pending."""
        if pending:
            return self.enter_barrier(now, pending)
        return [self._schedule_start(now)]

    def settle_barrier(self, now: float) -> list[Send]:
        """Once nobody is pending any more, schedule the start."""
        if self.barrier is None or self.barrier.pending:
            return [self.state_send()] if self.barrier is not None else []
        self.barrier = None
        return [self._schedule_start(now)]

    def _schedule_start(self, now: float) -> Send:
        start = now + self.lead()
        return self.set_playback(self.playback.waiting(now, self.playback.position, start))

    def set_playback(self, playback: Playback, exclude: str | None = None) -> Send:
        self.playback = playback
        self.revision += 1
        for member in self.members.values():
            member.nudge = 0.0  # every client resets its rate on a new state
        return self.state_send(exclude=exclude)

    # --- messages ------------------------------------------------------------------------

    def message(self, message: dict[str, Any]) -> dict[str, Any]:
        message["room"] = self.code
        return message

    def settings_json(self) -> dict[str, Any]:
        return {"control": self.control.value, "waitForJoiners": self.wait_for_joiners}

    def _members_json(self) -> list[dict[str, Any]]:
        ordered = sorted(self.members.values(), key=lambda m: m.order)
        return [m.to_json(self.host) for m in ordered]

    def members_send(self, exclude: str | None = None) -> Send:
        message = {"type": "room.members", "host": self.host, "members": self._members_json()}
        return Send(None, self.message(message), exclude)

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

    def state_send(self, exclude: str | None = None) -> Send:
        for member in self.members.values():
            if member.id != exclude:  # a room.state puts its receivers back on the fast pace
                member.steady, member.relaxed = 0, False
        return Send(None, self.message({"type": "room.state", **self._state_json()}), exclude)
