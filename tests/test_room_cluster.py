"""Rooms across processes, in one test process: two room clusters share one broker and one store.

Each :class:`Proc` is what one worker runs (``open_room_cluster`` with ``shared=True``: its own
registry, snapshot writer, relay and node id) and can be "killed" (cancelled, its lease left
behind). The in-process broker grants each lease to one holder, like Redis, and
``break_lease`` stands for a lease that expired; the same flows run over the real Redis at the
end, and across real worker processes in ``test_rooms_workers.py``. Connections are bare
:class:`RoomPeer`s on memory channels. Timings are short (beats of 50 ms) on the real clock, as
SQLite runs in threads; every wait is bounded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_asyncio

from dramaverse.actors.room import MAX_RESTARTS
from dramaverse.actors.room_cluster import (
    BEAT_SECONDS,
    JOIN_TIMEOUT,
    LEASE_TTL_MS,
    SILENCE_SECONDS,
    RoomCluster,
    open_room_cluster,
)
from dramaverse.actors.room_messages import RoomGone, RoomPeer, render_json
from dramaverse.actors.room_registry import open_rooms
from dramaverse.actors.room_relay import RELAY_TIMEOUT, decode
from dramaverse.actors.room_routes import RoomRoute
from dramaverse.actors.room_sender import RelayOutbox, Sender, node_topic
from dramaverse.broker.base import Broker
from dramaverse.broker.memory import MemoryBroker
from dramaverse.broker.redis import open_redis_broker
from dramaverse.config import Settings
from dramaverse.domain.close_codes import CloseCode
from dramaverse.domain.rooms import HANDLERS, Control, Room
from dramaverse.errors import BadRequest, NotFound, ServiceUnavailable
from dramaverse.realtime.ws_rooms import room_host_lookup
from dramaverse.storage import open_storage
from dramaverse.storage.base import Storage
from tests.conftest import flushed, make_settings
from tests.services import require_redis
from tests.test_broker_contract import RawRedis, unique_prefix

MOVIE = {"tmdbId": 27205, "type": "movie", "title": "Inception", "duration": 8880}
OPTIONS: dict[str, Any] = {
    "lease_ttl_ms": 400,
    "beat": 0.05,
    "silence": 0.15,
    "join_timeout": 2.0,
    "relay_timeout": 0.3,
}


class Device:
    """One connection as the room sees it: a bounded outbox this test reads."""

    def __init__(self, name: str, size: int = 512) -> None:
        self.name = name
        self.send, self.receive = trio.open_memory_channel[str](size)
        self.closed: list[tuple[int, str]] = []
        self.errors: list[int] = []
        self.peer = self.new_peer()
        self.ids = 0

    def new_peer(self) -> RoomPeer:
        def evict(code: int, reason: str) -> None:
            self.closed.append((code, reason))

        self.peer = RoomPeer(self.send, evict, render_json, self.errors.append)
        return self.peer

    async def next(self) -> dict[str, Any]:
        with trio.fail_after(10):
            frame: dict[str, Any] = json.loads(await self.receive.receive())
        return frame

    async def expect(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The next frame of ``kind`` whose fields match; others are skipped."""
        with trio.fail_after(15):
            while True:
                frame = await self.next()
                if frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()):
                    return frame

    async def call(self, route: RoomRoute, member: str, kind: str, data: Any = None) -> Any:
        """Send a command with an id and return its answer frame (ack or error)."""
        self.ids += 1
        request_id = f"{self.name}-{self.ids}"
        await route.submit(member, kind, data, request_id, peer=self.peer)
        with trio.fail_after(15):
            while True:
                frame = await self.next()
                if frame["type"] in ("ack", "error") and frame.get("id") == request_id:
                    return frame

    async def ok(self, route: RoomRoute, member: str, kind: str, data: Any = None) -> Any:
        answer = await self.call(route, member, kind, data)
        assert answer["type"] == "ack", answer
        return answer["result"]


class Proc:
    """One simulated worker: a room cluster that can be killed."""

    def __init__(self, cluster: RoomCluster, scope: trio.CancelScope) -> None:
        self.cluster = cluster
        self.scope = scope

    def kill(self) -> None:
        self.scope.cancel()


