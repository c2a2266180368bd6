"""The pure watch-party room: every transition, lead scheduling, the barrier, roles, drift, chat,
clock sync, snapshots, and refusals that change nothing. Time is an explicit argument."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from dramaverse.domain.clocksync import PING_TIMEOUT, RESYNC_INTERVAL, SAMPLES_PER_BURST
from dramaverse.domain.playback import IllegalTransition, Phase, Playback
from dramaverse.domain.rooms import (
    ROOM_CODE_ALPHABET,
    ROOM_CODE_LENGTH,
    Control,
    InvalidSnapshot,
    MemberStatus,
    Outcome,
    Room,
    RoomConfig,
    Send,
    new_room_code,
    normalize_room_code,
)
from dramaverse.errors import DramaverseError

CONFIG = RoomConfig()
EPISODE = {"tmdbId": 1399, "type": "episode", "seasonNumber": 1, "episodeNumber": 2}
MOVIE = {"tmdbId": 27205, "type": "movie", "title": "Inception", "duration": 8880}
T0 = 1_000.0


def of_type(sends: list[Send], kind: str) -> list[Send]:
    return [s for s in sends if s.message["type"] == kind]


def last_state(sends: list[Send]) -> dict[str, Any]:
    states = of_type(sends, "room.state")
    assert states, f"no room.state in {[s.message['type'] for s in sends]}"
    return states[-1].message


def make_room(*members: str, config: RoomConfig = CONFIG, now: float = T0, **kw: Any) -> Room:
    """A room created by the first member; every member joined at ``now`` (in order)."""
    room = Room.create(
        "7KQ3M8TD", config, creator=members[0], name=members[0].title(), now=now, **kw
    )
    for i, member in enumerate(members):
        room.join(member, member.title(), now + i * 0.001)
    return room


def without_pings(room: Room) -> Room:
    """Stop clock-sync pings so that ``next_deadline`` shows the room's own timers."""
    for member in room.members.values():
        member.clock.stop()
    return room


def cmd(room: Room, who: str, kind: str, now: float, /, **data: Any) -> Outcome:
    return room.handle(who, kind, data, now)


def ready_all(room: Room, now: float) -> list[Send]:
    sends: list[Send] = []
    for member in room.connected:
        sends += cmd(room, member.id, "room.status", now, state="ready").sends
    return sends


def answer_pings(
    room: Room, member: str, now: float, *, up: float, down: float, offset: float
) -> float:
    """Answer every ping a member has in flight, as a client whose clock is ``offset`` ahead
    with the given one-way delays; keeps answering the burst. Returns the time afterwards."""
    clock = room.members[member].clock
    while clock.pending:
        seq, t0 = max(clock.pending.items())
        t1 = (t0 + down + offset) * 1000
        now = t0 + down + up
        room.handle(member, "clock.pong", {"seq": seq, "t1": t1, "t2": t1}, now)
        room.tick(now)  # sends the next burst ping, if any
    return now


def playing_room(*members: str, now: float = T0) -> Room:
    """Content set, everyone ready, started: playing from 0 at ``now + lead``."""
    room = make_room(*members, now=now)
    cmd(room, members[0], "room.content", now, content=MOVIE)
    ready_all(room, now)
    cmd(room, members[0], "room.play", now)
    start = room.playback.start_at
    assert start is not None
    room.tick(start)
    assert room.playback.phase is Phase.PLAYING
    return room


# --- codes, creation, joining ------------------------------------------------------------


def test_room_codes_are_unambiguous_and_normalised() -> None:
    codes = {new_room_code() for _ in range(200)}
    assert len(codes) == 200
    assert all(len(c) == ROOM_CODE_LENGTH and set(c) <= set(ROOM_CODE_ALPHABET) for c in codes)
    assert not set("01OIL") & set(ROOM_CODE_ALPHABET)
    assert normalize_room_code(" 7kq3-m8td ") == "7KQ3M8TD"
    for bad in ("7KQ3M8T0", "short", "", 12345678, None, "7KQ3M8TDX"):
        with pytest.raises(DramaverseError, match="room code"):
            normalize_room_code(bad)


def test_creator_is_host_and_joins_get_welcome_presence_and_a_ping() -> None:
    room = Room.create("7KQ3M8TD", CONFIG, creator="ann", name="Ann", now=T0)
    assert room.host == "ann"
    assert not room.members["ann"].connected
    sends = room.join("ann", "Ann", T0)
    welcome = sends[0]
    assert welcome.to == "ann"
    assert welcome.message["type"] == "room.welcome"
    assert welcome.message["you"] == "ann"
    assert welcome.message["host"] == "ann"
    assert welcome.message["state"]["phase"] == "idle"
    assert welcome.message["reportInterval"] == 2000.0
    assert of_type(sends, "clock.ping")[0].to == "ann"
    sends = room.join("bob", "Bob", T0 + 1)
    presence = of_type(sends, "room.members")[0]
    assert presence.to is None
    assert presence.exclude == "bob"
    assert [(m["id"], m["host"], m["connected"]) for m in presence.message["members"]] == [
        ("ann", True, True),
        ("bob", False, True),
    ]
    assert all(s.message["room"] == "7KQ3M8TD" for s in sends)


def test_room_is_full_at_max_members_and_refusal_changes_nothing() -> None:
    room = make_room("ann", "bob", config=RoomConfig(max_members=2))
    before = room.snapshot()
    with pytest.raises(DramaverseError, match="full") as caught:
        room.join("cat", "Cat", T0 + 1)
    assert caught.value.status == 403
    assert room.snapshot() == before
    room.join("bob", "Bob again", T0 + 2)  # an existing member always gets back in


