"""Failover as a sequence of steps on trio's virtual clock, with the production timings.

Two room clusters (``Proc``, as in ``test_room_cluster.py``) share one broker of the broker
contract suite (``backend``: the in-process broker, and the real Redis) and one SQLite store.
Each test drives one way a room changes hands and checks every step at the virtual time it
must happen: the owner goes silent, its lease expires, another process takes it, restores the
room and welcomes its members again; an owner loses its lease and its route goes remote; a room
ends and keeps its lease until its snapshot's deletion is written (held back by
:class:`SlowDeletes`, a slow disk in front of the real store). A lease "expires" when the test
says so (``backend.steal``): the killed process's broker would renew it for ever.

SQLite works in threads, so the clock jumps only after 0.5 s of real idleness
(``MockClock.autojump_threshold``): a test waits on events or for virtual time (it polls only
for a lease whose release is a Redis round trip away).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from dramaverse.actors.reply import Reply
from dramaverse.actors.room_cluster import (
    BEAT_SECONDS,
    JOIN_TIMEOUT,
    LEASE_TTL_MS,
    SILENCE_SECONDS,
)
from dramaverse.actors.room_cluster_messages import Forget, Locate
from dramaverse.actors.room_keeper import lease_name
from dramaverse.actors.room_relay import RELAY_TIMEOUT
from dramaverse.actors.room_routes import RoomRoute
from dramaverse.actors.room_sender import node_topic
from dramaverse.actors.room_snapshots import FLUSH_SECONDS
from dramaverse.broker.base import Broker
from dramaverse.broker.lease import Lease
from dramaverse.errors import NotFound, ServiceUnavailable
from dramaverse.storage.base import Storage
from tests.conftest import flushed
from tests.test_broker_contract import Backend, backend  # noqa: F401 (the fixture)
from tests.test_room_cluster import Device, Proc, create, join, playing_party, procs

TIMINGS: dict[str, Any] = {
    "lease_ttl_ms": LEASE_TTL_MS,
    "beat": BEAT_SECONDS,
    "silence": SILENCE_SECONDS,
    "join_timeout": JOIN_TIMEOUT,
    "relay_timeout": RELAY_TIMEOUT,
}
TTL = LEASE_TTL_MS / 1000
EPSILON = 0.01  # virtual seconds: the steps of one instant (task switches, no timers)


class Leases:
    """The backend's broker, recording every lease request: (trio time, name, taken)."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self.tries: list[tuple[float, str, bool]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    async def acquire_lease(self, name: str, ttl_ms: int, *, renew: bool = True) -> Lease | None:
        lease = await self._broker.acquire_lease(name, ttl_ms, renew=renew)
        self.tries.append((trio.current_time(), name, lease is not None))
        return lease

    def since(self, start: float, name: str) -> list[tuple[float, bool]]:
        return [(at, taken) for at, lease, taken in self.tries if at >= start and lease == name]