async def _run_proc(
    storage: Storage,
    broker: Broker,
    settings: Settings,
    options: dict[str, Any],
    *,
    task_status: trio.TaskStatus[Proc],
) -> None:
    with trio.CancelScope() as scope:
        async with open_room_cluster(storage, broker, settings, shared=True, **options) as cluster:
            task_status.started(Proc(cluster, scope))
            await trio.sleep_forever()


@asynccontextmanager
async def procs(
    tmp_path: Path,
    broker: Broker | None = None,
    count: int = 2,
    settings: dict[str, Any] | None = None,
    wrap: Callable[[Storage], Storage] = lambda storage: storage,
    **overrides: Any,
) -> AsyncIterator[tuple[list[Proc], Broker, Storage]]:
    """``count`` processes on one broker and one store (``wrap`` puts something between the
    processes and the store)."""
    settings_ = make_settings(tmp_path, watch_lead_min_seconds=0.1, **(settings or {}))
    broker = broker or MemoryBroker()
    async with open_storage(settings_) as opened, trio.open_nursery() as nursery:
        storage = wrap(opened)
        started = [
            await nursery.start(_run_proc, storage, broker, settings_, OPTIONS | overrides)
            for _ in range(count)
        ]
        yield started, broker, storage
        nursery.cancel_scope.cancel()


async def create(proc: Proc, device: Device, member: str = "1") -> tuple[str, RoomRoute]:
    route = await proc.cluster.create(
        member, device.name, control=Control.HOST, wait_for_joiners=False
    )
    await route.join(member, device.name, device.peer)
    await device.expect("room.welcome")
    return route.code, route


async def join(proc: Proc, code: str, device: Device, member: str) -> RoomRoute:
    route = await proc.cluster.locate(code)
    await route.join(member, device.name, device.peer)
    return route


async def playing_party(a: Proc, b: Proc) -> tuple[str, dict[str, Any], list[Any]]:
    """Alice creates a room on ``a``, Bob joins through ``b``; they play a movie."""
    alice, bob = Device("alice"), Device("bob")
    code, route_a = await create(a, alice)
    route_b = await join(b, code, bob, "2")
    assert route_b.actor is None  # relayed: the room runs in a
    welcome = await bob.expect("room.welcome")
    assert [m["id"] for m in welcome["members"]] == ["1", "2"]
    await alice.expect("room.members")  # bob arrived
    await alice.ok(route_a, "1", "room.content", {"content": MOVIE})
    assert await bob.ok(route_b, "2", "room.status", {"state": "ready"}) == {"status": "ready"}
    await alice.ok(route_a, "1", "room.status", {"state": "ready"})
    assert (await alice.ok(route_a, "1", "room.play"))["phase"] == "waiting"
    waiting = [await d.expect("room.state", phase="waiting") for d in (alice, bob)]
    assert waiting[0] == waiting[1]
    assert waiting[0]["startAt"] is not None
    states = [await d.expect("room.state", phase="playing") for d in (alice, bob)]
    assert states[0] == states[1]
    return code, states[0], [alice, bob, route_a, route_b]


async def eventually(condition: Callable[[], bool], within: float = 10) -> None:
    """Until ``condition()``: the clusters' state changes in their own tasks, on timers."""
    with trio.fail_after(within):
        while not condition():  # noqa: ASYNC110 (nothing to wait on but the timers)
            await trio.sleep(0.02)


# --- relaying ------------------------------------------------------------------------------


