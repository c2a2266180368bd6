"""Streaming a device's missed events from the durable log, at the pace the device takes them.

A device that resumes from far behind (hundreds of events: a phone that slept over a busy day)
must get every event the log still holds, whatever its outbox size. The session actor cannot
send them: it never waits on one client. So the replay runs in the *connection's* task (through
``SessionHub.attach``): it reads the log in pages and queues each frame only while the device's
outbox has room, so a slow device slows down its own replay and nothing else. The session actor
meanwhile delivers live events to the user's other devices and skips this one (it is
``replaying``); when the replay has reached the end of the log, the hub hands the device over to
the actor (``Live``), which either takes it live or, if it delivered newer events meanwhile,
sends the replay back for another round. So the device sees every event once, in order.

The replay keeps a quarter of the outbox free (``high_water``): the connection's own frames
(acks, pings, Engine.IO heartbeats) and the first live events after the hand-over must not find
it full, or the device would be evicted as slow although it keeps up.

A device whose outbox stays above that mark without taking a frame for ``patience`` seconds is
evicted as a slow consumer (4001), exactly like one whose outbox overflows during live delivery.

Resource handling: nothing is owned here; the caller's task runs the replay and the device's
connection owns the outbox. That task is the connection's, so a device the replay cannot feed
(evicted, its outbox closed) is marked ``closed``, the connection's flag, never ``dropped``,
the actor's (``actors/outbox.py``).
"""

from __future__ import annotations

import math

import trio

from dramaverse.actors.outbox import offer
from dramaverse.actors.session import Device
from dramaverse.domain.close_codes import CloseCode
from dramaverse.storage.base import Storage

PAGE = 128  # events per log read

# trio's memory channels cannot wait until they are below a mark, and the transports that drain
# them are not ours to hook, so a full outbox is polled: soon at first (a healthy client drains
# it in milliseconds), less often while it stays stuck.
POLL_FIRST_SECONDS = 0.005
POLL_MAX_SECONDS = 0.25


def high_water(capacity: float) -> float:
    """How full the replay lets an outbox of ``capacity`` get: three quarters, at least 1."""
    if math.isinf(capacity):
        return capacity
    return max(1, capacity - max(1, int(capacity) // 4))


async def stream_replay(
    storage: Storage, user_id: int, device: Device, *, patience: float, page: int = PAGE
) -> None:
    """Queue the log's events after ``device.cursor`` for ``device``, up to the log's head.

    ``device.cursor`` follows every frame queued. Events the log no longer holds become one
    resync frame (``render_resync``) and the replay continues after it. Returns when the replay
    reached the head it last read, or when the device is gone (detached or evicted as slow).

    Error handling: storage errors propagate to the caller; the device is left as it was.
    """
    while not device.gone:
        found = await storage.read_events(user_id, device.cursor, page)
        if not found.complete:  # pruned under the device's feet: it must rebuild
            if not await wait_for_room(device, patience) or not _push(
                device, device.render_resync(found.head)
            ):
                return
            device.cursor = found.head
            continue
        for event in found.events:
            if not await wait_for_room(device, patience) or not _push(device, device.render(event)):
                return
            device.cursor = event.seq
        if not found.events or device.cursor >= found.head:
            return


def _push(device: Device, frame: str) -> bool:
    """Queue a replayed frame; a device that cannot take it (evicted, its outbox closed) is
    ``closed``: its connection is ending."""
    if offer(device, frame):
        return True
    device.closed = True
    return False


async def wait_for_room(device: Device, patience: float) -> bool:
    """Wait until ``device``'s outbox is below its high-water mark.

    False when the device is gone, or was stuck for ``patience`` seconds and got evicted."""
    outbox = device.outbox
    stats = outbox.statistics()
    mark = high_water(stats.max_buffer_size)
    used = stats.current_buffer_used
    delay = POLL_FIRST_SECONDS
    stuck_since = trio.current_time()
    while used >= mark and not device.gone:
        await trio.sleep(delay)
        now_used = outbox.statistics().current_buffer_used
        if now_used < used:  # it took frames: slow perhaps, but not stuck
            stuck_since = trio.current_time()
            delay = POLL_FIRST_SECONDS
        elif trio.current_time() - stuck_since >= patience:
            device.closed = True
            device.evict(CloseCode.SLOW_CONSUMER, "slow consumer: outbox full")
        else:
            delay = min(delay * 2, POLL_MAX_SECONDS)
        used = now_used
    return not device.gone
