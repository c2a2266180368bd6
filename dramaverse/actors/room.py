"""The room actor: one trio task per watch-party room (its registry is ``room_registry.py``,
its messages ``room_messages.py``).

The actor is thin: it owns one pure :class:`~dramaverse.domain.rooms.Room`, takes joins,
commands and disconnects from its bounded inbox, calls ``room.tick`` whenever the room's next
deadline (scheduled start, barrier deadline, host grace, reconnect grace, clock ping, end of
content) comes up, and delivers the room's :class:`~dramaverse.domain.rooms.Send` effects to the
members' peers. A peer is a connection as the room sees it (:class:`RoomPeer`): a bounded outbox
the actor never waits on. A full outbox evicts the peer with close code 4001, like a session
device; the member is then disconnected and may come back within the reconnect grace.

Time: the room works on the *server clock*, wall-clock seconds that advance with trio's clock
(:class:`ServerClock`), so snapshot times stay meaningful across a restart and a test's
``MockClock`` drives everything.

Resource handling: the registry owns the nursery every room actor runs in (``open_rooms``);
leaving it cancels them all. Only the registry's own task (``run``) starts actors in it: a
caller registers the actor and sends a ``Start`` that is answered with the started handle. Each
actor owns its inbox's receive side; the inbox's send side lives on the actor and is shared by
every caller (they only ever send on it). The actor stops by itself once the room has had no
member for ``empty_grace`` seconds, forgets its peers (marking them ``dropped``) and tells the
registry through ``on_exit``. ``abandon()`` stops it at once without ending the room (its lease
was lost and another process restores it: ``room_cluster.py``): the peers are left alone for their
connections to follow the room, and ``on_end`` is not called. The room itself is the actor's
alone: other tasks read only what the actor publishes on its handle after each step (``host``),
and a restored room records its restore (``on_change``) in its own task before it reports
started. A peer's ``dropped`` flag is the actor's too; its connection writes only ``closed``
and sends a ``Disconnect`` (``disconnect``). A ``Disconnect`` that finds the inbox full is not
lost: the inbox then holds a full batch, and the actor sweeps its peers for closed connections
after every wake-up that handled a full batch.

Error handling: a refused command raises inside the pure room before anything changed; the actor
answers the sender with an ``error`` frame (or raises it to an awaiting ``request``) and carries
on. Anything else escaping one step of the actor (a message, a tick, ``on_change``) is a bug, and
the room may be half changed by it, so the actor is *restarted*: the room is rebuilt from the
snapshot the actor took after its last good step (``Room.restore``, as after a failover) and
every connected peer is joined to it again (each gets a fresh ``room.welcome``; membership, role,
playback and chat are those before the failed message). The sender of the failed message gets
500 (:class:`RoomFailed`: not applied) and the failure is logged once, with the room's code and
the verb. Within a restart intensity (:class:`RestartIntensity`, the registry's: at most
``MAX_RESTARTS`` in ``RESTART_WINDOW`` seconds) a restart is in place: the inbox, the peers'
handles and a cluster lease stay as they are, so no caller notices beyond the welcome. Past it
the room gives up: every peer is evicted with ``CloseCode.ROOM_FAILED`` (4002, reconnect and rejoin)
and the actor stops with ``failed`` set, which keeps its stored snapshot (``on_end`` is not
called), so the room comes back when someone joins it again (``room_cluster.py``) or at the next
start. ``trio.Cancelled`` is never caught.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from dramaverse.actors.reply import Reply
from dramaverse.actors.room_messages import (
    Call,
    Command,
    Disconnect,
    Join,
    Message,
    RoomFailed,
    RoomGone,
    RoomPeer,
    check_request_id,
    error_frame,
    verb_of,
)
from dramaverse.config import Settings
from dramaverse.domain.close_codes import CloseCode
from dramaverse.domain.numbers import is_request_id
from dramaverse.domain.rooms import (
    Room,
    RoomConfig,
    Send,
)
from dramaverse.errors import DramaverseError, Forbidden

log = logging.getLogger(__name__)

INBOX_SIZE = 64
BATCH = 32  # messages handled per wake-up at most, so timers are never starved
TIME_EPSILON = 1e-6  # seconds: deadlines this close count as reached
MAX_RESTARTS = 5  # restarts of one room within RESTART_WINDOW; one more and it gives up
RESTART_WINDOW = 60.0  # seconds (trio time)
T = TypeVar("T")
_inf = float("inf")


def room_config(settings: Settings) -> RoomConfig:
    """The pure room tunables from the WATCH_* settings."""
    chat = settings.watch_chat_rate
    return RoomConfig(
        lead_min=settings.watch_lead_min_seconds,
        lead_max=settings.watch_lead_max_seconds,
        drift_nudge=settings.watch_drift_nudge_seconds,
        drift_seek=settings.watch_drift_seek_seconds,
        drift_max_nudge=settings.watch_drift_max_nudge,
        barrier_timeout=settings.watch_barrier_seconds,
        host_grace=settings.watch_host_grace_seconds,
        reconnect_grace=settings.watch_reconnect_grace_seconds,
        chat_max_length=settings.watch_chat_max_length,
        chat_rate_count=chat.limit,
        chat_rate_window=chat.window,
        history_size=settings.watch_history_size,
        max_members=settings.watch_max_members,
        report_interval=settings.watch_report_seconds,
        report_relaxed=settings.watch_report_relaxed_seconds,
    )


class ServerClock:
    """Server time: wall-clock seconds at creation, advanced by trio's clock since then.

    Construct it inside ``trio.run``. ``epoch`` fixes the server time at creation (tests use 0
    so server time equals trio time).
    """

    def __init__(self, epoch: float | None = None) -> None:
        base = time.time() if epoch is None else epoch
        self._offset = base - trio.current_time()

    def now(self) -> float:
        return trio.current_time() + self._offset

    def to_trio(self, server_time: float) -> float:
        return server_time - self._offset


@dataclass(eq=False)
class RestartIntensity:
    """At most ``max_restarts`` restarts within ``window`` seconds (OTP's restart intensity)."""

    max_restarts: int = MAX_RESTARTS
    window: float = RESTART_WINDOW
    times: deque[float] = field(default_factory=deque)

    def allow(self, now: float) -> bool:
        """Count a restart at trio time ``now``; False when it would exceed the intensity."""
        while self.times and self.times[0] <= now - self.window:
            self.times.popleft()
        if len(self.times) >= self.max_restarts:
            return False
        self.times.append(now)
        return True


class RoomActor:
    """Create it, start ``run`` in a nursery, talk to it through the methods below."""

    def __init__(
        self,
        room: Room,
        clock: ServerClock,
        *,
        empty_grace: float,
        on_change: Callable[[Room], None] = lambda _: None,
        on_exit: Callable[[RoomActor], None] = lambda _: None,
        inbox_size: int = INBOX_SIZE,
        restarts: RestartIntensity | None = None,
        restored: bool = False,
    ) -> None:
        self.room = room  # the actor's own: no other task reads or changes it
        # Published by the actor after each step, for other tasks to read (never the room):
        self.host: str | None = room.host
        self.code = room.code
        self.clock = clock
        self.inbox, self._receive = trio.open_memory_channel[Message](inbox_size)
        self.peers: dict[str, RoomPeer] = {}
        self.stopped = trio.Event()
        self._empty_grace = empty_grace
        self._on_change = on_change
        self._on_exit = on_exit
        self._empty_since: float | None = clock.now() if room.empty else None
        self._current: Message | None = None  # the message being handled
        # A wake-up that handles this many may have found the inbox full (a full inbox is a
        # full batch, since nothing else runs while the actor handles one): sweep after it.
        self._full_batch = min(BATCH, inbox_size)
        self._step = "tick"  # what the actor is doing when no message is being handled
        self._good = room.snapshot()  # the room after the last step that did not fail
        self._good_revision = room.revision
        self._scope = trio.CancelScope()
        self.restarts = restarts or RestartIntensity()
        self.abandoned = False  # stopped by abandon(): the room lives on in another process
        self.failed = False  # gave up after too many restarts: its snapshot must stay
        self._restored = restored  # its first work: record the restore (``on_change``)

    # --- the API used by connections (and the registry) ----------------------------------

    async def join(self, member_id: str, name: str, peer: RoomPeer) -> dict[str, Any]:
        """Attach ``peer`` as ``member_id``'s connection; returns the welcome message (which
        is also the first frame pushed to the peer). Raises the room's refusal, or RoomGone."""
        request = Join(member_id, name, peer)
        await self._send(request)
        return await request.reply.wait()

    async def submit(
        self,
        member_id: str,
        kind: object,
        data: object,
        request_id: object = None,
        *,
        peer: RoomPeer | None = None,
    ) -> None:
        """Send a client command; its ``ack``/``error`` goes to the member's peer (to ``peer``,
        when given, which must still be the member's connection)."""
        await self._send(Command(member_id, kind, data, request_id, peer=peer))

    async def request(self, member_id: str, kind: object, data: object) -> dict[str, Any]:
        """Send a command and await its result (raises the refusal) — for HTTP endpoints."""
        command = Command(member_id, kind, data, reply=Reply())
        await self._send(command)
        assert command.reply is not None
        return await command.reply.wait()

    def disconnect(self, member_id: str, peer: RoomPeer) -> None:
        """The connection ended (call it from the connection's side). Never blocks: a
        ``Disconnect`` that finds the inbox full is replaced by the actor's sweep for closed
        peers after its next (full) batch."""
        peer.closed = True
        # Full: swept up (see above); closed: the actor is gone, nothing to disconnect from.
        with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.inbox.send_nowait(Disconnect(member_id, peer))

    async def call(self, fn: Callable[[Room, float], T]) -> T:
        """Run ``fn(room, now)`` in the actor's task and return its result."""
        request = Call(fn)
        await self._send(request)
        result: T = await request.reply.wait()
        return result

    async def snapshot(self) -> dict[str, Any]:
        return await self.call(lambda room, now: room.snapshot())

    def abandon(self) -> None:
        """Stop at once without ending the room (its lease was lost: another process runs it).

        Never blocks. The peers are not marked gone (their connections follow the room to its
        new owner) and the registry does not call ``on_end`` (the snapshot must stay)."""
        self.abandoned = True
        self._scope.cancel()

    async def _send(self, message: Message) -> None:
        try:
            await self.inbox.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise RoomGone(f"Room {self.code} is closed; join again.") from None

    # --- the actor -----------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[RoomActor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the room until it stops (empty past its grace, abandoned, or given up after
        too many failures); a failed step restarts it in place (see the module docstring).

        Reports started (with itself, the handle) once it can serve: a restored room has first
        recorded its restore (``on_change``: its members now count as disconnected)."""
        serving = False
        try:
            with self._scope:
                while True:
                    try:
                        if self._restored:  # a step like any other: a failure restarts it
                            self._restored = False
                            self._step = "restore"
                            self._on_change(self.room)
                        if not serving:
                            serving = True
                            task_status.started(self)
                        await self._loop()
                        return
                    except Exception as error:  # a bug (trio.Cancelled is no Exception)
                        if not self._recover(error):
                            return
        finally:
            self._on_exit(self)
            gone = RoomGone(f"Room {self.code} is closed; join again.")
            reply = (
                self._current.reply if isinstance(self._current, Join | Call | Command) else None
            )
            if reply is not None:
                reply.fail(gone)
            while True:  # callers still queued must not wait forever
                try:
                    pending = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                reply = pending.reply if isinstance(pending, Join | Call | Command) else None
                if reply is not None:
                    reply.fail(gone)
            self._receive.close()  # later senders get RoomGone
            if not self.abandoned:
                for peer in self.peers.values():
                    peer.dropped = True
            self.stopped.set()

    async def _loop(self) -> None:
        while True:
            now = self.clock.now()
            revision = self.room.revision
            self._step = "tick"
            due = self.room.next_deadline()
            message: Message | None = None
            handled = 0
            if due is not None and due <= now + TIME_EPSILON:
                # max(): server time is trio time plus an offset, so a deadline can seem a hair
                # early after a float round trip; the room must see it as reached.
                self._deliver(self.room.tick(max(now, due)))
                self._keep_good()
            else:
                wake = due if due is not None else _inf
                if self._empty_since is not None:
                    wake = min(wake, self._empty_since + self._empty_grace)
                with trio.move_on_at(self.clock.to_trio(wake)):
                    message = await self._receive.receive()
                now = self.clock.now()
                if message is None:
                    if self._empty_since is None or now + TIME_EPSILON < wake:
                        continue  # a room deadline: the next round ticks
                    try:  # a message may sit in the buffer although the wait timed out
                        message = self._receive.receive_nowait()
                    except trio.WouldBlock:
                        return  # empty past the grace: stop
                self._handle(message, now)
                handled = 1
                for _ in range(BATCH - 1):  # whatever else is queued, in one wake-up
                    try:
                        self._handle(self._receive.receive_nowait(), now)
                    except trio.WouldBlock:
                        break
                    handled += 1
            if handled >= self._full_batch:  # the inbox may have been full: a Disconnect lost
                self._step = "disconnect"
                self._deliver(self._sweep(now))
                self._keep_good()
            if self.room.revision != revision:
                self._step = "on_change"
                self._on_change(self.room)
            if not self.room.empty:
                self._empty_since = None
            elif self._empty_since is None:
                self._empty_since = now

    def _handle(self, message: Message, now: float) -> None:
        # Kept while it is handled: its sender must hear about it if the room fails on it.
        self._current = message
        self._dispatch(message, now)
        self._current = None
        self._keep_good()

    def _keep_good(self) -> None:
        """Remember the room as it is after a step that did not fail (a restart's state)."""
        if self.room.revision != self._good_revision:
            self._good = self.room.snapshot()
            self._good_revision = self.room.revision
            self.host = self.room.host

    # --- failures ------------------------------------------------------------------------

    def _recover(self, error: Exception) -> bool:
        """A step failed with ``error``: answer its sender, log it once, and restart the room
        from its last good state; False (the actor stops) past the restart intensity."""
        while True:
            message, self._current = self._current, None
            verb = verb_of(message) if message is not None else self._step
            restart = self.restarts.allow(trio.current_time())
            outcome = (
                "restarting it from its state before"
                if restart
                else f"{self.restarts.max_restarts} restarts in {self.restarts.window:g} s: "
                f"closing its {len(self.peers)} connections with {CloseCode.ROOM_FAILED}, "
                "keeping its snapshot"
            )
            log.error("room %s failed on %s; %s", self.code, verb, outcome, exc_info=error)
            if message is not None:
                self._answer_failed(message)
            if not restart:
                self._give_up()
                return False
            try:
                self._restart()
            except Exception as again:  # the restart failed too: counts as another failure
                error = again
                self._step = "restart"
                continue
            return True

    def _answer_failed(self, message: Message) -> None:
        failed = RoomFailed("The room failed on this request (a server bug); it was not applied.")
        reply = message.reply if isinstance(message, Join | Call | Command) else None
        if reply is not None:
            reply.fail(failed)  # ignored when it was answered before the failure
            return
        if isinstance(message, Command):
            peer = message.peer or self.peers.get(message.member_id)
            if peer is not None:
                request_id = message.request_id if is_request_id(message.request_id) else None
                peer.push(peer.render(error_frame(failed, request_id)))
                peer.on_error(failed.status)

    def _restart(self) -> None:
        """Rebuild the room from the last good snapshot and join every live peer to it again.

        The restore counts every member as disconnected; the joins make the connected ones
        members again (fresh welcome, role kept). A peer whose member is not in that snapshot
        (its join was the failed step) gets ``room.left`` with ``reason: "failed"``."""
        now = self.clock.now()
        room = Room.restore(self._good, self.room.config, now=now)
        self.room = room
        kept: dict[str, RoomPeer] = {}
        sends: list[Send] = []
        for member_id, peer in self.peers.items():
            if peer.gone:
                continue  # its disconnect is on the way; the restore counts it as disconnected
            member = room.members.get(member_id)
            if member is None:
                peer.push(peer.render({"type": "room.left", "room": self.code, "reason": "failed"}))
                peer.dropped = True
                continue
            sends += room.join(member_id, member.name, now)
            kept[member_id] = peer
        self.peers = kept
        self._deliver(sends)
        self._on_change(room)
        self._good, self._good_revision = room.snapshot(), room.revision
        self.host = room.host

    def _give_up(self) -> None:
        """Too many failures: close the room's connections; its stored snapshot stays."""
        self.failed = True
        for peer in self.peers.values():
            if not peer.gone:
                peer.dropped = True
                peer.evict(CloseCode.ROOM_FAILED, "the watch-party room failed; rejoin it")

    def _dispatch(self, message: Message, now: float) -> None:
        match message:
            case Join(member_id, name, peer, reply):
                try:
                    sends = self.room.join(member_id, name, now)
                except DramaverseError as error:
                    reply.fail(error)
                    return
                old = self.peers.get(member_id)
                if old is not None and old is not peer:
                    old.push(
                        old.render({"type": "room.left", "room": self.code, "reason": "replaced"})
                    )
                    old.dropped = True
                self.peers[member_id] = peer
                reply.resolve(sends[0].message)
                self._deliver(sends)
            case Command():
                self._command(message, now)
            case Disconnect(member_id, peer):
                if self.peers.get(member_id) is peer:
                    del self.peers[member_id]
                    self._deliver(self.room.disconnect(member_id, now))
            case Call(fn, reply):
                try:
                    reply.resolve(fn(self.room, now))
                except DramaverseError as error:
                    reply.fail(error)

    def _command(self, command: Command, now: float) -> None:
        peer = self.peers.get(command.member_id)
        stale = command.peer is not None and command.peer is not peer
        if stale:
            peer = command.peer  # replaced or gone: answer the sender, change nothing
        try:
            check_request_id(command.request_id)
            if stale:
                raise Forbidden("You are not in this room (another connection replaced this one).")
            outcome = self.room.handle(command.member_id, command.kind, command.data, now)
        except DramaverseError as error:
            if command.reply is not None:
                command.reply.fail(error)
            elif peer is not None:
                request_id = command.request_id if is_request_id(command.request_id) else None
                peer.push(peer.render(error_frame(error, request_id)))
                peer.on_error(error.status)
            return
        if command.reply is not None:
            command.reply.resolve(outcome.result)
        elif peer is not None and command.request_id is not None:
            ack = {"type": "ack", "id": command.request_id, "result": outcome.result}
            peer.push(peer.render(ack))
        if command.member_id not in self.room.members:  # it left: no more room messages
            self.peers.pop(command.member_id, None)
        self._deliver(outcome.sends)

    def _deliver(self, sends: list[Send]) -> None:
        """Push each message to its peers, rendering it once per renderer; then disconnect any
        member whose peer was evicted (which may produce more messages)."""
        while sends:  # each round of evictions removes peers, so this ends
            for send in sends:
                frames: dict[Callable[[dict[str, Any]], str], str] = {}
                if send.to is not None:
                    targets = [self.peers[send.to]] if send.to in self.peers else []
                else:
                    targets = [p for m, p in self.peers.items() if m != send.exclude]
                for peer in targets:
                    frame = frames.get(peer.render)
                    if frame is None:
                        frame = frames[peer.render] = peer.render(send.message)
                    peer.push(frame)
            sends = self._sweep(self.clock.now())

    def _sweep(self, now: float) -> list[Send]:
        """Disconnect members whose peer is gone (evicted, or its disconnect was not queued)."""
        sends: list[Send] = []
        for member_id, peer in list(self.peers.items()):
            if peer.gone:
                del self.peers[member_id]
                sends += self.room.disconnect(member_id, now)
        return sends