async def test_a_member_on_another_process_is_relayed_to_the_owner(tmp_path: Path) -> None:
    async with procs(tmp_path) as ([a, b], _broker, storage):
        code, _state, (alice, bob, route_a, route_b) = await playing_party(a, b)

        # Chat both ways; the owner's answer to a relayed command comes back as an ack.
        assert (await bob.ok(route_b, "2", "room.chat", {"text": "hi from b"}))["id"] == 1
        for device in (alice, bob):
            assert (await device.expect("room.chat"))["text"] == "hi from b"
        await alice.ok(route_a, "1", "room.chat", {"text": "hi from a"})
        assert (await bob.expect("room.chat"))["text"] == "hi from a"

        # A refusal is relayed as an error frame and counts for bob's connection.
        answer = await bob.call(route_b, "2", "room.pause")
        assert (answer["type"], answer["status"]) == ("error", 403)
        assert bob.errors == [403]

        # The host pauses and seeks: bob gets the same states.
        await alice.ok(route_a, "1", "room.pause")
        paused = [await d.expect("room.state", phase="paused") for d in (alice, bob)]
        assert paused[0] == paused[1]
        await alice.ok(route_a, "1", "room.seek", {"position": 600})
        seeked = [await d.expect("room.state", position=600) for d in (alice, bob)]
        assert seeked[0] == seeked[1]

        # isHost from another process: the stored snapshot says who hosts.
        await flushed(a.cluster.writer)
        assert b.cluster.registry.find(code) is None
        assert await room_host_lookup(b.cluster.registry, storage)(code, 1) is True
        assert await room_host_lookup(b.cluster.registry, storage)(code, 2) is False
        assert await room_host_lookup(b.cluster.registry)(code, 1) is False  # one process

        # Bob leaves through the relay: the owner drops him, b forgets the route.
        assert await bob.ok(route_b, "2", "room.leave") == {"left": True}
        members = await alice.expect("room.members")
        assert [m["id"] for m in members["members"]] == ["1"]
        await eventually(lambda: b.cluster.find(code) is None)


async def test_unknown_rooms_and_a_room_that_gives_up_while_relayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with procs(tmp_path) as ([a, b], _broker, _storage):
        with pytest.raises(NotFound):
            await b.cluster.locate("ZZZZZZZZ")
        alice, bob = Device("alice"), Device("bob")
        code, route_a = await create(a, alice)
        route_b = await join(b, code, bob, "2")
        await bob.expect("room.welcome")
        await alice.ok(route_a, "1", "room.chat", {"text": "kept"})

        calls: list[int] = []

        def broken(room: Room) -> float | None:
            calls.append(1)
            if len(calls) == MAX_RESTARTS + 1:
                monkeypatch.undo()  # fixed once the room gave up: it can come back
            raise RuntimeError("a bug in next_deadline")

        # Every round of the actor fails: it restarts MAX_RESTARTS times, then gives up.
        with caplog.at_level(logging.ERROR):
            monkeypatch.setattr(Room, "next_deadline", broken)
            await alice.ok(route_a, "1", "room.chat", {"text": "kept too"})  # wakes it up
            await eventually(lambda: route_a.stopped.is_set() and bool(bob.closed))
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(logged) == MAX_RESTARTS + 1
        assert all(code in line for line in logged)
        assert alice.closed == [(CloseCode.ROOM_FAILED, "the watch-party room failed; rejoin it")]
        assert bob.closed == alice.closed  # relayed: the owner's drop closed it on b
        assert not route_b.holds(bob.peer)  # b's connection reads that it is out
        assert b.cluster.find(code) is None
        # a writes the last good snapshot, then releases the lease: the room comes back from
        # it in whichever process adopts it first (a join, or a process's scan of stored rooms).
        carol = Device("carol")
        with trio.fail_after(10):
            while True:
                try:
                    route = await join(b, code, carol, "3")
                    break
                except ServiceUnavailable:  # a is still writing the snapshot
                    await trio.sleep(0.05)
        welcome = await carol.expect("room.welcome")
        assert welcome["host"] == "1"
        assert [c["text"] for c in welcome["history"]] == ["kept", "kept too"]
        assert (await carol.ok(route, "3", "room.chat", {"text": "back"}))["id"] == 3


