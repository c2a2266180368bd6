"""The UserSession actor: one per user with a live connection in this process.

It subscribes to the broker topic ``user:<id>``, keeps ``head`` (the last event delivered), and
pushes each event, in sequence order, to every attached device's bounded outbox. It never waits
on a device: a full outbox gets the device evicted with close code 4001 (slow consumer).

Gaps are expected and repaired: the broker is best effort, concurrent writers publish in any
order, and an inbox that overflowed drops messages. Whenever an event arrives more than one past
``head``, when the inbox overflowed, when the broker reports a gap (``on_gap``: it reconnected to
Redis), and periodically while idle, the actor reads the missing range from the durable log.
While the database is unavailable a repair fails without stopping the actor: its devices stay
attached and the repair is retried (next message or periodic check).

A device that resumes gets a ``resync`` frame when the log no longer has what it missed;
otherwise it is attached ``replaying``: the actor skips it while the connection's own task
streams the missed events from the log at the device's pace (``actors/replay.py``), and takes it
live when the replay asks (``Live``) and nothing newer was delivered meanwhile.

A session started by its supervisor after a crash (``SessionHub``) is given the crashed one's
devices: it starts from the lowest position a live device was delivered, so each gets exactly
what it missed, and the replaying ones go on replaying.

Resource handling: the hub owns the nursery the actor runs in and the inbox's send side; the
actor owns the receive side and the broker subscription, and exits (closing its inbox) after its
last device has been gone for ``grace`` seconds. When it crashes, the messages still queued and
its devices are left in ``leftovers`` and ``devices`` for the supervisor; otherwise waiting
requests are released and its devices marked gone.
"""

from __future__ import annotations

import enum
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from dramaverse.actors.outbox import push_frame
from dramaverse.actors.reply import Reply
from dramaverse.broker.base import Broker
from dramaverse.domain.events import UserEvent
from dramaverse.errors import StorageUnavailable
from dramaverse.storage.base import Storage

log = logging.getLogger(__name__)

INBOX_SIZE = 256


class SessionGone(Exception):
    """The user's session actor stopped before the request could be handled."""


def user_topic(user_id: int) -> str:
    return f"user:{user_id}"


def resync_frame(head: int) -> str:
    return json.dumps({"type": "resync", "seq": head}, separators=(",", ":"))


@dataclass(eq=False)
class Device:
    """One connection of a user as its session sees it.

    ``evict(code, reason)`` is called from the actor's task when the device must go; it must not
    block (the connection closes itself asynchronously). ``render`` and ``render_resync`` turn an
    event and a resync notice into the transport's frame (native JSON by default; Socket.IO
    packets for that transport); the actor renders each event once per distinct renderer.
    ``dropped`` is written by the session actor's task only (evicted, detached, the actor
    stopped), ``closed`` by the connection's task only (it ended: ``SessionHub.detach``; its
    replay evicted it); ``gone`` is either (``actors/outbox.py``). While ``replaying``, the
    connection's task moves ``cursor``; the actor takes it back with ``Live``.
    """

    outbox: trio.MemorySendChannel[str]
    evict: Callable[[int, str], None]
    render: Callable[[UserEvent], str] = UserEvent.frame
    render_resync: Callable[[int], str] = resync_frame
    cursor: int = 0  # the last seq queued for this device
    dropped: bool = False  # the actor's: no more events to this device
    closed: bool = False  # the connection's: it ended
    replaying: bool = False  # its replay runs in its connection's task: no live frames yet

    @property
    def gone(self) -> bool:
        return self.dropped or self.closed

    def push(self, frame: str) -> bool:
        """Queue a frame without waiting; evict the device when its outbox is full."""
        return push_frame(self, frame)


@dataclass(frozen=True, slots=True)
class AttachResult:
    head: int
    resynced: bool
    replay: bool = False  # the caller must stream the replay, then hand over (``Live``)


@dataclass(eq=False)
class Attach:
    """Attach ``device``; ``ready(head)`` renders the frame it gets first. ``reply`` fails with
    ``SessionGone`` when the actor could not attach it (the log unreadable, a crash)."""

    device: Device
    resume: int | None
    ready: Callable[[int], str]
    reply: Reply[AttachResult] = field(default_factory=Reply)


@dataclass(frozen=True, slots=True)
class Detach:
    device: Device


class Handover(enum.Enum):
    LIVE = "live"  # the actor delivers to the device from now on
    BEHIND = "behind"  # newer events were delivered meanwhile: replay again from its cursor
    GONE = "gone"  # the device is no longer attached (detached, evicted)