# --- the state machine -------------------------------------------------------------------


def test_phase_table_rejects_illegal_transitions() -> None:
    with pytest.raises(IllegalTransition):
        Playback().waiting(T0, 0, T0 + 1)
    with pytest.raises(IllegalTransition):
        Playback().started()
    paused = Playback(phase=Phase.PAUSED)
    with pytest.raises(IllegalTransition):
        paused.started()
    assert Phase.PLAYING.check(Phase.WAITING) is Phase.WAITING


@pytest.mark.parametrize("source", list(Phase))
@pytest.mark.parametrize("target", list(Phase))
def test_the_transition_table_is_enforced(source: Phase, target: Phase) -> None:
    allowed = {
        (Phase.IDLE, Phase.PAUSED),
        (Phase.PAUSED, Phase.PAUSED),
        (Phase.PAUSED, Phase.WAITING),
        (Phase.WAITING, Phase.WAITING),
        (Phase.WAITING, Phase.PLAYING),
        (Phase.WAITING, Phase.PAUSED),
        (Phase.PLAYING, Phase.PLAYING),
        (Phase.PLAYING, Phase.WAITING),
        (Phase.PLAYING, Phase.PAUSED),
    }
    if (source, target) in allowed:
        assert source.check(target) is target
    else:
        with pytest.raises(IllegalTransition, match=f"from {source} to {target}"):
            source.check(target)


def test_content_while_paused_stays_paused_and_during_a_barrier_restarts_it() -> None:
    room = playing_room("ann", "bob")
    now = room.playback.at + 4
    cmd(room, "ann", "room.pause", now)
    out = cmd(room, "ann", "room.content", now + 1, content=EPISODE, position=30)
    state = last_state(out.sends)
    assert (state["phase"], state["position"], state["content"]) == ("paused", 30, EPISODE)
    assert of_type(out.sends, "room.members")  # everyone is loading again
    assert all(m.status is MemberStatus.LOADING for m in room.members.values())
    cmd(room, "ann", "room.play", now + 2)  # waits for both to load
    first = room.barrier
    assert first is not None
    assert first.pending == {"ann", "bob"}
    out = cmd(room, "ann", "room.content", now + 5, content=MOVIE)
    state = last_state(out.sends)
    assert state["phase"] == "waiting"
    assert state["waitingFor"] == ["ann", "bob"]
    assert state["deadline"] == pytest.approx((now + 5 + CONFIG.barrier_timeout) * 1000)


def test_content_while_idle_pauses_and_play_schedules_at_now_plus_lead() -> None:
    room = make_room("ann", "bob")
    out = cmd(room, "ann", "room.content", T0, content=EPISODE, position=12)
    state = last_state(out.sends)
    assert state["phase"] == "paused"
    assert state["position"] == 12
    assert state["content"] == EPISODE
    assert all(m.status is MemberStatus.LOADING for m in room.members.values())
    ready_all(room, T0 + 1)
    out = cmd(room, "ann", "room.play", T0 + 2)
    state = last_state(out.sends)
    assert state["phase"] == "waiting"
    assert state["waitingFor"] == []
    assert state["startAt"] == pytest.approx((T0 + 2 + CONFIG.lead_min) * 1000)
    assert without_pings(room).next_deadline() == pytest.approx(T0 + 2 + CONFIG.lead_min)
    # Nothing happens before the start; at the start the room plays from the anchor.
    assert not of_type(room.tick(T0 + 2.2), "room.state")
    start = T0 + 2 + CONFIG.lead_min
    state = last_state(room.tick(start))
    assert state["phase"] == "playing"
    assert state["at"] == pytest.approx(start * 1000)
    assert room.playback.position_at(start + 10) == pytest.approx(22)


def test_lead_covers_twice_the_largest_round_trip_within_bounds() -> None:
    room = make_room("ann", "bob", "cat")
    assert room.lead() == CONFIG.lead_min  # nothing measured yet
    answer_pings(room, "ann", T0, up=0.02, down=0.02, offset=0)
    answer_pings(room, "bob", T0, up=0.15, down=0.10, offset=3)
    assert room.lead() == pytest.approx(0.5)  # 2 x 250 ms beats the 300 ms minimum
    answer_pings(room, "cat", T0, up=1.5, down=1.5, offset=-3)
    assert room.lead() == CONFIG.lead_max  # a 3 s round trip is capped
    room.disconnect("cat", T0 + 5)
    assert room.lead() == pytest.approx(0.5)  # only connected members count


def test_pause_seek_and_rate_in_every_phase() -> None:
    room = playing_room("ann", "bob")
    start = room.playback.at
    # seek while playing: waiting for a start at now + lead, from the new position
    state = last_state(cmd(room, "ann", "room.seek", start + 5, position=100).sends)
    assert state["phase"] == "waiting"
    assert state["position"] == 100
    assert state["startAt"] == pytest.approx((start + 5 + CONFIG.lead_min) * 1000)
    # seek while waiting for a start: rescheduled
    state = last_state(cmd(room, "ann", "room.seek", start + 5.1, position=200).sends)
    assert state["startAt"] == pytest.approx((start + 5.1 + CONFIG.lead_min) * 1000)
    # pause while waiting: paused where it waited
    state = last_state(cmd(room, "ann", "room.pause", start + 5.2).sends)
    assert (state["phase"], state["position"], state["startAt"]) == ("paused", 200, None)
    assert room.next_deadline() != pytest.approx(start + 5.1 + CONFIG.lead_min)
    # seek while paused stays paused; pausing again changes nothing
    state = last_state(cmd(room, "ann", "room.seek", start + 6, position=50).sends)
    assert (state["phase"], state["position"]) == ("paused", 50)
    revision = room.revision
    assert cmd(room, "ann", "room.pause", start + 7).sends == []
    assert room.revision == revision
    # rate while paused is taken as is
    cmd(room, "ann", "room.rate", start + 7, rate=1.5)
    assert room.playback.rate == 1.5
    assert room.playback.phase is Phase.PAUSED
    # play, start, then pause while playing: paused at the extrapolated position
    cmd(room, "ann", "room.play", start + 8)
    begin = room.playback.start_at
    assert begin is not None
    room.tick(begin)
    assert cmd(room, "ann", "room.play", begin + 1).sends == []  # already playing
    state = last_state(cmd(room, "ann", "room.pause", begin + 2).sends)
    assert state["phase"] == "paused"
    assert state["position"] == pytest.approx(50 + 2 * 1.5)


