"""Room members connected to other processes: the wire between a room's owner and the relays.

With several processes (``serve --workers N``, several machines) a room runs in one process, the
holder of its broker lease (``room_cluster.py``). A member whose socket landed on another process
is *relayed*: that process publishes the member's frames on the room's topic, ``room:<code>``,
to which only the owner subscribes, and the owner publishes the frames for that process's
members on the process's own topic, ``node:<node id>``. This module is both ends of that wire:

- :class:`~dramaverse.actors.room_sender.Sender` (one per process, ``room_sender.py``) is an
  actor whose bounded mailbox queues everything this process sends to others, batched per
  process; a frame that does not fit evicts its member as a slow consumer (4001).
- :class:`RoomPort` (one per owned room) serves the room's topic: joins, commands, clock
  replies, disconnects and heartbeats of relayed members. A relayed member is an ordinary
  :class:`~dramaverse.actors.room.RoomPeer` whose outbox is a
  :class:`~dramaverse.actors.room_sender.RelayOutbox`, so the room
  actor cannot tell it from a local connection.

Messages on ``room:<code>`` are JSON objects with ``op``: ``join`` (``node, conn, member, name,
ref``), ``cmd`` (``node, conn, member, type, data, id``), ``bye`` (``node, conn, member``) and
``beat`` (``node, conns: [[conn, member], ...]``). A message on ``node:<id>`` is ``{"items":
[...]}``, each item a list: ``["f", code, [conn, ...], frame]`` (a rendered native frame),
``["joined", code, conn, ref]``, ``["refused", code, conn, ref, status, message]``, ``["err",
code, conn, status]`` (the room answered that connection with an error frame), ``["drop", code,
conn, close code or null, reason]`` (no more frames for that connection: replaced, or evicted),
``["beat", code, unknown conns, dropped conns]`` (the answer to a heartbeat) and ``["ended",
code]`` / ``["moved", code]`` (the room stopped here for good / its lease was lost). A ``conn``
is a number unique within its process.

Delivery is best effort (the broker may drop messages): heartbeats repair membership in both
directions, the room's periodic clock pings and position reports re-converge playback, and a
command whose answer was lost is a client-side timeout. See ``docs/watch-parties.md``.

Resource handling: :meth:`RoomPort.run` is a task of a room's keeper (``room_keeper.py``); a
port's subscription lives exactly as long as its ``run``. Nothing here owns a room actor or a
connection.

Error handling: a malformed message from the broker is counted and dropped, never raised; the
wire is between our own processes, so a bad one means a version mismatch or a bug.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import trio

from dramaverse.actors.room import RoomActor
from dramaverse.actors.room_messages import RoomGone, RoomPeer, render_json
from dramaverse.actors.room_sender import RelayOutbox, Sender
from dramaverse.broker.base import Broker
from dramaverse.errors import (
    BadRequest,
    Conflict,
    DramaverseError,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
)

log = logging.getLogger(__name__)

PORT_INBOX = 256  # relayed messages waiting for one room's port; more are dropped
RELAY_TIMEOUT = 5.0  # seconds: a relayed member no heartbeat vouched for since is disconnected
MAX_NODE_LENGTH = 64


def room_topic(code: str) -> str:
    """Where a room's owner listens for its relayed members."""
    return f"room:{code}"


def decode(data: bytes) -> dict[str, Any] | None:
    """The JSON object in ``data``, or None when it is not one."""
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return message if isinstance(message, dict) else None


def error_frame(status: int, message: str, request_id: object) -> str:
    frame: dict[str, Any] = {"type": "error", "status": status, "message": message}
    if isinstance(request_id, str | int) and not isinstance(request_id, bool):
        frame["id"] = request_id
    return render_json(frame)


ERRORS: dict[int, type[DramaverseError]] = {
    error.status: error
    for error in (BadRequest, Forbidden, NotFound, Conflict, TooManyRequests, ServiceUnavailable)
}


def relayed_error(status: object, message: object) -> DramaverseError:
    """The error an owner answered with, rebuilt on the relay's side."""
    cls = ERRORS.get(status, ServiceUnavailable) if isinstance(status, int) else ServiceUnavailable
    return cls(str(message)[:500])


@dataclass(eq=False, slots=True)
class Relayed:
    """A member connected to another process, as the owner knows it."""

    member: str
    peer: RoomPeer
    seen: float  # trio time of the last join or heartbeat that vouched for it