async def test_a_room_that_fails_keeps_its_lease_and_its_relayed_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with procs(tmp_path) as ([a, b], broker, _storage):
        code, state, (alice, bob, route_a, route_b) = await playing_party(a, b)
        actor = route_a.actor
        fields, handler = HANDLERS["room.chat"]

        def faulty(room: Room, member: Any, data: Any, now: float) -> Any:
            monkeypatch.setitem(HANDLERS, "room.chat", (fields, handler))  # once
            handler(room, member, data, now)
            raise RuntimeError("a bug in room.chat")

        monkeypatch.setitem(HANDLERS, "room.chat", (fields, faulty))
        with caplog.at_level(logging.ERROR):
            answer = await bob.call(route_b, "2", "room.chat", {"text": "boom"})
            assert (answer["type"], answer["status"]) == ("error", 500)
            welcomes = [await d.expect("room.welcome") for d in (alice, bob)]
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
        assert all(w["state"]["at"] == state["at"] for w in welcomes)  # same anchor, playing
        assert all(w["history"] == [] for w in welcomes)
        assert route_a.actor is actor  # restarted in place: same actor, route and lease
        assert not route_b.stopped.is_set()
        assert await broker.acquire_lease(f"room:{code}", 1000) is None
        assert (await bob.ok(route_b, "2", "room.chat", {"text": "again"}))["id"] == 1
        assert (await alice.expect("room.chat"))["text"] == "again"
        assert not alice.closed
        assert not bob.closed


async def test_a_room_that_ended_is_never_restored_from_a_leftover_snapshot(
    tmp_path: Path,
) -> None:
    graces = {"watch_empty_room_seconds": 0.1, "watch_reconnect_grace_seconds": 0.1}
    async with procs(tmp_path, settings=graces) as ([a, b], _broker, _storage):
        alice = Device("alice")
        code, route_a = await create(a, alice)
        await alice.ok(route_a, "1", "room.leave")
        await eventually(lambda: a.cluster.find(code) is None)  # empty past its grace: ended
        await flushed(a.cluster.writer)
        for proc in (a, b):
            with pytest.raises(NotFound):
                await proc.cluster.locate(code)


async def test_another_connection_of_the_member_replaces_the_relayed_one(tmp_path: Path) -> None:
    async with procs(tmp_path) as ([a, b], _broker, _storage):
        alice, laptop, phone = Device("alice"), Device("laptop"), Device("phone")
        code, _route_a = await create(a, alice)
        route_b = await join(b, code, laptop, "2")
        await laptop.expect("room.welcome")
        route = await join(a, code, phone, "2")  # the same member, now on the owner
        await phone.expect("room.welcome")
        assert (await laptop.expect("room.left"))["reason"] == "replaced"
        await eventually(lambda: not route_b.holds(laptop.peer))  # the next heartbeat says so
        assert not laptop.peer.gone  # b's route forgot it; the peer is the connection's
        assert b.cluster.find(code) is None
        await phone.ok(route, "2", "room.chat", {"text": "on my phone now"})


async def test_members_of_a_dead_relay_are_disconnected(tmp_path: Path) -> None:
    async with procs(tmp_path) as ([a, b], _broker, _storage):
        alice, bob = Device("alice"), Device("bob")
        code, _route_a = await create(a, alice)
        await join(b, code, bob, "2")
        await alice.expect("room.members")
        b.kill()  # no goodbye: the owner notices the missing heartbeats
        members = await alice.expect("room.members")
        assert [(m["id"], m["connected"]) for m in members["members"]] == [
            ("1", True),
            ("2", False),
        ]


async def test_a_relay_that_cannot_keep_up_evicts_as_a_slow_consumer() -> None:
    broker = MemoryBroker()
    sender = Sender(broker, max_backlog=2)
    closed: list[int] = []

    def evict(code: int, reason: str) -> None:
        closed.append(code)
        sender.control("n1", ["drop", "ROOMCODE", 7, code, reason])  # as a room port does

    peer = RoomPeer(RelayOutbox(sender, "n1", "ROOMCODE", 7), evict)
    assert peer.push("a")
    other = RoomPeer(RelayOutbox(sender, "n1", "ROOMCODE", 8))
    assert other.push("b")
    assert not peer.push("c")  # a third frame does not fit: evicted, never awaited
    assert peer.gone
    assert not other.gone
    assert closed == [CloseCode.SLOW_CONSUMER]
    assert sender.counters() == {"published": 0, "refused": 1}
    assert sender.post("room:ROOMCODE", {"op": "beat", "conns": []}) is False  # behind: 503

    # The eviction notice got past the frames' bound, and goes out after the frames queued.
    got: list[dict[str, Any]] = []

    def deliver(data: bytes) -> None:
        message = decode(data)
        assert message is not None
        got.append(message)

    async with trio.open_nursery() as nursery, broker.subscribe(node_topic("n1"), deliver):
        await nursery.start(sender.run)
        await trio.testing.wait_all_tasks_blocked()
        assert other.push("d")  # drained: frames fit again
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert got == [
        {
            "items": [
                ["f", "ROOMCODE", [7], "a"],
                ["f", "ROOMCODE", [8], "b"],
                ["drop", "ROOMCODE", 7, CloseCode.SLOW_CONSUMER, "slow consumer: outbox full"],
            ]
        },
        {"items": [["f", "ROOMCODE", [8], "d"]]},
    ]


