"""The room actor and registry on trio's virtual clock: timers fire at the right (virtual) time,
answers reach the right peer, slow peers are evicted, empty rooms stop, snapshots restore."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from dramaverse.actors.room import INBOX_SIZE, RoomActor, ServerClock, room_config
from dramaverse.actors.room_messages import Call, RoomFailed, RoomGone, RoomPeer
from dramaverse.actors.room_registry import START_QUEUE, RoomRegistry, open_rooms
from dramaverse.config import RateLimit, Settings, load_settings
from dramaverse.domain.close_codes import CloseCode
from dramaverse.domain.rooms import HANDLERS, Room
from dramaverse.errors import ConfigError, DramaverseError

MOVIE = {"tmdbId": 27205, "type": "movie", "duration": 8880}
SETTINGS = Settings()


class Client:
    """A fake connection: a bounded outbox the test reads, and a record of evictions."""

    def __init__(self, size: int = 256) -> None:
        self.outbox, self.inbox = trio.open_memory_channel[str](size)
        self.evictions: list[tuple[int, str]] = []
        self.peer = RoomPeer(
            self.outbox, lambda code, reason: self.evictions.append((code, reason))
        )

    def drain(self) -> list[dict[str, Any]]:
        frames = []
        while True:
            try:
                frames.append(json.loads(self.inbox.receive_nowait()))
            except trio.WouldBlock:
                return frames

    async def expect(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The next frame of ``kind`` whose fields match (others are skipped)."""
        with trio.fail_after(600):
            while True:
                frame = json.loads(await self.inbox.receive())
                if frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()):
                    return frame


@pytest.fixture
async def registry() -> AsyncIterator[RoomRegistry]:
    async with open_rooms(SETTINGS, clock=ServerClock(epoch=0.0)) as rooms:
        yield rooms


async def room_with(registry: RoomRegistry, *names: str) -> tuple[RoomActor, dict[str, Client]]:
    actor = await registry.create(names[0], names[0].title())
    clients = {}
    for name in names:
        clients[name] = client = Client()
        welcome = await actor.join(name, name.title(), client.peer)
        assert welcome["you"] == name
    return actor, clients


async def start_playing(actor: RoomActor, clients: dict[str, Client]) -> float:
    host = next(iter(clients))
    await actor.request(host, "room.content", {"content": MOVIE})
    for name in clients:
        await actor.request(name, "room.status", {"state": "ready"})
    await actor.request(host, "room.play", {})
    state = await clients[host].expect("room.state", phase="playing")
    return float(state["at"]) / 1000


