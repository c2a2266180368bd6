r"""The relay's sender: everything this process publishes to other processes' rooms.

With several processes (``room_relay.py`` describes the wire) a room's owner sends the frames
of members connected elsewhere to their process's topic, ``node:<node id>``, and a process
sends its relayed members' messages to the owner's topic, ``room:<code>``. One
:class:`Sender` per process queues all of it and its task publishes it. Frames for one process
are **batched** (one broker message carries everything queued for that process, up to
``MAX_BATCH_ITEMS`` items) and a broadcast rendered once is sent once per process, with the
list of its connections. The backlog is bounded (``MAX_BACKLOG`` frames and posts, for all
processes together): a frame that does not fit evicts its member as a slow consumer (4001),
exactly like a full local outbox (``send_nowait``; a full mailbox is never awaited), so a
stuck relay never holds up a room. A relayed member's outbox, as the room actor sees it, is a
:class:`RelayOutbox` on the sender.

Resource handling: :meth:`Sender.run` is a task of the room cluster's nursery; the mailbox's
send side lives on the sender and is shared by every caller, which only ever ``send_nowait``\s
on it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import trio

from dramaverse.broker.base import Broker

log = logging.getLogger(__name__)

# Frames and posts queued (for every other process together) before frames evict their member
# (4001) and posts are refused (503); controls may fill twice as many. A relayed broadcast
# counts once per member (merged when published), a command or heartbeat once.
MAX_BACKLOG = 10_000
MAX_BATCH_ITEMS = 256  # items per broker message to one process

Item = list[Any]
# A Sender's mailbox entry: (node, item) for another process's members, (topic, payload) for
# a room's owner. Tuples, not dataclasses: one is queued per relayed frame.
Queued = tuple[str, Item | bytes]


def node_topic(node: str) -> str:
    """Where a process listens for the frames of the members it relays."""
    return f"node:{node}"


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class Sender:
    """Everything this process publishes to other processes' room members and owners: an actor
    whose one mailbox is a bounded memory channel.

    ``frame`` and ``control`` queue items for one process (``node``); ``post`` queues a message
    for a room's owner. None of them blocks (``send_nowait``); :meth:`run` publishes, in order.

    Bounds: the mailbox holds ``2 * max_backlog`` entries. A frame or a post that finds
    ``max_backlog`` entries queued is refused (the frame's member is evicted as a slow
    consumer, 4001; the post's caller answers 503), so the other half is kept for controls:
    the eviction notice (``drop``) of a refused frame, joins answered, heartbeats. A broadcast
    rendered once is merged into one item per process when published, not when queued, so it
    counts once per relayed member against the bound.

    Cost: about 1.05 µs of CPU per relayed frame, queued and published, against 0.45 µs for the
    dict of deques with a wake ``Event`` this mailbox replaced (``bench.relay_sender_bench``,
    bench/README.md): a channel send and receive per frame, where the deque merged a broadcast
    into the item already queued. Frames to members on this process never come here.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        max_backlog: int = MAX_BACKLOG,
        max_batch: int = MAX_BATCH_ITEMS,
    ) -> None:
        self._broker = broker
        self._max_backlog = max_backlog
        self._max_batch = max_batch
        self._mailbox, self._receive = trio.open_memory_channel[Queued](2 * max_backlog)
        # What the mailbox holds is sent - taken: each counter has one side as its writer
        # (trio's channel statistics cost four times a send, and this runs once per frame).
        self._sent = 0  # entries queued (the rooms', ports' and connections' tasks)
        self._taken = 0  # entries received (the sender's task)
        self.published = 0  # broker messages (the sender's task)
        self.refused = 0  # frames refused because the backlog was full (the rooms' tasks)

    def counters(self) -> dict[str, int]:
        """Broker messages published, frames refused for a full backlog (``metrics.py``)."""
        return {"published": self.published, "refused": self.refused}

    def _behind(self) -> bool:
        return self._sent - self._taken >= self._max_backlog

    def frame(self, node: str, code: str, conn: int, frame: str) -> bool:
        """Queue ``frame`` for connection ``conn`` of ``node``; False when the backlog is full."""
        if self._behind():
            self.refused += 1
            return False
        try:
            self._mailbox.send_nowait((node, ["f", code, [conn], frame]))
        except trio.WouldBlock:  # controls filled the rest
            self.refused += 1
            return False
        self._sent += 1
        return True

    def control(self, node: str, item: Item) -> None:
        """Queue a control item for ``node``. Controls are few (a handful per member and
        room), so they may use the whole mailbox, twice the bound of frames."""
        try:
            self._mailbox.send_nowait((node, item))
        except trio.WouldBlock:
            log.warning("relay to node %s is far behind: %s dropped", node, item[0])
            return
        self._sent += 1

    def post(self, topic: str, message: dict[str, Any]) -> bool:
        """Queue ``message`` for the owner listening on ``topic``; False when too much waits.
        Raises TypeError or ValueError when ``message`` is not JSON."""
        payload = encode(message)
        if self._behind():
            return False
        try:
            self._mailbox.send_nowait((topic, payload))
        except trio.WouldBlock:
            return False
        self._sent += 1
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish what is queued until cancelled: each wake-up takes everything queued, then
        publishes the posts in order and, per process, its items in order, ``max_batch`` to a
        broker message, consecutive copies of one broadcast merged into one item."""
        task_status.started()
        async for first in self._receive:
            posts, nodes = self._take(first)
            for topic, payload in posts:
                await self._publish(topic, payload)
            for node, items in nodes.items():
                for start in range(0, len(items), self._max_batch):
                    batch = items[start : start + self._max_batch]
                    await self._publish(node_topic(node), encode({"items": batch}))

    def _take(self, first: Queued) -> tuple[list[tuple[str, bytes]], dict[str, list[Item]]]:
        """``first`` and everything queued after it: the posts, and each process's items with
        consecutive copies of one broadcast (the same string for the same room: a room renders
        a broadcast once) merged into one item listing their connections."""
        posts: list[tuple[str, bytes]] = []
        nodes: dict[str, list[Item]] = {}
        receive = self._receive.receive_nowait
        entry = first
        taken = 0
        try:
            while True:
                taken += 1
                key, value = entry
                if isinstance(value, bytes):
                    posts.append((key, value))
                elif (items := nodes.get(key)) is None:
                    nodes[key] = [value]
                else:
                    last = items[-1]
                    if value[0] == last[0] == "f" and last[3] is value[3] and last[1] == value[1]:
                        last[2].extend(value[2])
                    else:
                        items.append(value)
                entry = receive()
        except trio.WouldBlock:
            pass
        self._taken += taken
        return posts, nodes

    async def _publish(self, topic: str, payload: bytes) -> None:
        self.published += 1
        await self._broker.publish(topic, payload)


@dataclass(eq=False, slots=True)
class RelayOutbox:
    """A relayed member's outbox, as the room actor sees it: frames go to the sender."""

    sender: Sender
    node: str
    code: str
    conn: int

    def send_nowait(self, value: str) -> None:
        if not self.sender.frame(self.node, self.code, self.conn, value):
            raise trio.WouldBlock