@dataclass(eq=False)
class Live:
    """The replay of ``device`` reached its cursor: take it live unless it fell behind."""

    device: Device
    reply: Reply[Handover] = field(default_factory=Reply)  # SessionGone: the actor stopped


@dataclass(frozen=True, slots=True)
class Published:
    raw: bytes


@dataclass(frozen=True, slots=True)
class Gap:
    """The broker may have lost messages (it reconnected): repair from the log now."""


Message = Attach | Detach | Live | Published | Gap


class UserSession:
    """The actor. Create it, start ``run`` in a nursery (``nursery.start``: it reports started
    once it can serve), talk to it through ``inbox``."""

    def __init__(
        self,
        user_id: int,
        storage: Storage,
        broker: Broker,
        *,
        grace: float,
        check_interval: float | None = None,
        replay_limit: int = 250,
        on_exit: Callable[[UserSession], None] = lambda _: None,
        devices: list[Device] | None = None,
        start_delay: float = 0.0,
    ) -> None:
        self.user_id = user_id
        self.inbox, self._receive = trio.open_memory_channel[Message](INBOX_SIZE)
        self.devices: list[Device] = list(devices or ())
        self.leftovers: list[Message] = []  # what was still queued when it crashed
        self.head = 0
        self.stopped = trio.Event()
        self._storage = storage
        self._broker = broker
        self._grace = grace
        self._check_interval = check_interval
        self._replay_limit = replay_limit
        self._on_exit = on_exit
        self._start_delay = start_delay
        self._lossy = False
        self._repair_failing = False
        self._closed = False  # the inbox's receive side is closed

    def _on_published(self, raw: bytes) -> None:
        """Broker callback: never blocks; an overflow is remembered and repaired from the log."""
        try:
            self.inbox.send_nowait(Published(raw))
        except trio.WouldBlock:
            self._lossy = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the actor is gone; nothing to deliver to

    def check(self, log_head: int) -> None:
        """The hub's periodic check (``SessionHub.run_checks``): the log's head for this user.

        A log ahead of what was delivered means a publish never arrived (its process died
        between commit and publish, say); an earlier repair that failed is retried too. Either
        way the actor repairs from the log. Never blocks."""
        if log_head > self.head or self._repair_failing:
            self._on_gap()

    def _on_gap(self) -> None:
        """Broker callback: messages may be missing; repair at once, not at the next check."""
        try:
            self.inbox.send_nowait(Gap())
        except trio.WouldBlock:
            self._lossy = True  # a full inbox wakes the loop anyway, and the flag repairs
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def run(
        self, *, task_status: trio.TaskStatus[UserSession] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until idle past the grace period; reports started (with itself, the handle)
        once it is subscribed and knows the log's head. A crash propagates to the supervisor."""
        crashed = False
        try:
            await trio.sleep(self._start_delay)  # a restart's back-off
            async with self._broker.subscribe(
                user_topic(self.user_id), self._on_published, on_gap=self._on_gap
            ):
                # Subscribe first, then read the head: anything published in between is either
                # at or below the head (skipped) or above it (delivered).
                log_head = await self._storage.event_head(self.user_id)
                # Devices taken over from a crashed session: start where the furthest behind
                # was; each skips what it already has (its cursor).
                self.head = min([log_head] + [d.cursor for d in self.devices if not d.replaying])
                task_status.started(self)
                if self.head < log_head:
                    await self._repair()
                await self._loop()
        except Exception:
            crashed = True
            raise
        finally:
            self._close_inbox()
            if not crashed:
                self._on_exit(self)
                release(self.leftovers)
                for device in self.devices:
                    device.dropped = True
            self.stopped.set()

    def _close_inbox(self) -> None:
        """Stop receiving; what is still queued goes to ``leftovers``. Never awaits."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                self.leftovers.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        self._receive.close()

    async def _loop(self) -> None:
        while True:
            if not self.devices:
                timeout = self._grace
            elif self._check_interval is not None:
                timeout = self._check_interval
            else:
                timeout = math.inf  # the hub checks the log for every session at once
            message: Message | None = None
            with trio.move_on_after(timeout):
                message = await self._receive.receive()
            if message is None:
                if not self.devices:
                    try:  # a message may sit in the buffer although the wait timed out
                        message = self._receive.receive_nowait()
                    except trio.WouldBlock:
                        # Idle past the grace period with no device: stop. Leave the hub's
                        # registry now, with the inbox empty and closed, before any await
                        # (the unsubscribe): a request from now on starts a fresh actor.
                        self._close_inbox()
                        self._on_exit(self)
                        return
                else:
                    await self._repair()  # periodic check: nothing may be stuck upstream
                    continue
            await self._handle(message)
            if self._lossy:
                self._lossy = False
                await self._repair()

    async def _handle(self, message: Message) -> None:
        match message:
            case Published(raw):
                event = UserEvent.decode(raw)
                if event.seq == self.head + 1:
                    self._deliver(event)
                elif event.seq > self.head + 1:
                    await self._repair()
            case Attach():
                await self._attach(message)
            case Detach(device):
                device.dropped = True
                self.devices = [d for d in self.devices if d is not device]
            case Live(device):
                message.reply.resolve(self._take_live(device))
            case Gap():
                await self._repair()

    def _take_live(self, device: Device) -> Handover:
        """Everything up to ``head`` went to the other devices; has the replay reached it?"""
        if device.gone or all(d is not device for d in self.devices):
            return Handover.GONE
        if device.cursor < self.head:
            return Handover.BEHIND
        device.replaying = False
        return Handover.LIVE

    def _deliver(self, event: UserEvent) -> None:
        frames: dict[Callable[[UserEvent], str], str] = {}
        for device in self.devices:
            if device.cursor >= event.seq or device.replaying:
                continue
            frame = frames.get(device.render)
            if frame is None:
                frame = frames[device.render] = device.render(event)
            if device.push(frame):
                device.cursor = event.seq
        self.head = event.seq
        if any(device.gone for device in self.devices):
            self.devices = [d for d in self.devices if not d.gone]

    async def _repair(self) -> None:
        """Catch up from the log; while the database is unavailable, retry later.

        The devices stay attached: the next message, or the periodic check, tries again, so
        they get what they missed once the database answers (docs/scaling.md, faults).
        """
        try:
            await self._catch_up()
        except StorageUnavailable as exc:
            if not self._repair_failing:
                log.warning("user %d: event log unreadable, retrying: %s", self.user_id, exc)
            self._repair_failing = True
            self._lossy = True
            return
        if self._repair_failing:
            self._repair_failing = False
            log.info("user %d: event log readable again; devices caught up", self.user_id)

    async def _catch_up(self) -> None:
        """Deliver everything the log has beyond ``head``, in order."""
        while True:
            found = await self._storage.read_events(self.user_id, self.head, self._replay_limit)
            if not found.complete:
                # Pruned before we saw it: every device must rebuild from the full library.
                for device in self.devices:
                    if device.replaying or device.cursor >= found.head:
                        continue  # a replay sees the same hole in the log and resyncs itself
                    if device.push(device.render_resync(found.head)):
                        device.cursor = found.head
                self.head = found.head
                self.devices = [d for d in self.devices if not d.gone]
                return
            for event in found.events:
                self._deliver(event)
            if not found.events or self.head >= found.head:
                return

    async def _attach(self, request: Attach) -> None:
        try:
            await self._attach_device(request)
        except StorageUnavailable as exc:  # the device is refused; the others are not affected
            log.warning("user %d: cannot attach a device: %s", self.user_id, exc)
            request.reply.fail(SessionGone(f"the log of user {self.user_id} is unreadable"))
        finally:
            # Also on a crash or cancellation: the caller must not wait for an answer that
            # will never come (its device reconnects with ``resume``).
            request.reply.fail(SessionGone(f"the session of user {self.user_id} failed"))

    async def _attach_device(self, request: Attach) -> None:
        device = request.device
        resume = request.resume
        resynced = replay = False
        found = None
        if resume is not None and resume != self.head:
            # Read before anything is sent: a failed read leaves the device with no frame.
            found = await self._storage.read_events(self.user_id, resume, 1)
        device.push(request.ready(self.head))
        device.cursor = self.head
        if found is not None and resume is not None:
            if found.complete:  # the log has all it missed: the caller streams it
                device.cursor = resume
                device.replaying = replay = True
            else:
                resynced = True
                device.push(device.render_resync(found.head))
                device.cursor = max(self.head, found.head)
        if not device.gone:
            self.devices.append(device)
        request.reply.resolve(AttachResult(self.head, resynced, replay))


def release(messages: list[Message]) -> None:
    """Answer requests that will never be handled, so that nobody waits for them forever."""
    for message in messages:
        if isinstance(message, Attach | Live):
            message.reply.fail(SessionGone("the session stopped before handling the request"))
