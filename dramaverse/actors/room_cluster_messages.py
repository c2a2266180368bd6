"""What the room cluster's task receives: every change to this process's rooms and routes.

The cluster (``room_cluster.py``) is an actor: one task owns the routes and the rooms run here,
and everything that changes them is one of the messages below, in its one mailbox. They come
from three sides:

- a connection's task (through :class:`~dramaverse.actors.room_routes.RoomRoute` and
  :meth:`~dramaverse.actors.room_cluster.RoomCluster.locate`): :class:`Locate`, :class:`Enter`,
  :class:`Leave`, :class:`Forget`;
- the broker: :class:`NodeItems`, what owners sent this process's relayed members (the
  node topic's callback only ``send_nowait``\\s it), and :class:`Listening` once the node
  topic is subscribed;
- the cluster's helper tasks, which do the waiting (broker leases, storage, a room's keeper)
  and report what happened: the steps of a failover.

A room's life here is a sequence of these. It starts running here with :class:`Adopted`
(created, restored at start, adopted from a silent or dead owner), and the cluster answers
its waiters once its keeper reports :class:`Serving`. Adopting is :class:`Restore` (at start) or
a :class:`Locate` or the heartbeat's silence check (in the cluster's own task), then
:class:`LeaseTaken` or :class:`LeaseRefused` or :class:`ClaimFailed`, then :class:`Adopted` or
:class:`Vanished`. It stops with :class:`LeaseLost` (the cluster abandons the actor) and then
:class:`Moved` (local -> remote), or :class:`Ended` and, once its snapshot is settled,
:class:`Released`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dramaverse.actors.reply import Reply
from dramaverse.actors.room import RoomActor
from dramaverse.actors.room_messages import RoomPeer
from dramaverse.broker.lease import Lease
from dramaverse.errors import DramaverseError

if TYPE_CHECKING:
    from dramaverse.actors.room_routes import Conn, RoomRoute


class Origin(enum.Enum):
    """How a room came to run here."""

    CREATE = "create"  # a new room
    ADOPT = "adopt"  # a joiner or the heartbeat found it without a live owner
    RESTORE = "restore"  # the scan of stored rooms (at start, and once a lease time later)


# --- from connections ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Locate:
    """Find or adopt room ``code`` (normalised): answered with its route, or the refusal."""

    code: str
    reply: Reply[RoomRoute]


@dataclass(frozen=True, slots=True)
class Enter:
    """Add a connection to ``route``. Answered with the actor when the room runs here (the
    connection joins it itself), or None once the owner accepted a relayed join."""

    route: RoomRoute
    member: str
    name: str
    peer: RoomPeer
    reply: Reply[RoomActor | None]


@dataclass(frozen=True, slots=True)
class Leave:
    """The connection sent ``room.leave`` (a relayed one is kept until the owner answers)."""

    route: RoomRoute
    peer: RoomPeer


@dataclass(frozen=True, slots=True)
class Forget:
    """The connection is no longer in the room through ``route`` (it ended, or its join
    failed). Sent without waiting; one lost to a full mailbox is swept (``RoomRoute.prune``)."""

    route: RoomRoute
    peer: RoomPeer


# --- from the broker ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeItems:
    """One message on this process's node topic: frames and answers from owners (JSON,
    decoded in the cluster's task)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Listening:
    """This process's node topic is subscribed (from the first room it relays on, for good)."""


# --- from the cluster's helper tasks: the steps of ownership ------------------------------


@dataclass(frozen=True, slots=True)
class Restore:
    """The scan found a stored room: run it here if its lease is free. Answered True once it
    serves, False when it runs elsewhere or cannot be restored."""

    code: str
    text: str
    reply: Reply[bool]


@dataclass(frozen=True, slots=True)
class LeaseTaken:
    code: str
    lease: Lease


@dataclass(frozen=True, slots=True)
class LeaseRefused:
    """Another process holds the lease: the room runs there."""

    code: str


@dataclass(frozen=True, slots=True)
class ClaimFailed:
    """The lease or the snapshot could not be read (broker or storage down)."""

    code: str
    error: Exception


@dataclass(frozen=True, slots=True)
class Vanished:
    """The lease was taken but there is no usable snapshot: the room ended (lease released)."""

    code: str


@dataclass(frozen=True, slots=True)
class Adopted:
    """``actor`` runs here now under ``lease``; ``reply`` (a creation) is answered with the
    route once the room serves."""

    actor: RoomActor
    lease: Lease
    origin: Origin
    reply: Reply[RoomRoute] | None = None


@dataclass(frozen=True, slots=True)
class Serving:
    """The keeper of a room that started here serves its topic and joined the route's
    connections to it: ``joined``, and ``refused`` with the room's refusal."""

    actor: RoomActor
    joined: tuple[Conn, ...] = ()
    refused: tuple[tuple[Conn, DramaverseError], ...] = ()


@dataclass(frozen=True, slots=True)
class LeaseLost:
    """The lease of a room run here went to another holder: abandon the actor."""

    actor: RoomActor


@dataclass(frozen=True, slots=True)
class Moved:
    """An abandoned actor stopped and its pending snapshot was dropped: the route goes remote."""

    actor: RoomActor


@dataclass(frozen=True, slots=True)
class Ended:
    """A room run here stopped by itself (empty) or gave up (``actor.failed``); its lease is
    kept until :class:`Released`."""

    actor: RoomActor


@dataclass(frozen=True, slots=True)
class Released:
    """The lease of a room that ended or gave up here is released."""

    code: str


Message = (
    Locate
    | Enter
    | Leave
    | Forget
    | NodeItems
    | Listening
    | Restore
    | LeaseTaken
    | LeaseRefused
    | ClaimFailed
    | Vanished
    | Adopted
    | Serving
    | LeaseLost
    | Moved
    | Ended
    | Released
)