def test_rate_change_while_playing_switches_at_now_plus_lead_without_a_jump() -> None:
    room = playing_room("ann", "bob")
    start = room.playback.at
    now = start + 10
    before = room.playback.position_at(now)
    state = last_state(cmd(room, "ann", "room.rate", now, rate=2).sends)
    switch = now + CONFIG.lead_min
    assert state["phase"] == "playing"
    assert state["rate"] == 2
    assert state["at"] == pytest.approx(switch * 1000)
    assert state["position"] == pytest.approx(10 + CONFIG.lead_min)
    playback = room.playback
    assert playback.position_at(now) == pytest.approx(before)  # continuous
    assert playback.position_at(switch - 0.1) == pytest.approx(before + CONFIG.lead_min - 0.1)
    assert playback.position_at(switch + 1) == pytest.approx(10 + CONFIG.lead_min + 2)
    assert cmd(room, "ann", "room.rate", now + 1, rate=2).sends == []  # unchanged


def test_content_change_while_playing_waits_for_everyone_to_load() -> None:
    room = playing_room("ann", "bob", "cat")
    now = room.playback.at + 30
    out = cmd(room, "ann", "room.content", now, content=EPISODE)
    state = last_state(out.sends)
    assert state["phase"] == "waiting"
    assert state["startAt"] is None
    assert state["waitingFor"] == ["ann", "bob", "cat"]
    assert state["position"] == 0
    assert state["deadline"] == pytest.approx((now + CONFIG.barrier_timeout) * 1000)
    cmd(room, "ann", "room.status", now + 1, state="ready")
    state = last_state(cmd(room, "bob", "room.status", now + 1.5, state="ready").sends)
    assert state["waitingFor"] == ["cat"]
    state = last_state(cmd(room, "cat", "room.status", now + 2, state="ready").sends)
    assert state["phase"] == "waiting"
    assert state["waitingFor"] == []
    assert state["startAt"] == pytest.approx((now + 2 + CONFIG.lead_min) * 1000)


def test_end_of_content_pauses_at_the_end() -> None:
    room = playing_room("ann")
    start = room.playback.at
    assert without_pings(room).next_deadline() == pytest.approx(start + 8880)
    state = last_state(room.tick(start + 8880))
    assert (state["phase"], state["position"]) == ("paused", 8880)


# --- the buffering barrier ---------------------------------------------------------------


def test_stall_pauses_everyone_and_resumes_when_all_are_ready() -> None:
    room = playing_room("ann", "bob", "cat")
    now = room.playback.at + 20
    out = cmd(room, "bob", "room.status", now, state="buffering")
    state = last_state(out.sends)
    assert state["phase"] == "waiting"
    assert state["startAt"] is None
    assert state["waitingFor"] == ["bob"]
    assert state["position"] == pytest.approx(20)
    # another stall joins the same barrier without extending its deadline
    state = last_state(cmd(room, "cat", "room.status", now + 1, state="buffering").sends)
    assert state["waitingFor"] == ["bob", "cat"]
    assert state["deadline"] == pytest.approx((now + CONFIG.barrier_timeout) * 1000)
    cmd(room, "bob", "room.status", now + 2, state="ready")
    state = last_state(cmd(room, "cat", "room.status", now + 3, state="ready").sends)
    assert state["startAt"] == pytest.approx((now + 3 + CONFIG.lead_min) * 1000)
    assert state["position"] == pytest.approx(20)
    state = last_state(room.tick(now + 3 + CONFIG.lead_min))
    assert state["phase"] == "playing"


def test_barrier_deadline_leaves_the_straggler_out_for_the_rest_of_the_item() -> None:
    room = playing_room("ann", "bob")
    now = room.playback.at + 5
    cmd(room, "bob", "room.status", now, state="buffering")
    deadline = now + CONFIG.barrier_timeout
    assert without_pings(room).next_deadline() == pytest.approx(deadline)
    assert not of_type(room.tick(deadline - 0.01), "room.state")
    sends = room.tick(deadline)
    state = last_state(sends)
    assert state["phase"] == "waiting"
    assert state["waitingFor"] == []
    assert state["startAt"] == pytest.approx((deadline + CONFIG.lead_min) * 1000)
    bob = [m for m in of_type(sends, "room.members")[-1].message["members"] if m["id"] == "bob"]
    assert bob[0]["leftOut"] is True
    room.tick(deadline + CONFIG.lead_min)
    # Bob catches up on his own: his stalls no longer stop the room...
    cmd(room, "bob", "room.status", deadline + 1, state="ready")
    out = cmd(room, "bob", "room.status", deadline + 2, state="buffering")
    assert not of_type(out.sends, "room.state")
    assert room.playback.phase is Phase.PLAYING
    # ...until the content changes, when everyone is waited for again.
    out = cmd(room, "ann", "room.content", deadline + 3, content=EPISODE)
    assert last_state(out.sends)["waitingFor"] == ["ann", "bob"]
    assert room.members["bob"].left_out is False


