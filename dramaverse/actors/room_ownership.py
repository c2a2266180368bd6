"""Which rooms run here, in the room cluster's task: adopting, starting, moving and ending.

:class:`Ownership` handles the ownership messages of ``room_cluster_messages.py`` (it draws a
room's sequence) for the cluster's task, and starts the helper tasks of ``room_keeper.py``
that do the waiting. It keeps, per room code, at most one :class:`Claim` (a room being adopted
or started here, with whoever waits for it), and the codes of rooms that ended or gave up here
whose lease is not released yet:

- ``Locate`` (a joiner, no route here), ``Restore`` (the scan of stored rooms) or
  :meth:`Ownership.silent` (a remote route's owner went silent) open a claim and start
  ``Keeper.claim``; ``LeaseRefused`` closes it (the joiners get a remote route; the scan skips
  the room), ``LeaseTaken`` starts ``Keeper.restore``, which answers ``Adopted`` or
  ``Vanished`` (no snapshot: a silent owner's route ends, joiners get 404).
- ``Adopted`` (also a room created here) makes the route local and starts the room's
  ``Keeper.keep``, whose ``Serving`` answers the claim's waiters with the route.
- ``LeaseLost`` abandons the actor; ``Moved`` makes its route remote. ``Ended`` ends the
  route and keeps the code ending (404) or resting (503: it comes back from its snapshot)
  until ``Released``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dramaverse.actors.reply import Reply
from dramaverse.actors.room_cluster_messages import (
    Adopted,
    ClaimFailed,
    Ended,
    LeaseLost,
    LeaseRefused,
    LeaseTaken,
    Locate,
    Moved,
    Origin,
    Released,
    Restore,
    Serving,
    Vanished,
)
from dramaverse.actors.room_keeper import Keeper, release
from dramaverse.actors.room_routes import RoomRoute
from dramaverse.broker.base import BrokerUnavailable
from dramaverse.broker.lease import Lease
from dramaverse.errors import NotFound, ServiceUnavailable

if TYPE_CHECKING:
    from dramaverse.actors.room_cluster import RoomCluster

log = logging.getLogger(__name__)

OwnershipMessage = (
    Locate
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


@dataclass(eq=False)
class Claim:
    """The cluster's record of a room it is adopting or starting (one per code): who waits."""

    route: RoomRoute | None = None  # the remote route whose owner went silent
    text: str | None = None  # the snapshot, when the scan already read it
    locates: list[Reply[RoomRoute]] = field(default_factory=list)
    restore: Reply[bool] | None = None
    created: Reply[RoomRoute] | None = None

    def fail(self, error: Exception) -> None:
        for reply in self.locates:
            reply.fail(error)
        for waiting in (self.restore, self.created):
            if waiting is not None:
                waiting.fail(error)


