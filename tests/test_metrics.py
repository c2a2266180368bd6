"""metrics.collect: every component's counters under stable, documented names, and they move
when their event happens (the snapshot writer's here; the relay's, the cluster's and Redis's
are asserted by their own suites through the same attributes ``counters()`` reports)."""

from __future__ import annotations

from types import SimpleNamespace

import trio

from dramaverse import metrics
from dramaverse.broker.memory import MemoryBroker
from tests.conftest import flushed
from tests.test_room_snapshots import CODES, FakeStorage, room, writer_for


async def test_snapshot_writes_deletes_and_failures_are_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = FakeStorage()
    storage.failures = 1  # the first write fails, and is retried
    writer = writer_for(storage)
    state = SimpleNamespace(broker=MemoryBroker(), room_snapshots=writer, room_cluster=None)
    assert metrics.collect(state) == {
        "room_snapshots.writes": 0,
        "room_snapshots.deletes": 0,
        "room_snapshots.failures": 0,
    }
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.offer(room(CODES[0], 0))
        with trio.fail_after(60):
            await flushed(writer)
        writer.ended(CODES[0])
        with trio.fail_after(60):
            await flushed(writer)
        nursery.cancel_scope.cancel()
    assert metrics.collect(state) == {
        "room_snapshots.writes": 1,
        "room_snapshots.deletes": 1,
        "room_snapshots.failures": 1,
    }
