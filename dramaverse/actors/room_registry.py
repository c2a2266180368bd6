"""The room registry: owns the nursery every room actor runs in, and starts them from its own task.

See ``room.py`` for the actor and its restart rules; ``open_rooms`` opens a registry.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from dramaverse.actors.room import (
    MAX_RESTARTS,
    RESTART_WINDOW,
    RestartIntensity,
    RoomActor,
    ServerClock,
    room_config,
)
from dramaverse.actors.room_messages import Start
from dramaverse.config import Settings
from dramaverse.domain.rooms import Control, Room, RoomConfig, new_room_code, normalize_room_code
from dramaverse.errors import BadRequest, NotFound, ServiceUnavailable

log = logging.getLogger(__name__)

START_QUEUE = 64  # start requests waiting for the registry's task (each start is brief)
START_TIMEOUT = 10.0  # seconds a caller waits, shielded, for its room's start


class RoomRegistry:
    """Creates rooms under unguessable codes, finds them, restores them from snapshots.

    ``taken(code)`` lets a caller veto codes in use elsewhere (other processes, storage).
    ``on_change(room)`` is called in the room's task after every change a snapshot would
    record; it must not block (hand the snapshot to a writer task with ``send_nowait``).
    ``on_end(code)`` is called when a room actor ended by itself (empty past its grace), not
    when it was cancelled (shutdown), abandoned or gave up after too many failures: its snapshot
    is of no more use.

    Supervision: each actor gets a :class:`RestartIntensity` of ``max_restarts`` in
    ``restart_window`` seconds; the actor applies it in its own task (only that task touches the
    room), restarting in place from its last good state (see the module docstring).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        config: RoomConfig,
        clock: ServerClock,
        *,
        empty_grace: float,
        on_change: Callable[[Room], None] = lambda _: None,
        on_end: Callable[[str], None] = lambda _: None,
        taken: Callable[[str], bool] = lambda _: False,
        max_restarts: int = MAX_RESTARTS,
        restart_window: float = RESTART_WINDOW,
    ) -> None:
        self._nursery = nursery
        self._max_restarts = max_restarts
        self._restart_window = restart_window
        self.config = config
        self.clock = clock
        self._empty_grace = empty_grace
        self._on_change = on_change
        self._on_end = on_end
        self._taken = taken
        self.rooms: dict[str, RoomActor] = {}
        self._starts, self._start_requests = trio.open_memory_channel[Start](START_QUEUE)

    async def run(
        self, *, task_status: trio.TaskStatus[RoomRegistry] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The registry's own task: it alone starts tasks in the registry's nursery, one room
        at a time (``nursery.start``: a room reports started without I/O), until cancelled."""
        task_status.started(self)
        request: Start | None = None
        try:
            async for request in self._start_requests:
                try:
                    actor = await self._nursery.start(self._supervise, request.actor)
                except Exception as error:  # failed before it could serve (logged)
                    self._forget(request.actor)
                    request.reply.fail(error)
                    continue
                request.reply.resolve(actor)
        finally:  # stopping (shutdown): nobody waits for a start that will not come
            self._start_requests.close()
            pending = [request] if request is not None else []
            while True:
                try:
                    pending.append(self._start_requests.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            for waiting in pending:
                self._forget(waiting.actor)
                waiting.reply.fail(ServiceUnavailable("The server is stopping; try again."))

    async def create(
        self,
        creator: str,
        name: str,
        *,
        control: Control = Control.HOST,
        wait_for_joiners: bool = False,
        code: str | None = None,
    ) -> RoomActor:
        """A new room with ``creator`` as host (who then joins with a peer), under ``code``
        (from :meth:`new_code`, claimed by the caller) or a fresh one."""
        if code is None:
            code = self.new_code()
        elif code in self.rooms:
            raise BadRequest(f"Room {code} is already running here.")
        room = Room.create(
            code,
            self.config,
            creator=creator,
            name=name,
            now=self.clock.now(),
            control=control,
            wait_for_joiners=wait_for_joiners,
        )
        return await self._start(room)

    def new_code(self) -> str:
        """An unused code: not running here, not vetoed by ``taken``."""
        for _ in range(100):
            code = new_room_code()
            if code not in self.rooms and not self._taken(code):
                return code
        # 8.5e11 codes: only a broken ``taken`` gets here
        raise ServiceUnavailable("No free room code; try again.")

    async def restore(self, snapshot: dict[str, Any]) -> RoomActor:
        """Start the actor of a room from its snapshot (after a restart or a lease takeover)."""
        room = Room.restore(snapshot, self.config, now=self.clock.now())
        if room.code in self.rooms:
            raise BadRequest(f"Room {room.code} is already running here.")
        return await self._start(room, restored=True)

    async def _start(self, room: Room, *, restored: bool = False) -> RoomActor:
        actor = RoomActor(
            room,
            self.clock,
            empty_grace=self._empty_grace,
            on_change=self._on_change,
            on_exit=self._forget,
            restarts=RestartIntensity(self._max_restarts, self._restart_window),
            restored=restored,
        )
        self.rooms[room.code] = actor  # registered at once: a second start of the code is refused
        request = Start(actor)
        # Back-pressure, not refusal: a burst of creations (a restart, a benchmark's ramp on a
        # busy machine) waits for the registry's task, bounded by START_TIMEOUT.
        queued = False
        try:
            with trio.move_on_after(START_TIMEOUT):
                await self._starts.send(request)
                queued = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the registry is stopping
        finally:
            if not queued:
                self._forget(actor)
        if not queued:
            raise ServiceUnavailable("Too many rooms are starting; try again.")
        # Shielded: a caller cancelled now (its client left) must still get the handle it
        # answers for (a lease, a route), or the room would run with no owner. Bounded: the
        # start does no I/O, and a stopping registry fails what it did not start.
        with trio.CancelScope(shield=True), trio.move_on_after(START_TIMEOUT):
            return await request.reply.wait()
        raise ServiceUnavailable(f"Room {room.code} did not start; try again.")

    def find(self, code: object) -> RoomActor | None:
        """The live actor for a code as typed (any case, dashes), or None."""
        return self.rooms.get(normalize_room_code(code))

    def get(self, code: object) -> RoomActor:
        actor = self.find(code)
        if actor is None:
            raise NotFound(f"Room {code} not found.")
        return actor

    def _forget(self, actor: RoomActor) -> None:
        if self.rooms.get(actor.code) is actor:
            del self.rooms[actor.code]

    async def _supervise(
        self,
        actor: RoomActor,
        *,
        task_status: trio.TaskStatus[RoomActor] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await actor.run(task_status=task_status)
        except Exception:  # the actor's own cleanup failed (its steps are restarted inside)
            log.exception("room actor %s crashed", actor.code)
            return  # the room may come back from its snapshot
        # Moved to another process, or given up after failures: its snapshot must stay.
        if not actor.abandoned and not actor.failed:
            self._on_end(actor.code)  # not reached when cancelled

    def close(self) -> None:
        """Stop every room actor."""
        self._nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_rooms(
    settings: Settings,
    *,
    clock: ServerClock | None = None,
    on_change: Callable[[Room], None] = lambda _: None,
    on_end: Callable[[str], None] = lambda _: None,
    taken: Callable[[str], bool] = lambda _: False,
    max_restarts: int = MAX_RESTARTS,
    restart_window: float = RESTART_WINDOW,
) -> AsyncIterator[RoomRegistry]:
    """Own the nursery of every room actor (started by the registry's task); leaving cancels
    them."""
    async with trio.open_nursery() as nursery:
        registry = RoomRegistry(
            nursery,
            room_config(settings),
            clock or ServerClock(),
            empty_grace=settings.watch_empty_room_seconds,
            on_change=on_change,
            on_end=on_end,
            taken=taken,
            max_restarts=max_restarts,
            restart_window=restart_window,
        )
        await nursery.start(registry.run)
        yield registry
        nursery.cancel_scope.cancel()
