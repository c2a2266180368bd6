"""Bounded outboxes: how actors hand frames to connections without ever waiting on them.

Every connection (a native WebSocket, a Socket.IO session, a relay to another process) drains a
bounded queue of frames. An actor pushes with :func:`push_frame`, which never blocks: a full
queue means the connection cannot keep up, and it is evicted with close code 4001 (slow
consumer) rather than slowing the actor and everyone else it serves.

State ownership: a receiver (a session's device, a room's peer) carries two flags, each written
by one side only. ``dropped`` is the actor's: it no longer delivers there (evicted, replaced,
detached, the actor stopped); ``closed`` is the connection's: it ended or is ending (its task
detaches it, or evicts it during a replay it streams itself). Everyone reads ``gone``, either
of them. :func:`push_frame` is for the actor's task (it sets ``dropped``); a connection's task
that pushes (a replay) uses :func:`offer` and records a failure in ``closed``.
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
    """What :func:`push_frame` needs of a device or a room peer (flags: module docstring)."""

    @property
    def outbox(self) -> Outbox: ...

    @property
    def evict(self) -> Callable[[int, str], None]: ...

    dropped: bool  # written by the actor's task only
    closed: bool  # written by the connection's task only

    @property
    def gone(self) -> bool: ...


def offer(receiver: Receiver, frame: str) -> bool:
    """Queue ``frame`` without waiting, marking nothing; evict ``receiver`` when its outbox is
    full. Returns False when the frame was not queued (the receiver is gone, was just evicted,
    or its connection closed the outbox)."""
    if receiver.gone:
        return False
    try:
        receiver.outbox.send_nowait(frame)
    except trio.WouldBlock:
        receiver.evict(CloseCode.SLOW_CONSUMER, "slow consumer: outbox full")
        return False
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


def push_frame(receiver: Receiver, frame: str) -> bool:
    """:func:`offer` from the actor's task: a receiver that could not take the frame is
    ``dropped``, so the actor delivers nothing more to it (and evicts it once)."""
    if offer(receiver, frame):
        return True
    receiver.dropped = True
    return False