def test_a_pending_member_who_leaves_or_drops_releases_the_barrier() -> None:
    room = playing_room("ann", "bob", "cat")
    now = room.playback.at + 5
    cmd(room, "bob", "room.status", now, state="buffering")
    cmd(room, "cat", "room.status", now, state="buffering")
    state = last_state(room.disconnect("bob", now + 1))
    assert state["waitingFor"] == ["cat"]
    state = last_state(cmd(room, "cat", "room.leave", now + 2).sends)
    assert state["startAt"] == pytest.approx((now + 2 + CONFIG.lead_min) * 1000)


def test_play_waits_for_members_still_loading() -> None:
    room = make_room("ann", "bob")
    cmd(room, "ann", "room.content", T0, content=MOVIE)
    cmd(room, "ann", "room.status", T0, state="ready")
    state = last_state(cmd(room, "ann", "room.play", T0 + 1).sends)
    assert state["phase"] == "waiting"
    assert state["waitingFor"] == ["bob"]
    # A loading member reporting "buffering" is still loading, still pending.
    out = cmd(room, "bob", "room.status", T0 + 2, state="buffering")
    assert out.result == {"status": "loading"}


def test_late_joiner_does_not_pause_the_room_unless_it_waits_for_joiners() -> None:
    room = playing_room("ann")
    now = room.playback.at + 60
    sends = room.join("bob", "Bob", now)
    assert not of_type(sends, "room.state")
    welcome = sends[0].message
    assert welcome["state"]["phase"] == "playing"
    assert welcome["position"] == pytest.approx(60)  # extrapolated for the joiner
    # A joiner's first "buffering" (loading) does not stall the room either.
    assert not of_type(cmd(room, "bob", "room.status", now, state="buffering").sends, "room.state")
    cmd(room, "ann", "room.settings", now, waitForJoiners=True)
    sends = room.join("cat", "Cat", now + 1)
    state = sends[0].message["state"]
    assert state["phase"] == "waiting"
    assert state["waitingFor"] == ["cat"]
    assert of_type(sends, "room.state")[0].exclude == "cat"  # the welcome already has it
    state = last_state(cmd(room, "cat", "room.status", now + 3, state="ready").sends)
    assert state["startAt"] == pytest.approx((now + 3 + CONFIG.lead_min) * 1000)


# --- roles and presence ------------------------------------------------------------------


def test_host_hands_over_and_control_setting_decides_who_plays() -> None:
    room = make_room("ann", "bob")
    cmd(room, "ann", "room.content", T0, content=MOVIE)
    with pytest.raises(DramaverseError, match="Only the host controls playback") as caught:
        cmd(room, "bob", "room.seek", T0, position=5)
    assert caught.value.status == 403
    cmd(room, "ann", "room.settings", T0, control="all")
    cmd(room, "bob", "room.seek", T0, position=5)
    assert room.playback.position == 5
    out = cmd(room, "ann", "room.host", T0, member="bob")
    assert out.result == {"host": "bob"}
    assert room.host == "bob"
    assert of_type(out.sends, "room.members")[0].message["host"] == "bob"
    with pytest.raises(DramaverseError, match="Only the host can change the room settings"):
        cmd(room, "ann", "room.settings", T0, control="host")


def test_host_leaving_passes_the_role_to_the_longest_present_connected_member() -> None:
    room = make_room("ann", "bob", "cat", "dan")
    room.disconnect("bob", T0 + 1)  # longest present after ann, but not connected
    sends = cmd(room, "ann", "room.leave", T0 + 2).sends
    assert room.host == "cat"
    assert "ann" not in room.members
    assert of_type(sends, "room.members")[0].message["host"] == "cat"


def test_disconnected_host_keeps_the_role_within_grace_and_loses_it_after() -> None:
    room = make_room("ann", "bob", "cat")
    room.disconnect("ann", T0 + 10)
    assert room.next_deadline() is not None
    room.tick(T0 + 10 + CONFIG.host_grace - 0.01)
    assert room.host == "ann"
    room.join("ann", "Ann", T0 + 20)  # back in time: still host
    assert room.host == "ann"
    room.disconnect("ann", T0 + 30)
    sends = room.tick(T0 + 30 + CONFIG.host_grace)
    assert room.host == "bob"
    assert of_type(sends, "room.members")[0].message["host"] == "bob"
    room.join("ann", "Ann", T0 + 50)  # back later: a member, who joined first
    assert room.host == "bob"
    assert room.members["ann"].order == 0


def test_lone_disconnected_host_keeps_the_role_until_someone_is_there_to_take_it() -> None:
    room = make_room("ann", "bob")
    room.disconnect("bob", T0 + 1)
    room.disconnect("ann", T0 + 2)
    room.tick(T0 + 2 + CONFIG.host_grace + 1)
    assert room.host == "ann"
    room.join("bob", "Bob", T0 + 30)
    room.tick(T0 + 30)  # the host's grace is long over: the role moves at once
    assert room.host == "bob"


