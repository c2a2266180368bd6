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

The cluster is an actor. Its task (:meth:`RoomCluster.run`) alone changes the routes and the
record of the rooms it adopts, runs and ends; everything that changes them is a message in its
one mailbox (``room_cluster_messages.py``, which draws a room's sequence): from connections
(locate, enter, leave, forget), from the node topic's callback (``send_nowait``), and from
its helper tasks (``room_keeper.py``), which do every wait (leases, storage, a room's keeper)
and report. The task hands the ownership steps to ``room_ownership.py`` and the remote routes'
traffic and heartbeat to ``room_remote.py``. So a failover is a sequence of messages and
heartbeats on trio's clock: the owner goes silent -> ``LeaseTaken`` once its lease expired ->
``Adopted`` -> ``Serving`` (the route's connections got a fresh welcome); ``LeaseLost`` ->
``Moved`` (local -> remote); ``Ended`` -> ``Released``. Connections read routes (``find``,
``RoomRoute.actor``) and never wait for the cluster on a command's path.

Failures: a room actor that fails restarts in place (``room.py``), so its keeper, port, route
and lease do not notice. One that gives up (too many failures) keeps its snapshot: its keeper
writes what is pending, joins meanwhile answer 503, and then it releases the lease, so the next
``room.join`` (here or in any process) adopts the room from that snapshot, as after a dead owner.

Heartbeats (``room_remote.py``): a remote route that hears nothing from the owner for
``silence`` seconds tries to take the lease each ``beat``; it succeeds once the dead owner's
lease expired. At start every process also restores the stored rooms whose lease it can take,
and scans again once a lease time later, so a restarted worker adopts the rooms of the one it
replaces; a member whose socket died with its worker reconnects anywhere and ``room.join``
adopts the room if nobody has.

Resource handling: :func:`open_room_cluster` owns the registry and snapshot writer (through
``open_watch_parties``) and runs :meth:`RoomCluster.run`, whose nursery holds the relay tasks
(the node subscription and the :class:`~dramaverse.actors.room_relay.Sender`, with several
processes) and the helper tasks, one keeper per room run here among them. A room's lease is
released after the room ended and its snapshot's deletion settled, so no other process can
restore a room that just ended; at shutdown the broker releases the leases after the snapshots
were written, and whoever still waits on the cluster gets 503.

Error handling: an unreachable broker makes ``create``/``join`` answer 503 (a lease cannot be
decided); a snapshot that cannot be restored is logged and skipped; malformed relay messages
are counted and dropped (``room_relay.py``).
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from dramaverse.actors.reply import Reply
from dramaverse.actors.room import ServerClock
from dramaverse.actors.room_cluster_messages import (
    Adopted,
    Enter,
    Forget,
    Leave,
    Listening,
    Locate,
    Message,
    NodeItems,
    Origin,
    Restore,
)
from dramaverse.actors.room_keeper import Keeper, release
from dramaverse.actors.room_messages import RoomGone
from dramaverse.actors.room_ownership import Ownership
from dramaverse.actors.room_registry import RoomRegistry
from dramaverse.actors.room_relay import RELAY_TIMEOUT, room_topic
from dramaverse.actors.room_remote import RemoteRoutes
from dramaverse.actors.room_routes import Conn, RoomRoute
from dramaverse.actors.room_sender import Sender, node_topic
from dramaverse.actors.room_snapshots import SnapshotWriter, open_watch_parties
from dramaverse.broker.base import Broker
from dramaverse.config import Settings
from dramaverse.domain.rooms import Control
from dramaverse.errors import BadRequest, ServiceUnavailable
from dramaverse.storage.base import Storage

log = logging.getLogger(__name__)

LEASE_TTL_MS = 6000  # a dead owner's rooms move within about this long
BEAT_SECONDS = 1.0  # heartbeat period of a remote route
SILENCE_SECONDS = 3.0  # an owner not heard from this long may be dead: try its lease each beat
# A relayed join not answered in this long is refused with 503: longer than a dead owner's
# lease takes to expire, so a member who rejoins during a failover waits for the new owner.
JOIN_TIMEOUT = LEASE_TTL_MS / 1000 + 2 * BEAT_SECONDS
# The cluster's mailbox. Its task never waits while it handles a message, so it is behind only
# when starved; then node-topic messages are dropped (counted; heartbeats repair membership,
# clients retry) and connections wait to send. A node message batches up to 256 items.
MAILBOX_SIZE = 1024
HAND_OVER_TIMEOUT = 5.0  # a created room waits this long, shielded, for the cluster to take it


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
        *,
        shared: bool,
        retention_seconds: float,
        lease_ttl_ms: int = LEASE_TTL_MS,
        beat: float = BEAT_SECONDS,
        silence: float = SILENCE_SECONDS,
        join_timeout: float = JOIN_TIMEOUT,
        relay_timeout: float = RELAY_TIMEOUT,
        mailbox_size: int = MAILBOX_SIZE,
    ) -> None:
        self.registry = registry
        self.writer = writer
        self.storage = storage
        self.broker = broker
        self.shared = shared
        self.node = secrets.token_hex(8)
        self.routes: dict[str, RoomRoute] = {}  # the task's; connections read it (``find``)
        self.sender = Sender(broker)
        self.lease_ttl_ms = lease_ttl_ms
        self.join_timeout = join_timeout
        self.dropped = 0  # node-topic messages lost to a full mailbox (the callback's count)
        self._retention = retention_seconds  # of stored rooms, for the scans
        self._beat = beat
        self._silence = silence
        self._relay_timeout = relay_timeout
        self._mailbox, self._receive = trio.open_memory_channel[Message](mailbox_size)
        self._conn_ids = itertools.count(1)
        self._listening = False  # the node topic is subscribed
        self._subscribing = False
        self._relaying: list[tuple[Reply[RoomRoute], RoomRoute]] = []  # waiting for it
        self._task: trio.lowlevel.Task | None = None
        self._nursery: trio.Nursery | None = None
        self._remote = RemoteRoutes(
            self.routes, self.post_quietly, self.tidy, beat=beat, silence=silence
        )
        self._keeper = Keeper(
            self.tell,
            registry=registry,
            writer=writer,
            storage=storage,
            broker=broker,
            sender=self.sender,
            shared=shared,
            lease_ttl_ms=lease_ttl_ms,
            beat=beat,
            relay_timeout=relay_timeout,
        )
        self._ownership = Ownership(self, self._keeper, self._start)

    # --- what connections call (any task) ------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Rooms adopted from a process that lost them, malformed and dropped node-topic
        messages, and the relay sender's counters as ``relay_*`` (``metrics.py``)."""
        relay = {f"relay_{name}": value for name, value in self.sender.counters().items()}
        mine = {"takeovers": self.takeovers, "malformed": self._remote.malformed}
        return mine | {"dropped": self.dropped, **relay}

    @property
    def takeovers(self) -> int:
        """Rooms adopted from a process that lost them."""
        return self._ownership.takeovers

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
            lease = await self._keeper.acquire(code)
            if lease is not None:
                break
        else:
            raise ServiceUnavailable("No free room code; try again.")
        try:
            actor = await self.registry.create(
                creator, name, control=control, wait_for_joiners=wait_for_joiners, code=code
            )
        except BaseException:
            await release(lease)
            raise
        reply = Reply[RoomRoute]()
        handed = False
        # Shielded: once the room runs, the cluster must own it even if this caller leaves.
        with trio.CancelScope(shield=True), trio.move_on_after(HAND_OVER_TIMEOUT):
            try:
                await self.tell(Adopted(actor, lease, Origin.CREATE, reply))
                handed = True
            except ServiceUnavailable:  # stopping
                pass
        if not handed:
            actor.abandon()
            await release(lease)
            raise ServiceUnavailable("The server is too busy; try again.")
        return await reply.wait()

    async def locate(self, code: str) -> RoomRoute:
        """The route to join room ``code``: here, elsewhere, or adopted here. NotFound if none."""
        route = self.find(code)
        if route is not None:
            return route
        reply = Reply[RoomRoute]()
        await self.tell(Locate(code, reply))
        return await reply.wait()

    def post(self, route: RoomRoute, message: dict[str, Any]) -> None:
        """Send ``message`` (with this node's id) to the owner of ``route``'s room."""
        try:
            queued = self.post_quietly(route, message)
        except (TypeError, ValueError):  # not JSON (the socket's parser lets none through)
            raise BadRequest("data must be JSON.") from None
        if not queued:
            raise ServiceUnavailable("The server is too busy relaying; try again.")

    def post_quietly(self, route: RoomRoute, message: dict[str, Any]) -> bool:
        """:meth:`post`, returning False when the relay's queue is full."""
        message["node"] = self.node
        return self.sender.post(room_topic(route.code), message)

    async def tell(self, message: Message) -> None:
        """Send the cluster's task ``message`` (it never waits itself, so this is brief)."""
        try:
            await self._mailbox.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ServiceUnavailable("The server is stopping; try again.") from None

    def tell_nowait(self, message: Message) -> bool:
        """Send ``message`` without waiting; False when the mailbox is full or closed."""
        try:
            self._mailbox.send_nowait(message)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def check_owner(self) -> None:
        """Raise unless called from the cluster's task (what changes a route runs there)."""
        if trio.lowlevel.current_task() is not self._task:
            raise RuntimeError("a room route is changed only by the room cluster's task")

    async def restore_stored(self) -> int:
        """Restore every room saved within the retention whose lease is free; return how many
        (``Keeper.scan``)."""
        return await self._keeper.scan(self._retention)

    # --- the cluster's task --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Handle the mailbox and, with several processes, beat, until cancelled. Reports
        started once it can serve.

        Resource handling: its nursery holds the relay and helper tasks, started by this task
        only. On the way out whoever still waits on it (queued requests, rooms being adopted)
        gets 503."""
        self._task = trio.lowlevel.current_task()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.shared:
                    await nursery.start(self.sender.run)
                    nursery.start_soon(self._keeper.rescan, self._retention)
                task_status.started()
                await self._serve()
        finally:
            self._stop()

    async def _serve(self) -> None:
        next_beat = trio.current_time() + self._beat if self.shared else math.inf
        while True:
            if trio.current_time() >= next_beat:
                self._on_beat()
                next_beat = trio.current_time() + self._beat
            message: Message | None = None
            with trio.move_on_at(next_beat):  # one await
                message = await self._receive.receive()
            if message is not None:
                self._handle(message)

    def _stop(self) -> None:
        """Answer what is queued or waiting with 503, then close the mailbox (later senders
        get 503 too); no checkpoint in between."""
        stopping = ServiceUnavailable("The server is stopping; try again.")
        while True:
            try:
                message = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            # An Adopted room stops with the registry, its lease with the broker.
            if isinstance(message, Locate | Enter | Restore | Adopted) and message.reply:
                message.reply.fail(stopping)
        self._receive.close()
        for reply, _route in self._relaying:
            reply.fail(stopping)
        self._ownership.stop(stopping)

    def _start(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    def listen(self) -> None:
        """Subscribe this process's node topic, unless it is (from the first room this process
        relays on, for good: a process that relays once is likely to relay again)."""
        if not self._listening and not self._subscribing:
            self._subscribing = True
            self._start(self._hold_node_topic)

    def relay(self, route: RoomRoute, replies: list[Reply[RoomRoute]]) -> None:
        """Answer ``replies`` with the remote ``route`` once the node topic is subscribed (the
        owner's frames and answers come there)."""
        self.listen()
        if self._listening:
            for reply in replies:
                reply.resolve(route)
        else:
            self._relaying += [(reply, route) for reply in replies]

    async def _hold_node_topic(self) -> None:
        async with self.broker.subscribe(node_topic(self.node), self._on_node):
            await self.tell(Listening())
            await trio.sleep_forever()

    def _on_node(self, data: bytes) -> None:
        """The node topic's callback (the broker's task): only queue it."""
        try:
            self._mailbox.send_nowait(NodeItems(data))
        except trio.WouldBlock:
            self.dropped += 1  # best effort, like the broker: heartbeats repair membership
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # stopping

    def _handle(self, message: Message) -> None:
        match message:
            case NodeItems(data):
                self._remote.handle(data)
            case Enter():
                self._enter(message)
            case Leave(route, peer):
                conn = route.by_peer.get(peer)
                if route.actor is None and conn is not None:  # the owner's answer is coming
                    conn.leaving_until = trio.current_time() + self.join_timeout
                else:
                    route.remove(peer)
                    self.tidy(route)
            case Forget(route, peer):
                route.remove(peer)
                self.tidy(route)
            case Listening():
                self._listening = True
                for reply, route in self._relaying:
                    reply.resolve(route)
                self._relaying.clear()
            case _:
                self._ownership.handle(message)

    def _on_beat(self) -> None:
        for route in self._remote.beat():
            self._ownership.silent(route)

    def _enter(self, message: Enter) -> None:
        route = message.route
        current = self.routes.get(route.code)
        if route.stopped.is_set() or (current is not None and current is not route):
            message.reply.fail(RoomGone(f"Room {route.code} is closed; join again."))
            return
        if current is None:  # forgotten while it led nowhere; a connection uses it again
            self.routes[route.code] = route
        route.prune()
        conn = Conn(next(self._conn_ids), message.member, message.name, message.peer)
        route.add(conn)
        if route.actor is not None:
            message.reply.resolve(route.actor)  # the connection joins the actor itself
            return
        conn.answer = message.reply  # answered by the owner (node topic), repeated each beat
        self._remote.join(route, conn, again=True)

    def route(self, code: str) -> RoomRoute:
        """The route of ``code``, a new (remote) one if there is none (the cluster's task)."""
        route = self.routes.get(code)
        if route is None or route.stopped.is_set():
            route = self.routes[code] = RoomRoute(self, code)
        return route

    def tidy(self, route: RoomRoute) -> None:
        """Forget a route that no longer leads anywhere useful (the cluster's task)."""
        if self.routes.get(route.code) is not route:
            return
        useless = route.stopped.is_set() or (route.actor is None and not route.conns)
        if useless and route.code not in self._ownership.claims:
            del self.routes[route.code]


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

    Resource handling: leaving stops the cluster's task (keepers and relay tasks with it), then
    (``open_watch_parties``) the rooms, then the writer, which writes what is pending.
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
            shared=shared,
            retention_seconds=float(settings.room_snapshot_retention_seconds),
            **(timings | options),  # explicit options (tests) win over the settings
        )
        await nursery.start(cluster.run)
        await cluster.restore_stored()
        yield cluster
        nursery.cancel_scope.cancel()
