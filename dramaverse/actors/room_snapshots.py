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

The writer is an actor: ``offer`` and ``ended`` (from the rooms' tasks, never blocking) and
``forget``, ``expedite``, ``settled`` (the cluster's keepers) are messages to its one mailbox,
a memory channel of ``MAILBOX_SIZE``; only :meth:`run`'s task touches the pending map and what
is in flight. It takes in everything queued before it hands a snapshot to a writer task, so
changes made together coalesce. A change that finds the mailbox full is lost but noted, and the
refresher then snapshots every live room again.

Resource handling: :meth:`run` owns the writer tasks; when it is cancelled it writes what is
still queued, pending or in flight, shielded and bounded by ``FLUSH_SECONDS``, so a clean
shutdown loses nothing (storage must still be open: it is opened before, and closed after, the
watch parties).

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
from dataclasses import dataclass, field
from typing import Any

import trio

from dramaverse.actors.reply import Reply
from dramaverse.actors.room import RoomActor, ServerClock
from dramaverse.actors.room_messages import RoomGone
from dramaverse.actors.room_registry import RoomRegistry, open_rooms
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
# Changes waiting for the writer's task, which only moves them into the pending map (no I/O),
# so it keeps up unless starved; as many as rooms may be pending, one change each.
MAILBOX_SIZE = MAX_PENDING

Snapshot = dict[str, Any] | None  # None: delete the stored snapshot


@dataclass(frozen=True, slots=True)
class Offer:
    """A room's latest snapshot, due at ``due`` (trio time) unless one is pending already."""

    code: str
    snapshot: dict[str, Any]
    due: float


@dataclass(frozen=True, slots=True)
class Ended:
    code: str


@dataclass(frozen=True, slots=True)
class Forget:
    code: str


@dataclass(frozen=True, slots=True)
class Expedite:
    code: str | None  # None: every room


@dataclass(frozen=True, slots=True)
class Written:
    """A writer task finished one write (``done``: it landed; otherwise write it again)."""

    code: str
    snapshot: Snapshot
    done: bool


@dataclass(eq=False)
class Settle:
    """Answer once nothing is pending or being written for ``code`` (None: for any room)."""

    code: str | None
    reply: Reply[None] = field(default_factory=Reply)


@dataclass(eq=False)
class TakeMissed:
    """The rooms changed while the pending map was full; True: changes were lost uncounted."""

    reply: Reply[tuple[set[str], bool]] = field(default_factory=Reply)


Change = Offer | Ended | Forget | Expedite | Written | Settle | TakeMissed


class SnapshotWriter:
    """Coalesces room snapshots per room and writes them to storage; see the module docstring.

    An actor: :meth:`run` is its task and owns the pending map, what is in flight and the
    writer tasks; everything else sends it a change through its mailbox (``MAILBOX_SIZE``).
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
        mailbox_size: int = MAILBOX_SIZE,
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._stop_recording = stop_recording
        self._max_pending = max_pending
        self._writers = writers
        self._delay = delay
        self._mailbox, self._changes = trio.open_memory_channel[Change](mailbox_size)
        # The actor's own (run's task):
        self._pending: dict[str, Snapshot] = {}
        self._due: dict[str, float] = {}  # trio time from which a pending snapshot is written
        self._in_flight: dict[str, Snapshot] = {}  # handed to a writer, not reported back yet
        self._missed: set[str] = set()  # changed while the pending map was full
        self._waiting: list[Settle] = []
        # Set by a room's task whose change found the mailbox full (like a session's lossy
        # flag): the refresher then snapshots every room again.
        self._lossy = False
        self.stored: set[str] = set()  # codes with a snapshot in storage (or about to be)
        self.writes = 0
        self.deletes = 0
        self.failures = 0

    def counters(self) -> dict[str, int]:
        """Snapshots written, deleted, and writes or deletes that failed (``metrics.py``)."""
        return {"writes": self.writes, "deletes": self.deletes, "failures": self.failures}

    # --- called from room actors and the cluster (never blocking) -------------------------

    def _recording(self) -> bool:
        return self._stop_recording is None or not self._stop_recording.is_set()

    def offer(self, room: Room) -> None:
        """The room changed: make its current snapshot the one to write next."""
        if not self._recording():
            return
        code = room.code
        # A new room's first snapshot goes at once: other processes learn of it (its code is
        # taken, its host is known) without waiting for the delay.
        delay = self._delay if code in self.stored else 0.0
        self.stored.add(code)
        self._tell(Offer(code, room.snapshot(), trio.current_time() + delay))

    def ended(self, code: str) -> None:
        """The room ended by itself: delete its snapshot (after any write in flight)."""
        if self._recording():
            self._tell(Ended(code))

    def _tell(self, change: Change) -> None:
        try:
            self._mailbox.send_nowait(change)
        except trio.WouldBlock:
            if not self._lossy:
                log.warning("room snapshot mailbox full; every room is snapshotted again soon")
            self._lossy = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the writer stopped (shutdown): nothing more is recorded

    def taken(self, code: str) -> bool:
        """Whether a new room must not get ``code`` (a stored snapshot has it)."""
        return code in self.stored

    async def forget(self, code: str) -> None:
        """Drop what is pending for ``code`` (a write in flight still lands): this process no
        longer owns the room, and the next owner's snapshots must not be overwritten."""
        await self._ask(Forget(code))

    async def expedite(self, code: str | None = None) -> None:
        """Write what is pending for ``code`` (None: for every room) now, without waiting for
        its delay."""
        await self._ask(Expedite(code))

    async def settled(self, code: str | None = None) -> None:
        """Wait until nothing is pending or being written for ``code`` (None: for any room)."""
        request = Settle(code)
        if await self._ask(request):
            await request.reply.wait()

    async def _ask(self, change: Change) -> bool:
        """Send ``change``; False when the writer has stopped (nothing is pending then)."""
        try:
            await self._mailbox.send(change)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    # --- the actor ----------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[SnapshotWriter] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Write pending snapshots until cancelled; then write what is left (bounded)."""
        work_send, work_receive = trio.open_memory_channel[tuple[str, Snapshot]](self._writers)
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self._writers):
                    nursery.start_soon(self._writer, work_receive)
                task_status.started(self)
                await self._serve(work_send)
        finally:
            with trio.move_on_after(FLUSH_SECONDS) as scope:
                scope.shield = True
                await self._flush()
            self._changes.close()
            for waiting in self._waiting:
                waiting.reply.resolve(None)

    async def _serve(self, work: trio.MemorySendChannel[tuple[str, Snapshot]]) -> None:
        while True:
            now = trio.current_time()
            wake = math.inf
            # Every writer busy: a Written wakes this loop, no need to look at the due times.
            due_times = list(self._due.items()) if len(self._in_flight) < self._writers else []
            for code, due in due_times:  # oldest change first
                if code in self._in_flight:
                    continue
                if due > now:
                    wake = min(wake, due)
                elif len(self._in_flight) < self._writers:
                    # At most one write per room in flight: an older snapshot never lands
                    # after a newer one. The work channel holds ``writers`` items: no wait.
                    del self._due[code]
                    self._in_flight[code] = snapshot = self._pending.pop(code)
                    work.send_nowait((code, snapshot))
            change: Change | None = None
            with trio.move_on_at(wake):
                change = await self._changes.receive()
            if change is None:
                continue
            # Take in everything queued before writing anything: changes made together
            # (a room's first snapshot and what followed it at once) coalesce into one.
            # Bounded by the mailbox: nothing is queued while this loop runs (no checkpoint).
            while True:
                self._apply(change)
                try:
                    change = self._changes.receive_nowait()
                except trio.WouldBlock:
                    break
            self._answer_settled()

    def _apply(self, change: Change) -> None:
        now = trio.current_time()
        match change:
            case Offer(code, snapshot, due):
                if code not in self._pending:
                    if len(self._pending) >= self._max_pending:
                        if not self._missed:
                            log.warning(
                                "room snapshots are %d rooms behind; catching up",
                                self._max_pending,
                            )
                        self._missed.add(code)
                        return
                    self._due[code] = due  # due after the first change, not the last one
                self._pending[code] = snapshot
            case Ended(code):
                self._missed.discard(code)
                self._pending[code] = None
                self._due[code] = now  # at once
            case Forget(code):
                self._pending.pop(code, None)
                self._due.pop(code, None)
                self._missed.discard(code)
            case Expedite(code):
                for pending in [code] if code is not None else list(self._due):
                    if pending in self._due:
                        self._due[pending] = min(self._due[pending], now)
            case Written(code, snapshot, done):
                del self._in_flight[code]
                if done:
                    if snapshot is None and code not in self._pending:
                        self.stored.discard(code)
                elif code not in self._pending:
                    # Failed or cancelled, and nothing newer came: write it again.
                    self._pending[code] = snapshot
                    self._due[code] = now
            case Settle():
                self._waiting.append(change)
            case TakeMissed(reply):
                reply.resolve((set(self._missed), self._lossy))
                self._missed.clear()
                self._lossy = False

    def _answer_settled(self) -> None:
        if not self._waiting:
            return
        waiting = []
        for request in self._waiting:
            code = request.code
            if code is None:
                busy = bool(self._pending or self._in_flight)
            else:
                busy = code in self._pending or code in self._in_flight
            if busy:
                waiting.append(request)
            else:
                request.reply.resolve(None)
        self._waiting = waiting

    async def _flush(self) -> None:
        """At shutdown (shielded, bounded): what is queued, pending or was in flight."""
        while True:
            try:
                change = self._changes.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if isinstance(change, Offer | Ended | Forget | Written):
                self._apply(change)
        for code, snapshot in self._in_flight.items():  # cancelled with its writer
            self._pending.setdefault(code, snapshot)
        self._in_flight.clear()
        while self._pending:
            code = next(iter(self._pending))
            self._due.pop(code, None)
            if not await self._write(code, self._pending.pop(code)):
                break  # storage is down: what is left is lost
        if self._pending:
            log.warning("%d room snapshots not written at shutdown", len(self._pending))

    async def _writer(self, work: trio.MemoryReceiveChannel[tuple[str, Snapshot]]) -> None:
        async for code, snapshot in work:
            done = await self._write(code, snapshot)
            if not done:
                await trio.sleep(RETRY_SECONDS)  # the room stays in flight meanwhile
            # May wait behind offers (the actor never waits on a writer: no deadlock). If
            # cancelled first, the shutdown flush writes it again from ``_in_flight``.
            await self._mailbox.send(Written(code, snapshot, done))

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
        """Snapshot again rooms missed while the pending map (or the mailbox) was full, and
        every live room every half retention. Runs until cancelled."""
        task_status.started()
        period = max(retention_seconds / 2.0, REFRESH_SECONDS)
        next_full = trio.current_time() + period
        while True:
            await trio.sleep(REFRESH_SECONDS)
            request = TakeMissed()
            if not await self._ask(request):
                return  # the writer stopped
            missed, lossy = await request.reply.wait()
            if lossy or trio.current_time() >= next_full:
                if trio.current_time() >= next_full:
                    next_full += period
                codes = list(registry.rooms)
            else:
                codes = [code for code in missed if code in registry.rooms]
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
