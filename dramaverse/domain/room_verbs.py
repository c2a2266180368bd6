"""The client commands of a watch-party room (``room.*`` and ``clock.pong``). Pure.

Each verb is a function ``(room, member, data, now) -> Outcome`` registered in
:data:`HANDLERS` with the fields it accepts; :func:`handle` checks the member and the fields and
calls it. A verb either raises (400 malformed, 403 forbidden, 404 unknown member, 409 wrong
state, 429 too fast) before changing anything, or changes the room and returns the messages to
send and the requester's ``ack`` result. Drift correction (nudge or seek, the report pace) lives
here with ``room.position``, the only verb that reports drift.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from dramaverse.domain.clocksync import to_ms
from dramaverse.domain.numbers import finite
from dramaverse.domain.playback import Content, Phase, check_position, check_rate
from dramaverse.domain.room_rules import (
    MAX_REACTION_LENGTH,
    MAX_REPORT_AGE,
    MAX_REPORT_AHEAD,
    NUDGE_HORIZON,
    NUDGE_STEP,
    STEADY_REPORTS,
    Control,
    MemberStatus,
    check_text,
    message_fields,
)
from dramaverse.domain.room_state import Member, Outcome, RoomState, Send
from dramaverse.errors import BadRequest, Conflict, Forbidden, NotFound, TooManyRequests

Handler = Callable[[RoomState, Member, Mapping[str, Any], float], Outcome]
HANDLERS: dict[str, tuple[tuple[str, ...], Handler]] = {}


def command(kind: str, *fields: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        HANDLERS[kind] = (fields, handler)
        return handler

    return register


def handle(room: RoomState, member_id: str, kind: object, data: object, now: float) -> Outcome:
    """Apply one client command. Raises (changing nothing) when it is refused."""
    member = room.members.get(member_id) if isinstance(member_id, str) else None
    if member is None or not member.connected:
        raise Forbidden("You are not in this room.")
    entry = HANDLERS.get(kind) if isinstance(kind, str) else None
    if entry is None:
        raise BadRequest(f"Unknown room message type {kind!r}.")
    allowed, handler = entry
    return handler(room, member, message_fields(str(kind), data, allowed), now)


@command("room.play")
def _play(room: RoomState, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
    room.require_control(member)
    phase = room.playback.phase
    if phase is Phase.IDLE:
        raise Conflict("Nothing to play: choose content first.")
    if phase is not Phase.PAUSED:
        return Outcome([], {"phase": phase.value})
    sends = room.start_when_ready(now, room.not_ready())
    return Outcome(sends, {"phase": room.playback.phase.value})


@command("room.pause")
def _pause(room: RoomState, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
    room.require_control(member)
    if room.playback.phase is Phase.IDLE:
        raise Conflict("Nothing is playing.")
    if room.playback.phase is Phase.PAUSED:
        return Outcome([], {"phase": "paused"})
    room.barrier = None
    return Outcome([room.set_playback(room.playback.paused(now))], {"phase": "paused"})


@command("room.seek", "position")
def _seek(room: RoomState, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
    room.require_control(member)
    position = _check_target(room, data.get("position"))
    playback = room.playback
    if playback.phase is Phase.PAUSED:
        new = playback.paused(now, position)
    elif room.barrier is not None:
        new = playback.waiting(now, position, None)
    else:
        new = playback.waiting(now, position, now + room.lead())
    return Outcome([room.set_playback(new)], {"phase": new.phase.value})


def _check_target(room: RoomState, raw: object) -> float:
    content = room.playback.content
    if content is None:
        raise Conflict("Choose content before seeking.")
    position = check_position(raw)
    if content.duration is not None and position > content.duration:
        raise BadRequest(f"position is past the end of the content ({content.duration:g} s).")
    return position


@command("room.rate", "rate")
def _rate(room: RoomState, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
    room.require_control(member)
    rate = check_rate(data.get("rate"))
    if room.playback.phase is Phase.IDLE:
        raise Conflict("Choose content before setting the rate.")
    if rate == room.playback.rate:
        return Outcome([], {"rate": rate})
    send = room.set_playback(room.playback.rescaled(now, room.lead(), rate))
    return Outcome([send], {"rate": rate})


@command("room.content", "content", "position")
def _content(room: RoomState, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
    room.require_control(member)
    content = Content.parse(data.get("content"))
    position = 0.0
    if data.get("position") is not None:
        position = check_position(data.get("position"))
        if content.duration is not None and position > content.duration:
            raise BadRequest(f"position is past the end of the content ({content.duration:g} s).")
    play = room.playback.phase in (Phase.PLAYING, Phase.WAITING)
    for m in room.members.values():
        m.status = MemberStatus.LOADING  # everyone loads the new item
        m.left_out = False
    playback = room.playback.with_content(content)
    if not play:
        send = room.set_playback(playback.paused(now, position))
        return Outcome([send, room.members_send()], {"phase": "paused"})
    # Everyone loads the new item first: a barrier over every connected member.
    room.barrier = None
    room.playback = playback.waiting(now, position, None)
    sends = room.start_when_ready(now, {m.id for m in room.connected})
    return Outcome([*sends, room.members_send()], {"phase": "waiting"})


@command("room.settings", "control", "waitForJoiners")
def _settings(room: RoomState, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
    room.require_host(member, "change the room settings")
    if not data:
        raise BadRequest("room.settings needs control or waitForJoiners.")
    control = room.control
    if "control" in data:
        if data["control"] not in (Control.HOST.value, Control.ALL.value):
            raise BadRequest("control must be 'host' or 'all'.")
        control = Control(data["control"])
    wait = room.wait_for_joiners
    if "waitForJoiners" in data:
        if not isinstance(data["waitForJoiners"], bool):
            raise BadRequest("waitForJoiners must be true or false.")
        wait = data["waitForJoiners"]
    room.control, room.wait_for_joiners = control, wait
    room.revision += 1
    settings = room.settings_json()
    return Outcome([Send(None, room.message({"type": "room.settings", **settings}))], settings)


@command("room.host", "member")
def _handover(room: RoomState, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
    room.require_host(member, "hand the host role over")
    target = data.get("member")
    if not isinstance(target, str) or target not in room.members:
        raise NotFound(f"No member {target!r} in this room.")
    if target == member.id:
        raise BadRequest("You are already the host.")
    if not room.members[target].connected:
        raise Conflict(f"Member {target!r} is not connected.")
    room.host = target
    room.revision += 1
    return Outcome([room.members_send()], {"host": target})


@command("room.status", "state")
def _status(room: RoomState, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
    state = data.get("state")
    if state not in ("ready", "buffering"):
        raise BadRequest("state must be 'ready' or 'buffering'.")
    sends: list[Send] = []
    before = member.status
    if state == "ready":
        member.status = MemberStatus.READY
        if room.barrier is not None and member.id in room.barrier.pending:
            room.barrier.pending.discard(member.id)
            sends += room.settle_barrier(now)
    elif before is MemberStatus.READY:
        member.status = MemberStatus.BUFFERING
        if not member.left_out:
            if room.barrier is not None:
                room.barrier.pending.add(member.id)
                sends.append(room.state_send())
            elif room.will_play():
                sends += room.enter_barrier(now, {member.id})
    if member.status is not before:
        room.revision += 1
        sends.append(room.members_send())
    return Outcome(sends, {"status": member.status.value})


@command("room.position", "position", "at")
def _position(room: RoomState, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
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
    playback = room.playback
    if member.status is not MemberStatus.READY or t < playback.at:
        return Outcome([], {"corrected": False})
    if playback.phase is Phase.PLAYING:
        error = reported - playback.position_at(t)
        outcome = _correct(room, member, error, now)
        if outcome.sends:  # a room.drift: the member is back on the fast pace
            member.steady, member.relaxed = 0, False
        else:
            outcome.sends.extend(_pace(room, member, error))
        return outcome
    if playback.phase is Phase.PAUSED:
        error = reported - playback.position
        if abs(error) >= room.config.drift_seek:
            return Outcome([_drift(room, member, "seek", error, now)], {"corrected": True})
    return Outcome([], {"corrected": False})


def _correct(room: RoomState, member: Member, error: float, now: float) -> Outcome:
    """Seek for a large error, nudge the rate for a small one, release the nudge when done."""
    config = room.config
    if abs(error) >= config.drift_seek:
        member.nudge = 0.0
        return Outcome([_drift(room, member, "seek", error, now)], {"corrected": True})
    nudge = 0.0
    if abs(error) >= config.drift_nudge:
        nudge = max(-config.drift_max_nudge, min(config.drift_max_nudge, -error / NUDGE_HORIZON))
    if abs(nudge - member.nudge) < NUDGE_STEP and (nudge != 0.0 or member.nudge == 0.0):
        return Outcome([], {"corrected": False})
    member.nudge = nudge
    return Outcome([_drift(room, member, "rate", error, now)], {"corrected": True})


def _pace(room: RoomState, member: Member, error: float) -> list[Send]:
    """Relax a steady member's reports: after STEADY_REPORTS in a row within half the nudge
    threshold (and no nudge running), one ``room.pace`` with ``report_relaxed``. Drift is
    slow (media clocks are off by well under 0.1 %, a few ms per relaxed interval), so the
    reports that matter are the ones after a change, and those come at the fast pace:
    ``room.welcome``, ``room.state`` and ``room.drift`` put the member back on it."""
    config = room.config
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
    return [Send(member.id, room.message(pace))]


def _drift(room: RoomState, member: Member, action: str, error: float, now: float) -> Send:
    playback = room.playback
    message = {
        "type": "room.drift",
        "action": action,
        "rate": round(playback.rate * (1.0 + member.nudge), 6),
        "position": playback.position_at(now),
        "at": to_ms(now),
        "error": round(error, 6),
    }
    return Send(member.id, room.message(message))


@command("clock.pong", "seq", "t1", "t2")
def _pong(room: RoomState, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
    checked = member.clock.check_pong(data)
    if checked is None:
        return Outcome([], {})  # a late answer to an expired ping: nothing to learn
    seq, t1, t2 = checked
    member.clock.pong(seq, t1, t2, now)
    sends: list[Send] = []
    sync = member.clock.sync_message()
    if sync is not None:
        sends.append(Send(member.id, room.message(sync)))
    sends += room.pings(now, [member])
    return Outcome(sends, {})


@command("room.chat", "text")
def _chat(room: RoomState, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
    text = check_text(data.get("text"), "text", room.config.chat_max_length)
    _spend(room, member, now)
    entry = {
        "id": room.next_chat_id,
        "member": member.id,
        "name": member.name,
        "text": text,
        "at": to_ms(now),
    }
    room.next_chat_id += 1
    room.history.append(entry)
    room.revision += 1
    return Outcome([Send(None, room.message({"type": "room.chat", **entry}))], {"id": entry["id"]})


@command("room.reaction", "emoji")
def _reaction(room: RoomState, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
    emoji = data.get("emoji")
    if (
        not isinstance(emoji, str)
        or not 1 <= len(emoji) <= MAX_REACTION_LENGTH
        or any(c.isspace() or unicodedata.category(c) == "Cc" for c in emoji)
    ):
        raise BadRequest(f"emoji must be 1 to {MAX_REACTION_LENGTH} characters without spaces.")
    _spend(room, member, now)
    message = {"type": "room.reaction", "member": member.id, "emoji": emoji, "at": to_ms(now)}
    return Outcome([Send(None, room.message(message))], {})


def _spend(room: RoomState, member: Member, now: float) -> None:
    """Chat and reactions share a sliding-window limit per member."""
    window = room.config.chat_rate_window
    times = member.chat_times
    while times and times[0] <= now - window:
        times.popleft()
    if len(times) >= room.config.chat_rate_count:
        raise TooManyRequests(
            f"Too many messages: at most {room.config.chat_rate_count} per {window:g} s."
        )
    times.append(now)


@command("room.leave")
def _leave(room: RoomState, member: Member, data: Mapping[str, Any], now: float) -> Outcome:
    return Outcome(room.leave(member.id, now), {"left": True})
