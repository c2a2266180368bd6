"""Watch-party rooms across processes: ownership by lease, relayed members, failover.

A room runs in exactly one process: the holder of the broker lease ``room:<code>`` (renewed by
the broker; ``LEASE_TTL_MS``). Creating a room, restoring one at start and adopting one after its
owner died all take the lease first; a process runs only rooms whose lease it holds, and when a
lease is lost the room actor is *abandoned* (stopped without ending: the snapshot stays, and
another process restores it). With the in-process broker every lease is granted and never lost,
so one process behaves exactly as without this layer.

Every room a connection of this process joined has a
:class:`~dramaverse.actors.room_routes.RoomRoute` (``room_routes.py``), the handle the
connection talks to (``realtime/ws_rooms.py``). A route is **local** (the actor runs here; calls go
straight to it) or **remote** (calls become messages on ``room:<code>`` for the owner, and the
owner's frames for this process's members arrive on ``node:<node id>``: ``room_relay.py``). A
route outlives the moves of its room, so connections never notice them beyond a fresh
``room.welcome``:

- remote -> local: this process took the lease (the owner went silent and its lease expired, or
  a joiner found the room without an owner) and restored the room from its stored snapshot; the
  route joins its connections to the new actor.
- local -> remote: this process lost the lease; the actor is abandoned and the route joins its
  connections to whoever owns the room next (heartbeats find out).
- end: the room ended by itself (empty) wherever it ran, or gave up after too many failures
  (its connections were closed with 4002); the route stops and its connections are no longer in
  it.

Failures: a room actor that fails restarts in place (``room.py``), so its keeper, port, route
and lease do not notice. One that gives up (too many failures) keeps its snapshot: its keeper
writes what is pending, answers joins 503 meanwhile, and then releases the lease, so the next
``room.join`` (here or in any process) adopts the room from that snapshot, as after a dead owner.

Heartbeats: every ``beat`` seconds each remote route sends the owner the list of its
connections; the owner answers with the ones it does not know (it was restored since: join
them again) and the ones it dropped (replaced by another connection of the member). A route
that hears nothing from the owner for ``silence`` seconds tries to take the lease each beat; it
succeeds once the dead owner's lease expired. At start every process also restores the stored
rooms whose lease it can take, and scans again once a lease time later, so a restarted worker
adopts the rooms of the one it replaces; a member whose socket died with its worker reconnects
anywhere and ``room.join`` adopts the room if nobody has.

Resource handling: :func:`open_room_cluster` owns the registry and snapshot writer (through
``open_watch_parties``) and a nursery with the relay tasks (the node subscription, taken when
this process first relays a room; the :class:`~dramaverse.actors.room_relay.Sender`; the
heartbeats) and one keeper task per room run here, which holds the room's port
(``room:<code>`` subscription) and watches its lease. A room's
lease is released after the room ended and its snapshot's deletion settled, so no other process
can restore a room that just ended; at shutdown the broker releases the leases after the
snapshots were written.

Error handling: an unreachable broker makes ``create``/``join`` answer 503 (a lease cannot be
decided); a snapshot that cannot be restored is logged and skipped; malformed relay messages
are dropped (``room_relay.py``).
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from dramaverse.actors.reply import Reply
from dramaverse.actors.room import RoomActor, ServerClock
from dramaverse.actors.room_registry import RoomRegistry
from dramaverse.actors.room_relay import (
    RELAY_TIMEOUT,
    RoomPort,
    Sender,
    decode,
    node_topic,
    relayed_error,
    room_topic,
)
from dramaverse.actors.room_routes import Conn, RoomRoute
from dramaverse.actors.room_snapshots import FLUSH_SECONDS, SnapshotWriter, open_watch_parties
from dramaverse.broker.base import Broker, BrokerUnavailable
from dramaverse.broker.lease import Lease
from dramaverse.config import Settings
from dramaverse.domain.rooms import Control
from dramaverse.errors import (
    BadRequest,
    DramaverseError,
    NotFound,
    ServiceUnavailable,
)
from dramaverse.storage.base import Storage

log = logging.getLogger(__name__)

LEASE_TTL_MS = 6000  # a dead owner's rooms move within about this long
BEAT_SECONDS = 1.0  # heartbeat period of a remote route
SILENCE_SECONDS = 3.0  # an owner not heard from this long may be dead: try its lease each beat
# A relayed join not answered in this long is refused with 503: longer than a dead owner's
# lease takes to expire, so a member who rejoins during a failover waits for the new owner.
JOIN_TIMEOUT = LEASE_TTL_MS / 1000 + 2 * BEAT_SECONDS
RELEASE_TIMEOUT = 2.0


def lease_name(code: str) -> str:
    return f"room:{code}"


class RoomCluster:
    """This process's part in the rooms of every process; create it with
    :func:`open_room_cluster`. ``shared``: whether other processes share the broker (Redis);
    without it there is nothing to relay and no room can be elsewhere."""

    def __init__(
        self,
        registry: RoomRegistry,
        writer: SnapshotWriter,
        storage: Storage,
        broker: Broker,
        nursery: trio.Nursery,
        *,
        shared: bool,
        retention_seconds: float,
        lease_ttl_ms: int = LEASE_TTL_MS,
        beat: float = BEAT_SECONDS,
        silence: float = SILENCE_SECONDS,
        join_timeout: float = JOIN_TIMEOUT,
        relay_timeout: float = RELAY_TIMEOUT,
    ) -> None:
        self.registry = registry
        self.writer = writer
        self.storage = storage
        self.broker = broker
        self.shared = shared
        self.node = secrets.token_hex(8)
        self.routes: dict[str, RoomRoute] = {}
        self.sender = Sender(broker)
        self.conn_ids = itertools.count(1)
        self.lease_ttl_ms = lease_ttl_ms
        self.takeovers = 0  # rooms adopted from a process that lost them
        self.malformed = 0
        self._nursery = nursery
        self._retention = retention_seconds
        self._beat = beat
        self._silence = silence
        self.join_timeout = join_timeout
        self._relay_timeout = relay_timeout
        self._locks: dict[str, trio.Lock] = {}
        self._ending: set[str] = set()  # ended here; lease kept until the snapshot is deleted
        self._resting: set[str] = set()  # gave up here; lease kept until the snapshot is written
        self._adopting: set[str] = set()
        self._listening: trio.Event | None = None  # set once the node topic is subscribed

    # --- what connections call -----------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Rooms adopted from a process that lost them, malformed node-topic messages, and
        the relay sender's counters as ``relay_*`` (``metrics.py``)."""
        relay = {f"relay_{name}": value for name, value in self.sender.counters().items()}
        return {"takeovers": self.takeovers, "malformed": self.malformed, **relay}

    def find(self, code: str) -> RoomRoute | None:
        """The route of a room known to this process (normalised code), or None."""
        route = self.routes.get(code)
        return None if route is None or route.stopped.is_set() else route

    async def create(
        self, creator: str, name: str, *, control: Control, wait_for_joiners: bool
    ) -> RoomRoute:
        """A new room run here, under a code nobody holds (then ``route.join`` the creator)."""
        for _ in range(10):
            code = self.registry.new_code()
            lease = await self.broker.acquire_lease(lease_name(code), self.lease_ttl_ms)
            if lease is not None:
                break
        else:
            raise ServiceUnavailable("No free room code; try again.")
        try:
            actor = await self.registry.create(
                creator, name, control=control, wait_for_joiners=wait_for_joiners, code=code
            )
        except BaseException:
            await self._release(lease)
            raise
        return await self._keep(actor, lease, self._route(code))

    async def locate(self, code: str) -> RoomRoute:
        """The route to join room ``code``: here, elsewhere, or adopted here. NotFound if none."""
        route = self.find(code)
        if route is not None:
            return route
        if code in self._resting:
            raise ServiceUnavailable(f"Room {code} is restarting; join again in a moment.")
        # One process adopts only a room that gave up (its snapshot stays, its code is taken).
        if code in self._ending or not (self.shared or self.writer.taken(code)):
            raise NotFound(f"Room {code} not found.")
        lock = self._locks.setdefault(code, trio.Lock())
        try:
            async with lock:
                route = self.find(code)
                if route is not None:
                    return route
                lease = await self.broker.acquire_lease(lease_name(code), self.lease_ttl_ms)
                if lease is None:  # someone runs it: relay
                    await self._listen()
                    return self._route(code)
                route = await self._adopt(code, lease)  # nobody does: restore it here
                if route is None:
                    raise NotFound(f"Room {code} not found.")
                return route
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(code, None)

    # --- the relay side ------------------------------------------------------------------

    def post(self, route: RoomRoute, message: dict[str, Any]) -> None:
        """Send ``message`` (with this node's id) to the owner of ``route``'s room."""
        try:
            queued = self._post(route, message)
        except (TypeError, ValueError):  # not JSON (the socket's parser lets none through)
            raise BadRequest("data must be JSON.") from None
        if not queued:
            raise ServiceUnavailable("The server is too busy relaying; try again.")

    def _post(self, route: RoomRoute, message: dict[str, Any]) -> bool:
        message["node"] = self.node
        return self.sender.post(room_topic(route.code), message)

    async def join_remote(self, route: RoomRoute, conn: Conn) -> None:
        """Join through the owner; repeat the request each beat until answered."""
        conn.answer = answer = Reply[None]()
        conn.ref += 1
        with trio.move_on_after(self.join_timeout):
            while not answer.done.is_set():
                self._post_join(route, conn)
                with trio.move_on_after(self._beat):
                    await answer.done.wait()
        conn.answer = None
        if not answer.done.is_set():
            raise ServiceUnavailable(f"Room {route.code} is not answering; try again.")
        await answer.wait()  # raises the refusal

    def _post_join(self, route: RoomRoute, conn: Conn, *, again: bool = False) -> None:
        """Send ``conn``'s join to the owner: a repeat of the current attempt (answers to it
        count), or with ``again`` a new one (the owner changed)."""
        if again:
            conn.ref += 1
        conn.rejoin_at = trio.current_time() + 2 * self._beat  # again, if unanswered
        message = {"op": "join", "conn": conn.id, "member": conn.member, "name": conn.name}
        self._post(route, message | {"ref": conn.ref})  # if the queue is full: the next beat

    def tidy(self, route: RoomRoute) -> None:
        """Forget a route that no longer leads anywhere useful."""
        if self.routes.get(route.code) is not route:
            return
        useless = route.stopped.is_set() or (route.actor is None and not route.conns)
        if useless and route.code not in self._adopting:
            del self.routes[route.code]

    async def _listen(self) -> None:
        """Make sure this process listens on its node topic (from the first relayed room on,
        for good: a process that relays once is likely to relay again)."""
        if self._listening is None:
            self._listening = trio.Event()
            self._nursery.start_soon(self._hold_node_topic, self._listening)
        await self._listening.wait()

    async def _hold_node_topic(self, listening: trio.Event) -> None:
        async with self.broker.subscribe(node_topic(self.node), self._on_node):
            listening.set()
            await trio.sleep_forever()

    def _on_node(self, data: bytes) -> None:
        """Frames and answers from owners, for this process's connections (never blocks)."""
        message = decode(data)
        items = message.get("items") if message is not None else None
        if not isinstance(items, list):
            self.malformed += 1
            return
        now = trio.current_time()
        for item in items:
            if not (isinstance(item, list) and len(item) >= 2 and isinstance(item[1], str)):
                self.malformed += 1
                continue
            route = self.routes.get(item[1])
            if route is None or route.actor is not None or route.stopped.is_set():
                continue  # a late word from an old owner
            route.heard = now
            try:
                self._dispatch(route, item)
            except (IndexError, TypeError, ValueError):
                self.malformed += 1

    def _dispatch(self, route: RoomRoute, item: list[Any]) -> None:
        match item[0]:
            case "f":
                if not isinstance(item[3], str):
                    raise TypeError("a frame must be text")
                for conn_id in item[2]:
                    conn = route.conns.get(conn_id)
                    if conn is not None:
                        conn.peer.push(item[3])
            case "joined" | "refused":
                conn = route.conns.get(item[2])
                if conn is None or item[3] != conn.ref:
                    return
                conn.rejoin_at = None
                if item[0] == "refused":
                    error = relayed_error(item[4], item[5])
                    if conn.answer is None and error.status == 503:
                        conn.rejoin_at = trio.current_time() + self._beat  # moving: retry
                        return
                    if conn.answer is not None:
                        conn.answer.fail(error)
                    else:  # an unasked rejoin was refused: not a member
                        route.forget(conn.peer)
                if conn.answer is not None:
                    conn.answer.resolve(None)  # ignored after the refusal
            case "err":
                conn = route.conns.get(item[2])
                if conn is not None:
                    conn.peer.on_error(int(item[3]))
            case "drop":
                conn = route.conns.get(item[2])
                if conn is not None:
                    route.forget(conn.peer)
                    if item[3] is not None:
                        conn.peer.evict(int(item[3]), str(item[4]))
            case "beat":
                for conn_id in item[2]:  # unknown to the owner: it was restored since
                    conn = route.conns.get(conn_id)
                    if conn is not None and conn.answer is None:
                        self._post_join(route, conn, again=True)
                for conn_id in item[3]:  # replaced by another connection of the member
                    conn = route.conns.get(conn_id)
                    if conn is not None:
                        route.forget(conn.peer)
            case "moved":  # its owner lost the lease: join whoever owns it next
                for conn in route.conns.values():
                    conn.ref += 1
                    conn.rejoin_at = trio.current_time()
            case "ended":
                route.end()
            case _:
                self.malformed += 1

    async def _beats(self) -> None:
        """Heartbeats and owed joins of remote routes; adopt rooms whose owner went silent."""
        while True:
            await trio.sleep(self._beat)
            now = trio.current_time()
            for route in list(self.routes.values()):
                if route.actor is not None or route.stopped.is_set():
                    continue
                route.prune()
                if not route.conns:
                    continue
                conns = [[c.id, c.member] for c in route.conns.values() if not c.leaving_until]
                self._post(route, {"op": "beat", "conns": conns})
                for conn in list(route.conns.values()):
                    if conn.leaving_until is not None:
                        if conn.leaving_until <= now:
                            route.forget(conn.peer)
                    elif (
                        conn.rejoin_at is not None and conn.rejoin_at <= now and conn.answer is None
                    ):
                        self._post_join(route, conn)
                if now - route.heard >= self._silence and route.code not in self._adopting:
                    self._nursery.start_soon(self._take_over, route)

    async def _take_over(self, route: RoomRoute) -> None:
        code = route.code
        self._adopting.add(code)
        try:
            try:
                lease = await self.broker.acquire_lease(lease_name(code), self.lease_ttl_ms)
            except BrokerUnavailable:
                return
            if lease is None:
                return  # the owner still holds it (alive, or its lease has not expired yet)
            if self.routes.get(code) is not route:  # every connection left meanwhile
                await self._release(lease)
                return
            if await self._adopt(code, lease, route) is None:
                route.end()  # no snapshot: the room ended
        except Exception:  # storage trouble: the next beat tries again
            log.exception("room %s not adopted", code)
        finally:
            self._adopting.discard(code)
            self.tidy(route)

    # --- ownership -----------------------------------------------------------------------

    def _route(self, code: str) -> RoomRoute:
        route = self.routes.get(code)
        if route is None or route.stopped.is_set():
            route = self.routes[code] = RoomRoute(self, code)
        return route

    async def _adopt(
        self, code: str, lease: Lease, route: RoomRoute | None = None
    ) -> RoomRoute | None:
        """With the lease in hand, restore ``code`` from its stored snapshot and run it here;
        None (lease released) when there is no usable snapshot. A storage failure propagates
        (lease released): the room is not known to be gone."""
        try:
            text = await self.storage.load_room_snapshot(code)
            if text is None or code in self._ending:
                await self._release(lease)
                return None
            self.writer.stored.add(code)  # before the actor records its restore: delayed
            try:
                actor = await self.registry.restore(json.loads(text))
            except (DramaverseError, ValueError) as exc:  # InvalidSnapshot, bad JSON
                log.warning("room %s not restored: %s", code, exc)
                await self._release(lease)
                return None
        except BaseException:
            await self._release(lease)
            raise
        self.takeovers += 1
        log.info("room %s restored here from its snapshot (lease taken)", code)
        return await self._keep(actor, lease, route or self._route(code))

    async def _keep(self, actor: RoomActor, lease: Lease, route: RoomRoute) -> RoomRoute:
        await self._nursery.start(self._keeper, actor, lease, route)
        await route.attach_local(actor)
        return route

    async def _keeper(
        self,
        actor: RoomActor,
        lease: Lease,
        route: RoomRoute,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve a room run here until it stops; then end its route, or move it away."""
        port = None
        if self.shared:
            port = RoomPort(actor, self.broker, self.sender, relay_timeout=self._relay_timeout)
        async with trio.open_nursery() as nursery:
            if port is not None:
                await nursery.start(port.run)
            held = [lease]  # the lease in force (re-acquired after a Redis outage)
            nursery.start_soon(self._hold_lease, held, actor)
            route.actor = actor
            task_status.started()
            await actor.stopped.wait()
            if port is not None:
                port.close("moved" if actor.abandoned else "ended")
            nursery.cancel_scope.cancel()
        if actor.abandoned:  # another process restores it: write nothing more, rejoin there
            await self.writer.forget(actor.code)
            await self._listen()
            log.warning("room %s: lease lost; the room moves to another process", actor.code)
            route.actor = None
            route.heard = trio.current_time()
            route.prune()
            for conn in route.conns.values():
                conn.ref += 1
                conn.rejoin_at = route.heard
            self.tidy(route)
            return
        route.end()
        # Keep the lease until the snapshot's deletion is written (no other process may
        # restore a room that just ended), or, for a room that gave up, until its last good
        # snapshot is written (the next owner restores that one).
        waiting = self._resting if actor.failed else self._ending
        waiting.add(actor.code)
        try:
            with trio.move_on_after(FLUSH_SECONDS):
                if actor.failed:
                    await self.writer.expedite(actor.code)
                await self.writer.settled(actor.code)
        finally:
            waiting.discard(actor.code)
            await self._release(held[0])

    async def _hold_lease(self, held: list[Lease], actor: RoomActor) -> None:
        """Abandon the room when its lease is lost to another holder.

        A lease lost because Redis is unreachable is different: nobody else can take it while
        Redis is down, and the members connected here should keep their party. The room keeps
        running; once Redis answers again the lease is taken anew, and only if another process
        got it in the meantime (a partition, not an outage) is the room abandoned to it.
        """
        while True:
            await held[0].lost.wait()
            if self.broker.health().get("status") == "ok":
                actor.abandon()
                return
            log.warning(
                "room %s: Redis unreachable; the room stays here until it is back", actor.code
            )
            lease = await self._reacquire(actor.code)
            if lease is None:
                actor.abandon()
                return
            held[0] = lease
            log.info("room %s: lease taken again after the outage", actor.code)

    async def _reacquire(self, code: str) -> Lease | None:
        """Wait for the broker, then take the lease again; None if another process holds it."""
        while True:
            await trio.sleep(self._beat)
            if self.broker.health().get("status") != "ok":
                continue
            try:
                return await self.broker.acquire_lease(lease_name(code), self.lease_ttl_ms)
            except BrokerUnavailable:
                continue

    @staticmethod
    async def _release(lease: Lease) -> None:
        with trio.move_on_after(RELEASE_TIMEOUT, shield=True):
            await lease.release()

    async def restore_stored(self) -> int:
        """Restore every room saved within the retention whose lease is free; return how many.

        Error handling: a snapshot that cannot be restored is logged and skipped (its code stays
        taken); a storage failure propagates (the server should not start without its rooms);
        an unreachable broker skips the rest (a later scan or a join adopts them).
        """
        cutoff = int((self.registry.clock.now() - self._retention) * 1000)
        restored = 0
        for code, text in await self.storage.load_room_snapshots(cutoff):
            self.writer.stored.add(code)
            if self.find(code) is not None or code in self._ending:
                continue
            try:
                lease = await self.broker.acquire_lease(lease_name(code), self.lease_ttl_ms)
            except BrokerUnavailable as exc:
                log.warning("stored rooms not restored now: %s", exc)
                break
            if lease is None:
                continue  # runs in another process
            try:
                actor = await self.registry.restore(json.loads(text))
            except (DramaverseError, ValueError) as exc:  # InvalidSnapshot, bad JSON
                log.warning("room %s not restored: %s", code, exc)
                await self._release(lease)
                continue
            await self._keep(actor, lease, self._route(code))
            restored += 1
        if restored:
            log.info("restored %d watch-party rooms", restored)
        return restored

    async def run_relay(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The sender and the heartbeats (the node topic is subscribed when first needed:
        ``_listen``); until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.sender.run)
            nursery.start_soon(self._beats)
            task_status.started()
            # Once the leases of a predecessor (a worker this one replaces) have expired,
            # adopt the rooms nobody took.
            await trio.sleep(self.lease_ttl_ms / 1000 + self._beat)
            try:
                await self.restore_stored()
            except Exception:
                log.exception("stored rooms not restored (a join adopts them)")


@asynccontextmanager
async def open_room_cluster(
    storage: Storage,
    broker: Broker,
    settings: Settings,
    *,
    shared: bool,
    stop_recording: trio.Event | None = None,
    clock: ServerClock | None = None,
    **options: Any,
) -> AsyncIterator[RoomCluster]:
    """The registry, its snapshot writer and this process's part in the cluster, with every
    stored room whose lease is free restored. The timings come from the WATCH_LEASE_SECONDS and
    WATCH_RELAY_* settings; ``options`` go to :class:`RoomCluster` and override them.

    Resource handling: leaving stops the keepers and relay tasks, then (``open_watch_parties``)
    the rooms, then the writer, which writes what is pending.
    """
    async with (
        open_watch_parties(
            storage, settings, stop_recording=stop_recording, clock=clock, restore=False
        ) as (registry, writer),
        trio.open_nursery() as nursery,
    ):
        timings: dict[str, Any] = {
            "lease_ttl_ms": int(settings.watch_lease_seconds * 1000),
            "beat": settings.watch_relay_beat_seconds,
            "silence": settings.watch_relay_silence_seconds,
            "join_timeout": settings.watch_lease_seconds + 2 * settings.watch_relay_beat_seconds,
            "relay_timeout": settings.watch_relay_timeout_seconds,
        }
        cluster = RoomCluster(
            registry,
            writer,
            storage,
            broker,
            nursery,
            shared=shared,
            retention_seconds=float(settings.room_snapshot_retention_seconds),
            **(timings | options),  # explicit options (tests) win over the settings
        )
        if shared:
            await nursery.start(cluster.run_relay)
        await cluster.restore_stored()
        yield cluster
        nursery.cancel_scope.cancel()