def _is_node(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NODE_LENGTH


def _is_conn(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class RoomPort:
    """Serves ``room:<code>`` for one room owned here; see the module docstring.

    Resource handling: :meth:`run` owns the subscription and a reaper task; cancel it to stop.
    :meth:`close` tells the relaying processes that the room stopped here (call it once the
    actor stopped, before cancelling ``run``).
    """

    def __init__(
        self,
        actor: RoomActor,
        broker: Broker,
        sender: Sender,
        *,
        relay_timeout: float = RELAY_TIMEOUT,
        inbox_size: int = PORT_INBOX,
    ) -> None:
        self.actor = actor
        self.code = actor.code
        self.members: dict[tuple[str, int], Relayed] = {}
        self._broker = broker
        self._sender = sender
        self._relay_timeout = relay_timeout
        self._send, self._receive = trio.open_memory_channel[dict[str, Any]](inbox_size)
        self.dropped = 0  # messages lost because the port was behind
        self.malformed = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, report started once the subscription is active, serve until cancelled."""
        async with (
            self._broker.subscribe(room_topic(self.code), self._deliver),
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._reap)
            task_status.started()
            async for message in self._receive:
                await self._handle(message)

    def close(self, reason: str) -> None:
        """Tell every relaying process the room ``ended`` or ``moved``; forget its members."""
        for node in {node for node, _ in self.members}:
            self._sender.control(node, [reason, self.code])
        self.members.clear()

    def _deliver(self, data: bytes) -> None:
        message = decode(data)
        if message is None or not _is_node(message.get("node")):
            self.malformed += 1
            return
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self.dropped += 1  # best effort: beats repair membership, clients retry commands

    async def _handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        node: str = message["node"]
        if op == "beat":
            self._beat(node, message.get("conns"))
            return
        conn, member = message.get("conn"), message.get("member")
        if not _is_conn(conn) or not isinstance(member, str):
            self.malformed += 1
            return
        assert isinstance(conn, int)
        if op == "join":
            await self._join(node, conn, member, message.get("name"), message.get("ref"))
        elif op == "cmd":
            await self._command(node, conn, member, message)
        elif op == "bye":
            entry = self.members.pop((node, conn), None)
            if entry is not None:
                self.actor.disconnect(entry.member, entry.peer)
        else:
            self.malformed += 1

    def _peer(self, node: str, conn: int) -> RoomPeer:
        sender, code = self._sender, self.code

        def evict(close_code: int, reason: str) -> None:
            sender.control(node, ["drop", code, conn, close_code, reason])

        def on_error(status: int) -> None:
            sender.control(node, ["err", code, conn, status])

        return RoomPeer(RelayOutbox(sender, node, code, conn), evict, render_json, on_error)

    async def _join(self, node: str, conn: int, member: str, name: object, ref: object) -> None:
        key = (node, conn)
        entry = self.members.get(key)
        if entry is None or entry.peer.gone or entry.member != member:
            entry = self.members[key] = Relayed(member, self._peer(node, conn), 0.0)
        entry.seen = trio.current_time()
        try:
            await self.actor.join(member, name if isinstance(name, str) else member, entry.peer)
        except DramaverseError as error:
            if self.members.get(key) is entry:
                del self.members[key]
            self._sender.control(
                node, ["refused", self.code, conn, ref, error.status, error.message]
            )
            return
        self._sender.control(node, ["joined", self.code, conn, ref])

    async def _command(self, node: str, conn: int, member: str, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        entry = self.members.get((node, conn))
        if entry is None or entry.member != member:
            # Not a member through that connection here (the room moved, or the join was
            # lost): the relay joins again when it hears so; this command is not applied.
            self._answer(node, conn, request_id, ServiceUnavailable("The room moved; try again."))
            self._sender.control(node, ["beat", self.code, [conn], []])
            return
        if entry.peer.gone:
            self._answer(node, conn, request_id, Forbidden("You are not in this room any more."))
            return
        try:
            await self.actor.submit(
                member, message.get("type"), message.get("data"), request_id, peer=entry.peer
            )
        except RoomGone as error:
            self._answer(node, conn, request_id, error)

    def _answer(self, node: str, conn: int, request_id: object, error: DramaverseError) -> None:
        frame = error_frame(error.status, error.message, request_id)
        self._sender.frame(node, self.code, conn, frame)

    def _beat(self, node: str, conns: object) -> None:
        if not isinstance(conns, list):
            self.malformed += 1
            return
        now = trio.current_time()
        unknown: list[int] = []
        dropped: list[int] = []
        listed: set[int] = set()
        for pair in conns:
            if not (isinstance(pair, list) and len(pair) == 2 and _is_conn(pair[0])):
                continue
            conn, member = pair
            listed.add(conn)
            entry = self.members.get((node, conn))
            if entry is None or entry.member != member:
                unknown.append(conn)
            elif entry.peer.gone:  # replaced by another connection, or evicted
                del self.members[(node, conn)]
                dropped.append(conn)
            else:
                entry.seen = now
        for key in [k for k in self.members if k[0] == node and k[1] not in listed]:
            entry = self.members.pop(key)  # the relay forgot it: its goodbye was lost
            self.actor.disconnect(entry.member, entry.peer)
        self._sender.control(node, ["beat", self.code, unknown, dropped])

    async def _reap(self) -> None:
        """Disconnect relayed members no heartbeat vouched for lately (their process died)."""
        while True:
            await trio.sleep(self._relay_timeout / 2)
            cutoff = trio.current_time() - self._relay_timeout
            for key in [k for k, e in self.members.items() if e.seen < cutoff]:
                entry = self.members.pop(key)
                self.actor.disconnect(entry.member, entry.peer)
