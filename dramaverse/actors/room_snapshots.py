"""Room snapshots: written behind the rooms' backs, and restored when the server starts.

A room actor calls ``on_change(room)`` after every change its snapshot records, in its own task,
and must never wait for storage. :class:`SnapshotWriter` takes that call (:meth:`offer`), keeps
only the **latest** snapshot of each room in a pending map, due ``delay`` seconds after the
first change since the room's last write (``ROOM_SNAPSHOT_DELAY_SECONDS``, 1 s): a room that
changes ten times within that second (members joining, loading, getting ready) gets one write,
not ten. A new room's first snapshot is written at once. A few writer tasks save the due
snapshots. At most one write per room is in flight, so an older snapshot can never land after a
newer one. A crash loses at most the changes of the
last ``delay`` (plus a write's duration); a shutdown writes everything pending. When a room
ends by itself (empty past its grace), the registry calls :meth:`ended` and its stored snapshot
is deleted, at once. A room that gave up after too many failures does not end: its snapshot
stays, and the room comes back from it.

Bounds: the pending map holds at most one entry per room and at most ``max_pending`` rooms;
a room that changes while the map is full (storage far behind) is remembered by code only and
re-snapshotted by the refresher once there is room. The refresher also saves every live room
again every half retention (``ROOM_SNAPSHOT_RETENTION_SECONDS``), so a long, quiet room is not
pruned from storage while it lives.

Restarts: :func:`open_watch_parties` restores every room saved within the retention before the
server accepts connections. A shutdown's own disconnects are not recorded (``offer`` ignores
changes once ``stop_recording`` is set): the stored snapshot keeps the members that were
connected, and :meth:`~dramaverse.domain.rooms.Room.restore` counts them as disconnected from
the restart, so the reconnect grace covers the time to come back, not the downtime. Codes that
have a stored snapshot are never handed to a new room (:meth:`taken`).

Resource handling: :meth:`run` owns the writer tasks; when it is cancelled it writes what is
still pending, shielded and bounded by ``FLUSH_SECONDS``, so a clean shutdown loses nothing
(storage must still be open: it is opened before, and closed after, the watch parties).

Error handling: a failed write is logged and retried (the newest snapshot wins) after
``RETRY_SECONDS``; a snapshot that cannot be serialised is logged and dropped; a stored snapshot
that cannot be restored is logged and left for the pruner.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from dramaverse.actors.room import RoomActor, RoomGone, RoomRegistry, ServerClock, open_rooms
from dramaverse.config import Settings
from dramaverse.domain.rooms import Room
from dramaverse.errors import DramaverseError
from dramaverse.storage.base import Storage

log = logging.getLogger(__name__)

WRITERS = 4  # concurrent writes (different rooms): SQLite batches them in one commit
DELAY_SECONDS = 1.0  # the default ROOM_SNAPSHOT_DELAY_SECONDS
MAX_PENDING = 10_000  # rooms with a snapshot waiting to be written
REFRESH_SECONDS = 10.0  # how often the refresher looks for rooms to snapshot again
RETRY_SECONDS = 1.0  # a writer's pause after a failed write
FLUSH_SECONDS = 5.0  # the bound on writing what is pending at shutdown

Snapshot = dict[str, Any] | None  # None: delete the stored snapshot


class SnapshotWriter:
    """Coalesces room snapshots per room and writes them to storage; see the module docstring.

    ``stop_recording``: once set (the server is shutting down), offers and ends are ignored.
    """

    def __init__(
        self,
        storage: Storage,
        clock: ServerClock,
        *,
        stop_recording: trio.Event | None = None,
        max_pending: int = MAX_PENDING,
        writers: int = WRITERS,
        delay: float = DELAY_SECONDS,
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._stop_recording = stop_recording
        self._max_pending = max_pending
        self._writers = writers
        self._delay = delay
        self._pending: dict[str, Snapshot] = {}
        self._due: dict[str, float] = {}  # trio time from which a pending snapshot is written
        self._in_flight: set[str] = set()
        self._missed: set[str] = set()  # changed while the pending map was full
        self._work = trio.lowlevel.ParkingLot()  # writers wait here for pending snapshots
        self._progress = trio.lowlevel.ParkingLot()  # flushed() waits here
        self.stored: set[str] = set()  # codes with a snapshot in storage (or about to be)
        self.writes = 0
        self.deletes = 0
        self.failures = 0

    # --- called from room actors (never blocking) ------------------------------------------

    def _recording(self) -> bool:
        return self._stop_recording is None or not self._stop_recording.is_set()

    def offer(self, room: Room) -> None:
        """The room changed: make its current snapshot the one to write next."""
        if not self._recording():
            return
        code = room.code
        if code not in self._pending and len(self._pending) >= self._max_pending:
            if not self._missed:
                log.warning("room snapshots are %d rooms behind; catching up", self._max_pending)
            self._missed.add(code)
            return
        if code not in self._pending:  # due after the first change, not the last one
            # A new room's first snapshot goes at once: other processes learn of it (its code
            # is taken, its host is known) without waiting for the delay.
            delay = self._delay if code in self.stored else 0.0
            self._due[code] = trio.current_time() + delay
            self._work.unpark_all()
        self._pending[code] = room.snapshot()
        self.stored.add(code)

    def ended(self, code: str) -> None:
        """The room ended by itself: delete its snapshot (after any write in flight)."""
        if not self._recording():
            return
        self._missed.discard(code)
        self._pending[code] = None
        self._due[code] = trio.current_time()  # at once
        self._work.unpark_all()

    def taken(self, code: str) -> bool:
        """Whether a new room must not get ``code`` (a stored snapshot has it)."""
        return code in self.stored

    def forget(self, code: str) -> None:
        """Drop what is pending for ``code`` (a write in flight still lands): this process no
        longer owns the room, and the next owner's snapshots must not be overwritten."""
        self._pending.pop(code, None)
        self._due.pop(code, None)
        self._missed.discard(code)
        self._progress.unpark_all()

    async def settled(self, code: str) -> None:
        """Wait until nothing is pending or being written for ``code``."""
        while code in self._pending or code in self._in_flight:
            await self._progress.park()

    # --- the writer tasks ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write pending snapshots until cancelled; then write what is left (bounded)."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self._writers):
                    nursery.start_soon(self._writer)
                task_status.started()
        finally:
            with trio.move_on_after(FLUSH_SECONDS) as scope:
                scope.shield = True
                while self._pending:
                    code = next(iter(self._pending))
                    self._due.pop(code, None)
                    if not await self._write(code, self._pending.pop(code)):
                        break  # storage is down: what is left is lost
            if self._pending:
                log.warning("%d room snapshots not written at shutdown", len(self._pending))

    async def flushed(self) -> None:
        """Write everything pending now, without waiting for its delay, and wait until it is
        written (tests, diagnostics)."""
        while self._pending or self._in_flight:
            self._expedite()
            await self._progress.park()

    def expedite(self, code: str) -> None:
        """Write what is pending for ``code`` now, without waiting for its delay."""
        if code in self._due:
            self._due[code] = min(self._due[code], trio.current_time())
            self._work.unpark_all()

    def _expedite(self) -> None:
        now = trio.current_time()
        for code, due in self._due.items():
            self._due[code] = min(due, now)
        self._work.unpark_all()

    async def _writer(self) -> None:
        while True:
            code, snapshot = await self._take()
            done = False
            try:
                done = await self._write(code, snapshot)
            finally:
                self._in_flight.discard(code)
                if not done and code not in self._pending:
                    # Failed or cancelled, and nothing newer came: write it again later.
                    self._pending[code] = snapshot
                    self._due[code] = trio.current_time()
                self._work.unpark_all()  # a newer snapshot of this room may be waiting
                self._progress.unpark_all()
            if not done:
                await trio.sleep(RETRY_SECONDS)

    async def _take(self) -> tuple[str, Snapshot]:
        """The next due snapshot (oldest first); waits for one."""
        while True:
            now = trio.current_time()
            wake = math.inf
            for code, due in self._due.items():
                if code in self._in_flight:
                    continue
                if due <= now:
                    self._in_flight.add(code)
                    del self._due[code]
                    return code, self._pending.pop(code)
                wake = min(wake, due)
            with trio.move_on_at(wake):
                await self._work.park()

    async def _write(self, code: str, snapshot: Snapshot) -> bool:
        """Save or delete one snapshot; False when storage failed (retry later)."""
        if snapshot is None:
            try:
                await self._storage.delete_room_snapshot(code)
            except Exception:
                self.failures += 1
                log.warning("room %s: snapshot not deleted", code, exc_info=True)
                return False
            self.deletes += 1
            if code not in self._pending:
                self.stored.discard(code)
            return True
        try:
            text = json.dumps(snapshot, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):
            log.exception("room %s: snapshot cannot be serialised; dropped", code)
            return True
        try:
            await self._storage.save_room_snapshot(code, text, int(self._clock.now() * 1000))
        except Exception:
            self.failures += 1
            log.warning("room %s: snapshot not saved", code, exc_info=True)
            return False
        self.writes += 1
        return True

    # --- refreshing ----------------------------------------------------------------------

    async def refresh(
        self,
        registry: RoomRegistry,
        retention_seconds: float,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Snapshot again rooms missed while the pending map was full, and every live room
        every half retention. Runs until cancelled."""
        task_status.started()
        period = max(retention_seconds / 2.0, REFRESH_SECONDS)
        next_full = trio.current_time() + period
        while True:
            await trio.sleep(REFRESH_SECONDS)
            if trio.current_time() >= next_full:
                next_full += period
                codes = list(registry.rooms)
                self._missed.clear()
            else:
                codes = [code for code in self._missed if code in registry.rooms]
                self._missed.clear()
            for code in codes:
                actor = registry.rooms.get(code)
                if actor is not None:
                    await self._offer_from(actor)

    async def _offer_from(self, actor: RoomActor) -> None:
        # Inside the actor's task, so it cannot overtake a newer on_change of the same room.
        with contextlib.suppress(RoomGone):
            await actor.call(lambda room, now: self.offer(room))


async def restore_rooms(
    registry: RoomRegistry, storage: Storage, writer: SnapshotWriter, retention_seconds: float
) -> int:
    """Start the actor of every room saved within the retention; return how many started.

    Error handling: a snapshot that cannot be restored is logged and skipped (its code stays
    taken); a storage failure propagates (the server should not start without its rooms).
    """
    cutoff = int((registry.clock.now() - retention_seconds) * 1000)
    restored = 0
    for code, text in await storage.load_room_snapshots(cutoff):
        writer.stored.add(code)
        try:
            # The actor records its restore (members disconnected from now) before starting.
            await registry.restore(json.loads(text))
        except (DramaverseError, ValueError) as exc:  # InvalidSnapshot, bad JSON, a duplicate
            log.warning("room %s not restored: %s", code, exc)
            continue
        restored += 1
    if restored:
        log.info("restored %d watch-party rooms", restored)
    return restored


@asynccontextmanager
async def open_watch_parties(
    storage: Storage,
    settings: Settings,
    *,
    stop_recording: trio.Event | None = None,
    clock: ServerClock | None = None,
    restore: bool | None = None,
) -> AsyncIterator[tuple[RoomRegistry, SnapshotWriter]]:
    """The room registry with its snapshot writer and refresher, rooms restored from storage.

    ``restore`` defaults to restoring only in a single process (``worker_id`` unset): restoring
    every room in every worker would run copies. The room cluster (``room_cluster.py``) passes
    False and restores each room under its lease instead.

    Resource handling: owns a nursery with the writer and the refresher, around the registry's
    own; leaving stops the rooms first, then the writer (which writes what is pending).
    """
    clock = clock or ServerClock()
    writer = SnapshotWriter(
        storage,
        clock,
        stop_recording=stop_recording,
        delay=settings.room_snapshot_delay_seconds,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with open_rooms(
            settings, clock=clock, on_change=writer.offer, on_end=writer.ended, taken=writer.taken
        ) as registry:
            retention = float(settings.room_snapshot_retention_seconds)
            if restore is None:
                restore = settings.worker_id is None
            if restore:
                await restore_rooms(registry, storage, writer, retention)
            await nursery.start(writer.refresh, registry, retention)
            yield registry, writer
        nursery.cancel_scope.cancel()