class Ownership:
    """The cluster's record of the rooms it adopts, runs and ends (its task only).

    ``start(fn, *args)`` starts a helper task in the cluster's nursery."""

    def __init__(self, cluster: RoomCluster, keeper: Keeper, start: Callable[..., None]) -> None:
        self._cluster = cluster
        self._keeper = keeper
        self._start = start
        self.claims: dict[str, Claim] = {}  # rooms being adopted or started here
        self.ending: set[str] = set()  # ended here; lease kept until the snapshot is deleted
        self.resting: set[str] = set()  # gave up here; lease kept until the snapshot is written
        self.takeovers = 0  # rooms adopted from a process that lost them

    def handle(self, message: OwnershipMessage) -> None:
        match message:
            case Locate(code, reply):
                self._locate(code, reply)
            case Restore(code, text, reply):
                known = self._cluster.find(code) is not None or code in self.ending
                if known or code in self.claims:
                    reply.resolve(False)
                else:
                    self._claim(code, Claim(text=text, restore=reply))
            case LeaseTaken(code, lease):
                self._lease_taken(code, lease)
            case LeaseRefused(code):
                self._lease_refused(code)
            case ClaimFailed(code, error):
                self._claim_failed(code, error)
            case Vanished(code):
                self._vanished(code)
            case Adopted():
                self._adopted(message)
            case Serving():
                self._serving(message)
            case LeaseLost(actor):
                actor.abandon()  # it stops; its keeper then reports Moved
            case Moved(actor):
                route = self._cluster.routes.get(actor.code)
                if route is not None and route.actor is actor:
                    route.go_remote()  # its connections rejoin at the next beat
                    self._cluster.listen()
                    self._cluster.tidy(route)
            case Ended(actor):
                route = self._cluster.routes.get(actor.code)
                if route is not None and route.actor is actor:
                    route.end()
                    self._cluster.tidy(route)
                (self.resting if actor.failed else self.ending).add(actor.code)
            case Released(code):
                self.ending.discard(code)
                self.resting.discard(code)

    def silent(self, route: RoomRoute) -> None:
        """``route``'s owner has not been heard from for a while: try its lease."""
        if route.code not in self.claims:
            self._claim(route.code, Claim(route=route))

    def stop(self, error: Exception) -> None:
        """The cluster stops: whoever waits on a claim gets ``error``."""
        for claim in self.claims.values():
            claim.fail(error)
        self.claims.clear()

    def _claim(self, code: str, claim: Claim) -> None:
        self.claims[code] = claim
        self._start(self._keeper.claim, code)

    def _locate(self, code: str, reply: Reply[RoomRoute]) -> None:
        cluster = self._cluster
        route = cluster.find(code)
        if route is not None:
            reply.resolve(route)
        elif code in self.resting:
            reply.fail(ServiceUnavailable(f"Room {code} is restarting; join again in a moment."))
        # One process adopts only a room that gave up (its snapshot stays, its code is taken).
        elif code in self.ending or not (cluster.shared or cluster.writer.taken(code)):
            reply.fail(NotFound(f"Room {code} not found."))
        else:
            if code not in self.claims:
                self._claim(code, Claim())
            self.claims[code].locates.append(reply)

    def _lease_taken(self, code: str, lease: Lease) -> None:
        claim = self.claims.get(code)
        unwanted = claim is None or code in self.ending
        if claim is not None and claim.route is not None and not unwanted:
            unwanted = self._cluster.routes.get(code) is not claim.route  # it ended meanwhile
        if not unwanted:
            assert claim is not None
            origin = Origin.RESTORE if claim.restore is not None else Origin.ADOPT
            self._start(self._keeper.restore, code, lease, claim.text, origin)
            return
        self._start(release, lease)
        if claim is not None:
            self._close(code, NotFound(f"Room {code} not found."))

    def _lease_refused(self, code: str) -> None:
        claim = self.claims.pop(code, None)
        if claim is None:
            return
        if claim.restore is not None:
            claim.restore.resolve(False)  # runs in another process
        if claim.locates:
            self._cluster.relay(self._cluster.route(code), claim.locates)  # someone runs it
        self._tidy(claim)

    def _claim_failed(self, code: str, error: Exception) -> None:
        claim = self.claims.pop(code, None)
        if claim is None:
            return
        if claim.route is not None and not isinstance(error, BrokerUnavailable):
            log.error("room %s not adopted", code, exc_info=error)  # the next beat tries again
        claim.fail(error)
        self._tidy(claim)

    def _vanished(self, code: str) -> None:
        claim = self._close(code, NotFound(f"Room {code} not found."))
        route = claim.route if claim is not None else None
        if route is not None and self._cluster.routes.get(code) is route and route.actor is None:
            route.end()  # no snapshot: the room ended
            self._cluster.tidy(route)

    def _close(self, code: str, error: Exception) -> Claim | None:
        """End a claim without the room running here: a scan's restore is skipped (False),
        joiners get ``error``."""
        claim = self.claims.pop(code, None)
        if claim is not None:
            if claim.restore is not None:
                claim.restore.resolve(False)
            claim.fail(error)
            self._tidy(claim)
        return claim

    def _adopted(self, message: Adopted) -> None:
        actor, code = message.actor, message.actor.code
        claim = self.claims.setdefault(code, Claim())
        if message.reply is not None:
            claim.created = message.reply
        if message.origin is Origin.ADOPT:
            self.takeovers += 1
            log.info("room %s restored here from its snapshot (lease taken)", code)
        rejoin = self._cluster.route(code).go_local(actor)
        self._start(self._keeper.keep, actor, message.lease, rejoin)

    def _serving(self, message: Serving) -> None:
        code = message.actor.code
        route = self._cluster.routes.get(code)
        if route is not None and route.actor is message.actor:
            for conn in message.joined:
                route.answered(conn)  # a relayed join under way is answered by this one
            for conn, error in message.refused:
                route.answered(conn, error)
                route.remove(conn.peer)
        claim = self.claims.pop(code, None)
        if claim is None:
            return
        route = self._cluster.route(code)
        waiting: list[Reply[Any]] = [*claim.locates]
        if claim.created is not None:
            waiting.append(claim.created)
        for reply in waiting:
            reply.resolve(route)
        if claim.restore is not None:
            claim.restore.resolve(True)

    def _tidy(self, claim: Claim) -> None:
        if claim.route is not None:
            self._cluster.tidy(claim.route)
