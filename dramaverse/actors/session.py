"""The UserSession actor: one per user with a live connection in this process.

It subscribes to the broker topic ``user:<id>``, keeps ``head`` (the last event delivered), and
pushes each event, in sequence order, to every attached device's bounded outbox. It never waits
on a device: a full outbox gets the device evicted with close code 4001 (slow consumer).

Gaps are expected and repaired: the broker is best effort, concurrent writers publish in any
order, and an inbox that overflowed drops messages. Whenever an event arrives more than one past
``head``, when the inbox overflowed, when the broker reports a gap (``on_gap``: it reconnected to
Redis), and periodically while idle, the actor reads the missing range from the durable log. A
device that resumes gets its missed events from the log too, or a ``resync`` frame when the log
no longer has them. While the database is unavailable a repair fails without stopping the
actor: its devices stay attached and the repair is retried (next message or periodic check).

Resource handling: the hub owns the nursery the actor runs in and the inbox's send side; the
actor owns the receive side and the broker subscription, and exits (closing its inbox) after its
last device has been gone for ``grace`` seconds.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from dramaverse.actors.outbox import push_frame
from dramaverse.broker.base import Broker
from dramaverse.domain.events import UserEvent
from dramaverse.errors import StorageUnavailable
from dramaverse.storage.base import Storage

log = logging.getLogger(__name__)

INBOX_SIZE = 256


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
    """

    outbox: trio.MemorySendChannel[str]
    evict: Callable[[int, str], None]
    render: Callable[[UserEvent], str] = UserEvent.frame
    render_resync: Callable[[int], str] = resync_frame
    cursor: int = 0
    gone: bool = False

    def push(self, frame: str) -> bool:
        """Queue a frame without waiting; evict the device when its outbox is full."""
        return push_frame(self, frame)


@dataclass(frozen=True, slots=True)
class AttachResult:
    head: int
    resynced: bool


@dataclass(eq=False)
class Attach:
    """Attach ``device``; ``ready(head)`` renders the frame it gets first."""

    device: Device
    resume: int | None
    ready: Callable[[int], str]
    done: trio.Event = field(default_factory=trio.Event)
    result: AttachResult | None = None


@dataclass(frozen=True, slots=True)
class Detach:
    device: Device


@dataclass(frozen=True, slots=True)
class Published:
    raw: bytes


@dataclass(frozen=True, slots=True)
class Gap:
    """The broker may have lost messages (it reconnected): repair from the log now."""


Message = Attach | Detach | Published | Gap


class UserSession:
    """The actor. Create it, start ``run`` in a nursery, talk to it through ``inbox``."""

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
    ) -> None:
        self.user_id = user_id
        self.inbox, self._receive = trio.open_memory_channel[Message](INBOX_SIZE)
        self.devices: list[Device] = []
        self.head = 0
        self.ready = trio.Event()
        self.stopped = trio.Event()
        self._storage = storage
        self._broker = broker
        self._grace = grace
        self._check_interval = check_interval
        self._replay_limit = replay_limit
        self._on_exit = on_exit
        self._lossy = False
        self._repair_failing = False

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

    async def run(self) -> None:
        try:
            async with self._broker.subscribe(
                user_topic(self.user_id), self._on_published, on_gap=self._on_gap
            ):
                # Subscribe first, then read the head: anything published in between is either
                # at or below the head (skipped) or above it (delivered).
                self.head = await self._storage.event_head(self.user_id)
                self.ready.set()
                await self._loop()
        finally:
            self._on_exit(self)
            # Requests still queued (only if the actor crashed) must not wait forever.
            while True:
                try:
                    pending = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if isinstance(pending, Attach):
                    pending.done.set()
            self._receive.close()
            for device in self.devices:
                device.gone = True
            self.stopped.set()

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
                        return  # idle past the grace period with no device: stop
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
                device.gone = True
                self.devices = [d for d in self.devices if d is not device]
            case Gap():
                await self._repair()

    def _deliver(self, event: UserEvent) -> None:
        frames: dict[Callable[[UserEvent], str], str] = {}
        for device in self.devices:
            if device.cursor >= event.seq:
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
        finally:
            request.done.set()  # also on failure: the caller sees no result and gives up

    async def _attach_device(self, request: Attach) -> None:
        device = request.device
        resynced = False
        found = None
        if request.resume is not None and request.resume != self.head:
            # Read before anything is sent: a failed read leaves the device with no frame.
            found = await self._storage.read_events(
                self.user_id, request.resume, self._replay_limit
            )
        device.push(request.ready(self.head))
        device.cursor = self.head
        if found is not None and request.resume is not None:
            fits = found.head - request.resume <= len(found.events)
            if found.complete and fits:
                for event in found.events:
                    device.push(device.render(event))
                replayed = found.events[-1].seq if found.events else 0
                device.cursor = max(self.head, request.resume, replayed)
            else:
                resynced = True
                device.push(device.render_resync(found.head))
                device.cursor = max(self.head, found.head)
        if not device.gone:
            self.devices.append(device)
        request.result = AttachResult(self.head, resynced)