def test_membership_survives_reconnect_within_grace_and_expires_after() -> None:
    room = make_room("ann", "bob")
    room.disconnect("bob", T0 + 1)
    room.tick(T0 + 1 + CONFIG.reconnect_grace - 0.01)
    assert "bob" in room.members
    room.join("bob", "Bob", T0 + 30)
    assert room.members["bob"].order == 1
    assert room.members["bob"].connected
    room.disconnect("bob", T0 + 40)
    sends = room.tick(T0 + 40 + CONFIG.reconnect_grace)
    assert "bob" not in room.members
    assert [m["id"] for m in of_type(sends, "room.members")[0].message["members"]] == ["ann"]
    room.join("bob", "Bob", T0 + 200)
    assert room.members["bob"].order == 2  # a new membership


def test_empty_after_everyone_leaves() -> None:
    room = make_room("ann")
    cmd(room, "ann", "room.leave", T0)
    assert room.empty
    assert room.host is None
    room.join("bob", "Bob", T0 + 1)
    assert room.host == "bob"


# --- clock sync and drift ----------------------------------------------------------------


def test_clock_sync_keeps_the_lowest_delay_sample_of_a_burst_then_resyncs() -> None:
    room = make_room("ann")
    clock = room.members["ann"].clock
    offset = 4.321
    # Asymmetric samples: the offset error is half the asymmetry; the fastest sample wins.
    delays = [(0.30, 0.05), (0.04, 0.20), (0.02, 0.03), (0.10, 0.10), (0.25, 0.01)]
    now = T0
    syncs = []
    for k, (up, down) in enumerate(delays):
        ((seq, t0),) = clock.pending.items()
        t1 = (t0 + down + offset) * 1000
        now = t0 + down + up
        out = room.handle("ann", "clock.pong", {"seq": seq, "t1": t1, "t2": t1 + 5}, now + 0.005)
        syncs += of_type(out.sends, "clock.sync")
        pings = of_type(out.sends, "clock.ping")
        assert len(pings) == (1 if k < SAMPLES_PER_BURST - 1 else 0)
        now += 0.005
    best = clock.best
    assert best is not None
    assert best.delay == pytest.approx(0.05)
    assert best.offset == pytest.approx(offset + (0.03 - 0.02) / 2)
    # A clock.sync only when the estimate changed: samples 1-3 each improved the best one;
    # 4 and 5 changed neither the offset nor the round trip much (0.24 -> 0.22 -> 0.24 s).
    assert [s.message["samples"] for s in syncs] == [1, 2, 3]
    assert syncs[-1].message["offset"] == pytest.approx(best.offset * 1000, abs=0.01)
    assert clock.rtt == pytest.approx(0.24)  # the median round trip
    assert clock.next_ping_at == pytest.approx(now + RESYNC_INTERVAL)
    assert of_type(room.tick(now + RESYNC_INTERVAL), "clock.ping")


def test_clock_sync_is_sent_again_when_the_offset_moves_or_the_member_reconnects() -> None:
    room = make_room("ann")
    clock = room.members["ann"].clock

    def pong(offset: float, up: float = 0.02, down: float = 0.02) -> list[Send]:
        ((seq, t0),) = clock.pending.items()
        t1 = (t0 + down + offset) * 1000
        out = room.handle("ann", "clock.pong", {"seq": seq, "t1": t1, "t2": t1}, t0 + up + down)
        room.tick(t0 + up + down)
        return of_type(out.sends, "clock.sync")

    assert len(pong(2.0)) == 1
    assert pong(2.0) == []  # the same estimate: nothing to tell
    (moved,) = pong(2.5, up=0.01, down=0.01)  # a faster sample with another offset wins
    assert moved.message["offset"] == pytest.approx(2500.0)
    assert moved.message["delay"] == pytest.approx(20.0)
    room.disconnect("ann", T0 + 5)
    room.join("ann", "Ann", T0 + 6)
    assert len(pong(2.0)) == 1  # a new connection may be a new client: told again


def test_a_pong_for_a_ping_pushed_out_of_the_window_is_dropped_without_an_error() -> None:
    room = make_room("ann")
    clock = room.members["ann"].clock
    ((first, _),) = clock.pending.items()
    now = T0
    for _ in range(5):  # four retries push the first ping out of the window (MAX_PENDING 4)
        now += PING_TIMEOUT
        room.tick(now)
    assert first not in clock.pending
    out = room.handle("ann", "clock.pong", {"seq": first, "t1": 5.0, "t2": 5.0}, now)
    assert (out.sends, out.result) == ([], {})
    assert len(clock.samples) == 0  # learned nothing
    assert clock.late_pongs == 1


def test_unanswered_ping_is_retried_and_late_pongs_still_count() -> None:
    room = make_room("ann")
    clock = room.members["ann"].clock
    ((first, t0),) = clock.pending.items()
    assert not of_type(room.tick(T0 + PING_TIMEOUT - 0.01), "clock.ping")
    retry = of_type(room.tick(T0 + PING_TIMEOUT), "clock.ping")
    assert retry
    assert retry[0].message["seq"] == first + 1
    room.handle("ann", "clock.pong", {"seq": first, "t1": 5.0, "t2": 5.0}, T0 + 2.5)
    assert len(clock.samples) == 1


