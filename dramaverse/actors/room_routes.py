"""A room as one process reaches it: the handle a connection holds (see ``room_cluster.py``).

A :class:`RoomRoute` is **local** while the room's actor runs in this process (every call goes
straight to the actor) and **remote** otherwise (calls become messages for the owner, through
the cluster's relay). It keeps, per connection of this process in the room, a :class:`Conn`:
member, display name and the connection's :class:`~dramaverse.actors.room.RoomPeer`, so that
when the room moves (here, or away) the route can join every connection to the room where it
runs next; each then gets a fresh ``room.welcome``. ``stopped`` is set once the room ended for
good, wherever it ran.

Resource handling: a route owns no task and no channel; the cluster creates routes, moves them
(``attach_local``, or back to remote) and forgets them (``tidy``) when they lead nowhere.
Connections call :meth:`RoomRoute.disconnect` whatever ended them, which never blocks.

Error handling: refusals are the room's own (``DramaverseError``), raised to the caller; a room
that is moving answers 503 without dropping the connection's membership.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from dramaverse.actors.reply import Reply
from dramaverse.actors.room import RoomActor
from dramaverse.actors.room_messages import RoomGone, RoomPeer
from dramaverse.errors import DramaverseError, Forbidden, NotFound, ServiceUnavailable

if TYPE_CHECKING:
    from dramaverse.actors.room_cluster import RoomCluster


@dataclass(eq=False)
class Conn:
    """One connection of this process in one room."""

    id: int
    member: str
    name: str
    peer: RoomPeer
    ref: int = 0  # the current join attempt (answers to older ones are ignored)
    rejoin_at: float | None = None  # remote: send the join again at this trio time
    answer: Reply[None] | None = None  # a connection awaiting its relayed join
    leaving_until: float | None = None  # remote: left; kept until then for the answer


@dataclass(eq=False)
class RoomRoute:
    """How this process reaches one room; the connections' handle (see the module docstring)."""

    cluster: RoomCluster
    code: str
    actor: RoomActor | None = None  # set while the room runs here
    conns: dict[int, Conn] = field(default_factory=dict)
    by_peer: dict[RoomPeer, Conn] = field(default_factory=dict)
    stopped: trio.Event = field(default_factory=trio.Event)  # the room ended for good
    heard: float = field(default_factory=trio.current_time)  # last word from a remote owner

    async def join(self, member_id: str, name: str, peer: RoomPeer) -> None:
        """Join ``peer`` as ``member_id``'s connection; raises the room's refusal."""
        if self.stopped.is_set():
            raise RoomGone(f"Room {self.code} is closed; join again.")
        conn = Conn(next(self.cluster.conn_ids), member_id, name, peer)
        self.conns[conn.id] = conn
        self.by_peer[peer] = conn
        try:
            if self.actor is not None:
                await self.actor.join(member_id, name, peer)
            else:
                await self.cluster.join_remote(self, conn)
        except BaseException:
            self.forget(peer)
            raise

    async def submit(
        self,
        member_id: str,
        kind: object,
        data: object,
        request_id: object = None,
        *,
        peer: RoomPeer,
    ) -> None:
        """Send a command; its answer reaches ``peer``."""
        actor = self.actor
        if actor is not None:
            try:
                await actor.submit(member_id, kind, data, request_id, peer=peer)
            except RoomGone:
                if not actor.abandoned:
                    raise
                # Not RoomGone: the connection stays in the room, which it follows.
                raise ServiceUnavailable(f"Room {self.code} is moving; try again.") from None
        else:
            conn = self.by_peer.get(peer)
            if conn is None:
                raise Forbidden(f"You are not in room {self.code}: join it first.")
            self.cluster.post(
                self,
                {"op": "cmd", "conn": conn.id, "member": member_id, "type": kind}
                | {"data": data, "id": request_id},
            )
        if kind == "room.leave":
            conn = self.by_peer.get(peer)
            if self.actor is None and conn is not None:  # the owner's answer is on its way
                conn.leaving_until = trio.current_time() + self.cluster.join_timeout
            else:
                self.forget(peer)

    def disconnect(self, member_id: str, peer: RoomPeer) -> None:
        """The connection ended. Never blocks."""
        conn = self.forget(peer)
        if self.actor is not None:
            self.actor.disconnect(member_id, peer)
        elif conn is not None:
            peer.closed = True
            self.cluster.post(self, {"op": "bye", "conn": conn.id, "member": member_id})

    def holds(self, peer: RoomPeer) -> bool:
        """Whether ``peer`` is still a member through this route: the room did not end, the
        route did not forget it (left; refused or dropped by the owner) and the room actor did
        not drop it (replaced, evicted). What a connection reads instead of changing the peer."""
        return not self.stopped.is_set() and peer in self.by_peer and not peer.dropped

    def forget(self, peer: RoomPeer) -> Conn | None:
        conn = self.by_peer.pop(peer, None)
        if conn is not None:
            self.conns.pop(conn.id, None)
            if conn.answer is not None:  # ignored when it was answered
                conn.answer.fail(RoomGone(f"Room {self.code} is closed; join again."))
        self.cluster.tidy(self)
        return conn

    def end(self) -> None:
        """The room ended for good: its connections are no longer in it."""
        self.actor = None
        self.stopped.set()
        for conn in list(self.conns.values()):
            if conn.answer is not None:
                conn.answer.fail(NotFound(f"Room {self.code} not found."))
        self.conns.clear()
        self.by_peer.clear()
        self.cluster.tidy(self)

    def prune(self) -> None:
        """Forget connections that are no longer members through this route (replaced by
        another connection of the member, or evicted), so that a move does not bring them back."""
        for conn in [c for c in self.conns.values() if c.peer.gone]:
            self.forget(conn.peer)

    async def attach_local(self, actor: RoomActor) -> None:
        """The room now runs here: join every connection to it (each gets a fresh welcome)."""
        self.actor = actor
        self.prune()
        for conn in list(self.conns.values()):
            conn.rejoin_at = None
            try:
                await actor.join(conn.member, conn.name, conn.peer)
            except DramaverseError as error:
                if conn.answer is not None:  # a relayed join under way gets this refusal
                    conn.answer.fail(error)
                self.forget(conn.peer)
            if conn.answer is not None:
                conn.answer.resolve(None)  # a relayed join under way is answered by this one
