"""A room as one process reaches it: the handle a connection holds (see ``room_cluster.py``).

A :class:`RoomRoute` is **local** while the room's actor runs in this process (every call goes
straight to the actor) and **remote** otherwise (calls become messages for the owner, through
the cluster's relay). It keeps, per connection of this process in the room, a :class:`Conn`:
member, display name and the connection's :class:`~dramaverse.actors.room.RoomPeer`, so that
when the room moves (here, or away) the route can join every connection to the room where it
runs next; each then gets a fresh ``room.welcome``. ``stopped`` is set once the room ended for
good, wherever it ran.

State ownership: a route is the room cluster's, and only the cluster's task changes it (its
``actor``, ``conns``, ``by_peer``, ``stopped``, ``heard`` and every :class:`Conn`); the methods
under "the cluster's task" check that they run there. A connection's task uses the methods
under "the connection's side": it reads the route (``actor``, ``by_peer``, ``stopped``) and
sends the cluster a message for every change (``Enter``, ``Leave``, ``Forget``:
``room_cluster_messages.py``). The hot path takes no hop through the cluster: a command on a
local route is the actor's ``submit``, on a remote one a post to the relay's sender.

Resource handling: a route owns no task and no channel; the cluster creates routes, moves them
(local, or back to remote) and forgets them when they lead nowhere. Connections call
:meth:`RoomRoute.disconnect` whatever ended them, which never blocks.

Error handling: refusals are the room's own (``DramaverseError``), raised to the caller; a room
that is moving answers 503 without dropping the connection's membership.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from dramaverse.actors.reply import Reply
from dramaverse.actors.room import RoomActor
from dramaverse.actors.room_cluster_messages import Enter, Forget, Leave
from dramaverse.actors.room_messages import RoomGone, RoomPeer
from dramaverse.errors import Forbidden, NotFound, ServiceUnavailable

if TYPE_CHECKING:
    from dramaverse.actors.room_cluster import RoomCluster

# A connection whose join failed tells the cluster to forget it, shielded, for at most this
# long: the cluster's task never waits, so its mailbox has room unless it is stopping.
FORGET_TIMEOUT = 1.0


@dataclass(eq=False)
class Conn:
    """One connection of this process in one room (the cluster's task writes every field)."""

    id: int
    member: str
    name: str
    peer: RoomPeer
    ref: int = 0  # the current join attempt (answers to older ones are ignored)
    rejoin_at: float | None = None  # remote: send the join again at this trio time
    answer: Reply[RoomActor | None] | None = None  # a connection awaiting its relayed join
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

    # --- the connection's side: reads, and messages to the cluster ------------------------

    async def join(self, member_id: str, name: str, peer: RoomPeer) -> None:
        """Join ``peer`` as ``member_id``'s connection; raises the room's refusal.

        The cluster adds the connection to the route; then the connection joins a local actor
        itself, or the cluster answers once the owner accepted the relayed join (it repeats
        the request each beat), within ``join_timeout``."""
        if self.stopped.is_set():
            raise RoomGone(f"Room {self.code} is closed; join again.")
        reply = Reply[RoomActor | None]()
        try:
            await self.cluster.tell(Enter(self, member_id, name, peer, reply))
            with trio.move_on_after(self.cluster.join_timeout):
                await reply.done.wait()
            if not reply.done.is_set():
                raise ServiceUnavailable(f"Room {self.code} is not answering; try again.")
            actor = await reply.wait()  # raises the refusal
            if actor is not None:
                await actor.join(member_id, name, peer)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(FORGET_TIMEOUT):
                await self.cluster.tell(Forget(self, peer))
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
            await self.cluster.tell(Leave(self, peer))

    def disconnect(self, member_id: str, peer: RoomPeer) -> None:
        """The connection ended. Never blocks: a ``Forget`` that finds the cluster's mailbox
        full is lost, and the cluster sweeps the peer (``closed``) at its next heartbeat."""
        conn = self.by_peer.get(peer)
        actor = self.actor
        if actor is not None:
            actor.disconnect(member_id, peer)
        elif conn is not None:
            peer.closed = True
            self.cluster.post_quietly(self, {"op": "bye", "conn": conn.id, "member": member_id})
        if conn is not None:
            self.cluster.tell_nowait(Forget(self, peer))

    def holds(self, peer: RoomPeer) -> bool:
        """Whether ``peer`` is still a member through this route: the room did not end, the
        route did not forget it (left; refused or dropped by the owner) and the room actor did
        not drop it (replaced, evicted). What a connection reads instead of changing the peer."""
        return not self.stopped.is_set() and peer in self.by_peer and not peer.dropped

    def forget(self, peer: RoomPeer) -> None:
        """Ask the cluster to forget ``peer`` (it is out of the room). Never blocks."""
        if peer in self.by_peer:
            self.cluster.tell_nowait(Forget(self, peer))

    # --- the cluster's task ---------------------------------------------------------------

    def add(self, conn: Conn) -> None:
        self.cluster.check_owner()
        self.conns[conn.id] = conn
        self.by_peer[conn.peer] = conn

    def remove(self, peer: RoomPeer) -> Conn | None:
        """Forget ``peer``'s connection; a relayed join it still awaits is refused."""
        self.cluster.check_owner()
        conn = self.by_peer.pop(peer, None)
        if conn is not None:
            self.conns.pop(conn.id, None)
            if conn.answer is not None:
                conn.answer.fail(RoomGone(f"Room {self.code} is closed; join again."))
                conn.answer = None
        return conn

    def answered(self, conn: Conn, error: Exception | None = None) -> None:
        """Settle ``conn``'s relayed join (joined, or refused with ``error``)."""
        self.cluster.check_owner()
        if conn.answer is not None:
            if error is None:
                conn.answer.resolve(None)
            else:
                conn.answer.fail(error)
            conn.answer = None

    def end(self) -> None:
        """The room ended for good: its connections are no longer in it."""
        self.cluster.check_owner()
        self.actor = None
        self.stopped.set()
        for conn in self.conns.values():
            self.answered(conn, NotFound(f"Room {self.code} not found."))
        self.conns.clear()
        self.by_peer.clear()

    def prune(self) -> None:
        """Forget connections that are no longer members through this route (replaced by
        another connection of the member, evicted, or ended with their ``Forget`` lost), so
        that a move does not bring them back."""
        self.cluster.check_owner()
        for conn in [c for c in self.conns.values() if c.peer.gone]:
            self.remove(conn.peer)

    def go_local(self, actor: RoomActor) -> tuple[Conn, ...]:
        """The room now runs here; returns the connections to join to it (the keeper does)."""
        self.cluster.check_owner()
        self.actor = actor
        self.prune()
        for conn in self.conns.values():
            conn.rejoin_at = None
        return tuple(self.conns.values())

    def go_remote(self) -> None:
        """The room left this process: join every connection to its next owner (heartbeats)."""
        self.cluster.check_owner()
        self.actor = None
        self.heard = trio.current_time()
        self.prune()
        for conn in self.conns.values():
            conn.ref += 1
            conn.rejoin_at = self.heard