def test_drift_nudges_small_errors_seeks_large_ones_and_releases_the_nudge() -> None:
    room = playing_room("ann", "bob")
    start = room.playback.at
    now = start + 10
    ok = cmd(room, "bob", "room.position", now, position=10.01, at=now * 1000)
    assert ok.sends == []
    assert ok.result == {"corrected": False}
    behind = cmd(room, "bob", "room.position", now, position=9.9, at=now * 1000)
    (drift,) = behind.sends
    assert drift.to == "bob"
    assert drift.message["action"] == "rate"
    assert drift.message["rate"] == pytest.approx(1 + 0.1 / 2)  # error / 2 s horizon
    assert drift.message["error"] == pytest.approx(-0.1)
    # the same error again: no new message
    assert (
        cmd(room, "bob", "room.position", now + 1, position=10.9, at=(now + 1) * 1000).sends == []
    )
    ahead = cmd(room, "bob", "room.position", now + 2, position=12.3, at=(now + 2) * 1000)
    assert ahead.sends[0].message["rate"] == pytest.approx(1 - CONFIG.drift_max_nudge)
    back = cmd(room, "bob", "room.position", now + 3, position=13.0, at=(now + 3) * 1000)
    assert back.sends[0].message["action"] == "rate"
    assert back.sends[0].message["rate"] == 1
    far = cmd(room, "bob", "room.position", now + 4, position=20, at=(now + 4) * 1000)
    message = far.sends[0].message
    assert message["action"] == "seek"
    assert message["position"] == pytest.approx(14)
    assert message["at"] == pytest.approx((now + 4) * 1000)


def steady_report(room: Room, who: str, now: float) -> Outcome:
    """A report exactly on the room's position at ``now``."""
    position = room.playback.position_at(now)
    return cmd(room, who, "room.position", now, position=position, at=now * 1000)


def test_steady_reports_relax_the_pace_once_and_any_correction_restores_it() -> None:
    room = playing_room("ann", "bob")
    now = room.playback.at + 5
    assert steady_report(room, "bob", now).sends == []
    assert steady_report(room, "bob", now + 2).sends == []
    (pace,) = steady_report(room, "bob", now + 4).sends  # the third in a row
    assert pace.to == "bob"
    assert pace.message == {"type": "room.pace", "reportInterval": 6000.0, "room": room.code}
    assert steady_report(room, "bob", now + 10).sends == []  # told once
    assert room.members["bob"].relaxed
    assert not room.members["ann"].relaxed  # per member
    # A drift correction: back on the fast pace (the client knows it from room.drift).
    behind = cmd(room, "bob", "room.position", now + 16, position=0.0, at=(now + 16) * 1000)
    assert [s.message["type"] for s in behind.sends] == ["room.drift"]
    assert not room.members["bob"].relaxed
    assert room.members["bob"].steady == 0


def test_a_room_state_restores_the_fast_pace_of_everyone_it_reaches() -> None:
    room = playing_room("ann", "bob", "cy")
    now = room.playback.at + 5
    for k in range(3):
        for who in ("ann", "bob", "cy"):
            steady_report(room, who, now + 2 * k)
    assert all(m.relaxed for m in room.members.values())
    cmd(room, "ann", "room.seek", now + 7, position=100)
    assert not any(m.relaxed or m.steady for m in room.members.values())


def test_reports_between_half_and_the_full_nudge_threshold_keep_the_fast_pace() -> None:
    room = playing_room("ann", "bob")
    now = room.playback.at + 5
    off = CONFIG.drift_nudge * 0.75  # not corrected, not steady either
    for k in range(5):
        t = now + 2 * k
        out = cmd(
            room,
            "bob",
            "room.position",
            t,
            position=room.playback.position_at(t) + off,
            at=t * 1000,
        )
        assert out.sends == []
    assert not room.members["bob"].relaxed


def test_pace_never_relaxes_when_the_relaxed_interval_is_not_longer() -> None:
    config = RoomConfig(report_relaxed=0.0)
    room = make_room("ann", "bob", config=config)
    cmd(room, "ann", "room.content", T0, content=MOVIE)
    ready_all(room, T0)
    cmd(room, "ann", "room.play", T0)
    assert room.playback.start_at is not None
    room.tick(room.playback.start_at)
    now = room.playback.at + 5
    for k in range(6):
        assert steady_report(room, "bob", now + 2 * k).sends == []


def test_drift_reports_are_ignored_while_loading_or_before_the_anchor() -> None:
    room = playing_room("ann", "bob")
    start = room.playback.at
    early = cmd(room, "bob", "room.position", start - 0.1, position=50, at=(start - 0.1) * 1000)
    assert early.sends == []
    cmd(room, "bob", "room.status", start + 1, state="buffering")
    loading = cmd(room, "bob", "room.position", start + 2, position=50)
    assert loading.sends == []


def test_paused_room_seeks_a_member_that_is_far_off() -> None:
    room = playing_room("ann", "bob")
    now = room.playback.at + 3
    cmd(room, "ann", "room.pause", now)
    out = cmd(room, "bob", "room.position", now + 1, position=60)
    assert out.sends[0].message["action"] == "seek"
    assert out.sends[0].message["position"] == pytest.approx(3)


# --- chat and reactions ------------------------------------------------------------------


def test_chat_is_broadcast_kept_in_history_and_sent_to_joiners() -> None:
    room = make_room("ann", "bob", config=RoomConfig(history_size=3))
    for i in range(5):
        out = cmd(room, "ann" if i % 2 else "bob", "room.chat", T0 + i, text=f"  hi {i}\n ")
        assert out.result == {"id": i + 1}
    message = out.sends[0].message
    assert out.sends[0].to is None
    assert message["text"] == "hi 4"
    assert message["name"] == "Bob"
    welcome = room.join("cat", "Cat", T0 + 10)[0].message
    assert [m["text"] for m in welcome["history"]] == ["hi 2", "hi 3", "hi 4"]
    out = cmd(room, "cat", "room.reaction", T0 + 11, emoji="😂")
    assert out.sends[0].message == {
        "type": "room.reaction",
        "member": "cat",
        "emoji": "😂",
        "at": (T0 + 11) * 1000,
        "room": room.code,
    }


