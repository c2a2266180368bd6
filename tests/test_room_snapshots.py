"""The room snapshot writer: coalescing per room, one write per room in flight, bounded, retried,
flushed at shutdown; and restoring rooms from real SQLite storage."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, cast

import trio
import trio.testing

from dramaverse.actors.room import ServerClock
from dramaverse.actors.room_registry import open_rooms
from dramaverse.actors.room_snapshots import (
    REFRESH_SECONDS,
    RETRY_SECONDS,
    SnapshotWriter,
    restore_rooms,
)
from dramaverse.config import Settings
from dramaverse.domain.rooms import Room, RoomConfig
from dramaverse.errors import StorageUnavailable
from dramaverse.storage import open_storage
from dramaverse.storage.base import Storage
from tests.conftest import flushed, make_settings

CODES = ["AAAAAAAA", "BBBBBBBB", "CCCCCCCC", "DDDDDDDD"]


class FakeStorage:
    """Records snapshot writes; ``gate`` holds every write until set; ``failures`` fail first."""

    def __init__(self) -> None:
        self.saved: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str, int | None]] = []  # (op, code, revision)
        self.gate = trio.Event()
        self.gate.set()
        self.failures = 0
        self.active: Counter[str] = Counter()
        self.most_active = 0  # the most writes of one room at once

    async def _enter(self, code: str) -> None:
        self.active[code] += 1
        self.most_active = max(self.most_active, self.active[code])
        try:
            await self.gate.wait()
            if self.failures:
                self.failures -= 1
                raise StorageUnavailable("database down")
        finally:
            self.active[code] -= 1

    async def save_room_snapshot(self, room_code: str, snapshot_json: str, now_ms: int) -> None:
        await self._enter(room_code)
        snapshot = json.loads(snapshot_json)
        self.saved[room_code] = snapshot
        self.log.append(("save", room_code, snapshot["revision"]))

    async def delete_room_snapshot(self, room_code: str) -> bool:
        await self._enter(room_code)
        self.log.append(("delete", room_code, None))
        return self.saved.pop(room_code, None) is not None


def room(code: str, revision: int) -> Room:
    value = Room.create(code, RoomConfig(), creator="1", name="Alice", now=0.0)
    value.revision = revision
    return value


def writer_for(storage: FakeStorage, **options: Any) -> SnapshotWriter:
    """A writer without the coalescing delay unless the test gives one."""
    options.setdefault("delay", 0.0)
    return SnapshotWriter(cast(Storage, storage), ServerClock(epoch=0.0), **options)


async def test_changes_within_the_delay_make_one_write_of_the_latest_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = FakeStorage()
    writer = writer_for(storage, delay=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.offer(room(CODES[0], 0))  # a new room: written at once
        await trio.sleep(0.01)
        assert storage.log == [("save", CODES[0], 0)]
        t0 = trio.current_time()
        for revision in (1, 2, 3):  # three changes within 0.6 s
            writer.offer(room(CODES[0], revision))
            await trio.sleep(0.3)
        assert len(storage.log) == 1  # not due yet: 1 s after the first change
        await trio.sleep_until(t0 + 1.0 + 0.01)
        assert storage.log[-1] == ("save", CODES[0], 3)
        assert len(storage.log) == 2
        writer.offer(room(CODES[0], 4))  # a later change: due 1 s after it
        await trio.sleep(0.5)
        assert len(storage.log) == 2
        await trio.sleep(0.6)
        assert storage.log[-1] == ("save", CODES[0], 4)
        writer.offer(room(CODES[1], 1))  # new: at once...
        writer.offer(room(CODES[1], 2))  # ...with whatever changed before the write
        writer.ended(CODES[0])  # a deletion is not delayed
        await trio.sleep(0.01)
        assert set(storage.log[-2:]) == {("delete", CODES[0], None), ("save", CODES[1], 2)}
        writer.offer(room(CODES[1], 3))  # stored now: due in 1 s
        await flushed(writer)  # does not wait out the delay
        assert trio.current_time() - t0 < 2.2
        assert storage.log[-1] == ("save", CODES[1], 3)
        nursery.cancel_scope.cancel()


async def test_latest_snapshot_wins_with_one_write_per_room_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = FakeStorage()
    writer = writer_for(storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        storage.gate = trio.Event()  # hold the writes
        writer.offer(room(CODES[0], 1))
        await trio.testing.wait_all_tasks_blocked()  # revision 1 is being written
        for revision in range(2, 11):
            writer.offer(room(CODES[0], revision))
        writer.offer(room(CODES[1], 1))
        await trio.testing.wait_all_tasks_blocked()
        storage.gate.set()
        await flushed(writer)
        nursery.cancel_scope.cancel()
    assert sorted(storage.log) == [
        ("save", CODES[0], 1),
        ("save", CODES[0], 10),
        ("save", CODES[1], 1),
    ]
    assert storage.log.index(("save", CODES[0], 1)) < storage.log.index(("save", CODES[0], 10))
    assert storage.most_active == 1
    assert storage.saved[CODES[0]]["revision"] == 10


async def test_an_ended_room_is_deleted_after_its_write_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = FakeStorage()
    writer = writer_for(storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        storage.gate = trio.Event()
        writer.offer(room(CODES[0], 1))
        await trio.testing.wait_all_tasks_blocked()
        writer.offer(room(CODES[0], 2))
        writer.ended(CODES[0])  # supersedes the pending revision 2
        assert writer.taken(CODES[0])
        storage.gate.set()
        await flushed(writer)
        nursery.cancel_scope.cancel()
    assert storage.log == [("save", CODES[0], 1), ("delete", CODES[0], None)]
    assert storage.saved == {}
    assert not writer.taken(CODES[0])


async def test_failed_writes_are_retried_with_the_newest_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = FakeStorage()
    storage.failures = 1
    writer = writer_for(storage, writers=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        started = trio.current_time()
        writer.offer(room(CODES[0], 1))
        await trio.testing.wait_all_tasks_blocked()
        writer.offer(room(CODES[0], 2))  # arrives while the failed writer waits to retry
        await flushed(writer)
        assert trio.current_time() - started >= RETRY_SECONDS
        nursery.cancel_scope.cancel()
    assert storage.log == [("save", CODES[0], 2)]
    assert writer.failures == 1


async def test_pending_snapshots_are_written_when_the_writer_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = FakeStorage()
    writer = writer_for(storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        storage.gate = trio.Event()
        writer.offer(room(CODES[0], 1))
        await trio.testing.wait_all_tasks_blocked()  # in flight, held
        writer.offer(room(CODES[0], 2))
        writer.offer(room(CODES[1], 5))
        storage.gate.set()
        nursery.cancel_scope.cancel()  # the held write is cancelled too: written again
    assert {code: s["revision"] for code, s in storage.saved.items()} == {CODES[0]: 2, CODES[1]: 5}


async def test_nothing_is_recorded_once_recording_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = FakeStorage()
    stop = trio.Event()
    writer = writer_for(storage, stop_recording=stop)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.offer(room(CODES[0], 1))
        await flushed(writer)
        stop.set()
        writer.offer(room(CODES[0], 2))
        writer.ended(CODES[0])
        await flushed(writer)
        nursery.cancel_scope.cancel()
    assert storage.log == [("save", CODES[0], 1)]


async def test_rooms_missed_while_the_queue_was_full_are_refreshed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = FakeStorage()
    writer = writer_for(storage, writers=1, max_pending=1)
    async with (
        trio.open_nursery() as nursery,
        open_rooms(Settings(), clock=ServerClock(epoch=0.0), on_change=writer.offer) as rooms,
    ):
        await nursery.start(writer.run)
        storage.gate = trio.Event()
        actors = [await rooms.create(str(n), f"Member {n}") for n in range(1, 4)]
        for actor in actors:  # a change each: the first is written, one waits, one is missed
            await actor.call(lambda r, now: setattr(r, "revision", r.revision + 1))
        await trio.testing.wait_all_tasks_blocked()
        assert len(storage.log) == 0
        storage.gate.set()
        await flushed(writer)
        assert len(storage.saved) == 2
        await nursery.start(writer.refresh, rooms, 86400.0)
        await trio.sleep(REFRESH_SECONDS + 1)
        await flushed(writer)
        assert sorted(storage.saved) == sorted(a.code for a in actors)
        nursery.cancel_scope.cancel()


async def test_restore_rooms_from_sqlite_skips_broken_snapshots(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with open_storage(settings) as storage, open_rooms(settings) as rooms:
        now_ms = int(rooms.clock.now() * 1000)
        good = Room.create(CODES[0], RoomConfig(), creator="1", name="A", now=rooms.clock.now())
        good.revision = 3
        await storage.save_room_snapshot(CODES[0], json.dumps(good.snapshot()), now_ms)
        await storage.save_room_snapshot(CODES[1], '{"v": 99}', now_ms)
        await storage.save_room_snapshot(CODES[2], "not json", now_ms)
        old = json.dumps(room(CODES[3], 1).snapshot())
        await storage.save_room_snapshot(CODES[3], old, now_ms - 2_000_000)
        writer = SnapshotWriter(storage, rooms.clock)
        assert await restore_rooms(rooms, storage, writer, 1000.0) == 1
        assert list(rooms.rooms) == [CODES[0]]
        restored = await rooms.get(CODES[0]).snapshot()
        assert restored["host"] == "1"
        assert restored["revision"] == 3
        assert all(writer.taken(code) for code in CODES[:3])  # broken ones stay taken
        assert not writer.taken(CODES[3])  # past the retention: left for the pruner
        rooms.close()
