"""Bounded outboxes: how actors hand frames to connections without ever waiting on them.

Every connection (a native WebSocket, a Socket.IO session, a relay to another process) drains a
bounded queue of frames. An actor pushes with :func:`push_frame`, which never blocks: a full
queue means the connection cannot keep up, and it is evicted with close code 4001 (slow
consumer) rather than slowing the actor and everyone else it serves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio

from dramaverse.domain.close_codes import CloseCode


class Outbox(Protocol):
    """Where a connection's frames go: ``send_nowait`` raises ``trio.WouldBlock`` when full and
    ``trio.BrokenResourceError``/``ClosedResourceError`` when the connection is gone."""

    def send_nowait(self, value: str) -> None: ...


class Receiver(Protocol):
    """What :func:`push_frame` needs of a device or a room peer."""

    @property
    def outbox(self) -> Outbox: ...

    @property
    def evict(self) -> Callable[[int, str], None]: ...

    gone: bool


def push_frame(receiver: Receiver, frame: str) -> bool:
    """Queue ``frame`` without waiting; evict ``receiver`` when its outbox is full.

    Returns False when the frame was not queued (the receiver is gone or was just evicted).
    """
    if receiver.gone:
        return False
    try:
        receiver.outbox.send_nowait(frame)
    except trio.WouldBlock:
        receiver.gone = True
        receiver.evict(CloseCode.SLOW_CONSUMER, "slow consumer: outbox full")
        return False
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        receiver.gone = True
        return False
    return True