async def test_the_sender_batches_per_process() -> None:
    broker = MemoryBroker()
    got: list[dict[str, Any]] = []

    def deliver(data: bytes) -> None:
        message = decode(data)
        assert message is not None
        got.append(message)

    sender = Sender(broker)
    async with trio.open_nursery() as nursery, broker.subscribe(node_topic("n1"), deliver):
        frame = render_json({"type": "room.state"})
        for conn in (1, 2, 3):
            sender.frame("n1", "ROOMCODE", conn, frame)
        sender.control("n1", ["joined", "ROOMCODE", 4, 1])
        await nursery.start(sender.run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert got == [{"items": [["f", "ROOMCODE", [1, 2, 3], frame], ["joined", "ROOMCODE", 4, 1]]}]
    assert sender.published == 1


# --- ownership and failover ----------------------------------------------------------------


async def test_when_the_owner_dies_a_relaying_process_restores_the_room(tmp_path: Path) -> None:
    async with procs(tmp_path) as ([a, b], broker, _storage):
        assert isinstance(broker, MemoryBroker)
        code, before, (_alice, bob, _route_a, route_b) = await playing_party(a, b)
        await flushed(a.cluster.writer)
        a.kill()
        assert broker.break_lease(f"room:{code}")  # it expires: nobody renews it
        # b hears nothing more, takes the lease and restores the room; bob gets a new welcome.
        welcome = await bob.expect("room.welcome")
        assert route_b.actor is not None
        assert b.cluster.takeovers == 1
        state = welcome["state"]
        assert (state["phase"], state["at"], state["position"], state["content"]) == (
            "playing",
            before["at"],
            before["position"],
            before["content"],
        )
        assert welcome["host"] == "1"
        assert [(m["id"], m["connected"]) for m in welcome["members"]] == [
            ("1", False),  # alice's socket died with a: she has the reconnect grace
            ("2", True),
        ]
        # Alice reconnects (to b) and keeps her role; commands work again.
        alice = Device("alice")
        route = await join(b, code, alice, "1")
        assert route is route_b
        assert (await alice.expect("room.welcome"))["host"] == "1"
        await alice.ok(route, "1", "room.pause")
        paused = [await d.expect("room.state", phase="paused") for d in (alice, bob)]
        assert paused[0] == paused[1]


async def test_a_joiner_adopts_a_room_whose_owner_died(tmp_path: Path) -> None:
    async with procs(tmp_path) as ([a, b], broker, _storage):
        assert isinstance(broker, MemoryBroker)
        alice = Device("alice")
        code, route_a = await create(a, alice)
        await alice.ok(route_a, "1", "room.chat", {"text": "back in a minute"})
        await flushed(a.cluster.writer)
        a.kill()
        bob = Device("bob")
        with pytest.raises(ServiceUnavailable, match="not answering"):  # the lease is held
            await join(b, code, bob, "2")
        broker.break_lease(f"room:{code}")
        route = await join(b, code, bob, "2")
        assert route.actor is not None
        welcome = await bob.expect("room.welcome")
        assert welcome["history"][-1]["text"] == "back in a minute"
        assert welcome["host"] == "1"


async def test_an_owner_that_loses_its_lease_hands_the_room_over(tmp_path: Path) -> None:
    async with procs(tmp_path) as ([a, b], broker, _storage):
        assert isinstance(broker, MemoryBroker)
        code, before, (alice, bob, route_a, route_b) = await playing_party(a, b)
        await flushed(a.cluster.writer)
        broker.break_lease(f"room:{code}")  # as if a stalled past its lease
        # Whoever takes the lease restores the room; both members get a fresh welcome.
        for device in (alice, bob):
            state = (await device.expect("room.welcome"))["state"]
            assert (state["at"], state["content"]) == (before["at"], before["content"])
        owners = [p for p in (a, b) if p.cluster.registry.find(code) is not None]
        assert len(owners) == 1
        await alice.ok(route_a, "1", "room.pause")
        paused = [await d.expect("room.state", phase="paused") for d in (alice, bob)]
        assert paused[0] == paused[1]
        await bob.ok(route_b, "2", "room.chat", {"text": "still here"})
        for device in (alice, bob):
            assert (await device.expect("room.chat"))["text"] == "still here"


async def test_a_restarted_process_adopts_rooms_once_their_leases_expire(tmp_path: Path) -> None:
    async with procs(tmp_path, count=1) as ([a], broker, storage):
        assert isinstance(broker, MemoryBroker)
        alice = Device("alice")
        code, _route = await create(a, alice)
        await flushed(a.cluster.writer)
        a.kill()
        settings = make_settings(tmp_path, watch_lead_min_seconds=0.1)
        async with trio.open_nursery() as nursery:
            # The replacement starts while the dead one's lease still holds: nothing yet.
            b = await nursery.start(_run_proc, storage, broker, settings, OPTIONS)
            assert b.cluster.registry.find(code) is None
            broker.break_lease(f"room:{code}")  # expired
            await eventually(lambda: b.cluster.registry.find(code) is not None)
            nursery.cancel_scope.cancel()


# --- over the real Redis -------------------------------------------------------------------


async def test_relay_and_failover_over_redis(tmp_path: Path) -> None:
    url, prefix = require_redis(), unique_prefix()
    raw = RawRedis(url, prefix)
    try:
        async with (
            trio_asyncio.open_loop(),
            open_redis_broker(url, prefix=prefix) as broker_a,
            open_redis_broker(url, prefix=prefix) as broker_b,
        ):
            settings = make_settings(tmp_path, watch_lead_min_seconds=0.1)
            async with open_storage(settings) as storage, trio.open_nursery() as nursery:
                a = await nursery.start(_run_proc, storage, broker_a, settings, OPTIONS)
                b = await nursery.start(_run_proc, storage, broker_b, settings, OPTIONS)
                code, before, (_alice, bob, _ra, route_b) = await playing_party(a, b)
                assert await raw.lease_value(f"room:{code}") is not None
                await flushed(a.cluster.writer)
                await raw.delete_lease(f"room:{code}")  # a's renewal finds it gone
                state = (await bob.expect("room.welcome"))["state"]
                assert (state["at"], state["content"]) == (before["at"], before["content"])
                owners = [p for p in (a, b) if p.cluster.registry.find(code) is not None]
                assert len(owners) == 1
                assert route_b.actor is not None or owners == [a]
                await bob.ok(route_b, "2", "room.chat", {"text": "after the move"})
                nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(raw.close)


async def test_an_abandoned_room_stops_without_ending(tmp_path: Path) -> None:
    ended: list[str] = []
    settings = make_settings(tmp_path)
    async with open_rooms(settings, on_end=ended.append) as registry:
        actor = await registry.create("1", "alice", code=registry.new_code())
        device = Device("alice")
        await actor.join("1", "alice", device.peer)
        actor.abandon()
        await actor.stopped.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert registry.find(actor.code) is None
        assert not device.peer.gone  # the connection follows the room elsewhere
        assert ended == []  # its snapshot must stay
        with pytest.raises(RoomGone):
            await actor.snapshot()
        other = await registry.create("2", "bob")
        with pytest.raises(BadRequest):  # a code claimed for a room that runs here
            await registry.create("3", "carol", code=other.code)


class _Outage:
    """Makes a memory broker report Redis as unreachable, as the Redis broker would."""

    def __init__(self, broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = False
        real = broker.health
        monkeypatch.setattr(
            broker,
            "health",
            lambda: {"status": "degraded", "redis": "reconnecting"} if self.down else real(),
        )


async def test_a_redis_outage_does_not_take_the_room_from_its_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with procs(tmp_path, count=1) as ([a], broker, _storage):
        assert isinstance(broker, MemoryBroker)
        outage = _Outage(broker, monkeypatch)
        alice = Device("alice")
        code, route = await create(a, alice)
        actor = a.cluster.registry.find(code)
        outage.down = True
        broker.break_lease(f"room:{code}")  # the renewal failed: Redis is away
        await trio.sleep(0.5)  # longer than the lease ttl in these tests
        # The same actor still runs it: not abandoned and restored from the snapshot.
        assert a.cluster.registry.find(code) is actor
        assert a.cluster.takeovers == 0
        await alice.ok(route, "1", "room.chat", {"text": "during the outage"})
        assert (await alice.expect("room.chat"))["text"] == "during the outage"
        outage.down = False
        await eventually(lambda: broker._current(f"room:{code}") is not None)
        assert a.cluster.registry.find(code) is actor  # the lease is ours again, same actor


async def test_after_a_partition_the_room_goes_to_whoever_took_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with procs(tmp_path, count=1) as ([a], broker, _storage):
        assert isinstance(broker, MemoryBroker)
        outage = _Outage(broker, monkeypatch)
        alice = Device("alice")
        code, _route = await create(a, alice)
        outage.down = True
        broker.break_lease(f"room:{code}")
        other = await broker.acquire_lease(f"room:{code}", 60_000)  # another side of a partition
        assert other is not None
        await trio.sleep(0.2)
        assert a.cluster.registry.find(code) is not None
        outage.down = False  # back: the lease is someone else's, so the room moves away
        await eventually(lambda: a.cluster.registry.find(code) is None)
        await other.release()


async def test_the_cluster_timings_come_from_the_settings(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        watch_lease_seconds=9.0,
        watch_relay_beat_seconds=0.5,
        watch_relay_silence_seconds=2.0,
        watch_relay_timeout_seconds=4.0,
    )
    async with (
        open_storage(settings) as storage,
        open_room_cluster(storage, MemoryBroker(), settings, shared=True) as cluster,
    ):
        assert cluster.lease_ttl_ms == 9000
        assert (cluster._beat, cluster._silence) == (0.5, 2.0)
        assert cluster.join_timeout == 10.0
        assert cluster._relay_timeout == 4.0


async def test_failover_on_the_virtual_clock_takes_one_silence_and_at_most_a_beat_more(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """The failover sequence with the production timings, on trio's virtual clock: the owner
    dies; the relaying process hears nothing for ``SILENCE_SECONDS``, tries the lease at its
    next beat, restores the room and welcomes its member again, all within a beat of the
    silence. (SQLite works in threads: the clock jumps only after 0.5 s of real idleness.)"""
    mock_clock.autojump_threshold = 0.5
    timings = {
        "lease_ttl_ms": LEASE_TTL_MS,
        "beat": BEAT_SECONDS,
        "silence": SILENCE_SECONDS,
        "join_timeout": JOIN_TIMEOUT,
        "relay_timeout": RELAY_TIMEOUT,
    }
    async with procs(tmp_path, **timings) as ([a, b], broker, _storage):
        assert isinstance(broker, MemoryBroker)
        code, before, (_alice, bob, _route_a, route_b) = await playing_party(a, b)
        await flushed(a.cluster.writer)
        a.kill()
        assert broker.break_lease(f"room:{code}")  # free at once: only the silence holds b back
        heard = route_b.heard  # the last word from the owner
        welcome = await bob.expect("room.welcome")
        moved = trio.current_time() - heard
        assert SILENCE_SECONDS <= moved <= SILENCE_SECONDS + 2 * BEAT_SECONDS
        assert route_b.actor is not None
        assert b.cluster.takeovers == 1
        assert welcome["state"]["content"] == before["content"]