def test_chat_and_reactions_share_a_sliding_window_limit() -> None:
    room = make_room("ann", config=RoomConfig(chat_rate_count=3, chat_rate_window=10))
    cmd(room, "ann", "room.chat", T0, text="one")
    cmd(room, "ann", "room.reaction", T0 + 1, emoji="👍")
    cmd(room, "ann", "room.chat", T0 + 2, text="three")
    before = room.snapshot()
    with pytest.raises(DramaverseError, match="at most 3 per 10 s") as caught:
        cmd(room, "ann", "room.chat", T0 + 3, text="four")
    assert caught.value.status == 429
    assert room.snapshot() == before
    cmd(room, "ann", "room.chat", T0 + 10, text="the first one has left the window")


# --- snapshots ---------------------------------------------------------------------------


def test_snapshot_is_json_and_restores_membership_roles_and_playback() -> None:
    room = playing_room("ann", "bob", "cat")
    start = room.playback.at
    cmd(room, "ann", "room.chat", start + 1, text="hello")
    cmd(room, "ann", "room.host", start + 2, member="bob")
    room.disconnect("cat", start + 3)
    snapshot = json.loads(json.dumps(room.snapshot(), allow_nan=False))
    restart = start + 20
    restored = Room.restore(snapshot, CONFIG, now=restart)
    assert restored.host == "bob"
    assert restored.code == room.code
    assert [m.id for m in restored.members.values()] == ["ann", "bob", "cat"]
    assert not any(m.connected for m in restored.members.values())
    assert restored.members["ann"].disconnected_at == restart  # connected at snapshot time
    assert restored.members["cat"].disconnected_at == start + 3
    assert restored.playback == room.playback
    assert restored.playback.position_at(restart) == pytest.approx(20)
    assert list(restored.history) == list(room.history)
    # Round trip: restoring a room nobody is connected to changes nothing.
    assert Room.restore(restored.snapshot(), CONFIG, now=restart).snapshot() == restored.snapshot()
    # Reconnecting within the grace keeps membership and role.
    restored.join("bob", "Bob", restart + 5)
    assert restored.host == "bob"
    assert restored.members["bob"].order == 1
    restored.tick(restart + CONFIG.reconnect_grace)
    assert set(restored.members) == {"bob"}  # the others did not come back in time


def test_restore_of_a_waiting_barrier_resumes_on_the_first_tick() -> None:
    room = playing_room("ann", "bob")
    now = room.playback.at + 5
    cmd(room, "bob", "room.status", now, state="buffering")
    restored = Room.restore(room.snapshot(), CONFIG, now=now + 1)
    assert restored.barrier is not None
    assert restored.next_deadline() == 0.0
    state = last_state(restored.tick(now + 1))
    assert state["startAt"] == pytest.approx((now + 1 + CONFIG.lead_min) * 1000)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda s: s.update(v=99), "unknown version"),
        (lambda s: s.update(code="nope"), "room code"),
        (lambda s: s.update(host="zed"), "not a member"),
        (lambda s: s["playback"].update(phase="flying"), "flying"),
        (lambda s: s["playback"].update(position=float("nan")), "finite"),
        (lambda s: s["members"][0].update(name=""), "name must not be empty"),
        (lambda s: s.pop("members"), "members"),
        (lambda s: s["playback"].update(startAt=5.0), "start time"),
    ],
)
def test_invalid_snapshots_are_refused_clearly(
    mutate: Callable[[dict[str, Any]], None], match: str
) -> None:
    snapshot = copy.deepcopy(playing_room("ann", "bob").snapshot())
    mutate(snapshot)
    with pytest.raises(InvalidSnapshot, match=match):
        Room.restore(snapshot, CONFIG, now=T0)


# --- refusals ----------------------------------------------------------------------------