class SlowDeletes:
    """The real store, whose snapshot deletions wait until ``written`` is set (a slow disk)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.written = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def delete_room_snapshot(self, room_code: str) -> bool:
        await self.written.wait()
        return await self._storage.delete_room_snapshot(room_code)


@asynccontextmanager
async def two_processes(
    tmp_path: Path,
    backend: Backend,  # noqa: F811
    mock_clock: trio.testing.MockClock,
    storage: Callable[[Storage], Storage] = lambda storage: storage,
    **settings: Any,
) -> AsyncIterator[tuple[Proc, Proc, Leases, Storage]]:
    mock_clock.autojump_threshold = 0.5
    leases = Leases(backend.broker)
    async with procs(
        tmp_path, cast(Broker, leases), settings=settings or None, wrap=storage, **TIMINGS
    ) as ([a, b], _broker, store):
        yield a, b, leases, store


async def test_a_silent_owner_s_room_moves_once_its_lease_expires(
    tmp_path: Path,
    backend: Backend,  # noqa: F811
    mock_clock: trio.testing.MockClock,
) -> None:
    async with two_processes(tmp_path, backend, mock_clock) as (a, b, leases, _storage):
        code, before, (_alice, bob, _route_a, route_b) = await playing_party(a, b)
        await flushed(a.cluster.writer)
        a.kill()  # no goodbye: its lease stays until it expires
        died = trio.current_time()
        heard = route_b.heard  # the owner's last word

        # Silent for SILENCE_SECONDS: b tries the lease at each beat, and is refused while it
        # has not expired; the room stays remote and nobody is welcomed again.
        expires = died + TTL
        await trio.sleep_until(expires)
        tries = leases.since(died, lease_name(code))
        assert tries, "b never tried the lease"
        assert all(not taken for _, taken in tries)
        assert heard + SILENCE_SECONDS <= tries[0][0] <= heard + SILENCE_SECONDS + BEAT_SECONDS
        gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(tries)]
        assert all(gap == pytest.approx(BEAT_SECONDS, abs=EPSILON) for gap in gaps)
        assert route_b.actor is None
        assert b.cluster.takeovers == 0

        # Expired: the next beat takes it, restores the room and welcomes bob on b again.
        await backend.steal(lease_name(code))
        welcome = await bob.expect("room.welcome")
        moved = trio.current_time()
        assert expires < moved <= expires + BEAT_SECONDS + EPSILON
        assert [taken for _, taken in leases.since(expires, lease_name(code))] == [True]
        assert route_b.actor is not None
        assert b.cluster.registry.find(code) is route_b.actor
        assert b.cluster.takeovers == 1
        state = welcome["state"]
        assert (state["phase"], state["at"], state["content"]) == (
            "playing",
            before["at"],
            before["content"],
        )
        assert [(m["id"], m["connected"]) for m in welcome["members"]] == [
            ("1", False),  # alice's socket died with a: she has the reconnect grace
            ("2", True),
        ]
        assert (await bob.ok(route_b, "2", "room.chat", {"text": "still here"}))["id"] == 1


async def test_an_owner_that_loses_its_lease_goes_remote_and_the_room_is_adopted(
    tmp_path: Path,
    backend: Backend,  # noqa: F811
    mock_clock: trio.testing.MockClock,
) -> None:
    async with two_processes(tmp_path, backend, mock_clock) as (a, b, leases, _storage):
        code, before, (alice, bob, route_a, route_b) = await playing_party(a, b)
        await flushed(a.cluster.writer)
        actor = route_a.actor
        assert actor is not None
        await backend.steal(lease_name(code))  # as if a stalled past its lease

        # a finds out at its next renewal (at once with the in-process broker), abandons the
        # actor without ending the room, and its route goes remote with alice still in it.
        with trio.fail_after(TTL):
            await actor.stopped.wait()
        lost = trio.current_time()
        await trio.testing.wait_all_tasks_blocked()
        assert actor.abandoned
        assert route_a.actor is None
        assert route_a.holds(alice.peer)
        assert not route_a.stopped.is_set()
        assert trio.current_time() == lost  # one instant: no timer between the steps

        # Nobody runs it: after SILENCE_SECONDS the first beat (in a or b) takes the lease and
        # restores the room; both members get a fresh welcome with the same playback.
        for device in (alice, bob):
            state = (await device.expect("room.welcome"))["state"]
            assert (state["at"], state["content"]) == (before["at"], before["content"])
        welcomed = trio.current_time()
        assert lost + SILENCE_SECONDS <= welcomed <= lost + SILENCE_SECONDS + 2 * BEAT_SECONDS
        taken = [at for at, _, ok in leases.tries if ok and at >= lost]
        assert len(taken) == 1
        owners = [p for p in (a, b) if p.cluster.registry.find(code) is not None]
        assert len(owners) == 1
        assert [route_a.actor is not None, route_b.actor is not None] == [
            owners == [a],
            owners == [b],
        ]
        await alice.ok(route_a, "1", "room.pause")
        paused = [await d.expect("room.state", phase="paused") for d in (alice, bob)]
        assert paused[0] == paused[1]


async def test_a_room_that_ends_keeps_its_lease_until_its_snapshot_is_deleted(
    tmp_path: Path,
    backend: Backend,  # noqa: F811
    mock_clock: trio.testing.MockClock,
) -> None:
    grace = 2.0
    async with two_processes(
        tmp_path, backend, mock_clock, storage=SlowDeletes, watch_empty_room_seconds=grace
    ) as (a, b, leases, storage):
        assert isinstance(storage, SlowDeletes)
        alice = Device("alice")
        code, route_a = await create(a, alice)
        await flushed(a.cluster.writer)
        assert await storage.load_room_snapshot(code) is not None
        actor = route_a.actor
        assert actor is not None

        await alice.ok(route_a, "1", "room.leave")
        empty = trio.current_time()
        # Empty for its grace: the actor ends the room and its route stops, in one instant.
        with trio.fail_after(2 * grace):
            await route_a.stopped.wait()
        ended = trio.current_time()
        assert ended - empty == pytest.approx(grace, abs=EPSILON)
        assert not actor.abandoned
        assert not actor.failed
        assert not route_a.holds(alice.peer)
        assert a.cluster.find(code) is None

        # Until its snapshot's deletion is written (bounded by FLUSH_SECONDS), the lease stays
        # a's: no process can restore the room from the snapshot still stored.
        await trio.sleep(FLUSH_SECONDS - 2 * BEAT_SECONDS)
        assert await storage.load_room_snapshot(code) is not None
        assert await leases.acquire_lease(lease_name(code), LEASE_TTL_MS) is None
        with pytest.raises(NotFound):
            await a.cluster.locate(code)  # ending here: not adopted from its own snapshot

        # Written: then the lease is released, and nobody finds the room again.
        storage.written.set()
        with trio.fail_after(TTL):
            # The release is a Redis round trip away.
            while (lease := await leases.acquire_lease(lease_name(code), LEASE_TTL_MS)) is None:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert await storage.load_room_snapshot(code) is None
        await lease.release()
        for proc in (b, a):
            with pytest.raises(NotFound):
                await proc.cluster.locate(code)  # takes the lease, finds no snapshot
            assert proc.cluster.find(code) is None
        assert b.cluster.takeovers == 0


async def test_a_forget_lost_to_a_full_mailbox_is_swept_at_the_next_beat(
    tmp_path: Path,
    backend: Backend,  # noqa: F811
    mock_clock: trio.testing.MockClock,
) -> None:
    async with two_processes(tmp_path, backend, mock_clock) as (a, b, _leases, _storage):
        alice, bob = Device("alice"), Device("bob")
        code, _route_a = await create(a, alice)
        route_b = await join(b, code, bob, "2")
        await bob.expect("room.welcome")
        carol = Device("carol")
        route = await join(b, code, carol, "3")
        assert route is route_b
        await carol.expect("room.welcome")

        # Fill b's mailbox without letting its task run, then carol's connection ends: the
        # disconnect never blocks, and its Forget does not fit.
        filler = Forget(route_b, Device("nobody").peer)
        while b.cluster.tell_nowait(filler):
            pass
        route_b.disconnect("3", carol.peer)
        assert carol.peer.closed
        assert carol.peer in route_b.by_peer  # not forgotten yet
        # A node-topic message meanwhile is dropped and counted (the broker's callback never
        # waits); both brokers deliver to local subscribers before publish returns.
        assert b.cluster.counters()["dropped"] == 0
        await backend.broker.publish(node_topic(b.cluster.node), b'{"items": []}')
        assert b.cluster.counters()["dropped"] == 1
        await trio.sleep(BEAT_SECONDS + EPSILON)  # the next beat sweeps it
        assert carol.peer not in route_b.by_peer
        assert route_b.holds(bob.peer)  # the others stay
        assert not route_b.holds(carol.peer)


async def test_only_the_cluster_s_task_changes_a_route(tmp_path: Path) -> None:
    async with procs(tmp_path, count=1) as ([a], _broker, _storage):
        alice = Device("alice")
        _code, route = await create(a, alice)
        for change in (route.end, route.prune, route.go_remote, lambda: route.remove(alice.peer)):
            with pytest.raises(RuntimeError, match="room cluster's task"):
                change()
        assert route.holds(alice.peer)
        assert route.actor is not None


async def test_whoever_waits_on_a_stopping_cluster_is_answered_503(tmp_path: Path) -> None:
    async with procs(tmp_path, count=1) as ([a], _broker, _storage):
        queued = Reply[RoomRoute]()
        assert a.cluster.tell_nowait(Locate("ZZZZZZZZ", queued))  # its task has not run since
        a.kill()
        with trio.fail_after(5):
            with pytest.raises(ServiceUnavailable, match="stopping"):
                await queued.wait()
            with pytest.raises(ServiceUnavailable, match="stopping"):
                await a.cluster.locate("YYYYYYYY")  # the mailbox is closed
