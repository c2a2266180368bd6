"""The waiting half of room ownership: the room cluster's helper tasks (``room_cluster.py``).

The cluster's task never waits on the broker, on storage or on a room. What does is here: each
method of :class:`Keeper` is a task the cluster's task starts in its own nursery, which waits,
then reports what happened as a message to the cluster's mailbox
(``room_cluster_messages.py``). None of them reads or changes a route.

- :meth:`Keeper.scan` reads the stored rooms (at start, and once more a lease time later) and
  asks the cluster to ``Restore`` each; the cluster claims those it does not know.
- :meth:`Keeper.claim` takes a room's lease: ``LeaseTaken``, ``LeaseRefused`` (another process
  runs the room) or ``ClaimFailed``.
- :meth:`Keeper.restore` reads the room's snapshot and starts its actor (through the registry):
  ``Adopted``, ``Vanished`` (no usable snapshot: the lease is released) or ``ClaimFailed``.
- :meth:`Keeper.keep`, one per room run here: serves the room's topic (its
  :class:`~dramaverse.actors.room_relay.RoomPort`) and watches its lease, joins the route's
  connections to the actor (``Serving``); reports a lease lost to another holder
  (``LeaseLost``: the cluster abandons the actor); and when the actor stopped, ``Moved``
  (abandoned: its pending snapshot dropped) or ``Ended``, then, once the snapshot is settled
  and the lease released, ``Released``.

Resource handling: each task owns what it took until it hands it over in a message: a lease
taken by :meth:`claim` belongs to the cluster from ``LeaseTaken`` on; :meth:`restore` and
:meth:`keep` release their lease on every way out but ``Adopted`` / ``Moved``. A keeper's port
and lease watch are its children.

Error handling: broker and storage failures are reported (``ClaimFailed``), never raised; the
cluster decides (a joiner gets the error, the heartbeat tries again).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

import trio

from dramaverse.actors.reply import Reply
from dramaverse.actors.room import RoomActor
from dramaverse.actors.room_cluster_messages import (
    Adopted,
    ClaimFailed,
    Ended,
    LeaseLost,
    LeaseRefused,
    LeaseTaken,
    Message,
    Moved,
    Origin,
    Released,
    Restore,
    Serving,
    Vanished,
)
from dramaverse.actors.room_registry import RoomRegistry
from dramaverse.actors.room_relay import RoomPort
from dramaverse.actors.room_routes import Conn
from dramaverse.actors.room_sender import Sender
from dramaverse.actors.room_snapshots import FLUSH_SECONDS, SnapshotWriter
from dramaverse.broker.base import Broker, BrokerUnavailable
from dramaverse.broker.lease import Lease
from dramaverse.errors import DramaverseError
from dramaverse.storage.base import Storage

log = logging.getLogger(__name__)

RELEASE_TIMEOUT = 2.0


def lease_name(code: str) -> str:
    return f"room:{code}"


async def release(lease: Lease) -> None:
    """Release ``lease``, shielded and bounded (it also runs on the way out of a cancel)."""
    with trio.move_on_after(RELEASE_TIMEOUT, shield=True):
        await lease.release()


class Keeper:
    """The cluster's helper tasks; ``tell`` sends a message to the cluster's mailbox."""

    def __init__(
        self,
        tell: Callable[[Message], Awaitable[None]],
        *,
        registry: RoomRegistry,
        writer: SnapshotWriter,
        storage: Storage,
        broker: Broker,
        sender: Sender,
        shared: bool,
        lease_ttl_ms: int,
        beat: float,
        relay_timeout: float,
    ) -> None:
        self._tell = tell
        self._registry = registry
        self._writer = writer
        self._storage = storage
        self._broker = broker
        self._sender = sender
        self._shared = shared
        self._lease_ttl_ms = lease_ttl_ms
        self._beat = beat
        self._relay_timeout = relay_timeout

    async def scan(self, retention: float) -> int:
        """Ask the cluster to restore every room saved within ``retention`` seconds; return
        how many it restored (those whose lease was free).

        Error handling: a snapshot that cannot be restored is logged and skipped (its code stays
        taken); a storage failure propagates (the server should not start without its rooms);
        an unreachable broker skips the rest (a later scan or a join adopts them).
        """
        cutoff = int((self._registry.clock.now() - retention) * 1000)
        restored = 0
        for code, text in await self._storage.load_room_snapshots(cutoff):
            self._writer.stored.add(code)
            reply = Reply[bool]()
            await self._tell(Restore(code, text, reply))
            try:
                if await reply.wait():
                    restored += 1
            except BrokerUnavailable as exc:
                log.warning("stored rooms not restored now: %s", exc)
                break
        if restored:
            log.info("restored %d watch-party rooms", restored)
        return restored

    async def rescan(self, retention: float) -> None:
        """Once the leases of a predecessor (a worker this one replaces) have expired, adopt
        the rooms nobody took."""
        await trio.sleep(self._lease_ttl_ms / 1000 + self._beat)
        try:
            await self.scan(retention)
        except Exception:
            log.exception("stored rooms not restored (a join adopts them)")

    async def acquire(self, code: str) -> Lease | None:
        return await self._broker.acquire_lease(lease_name(code), self._lease_ttl_ms)

    async def claim(self, code: str) -> None:
        """Try the lease of ``code``."""
        try:
            lease = await self.acquire(code)
        except Exception as error:  # BrokerUnavailable, or a bug the cluster logs
            await self._tell(ClaimFailed(code, error))
            return
        await self._tell(LeaseRefused(code) if lease is None else LeaseTaken(code, lease))

    async def restore(self, code: str, lease: Lease, text: str | None, origin: Origin) -> None:
        """With the lease in hand, start ``code``'s actor from its snapshot (``text``, or the
        stored one). A storage failure is reported: the room is not known to be gone."""
        actor = None
        try:
            if text is None:
                text = await self._storage.load_room_snapshot(code)
            if text is not None:
                self._writer.stored.add(code)  # before the actor records its restore: delayed
                try:
                    actor = await self._registry.restore(json.loads(text))
                except (DramaverseError, ValueError) as exc:  # InvalidSnapshot, bad JSON
                    log.warning("room %s not restored: %s", code, exc)
        except Exception as error:
            await release(lease)
            await self._tell(ClaimFailed(code, error))
            return
        except BaseException:
            await release(lease)
            raise
        if actor is None:
            await release(lease)
            await self._tell(Vanished(code))
            return
        await self._tell(Adopted(actor, lease, origin))

    async def keep(self, actor: RoomActor, lease: Lease, rejoin: tuple[Conn, ...]) -> None:
        """Serve a room run here until it stops; report each step (module docstring)."""
        port = None
        if self._shared:
            port = RoomPort(actor, self._broker, self._sender, relay_timeout=self._relay_timeout)
        held = [lease]  # the lease in force (taken again after a Redis outage)
        async with trio.open_nursery() as nursery:
            if port is not None:
                await nursery.start(port.run)
            nursery.start_soon(self._watch_lease, held, actor)
            joined: list[Conn] = []
            refused: list[tuple[Conn, DramaverseError]] = []
            for conn in rejoin:  # each gets a fresh welcome
                try:
                    await actor.join(conn.member, conn.name, conn.peer)
                except DramaverseError as error:
                    refused.append((conn, error))
                else:
                    joined.append(conn)
            await self._tell(Serving(actor, tuple(joined), tuple(refused)))
            await actor.stopped.wait()
            if port is not None:
                port.close("moved" if actor.abandoned else "ended")
            nursery.cancel_scope.cancel()
        if actor.abandoned:  # another process restores it: write nothing more, rejoin there
            await self._writer.forget(actor.code)
            log.warning("room %s: lease lost; the room moves to another process", actor.code)
            await self._tell(Moved(actor))
            return
        await self._tell(Ended(actor))
        # Keep the lease until the snapshot's deletion is written (no other process may
        # restore a room that just ended), or, for a room that gave up, until its last good
        # snapshot is written (the next owner restores that one).
        try:
            with trio.move_on_after(FLUSH_SECONDS):
                if actor.failed:
                    await self._writer.expedite(actor.code)
                await self._writer.settled(actor.code)
        finally:
            await release(held[0])
        await self._tell(Released(actor.code))

    async def _watch_lease(self, held: list[Lease], actor: RoomActor) -> None:
        """Report the lease lost when it went to another holder.

        A lease lost because Redis is unreachable is different: nobody else can take it while
        Redis is down, and the members connected here should keep their party. The room keeps
        running; once Redis answers again the lease is taken anew, and only if another process
        got it in the meantime (a partition, not an outage) is it reported lost.
        """
        while True:
            await held[0].lost.wait()
            if self._broker.health().get("status") == "ok":
                await self._tell(LeaseLost(actor))
                return
            log.warning(
                "room %s: Redis unreachable; the room stays here until it is back", actor.code
            )
            lease = await self._reacquire(actor.code)
            if lease is None:
                await self._tell(LeaseLost(actor))
                return
            held[0] = lease
            log.info("room %s: lease taken again after the outage", actor.code)

    async def _reacquire(self, code: str) -> Lease | None:
        """Wait for the broker, then take the lease again; None if another process holds it."""
        while True:
            await trio.sleep(self._beat)
            if self._broker.health().get("status") != "ok":
                continue
            try:
                return await self.acquire(code)
            except BrokerUnavailable:
                continue