async def test_play_starts_everyone_at_the_scheduled_virtual_time(
    registry: RoomRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    actor, clients = await room_with(registry, "ann", "bob")
    assert registry.get(actor.code.lower()) is actor
    await actor.request("ann", "room.content", {"content": MOVIE})
    for name in clients:
        await actor.request(name, "room.status", {"state": "ready"})
    asked = trio.current_time()
    await actor.submit("ann", "room.play", {}, request_id="p1")
    ack = await clients["ann"].expect("ack", id="p1")
    assert ack["result"] == {"phase": "waiting"}
    waiting = await clients["bob"].expect("room.state", phase="waiting")
    assert waiting["startAt"] == pytest.approx((asked + SETTINGS.watch_lead_min_seconds) * 1000)
    playing = await clients["bob"].expect("room.state", phase="playing")
    assert trio.current_time() == pytest.approx(asked + SETTINGS.watch_lead_min_seconds)
    assert playing["at"] == waiting["startAt"]


async def test_clock_sync_over_the_actor_reports_each_members_offset(
    registry: RoomRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    actor, clients = await room_with(registry, "ann")
    client = clients["ann"]
    offset, one_way = 7.5, 0.04  # the member's clock runs 7.5 s ahead; 40 ms each way

    for k in range(5):
        ping = await client.expect("clock.ping")
        await trio.sleep(one_way)
        t1 = (trio.current_time() + offset) * 1000
        await trio.sleep(one_way)
        await actor.submit("ann", "clock.pong", {"seq": ping["seq"], "t1": t1, "t2": t1})
        if k == 0:  # the later samples say the same: no clock.sync for them
            sync = await client.expect("clock.sync")
    assert sync["offset"] == pytest.approx(offset * 1000, abs=0.01)
    assert sync["rtt"] == pytest.approx(2 * one_way * 1000, abs=0.01)
    assert sync["samples"] == 1
    samples = await actor.call(lambda room, now: len(room.members["ann"].clock.samples))
    assert samples == 5
    lead = await actor.call(lambda room, now: room.lead())
    assert lead == SETTINGS.watch_lead_min_seconds  # 160 ms x 2 is below the minimum


async def test_barrier_deadline_releases_the_room_on_the_virtual_clock(
    registry: RoomRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    actor, clients = await room_with(registry, "ann", "bob")
    await start_playing(actor, clients)
    stalled = trio.current_time()
    await actor.submit("bob", "room.status", {"state": "buffering"})
    waiting = await clients["ann"].expect("room.state", phase="waiting", startAt=None)
    assert waiting["waitingFor"] == ["bob"]
    resumed = await clients["ann"].expect("room.state", phase="waiting", waitingFor=[])
    assert trio.current_time() == pytest.approx(stalled + SETTINGS.watch_barrier_seconds)
    assert resumed["startAt"] is not None
    await clients["ann"].expect("room.state", phase="playing")
    assert await actor.call(lambda room, now: room.members["bob"].left_out)


async def test_host_role_migrates_after_the_host_grace(
    registry: RoomRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    actor, clients = await room_with(registry, "ann", "bob", "cat")
    actor.disconnect("ann", clients["ann"].peer)
    gone = trio.current_time()
    members = await clients["bob"].expect("room.members", host="bob")
    assert trio.current_time() == pytest.approx(gone + SETTINGS.watch_host_grace_seconds)
    assert next((m["id"], m["connected"]) for m in members["members"]) == ("ann", False)
    # Ann comes back within the reconnect grace: still a member, no longer host.
    ann = Client()
    welcome = await actor.join("ann", "Ann", ann.peer)
    assert welcome["host"] == "bob"
    assert [m["id"] for m in welcome["members"]] == ["ann", "bob", "cat"]


async def test_reconnect_within_grace_keeps_the_role_and_past_it_loses_membership(
    registry: RoomRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    actor, clients = await room_with(registry, "ann", "bob")
    actor.disconnect("ann", clients["ann"].peer)
    await trio.sleep(SETTINGS.watch_host_grace_seconds - 1)
    again = Client()
    welcome = await actor.join("ann", "Ann", again.peer)
    assert welcome["host"] == "ann"
    actor.disconnect("bob", clients["bob"].peer)
    gone = trio.current_time()
    members = await again.expect("room.members", members=[welcome["members"][0]])
    assert trio.current_time() == pytest.approx(gone + SETTINGS.watch_reconnect_grace_seconds)
    assert members["host"] == "ann"


async def test_answers_go_to_the_sender_and_refusals_change_nothing(
    registry: RoomRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    actor, clients = await room_with(registry, "ann", "bob")
    await trio.testing.wait_all_tasks_blocked()
    clients["ann"].drain()
    clients["bob"].drain()
    before = await actor.snapshot()
    await actor.submit("bob", "room.seek", {"position": 5}, request_id=7)
    error = await clients["bob"].expect("error")
    assert error == {
        "type": "error",
        "id": 7,
        "status": 403,
        "message": "Only the host controls playback in this room.",
    }
    await actor.submit("ann", "room.play", {"position": 1}, request_id=True)
    error = await clients["ann"].expect("error")
    assert error["status"] == 400
    assert "id" not in error
    await actor.submit("ann", "room.chat", {"text": "hi"}, request_id="x" * 65)
    assert "at most 64" in (await clients["ann"].expect("error"))["message"]
    with pytest.raises(DramaverseError, match="Unknown room message type"):
        await actor.request("ann", "room.nope", None)
    assert await actor.snapshot() == before
    assert [f["type"] for f in clients["bob"].drain()] == []  # nobody else heard anything
    await actor.submit("bob", "room.chat", {"text": "hello"}, request_id="c1")
    assert (await clients["bob"].expect("ack", id="c1"))["result"] == {"id": 1}
    chat = await clients["ann"].expect("room.chat")
    assert (chat["member"], chat["text"]) == ("bob", "hello")


async def test_slow_peer_is_evicted_and_disconnected(
    registry: RoomRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    actor, clients = await room_with(registry, "ann")
    slow = Client(size=2)
    await actor.join("bob", "Bob", slow.peer)  # the welcome and a clock ping fill the outbox
    await actor.submit("ann", "room.chat", {"text": "one too many"})
    frame = await clients["ann"].expect("room.chat")
    assert frame["text"] == "one too many"
    members = await clients["ann"].expect("room.members")
    assert [(m["id"], m["connected"]) for m in members["members"]] == [
        ("ann", True),
        ("bob", False),
    ]
    assert slow.evictions == [(4001, "slow consumer: outbox full")]
    assert slow.peer.gone


async def test_a_second_connection_replaces_the_first(
    registry: RoomRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    actor, clients = await room_with(registry, "ann", "bob")
    phone = Client()
    await actor.join("bob", "Bob", phone.peer)
    left = await clients["bob"].expect("room.left")
    assert left["reason"] == "replaced"
    actor.disconnect("bob", clients["bob"].peer)  # the old connection closing changes nothing
    await trio.testing.wait_all_tasks_blocked()
    connected = await actor.call(lambda room, now: room.members["bob"].connected)
    assert connected is True
    assert actor.peers["bob"] is phone.peer


async def test_empty_room_stops_after_the_grace_and_is_forgotten(
    registry: RoomRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    actor, clients = await room_with(registry, "ann")
    await actor.request("ann", "room.leave", None)
    left = trio.current_time()
    await actor.stopped.wait()
    assert trio.current_time() == pytest.approx(left + SETTINGS.watch_empty_room_seconds)
    assert registry.find(actor.code) is None
    with pytest.raises(DramaverseError, match="not found") as caught:
        registry.get(actor.code)
    assert caught.value.status == 404
    with pytest.raises(RoomGone):
        await actor.join("ann", "Ann", Client().peer)


async def test_never_joined_room_stops_after_reconnect_and_empty_graces(
    registry: RoomRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    created = trio.current_time()
    actor = await registry.create("ann", "Ann")
    await actor.stopped.wait()
    expected = SETTINGS.watch_reconnect_grace_seconds + SETTINGS.watch_empty_room_seconds
    assert trio.current_time() == pytest.approx(created + expected)


async def test_snapshots_from_on_change_restore_membership_and_role(
    autojump_clock: trio.testing.MockClock,
) -> None:
    snapshots: list[dict[str, Any]] = []

    def keep(room: Room) -> None:
        snapshots.append(room.snapshot())

    clock = ServerClock(epoch=0.0)  # one server clock across the "restart"
    async with open_rooms(SETTINGS, clock=clock, on_change=keep) as registry:
        actor, clients = await room_with(registry, "ann", "bob")
        started = await start_playing(actor, clients)
        await actor.request("ann", "room.host", {"member": "bob"})
        code = actor.code
        registry.close()  # the process "dies"
    assert snapshots
    assert snapshots[-1]["host"] == "bob"
    last = json.loads(json.dumps(snapshots[-1]))
    await trio.sleep(10)
    async with open_rooms(SETTINGS, clock=clock) as registry:
        actor = await registry.restore(last)
        assert actor.code == code
        bob = Client()
        welcome = await actor.join("bob", "Bob", bob.peer)
        assert welcome["host"] == "bob"
        assert welcome["state"]["phase"] == "playing"
        assert welcome["position"] == pytest.approx(trio.current_time() - started)
        with pytest.raises(DramaverseError, match="already running"):
            await registry.restore(last)
        registry.close()


async def test_a_restored_actor_records_its_restore_before_it_reports_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its first work is recording the restored state (members now disconnected), in its own
    task; whoever restored it reads nothing of the room, only the handle's published host."""
    clock = ServerClock(epoch=0.0)
    snapshots: list[dict[str, Any]] = []
    async with open_rooms(
        SETTINGS, clock=clock, on_change=lambda r: snapshots.append(r.snapshot())
    ) as registry:
        actor, clients = await room_with(registry, "ann", "bob")
        await actor.request("ann", "room.host", {"member": "bob"})
        last = json.loads(json.dumps(snapshots[-1]))
        registry.close()
    recorded: list[dict[str, Any]] = []
    async with open_rooms(
        SETTINGS, clock=clock, on_change=lambda r: recorded.append(r.snapshot())
    ) as registry:
        actor = await registry.restore(last)
        assert len(recorded) == 1  # before restore() returned: no checkpoint since
        assert recorded[0]["host"] == "bob"
        assert actor.host == "bob"
        registry.close()


# --- failures: a bug in one step restarts the room; a crash loop closes it -----------------


def fail_once(monkeypatch: pytest.MonkeyPatch, kind: str) -> list[dict[str, Any]]:
    """Make the pure handler of ``kind`` apply itself and then raise, once: a bug that leaves
    the room half changed. Returns the data of every call."""
    fields, handler = HANDLERS[kind]
    calls: list[dict[str, Any]] = []

    def faulty(room: Room, member: Any, data: Any, now: float) -> Any:
        calls.append(dict(data))
        outcome = handler(room, member, data, now)
        if len(calls) == 1:
            raise RuntimeError(f"a bug in {kind}")
        return outcome

    monkeypatch.setitem(HANDLERS, kind, (fields, faulty))
    return calls


def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_verb_that_fails_restarts_the_room_from_the_state_before_it(
    registry: RoomRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor, clients = await room_with(registry, "ann", "bob")
    await start_playing(actor, clients)
    await actor.request("bob", "room.chat", {"text": "before"})
    before = await actor.snapshot()
    calls = fail_once(monkeypatch, "room.chat")
    for client in clients.values():
        client.drain()
    with caplog.at_level(logging.ERROR):
        await actor.submit("bob", "room.chat", {"text": "boom"}, request_id="c1")
        error = await clients["bob"].expect("error", id="c1")
        welcomes = [await client.expect("room.welcome") for client in clients.values()]
    assert error["status"] == 500
    assert "not applied" in error["message"]
    assert calls == [{"text": "boom"}]
    # The same room, both members in it, with the state before the failed message: the chat
    # line the faulty handler had added is gone, playback runs on from the same anchor.
    assert registry.get(actor.code) is actor
    assert not actor.stopped.is_set()
    after = await actor.snapshot()
    for key in ("host", "playback", "history", "nextChatId", "control", "barrier"):
        assert after[key] == before[key], key
    assert [(m["id"], m["order"], m["connected"]) for m in after["members"]] == [
        ("ann", 0, True),
        ("bob", 1, True),
    ]
    assert [w["you"] for w in welcomes] == ["ann", "bob"]
    assert [c["text"] for c in welcomes[1]["history"]] == ["before"]
    logged = failures(caplog)
    assert len(logged) == 1
    assert actor.code in logged[0]
    assert "room.chat" in logged[0]
    assert not any(client.evictions for client in clients.values())
    # It keeps working, for the sender too.
    assert (await actor.request("bob", "room.chat", {"text": "again"}))["id"] == 2
    assert (await clients["ann"].expect("room.chat"))["text"] == "again"
    assert (await actor.request("ann", "room.pause", {}))["phase"] == "paused"


async def test_a_room_survives_numbers_too_large_for_a_float(
    registry: RoomRegistry, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    actor, clients = await room_with(registry, "ann", "bob")
    await start_playing(actor, clients)
    huge = 10**400
    with caplog.at_level(logging.ERROR):
        # Refused (400) once numbers are checked at the edge, 500 (not applied) until then:
        # either way the room stays.
        with pytest.raises(DramaverseError):
            await actor.request("bob", "room.position", {"position": huge})
        with pytest.raises(DramaverseError):
            await actor.request("ann", "room.content", {"content": MOVIE | {"duration": huge}})
        with pytest.raises(DramaverseError):
            await actor.request("ann", "room.content", {"content": MOVIE, "position": huge})
    assert registry.get(actor.code) is actor
    view = await actor.call(lambda room, now: room.view(now))
    assert view["state"]["phase"] == "playing"
    assert view["state"]["content"]["duration"] == MOVIE["duration"]
    assert [m["connected"] for m in view["members"]] == [True, True]
    assert await actor.request("bob", "room.position", {"position": 1.0}) is not None


async def test_a_room_that_keeps_failing_closes_its_members_and_keeps_its_snapshot(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    ended: list[str] = []
    changes: list[dict[str, Any]] = []
    async with open_rooms(
        SETTINGS,
        clock=ServerClock(epoch=0.0),
        on_change=lambda room: changes.append(room.snapshot()),
        on_end=ended.append,
        max_restarts=3,
        restart_window=30.0,
    ) as registry:
        actor, clients = await room_with(registry, "ann", "bob")
        await actor.request("ann", "room.chat", {"text": "kept"})

        def broken_tick(room: Room, now: float) -> list[Any]:
            raise RuntimeError("a bug in tick")

        monkeypatch.setattr(Room, "tick", broken_tick)
        with caplog.at_level(logging.ERROR):
            await actor.stopped.wait()  # every clock ping fails: 3 restarts, then it gives up
        logged = failures(caplog)
        assert len(logged) == 4
        assert all(actor.code in line and "tick" in line for line in logged)
        assert "closing its 2 connections with 4002" in logged[-1]
        assert actor.failed
        for client in clients.values():
            assert client.evictions == [
                (CloseCode.ROOM_FAILED, "the watch-party room failed; rejoin it")
            ]
            assert client.peer.gone
        assert registry.find(actor.code) is None
        assert ended == []  # not ended: its stored snapshot stays
        with pytest.raises(RoomGone):
            await actor.join("ann", "Ann", Client().peer)

        # Fixed (or the bad state gone), the room comes back from that snapshot.
        monkeypatch.undo()
        again = await registry.restore(changes[-1])
        client = Client()
        welcome = await again.join("bob", "Bob", client.peer)
        assert [c["text"] for c in welcome["history"]] == ["kept"]
        assert welcome["host"] == "ann"
        registry.close()


async def test_a_failure_after_the_step_keeps_the_step(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    failed: list[int] = []

    def explode_once(room: Room) -> None:
        if not failed:
            failed.append(room.revision)
            raise RuntimeError("snapshot writer bug")

    async with open_rooms(
        SETTINGS, clock=ServerClock(epoch=0.0), on_change=explode_once
    ) as registry:
        actor = await registry.create("ann", "Ann")
        client = Client()
        with caplog.at_level(logging.ERROR):
            await actor.join("ann", "Ann", client.peer)  # answered, then on_change fails
            await client.expect("room.welcome")
            await client.expect("room.welcome")  # the restart joined her again
        assert failed
        logged = failures(caplog)
        assert len(logged) == 1
        assert "on_change" in logged[0]
        assert registry.find(actor.code) is actor
        assert not client.peer.gone
        assert (await actor.request("ann", "room.chat", {"text": "hi"}))["id"] == 1
        registry.close()


# --- settings ----------------------------------------------------------------------------


def test_watch_party_settings_defaults_and_environment() -> None:
    settings = load_settings({}, dotenv_path=None)
    config = room_config(settings)
    assert (config.lead_min, config.lead_max) == (0.3, 3.0)
    assert (config.drift_nudge, config.drift_seek, config.drift_max_nudge) == (0.04, 0.5, 0.08)
    assert (config.barrier_timeout, config.host_grace, config.reconnect_grace) == (8, 15, 60)
    assert (config.chat_max_length, config.chat_rate_count, config.chat_rate_window) == (
        500,
        10,
        10,
    )
    assert (config.history_size, config.max_members, config.report_interval) == (50, 50, 2)
    assert settings.watch_empty_room_seconds == 30
    assert (settings.watch_lease_seconds, settings.watch_relay_beat_seconds) == (6, 1)
    assert (settings.watch_relay_silence_seconds, settings.watch_relay_timeout_seconds) == (3, 5)
    custom = load_settings(
        {"WATCH_BARRIER_SECONDS": "3", "WATCH_CHAT_RATE": "5/60", "WATCH_MAX_MEMBERS": "8"},
        dotenv_path=None,
    )
    assert custom.watch_barrier_seconds == 3
    assert custom.watch_chat_rate == RateLimit(5, 60)
    assert room_config(custom).max_members == 8
    assert dataclasses.replace(SETTINGS) == SETTINGS


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"WATCH_LEAD_MIN_SECONDS": "soon"}, "WATCH_LEAD_MIN_SECONDS must be a number"),
        ({"WATCH_BARRIER_SECONDS": "0"}, "WATCH_BARRIER_SECONDS must be a number from 0.1"),
        ({"WATCH_CHAT_RATE": "off"}, "cannot be off"),
        ({"WATCH_CHAT_RATE": "ten"}, "WATCH_CHAT_RATE must be COUNT/SECONDS"),
        ({"WATCH_MAX_MEMBERS": "0"}, "WATCH_MAX_MEMBERS must be an integer from 1"),
        (
            {"WATCH_LEAD_MIN_SECONDS": "2", "WATCH_LEAD_MAX_SECONDS": "1"},
            "WATCH_LEAD_MAX_SECONDS must not be less than WATCH_LEAD_MIN_SECONDS",
        ),
        (
            {"WATCH_DRIFT_NUDGE_SECONDS": "0.5", "WATCH_DRIFT_SEEK_SECONDS": "0.5"},
            "WATCH_DRIFT_SEEK_SECONDS must be more than WATCH_DRIFT_NUDGE_SECONDS",
        ),
        ({"WATCH_LEASE_SECONDS": "0"}, "WATCH_LEASE_SECONDS must be a number from 0.5"),
        ({"WATCH_RELAY_BEAT_SECONDS": "x"}, "WATCH_RELAY_BEAT_SECONDS must be a number"),
        (
            {"WATCH_RELAY_BEAT_SECONDS": "2", "WATCH_RELAY_SILENCE_SECONDS": "3"},
            "WATCH_RELAY_SILENCE_SECONDS must be at least twice WATCH_RELAY_BEAT_SECONDS",
        ),
        (
            {"WATCH_LEASE_SECONDS": "3", "WATCH_RELAY_SILENCE_SECONDS": "3"},
            "WATCH_LEASE_SECONDS must be more than WATCH_RELAY_SILENCE_SECONDS",
        ),
    ],
)
def test_invalid_watch_party_settings_stop_with_one_line(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(environ, dotenv_path=None)
    assert "\n" not in caught.value.message


async def test_timers_fire_on_a_wall_clock_epoch(autojump_clock: trio.testing.MockClock) -> None:
    # Server time = trio time + a large offset: deadlines survive the float round trip.
    async with open_rooms(SETTINGS, clock=ServerClock(epoch=1_732_000_000.123456)) as registry:
        actor, clients = await room_with(registry, "ann", "bob")
        with trio.fail_after(60):
            started = await start_playing(actor, clients)
        assert started == pytest.approx(actor.clock.now(), abs=0.01)
        registry.close()


async def test_a_disconnect_that_finds_the_inbox_full_is_still_applied(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = ServerClock(epoch=0.0)
    room = Room.create("7KQ3M8TD", room_config(SETTINGS), creator="ann", name="Ann", now=0.0)
    actor = RoomActor(room, clock, empty_grace=1.0, inbox_size=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        ann, bob = Client(), Client()
        await actor.join("ann", "Ann", ann.peer)
        await actor.join("bob", "Bob", bob.peer)
        await trio.testing.wait_all_tasks_blocked()
        ann.drain()
        for _ in range(2):  # one goes straight to the waiting actor, one fills the inbox
            actor.inbox.send_nowait(Call(lambda room, now: None))
        closed_at = trio.current_time()
        actor.disconnect("bob", bob.peer)  # cannot be queued: the actor sweeps gone peers
        members = await ann.expect("room.members")
        assert [(m["id"], m["connected"]) for m in members["members"]] == [
            ("ann", True),
            ("bob", False),
        ]
        assert trio.current_time() == closed_at  # at once, not at the room's next deadline
        nursery.cancel_scope.cancel()


async def test_a_disconnect_lost_to_a_full_inbox_is_swept_after_the_full_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The default inbox (INBOX_SIZE) is larger than a batch: the actor handles the queue in
    # several wake-ups, and the first one, a full batch, sweeps the closed peer.
    clock = ServerClock(epoch=0.0)
    room = Room.create("7KQ3M8TD", room_config(SETTINGS), creator="ann", name="Ann", now=0.0)
    actor = RoomActor(room, clock, empty_grace=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        ann, bob = Client(), Client()
        await actor.join("ann", "Ann", ann.peer)
        await actor.join("bob", "Bob", bob.peer)
        await trio.testing.wait_all_tasks_blocked()
        ann.drain()
        for _ in range(1 + INBOX_SIZE):  # one straight to the waiting actor, then a full inbox
            actor.inbox.send_nowait(Call(lambda room, now: None))
        with pytest.raises(trio.WouldBlock):
            actor.inbox.send_nowait(Call(lambda room, now: None))
        closed_at = trio.current_time()
        actor.disconnect("bob", bob.peer)  # cannot be queued
        members = await ann.expect("room.members")
        assert [(m["id"], m["connected"]) for m in members["members"]] == [
            ("ann", True),
            ("bob", False),
        ]
        assert trio.current_time() == closed_at  # at once, not at the room's next deadline
        nursery.cancel_scope.cancel()


async def test_only_the_room_drops_a_peer_and_only_its_connection_closes_it(
    registry: RoomRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    actor, clients = await room_with(registry, "ann", "bob")
    laptop, phone = clients["bob"], Client()
    await actor.join("bob", "Bob", phone.peer)  # replaces the laptop: the room drops it
    assert (laptop.peer.dropped, laptop.peer.closed, laptop.peer.gone) == (True, False, True)
    clients["ann"].drain()
    actor.disconnect("bob", phone.peer)  # the phone's connection ended: it closes its peer
    assert (phone.peer.dropped, phone.peer.closed) == (False, True)
    members = await clients["ann"].expect("room.members")
    assert [(m["id"], m["connected"]) for m in members["members"]] == [
        ("ann", True),
        ("bob", False),
    ]
    assert not phone.peer.dropped  # the room forgot it without writing the connection's peer


async def test_a_caller_is_answered_even_when_its_request_crashes_the_room(
    registry: RoomRegistry, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    actor, _ = await room_with(registry, "ann")
    assert await actor.call(lambda room, now: None) is None

    def bug(room: Room, now: float) -> None:
        raise ZeroDivisionError("a bug in the caller's function")

    with caplog.at_level(logging.ERROR), pytest.raises(RoomFailed) as failed:
        await actor.call(bug)
    assert failed.value.status == 500
    assert "ZeroDivisionError" in caplog.text
    assert await actor.call(lambda room, now: room.code) == actor.code  # restarted, not gone


async def test_a_burst_of_creations_beyond_the_start_queue_waits_instead_of_failing(
    registry: RoomRegistry,
) -> None:
    """Found by the 2,000-room simulation on a busy machine: creations past the registry's
    start queue were refused with 503 instead of waiting their turn."""
    burst = START_QUEUE * 3
    created: list[RoomActor] = []

    async def create(index: int) -> None:
        created.append(await registry.create(f"host{index}", f"Host {index}"))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for index in range(burst):
                nursery.start_soon(create, index)
    assert len(created) == burst
    assert len({actor.code for actor in created}) == burst
    assert all(registry.find(actor.code) is actor for actor in created)