REFUSALS: list[tuple[str, str, str, Any, int, str]] = [
    # (setup, member, type, data, status, message fragment)
    ("idle", "ann", "room.fly", {}, 400, "Unknown room message type 'room.fly'"),
    ("idle", "ann", 42, {}, 400, "Unknown room message type 42"),
    ("idle", "zed", "room.play", {}, 403, "not in this room"),
    ("idle", "gone", "room.play", {}, 403, "not in this room"),
    ("idle", "ann", "room.play", [], 400, "room.play.data must be an object"),
    ("idle", "ann", "room.play", {"now": 1}, 400, "Unknown field 'now' in room.play"),
    ("idle", "ann", "room.play", {}, 409, "choose content first"),
    ("idle", "ann", "room.pause", {}, 409, "Nothing is playing"),
    ("idle", "ann", "room.seek", {"position": 3}, 409, "Choose content before seeking"),
    ("idle", "ann", "room.rate", {"rate": 2}, 409, "Choose content before setting the rate"),
    ("idle", "ann", "room.content", {}, 400, "content must be an object"),
    ("idle", "ann", "room.content", {"content": {"tmdbId": 0, "type": "movie"}}, 400, "tmdbId"),
    ("idle", "ann", "room.content", {"content": {"tmdbId": 1, "type": "show"}}, 400, "type"),
    (
        "idle",
        "ann",
        "room.content",
        {"content": {**EPISODE, "episodeNumber": True}},
        400,
        "episodeNumber",
    ),
    (
        "idle",
        "ann",
        "room.content",
        {"content": {**MOVIE, "seasonNumber": 1}},
        400,
        "A movie has no",
    ),
    (
        "idle",
        "ann",
        "room.content",
        {"content": {**MOVIE, "extra": 1}},
        400,
        "Unknown field 'extra' in content",
    ),
    ("idle", "ann", "room.content", {"content": {**MOVIE, "duration": 0}}, 400, "more than 0"),
    ("idle", "ann", "room.content", {"content": MOVIE, "position": 9000}, 400, "past the end"),
    ("idle", "bob", "room.content", {"content": MOVIE}, 403, "Only the host controls playback"),
    ("playing", "ann", "room.seek", {"position": -1}, 400, "position must be a number"),
    ("playing", "ann", "room.seek", {"position": "10"}, 400, "position must be a number"),
    ("playing", "ann", "room.seek", {"position": float("inf")}, 400, "position must be a number"),
    ("playing", "ann", "room.seek", {"position": 9999}, 400, "past the end"),
    ("playing", "ann", "room.seek", {}, 400, "position must be a number"),
    ("playing", "ann", "room.rate", {"rate": 0}, 400, "rate must be a number from 0.25 to 4"),
    ("playing", "ann", "room.rate", {"rate": True}, 400, "rate must be a number"),
    ("playing", "bob", "room.pause", {}, 403, "Only the host controls playback"),
    ("playing", "bob", "room.seek", {"position": 1}, 403, "Only the host controls playback"),
    ("playing", "bob", "room.rate", {"rate": 2}, 403, "Only the host controls playback"),
    ("playing", "bob", "room.settings", {"control": "all"}, 403, "Only the host can change"),
    ("playing", "ann", "room.settings", {}, 400, "needs control or waitForJoiners"),
    ("playing", "ann", "room.settings", {"control": "everyone"}, 400, "'host' or 'all'"),
    ("playing", "ann", "room.settings", {"waitForJoiners": 1}, 400, "true or false"),
    ("playing", "bob", "room.host", {"member": "bob"}, 403, "Only the host can hand"),
    ("playing", "ann", "room.host", {"member": "zed"}, 404, "No member 'zed'"),
    ("playing", "ann", "room.host", {"member": "ann"}, 400, "already the host"),
    ("playing", "ann", "room.host", {"member": "gone"}, 409, "not connected"),
    ("playing", "ann", "room.status", {"state": "stalled"}, 400, "'ready' or 'buffering'"),
    ("playing", "bob", "room.position", {"position": 5, "at": "now"}, 400, "server time"),
    ("playing", "bob", "room.position", {"position": 5, "at": 1.0}, 400, "resynchronise"),
    ("playing", "bob", "room.position", {"position": None}, 400, "position must be a number"),
    ("playing", "bob", "room.chat", {"text": "   "}, 400, "text must not be empty"),
    ("playing", "bob", "room.chat", {"text": "x" * 501}, 400, "longer than 500"),
    ("playing", "bob", "room.chat", {"text": 5}, 400, "text must be a string"),
    ("playing", "bob", "room.chat", {"text": "bell\x07"}, 400, "control characters"),
    ("playing", "bob", "room.reaction", {"emoji": "two words"}, 400, "without spaces"),
    ("playing", "bob", "room.reaction", {"emoji": "x" * 17}, 400, "1 to 16"),
    ("playing", "bob", "clock.pong", {"seq": 999, "t1": 1, "t2": 1}, 400, "never sent"),
    ("playing", "bob", "clock.pong", {"seq": "1", "t1": 1, "t2": 1}, 400, "seq must be"),
    ("playing", "bob", "clock.pong", {"seq": 1, "t1": "x", "t2": 1}, 400, "t1 must be"),
    ("playing", "bob", "clock.pong", {"seq": 1, "t1": 10, "t2": 5}, 400, "must not be before"),
    ("playing", "bob", "clock.pong", {"seq": 1, "t1": 1e20, "t2": 1e20}, 400, "t1 must be"),
]


@pytest.mark.parametrize(("setup", "member", "kind", "data", "status", "fragment"), REFUSALS)
def test_refused_commands_say_why_and_change_nothing(
    setup: str, member: str, kind: Any, data: Any, status: int, fragment: str
) -> None:
    if setup == "idle":
        room = make_room("ann", "bob", "gone")
    else:
        room = playing_room("ann", "bob", "gone")
    room.disconnect("gone", T0 + 0.5)
    now = room.playback.at + 1
    before = json.dumps(room.snapshot())
    pending = {m.id: dict(m.clock.pending) for m in room.members.values()}
    with pytest.raises(DramaverseError) as caught:
        room.handle(member, kind, data, now)
    assert caught.value.status == status
    assert fragment.lower() in caught.value.message.lower()
    assert json.dumps(room.snapshot()) == before
    assert {m.id: dict(m.clock.pending) for m in room.members.values()} == pending
    assert all(not m.chat_times for m in room.members.values())


def test_join_refuses_bad_ids_and_names() -> None:
    room = make_room("ann")
    before = room.snapshot()
    for member_id, name, fragment in [
        ("", "X", "member id"),
        ("x" * 65, "X", "member id"),
        ("bob", "", "name must not be empty"),
        ("bob", "n" * 65, "longer than 64"),
        ("bob", 7, "name must be a string"),
    ]:
        with pytest.raises(DramaverseError, match=fragment):
            room.join(member_id, name, T0)  # type: ignore[arg-type]
    assert room.snapshot() == before
    assert room.members["ann"].connected
    with pytest.raises(DramaverseError, match="not in this room"):
        room.leave("zed", T0)


def test_control_all_setting_round_trips_through_settings_message() -> None:
    room = make_room("ann", "bob", control=Control.ALL)
    out = cmd(room, "ann", "room.settings", T0, control="host", waitForJoiners=True)
    assert out.result == {"control": "host", "waitForJoiners": True}
    message = out.sends[0].message
    assert message == {
        "type": "room.settings",
        "control": "host",
        "waitForJoiners": True,
        "room": room.code,
    }
