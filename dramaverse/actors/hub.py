"""The session hub: get-or-start a UserSession actor per user, supervise it, let idle ones go.

Supervision: a session actor that raises (a bug, a storage error) is logged once with the user
id and restarted at once, with its devices: the new actor starts from the lowest position a
device was delivered and each device gets exactly the events it missed (its cursor skips the
rest), so none loses or repeats an event; requests still queued (attaches, hand-overs) go to
the new actor. The device whose attach was being handled when it crashed is refused
(``SessionGone``: its connection closes with 1011 and reconnects with ``resume``). Restart
intensity: more than ``restart_limit`` crashes of one user's session within ``restart_window``
seconds, and the hub stops restarting it: its devices are closed with 1011 (reconnect with
backoff and ``resume``), so a session that cannot run costs a reconnect per client backoff, not
a busy loop. Restarts after the first wait a growing back-off.

Resource handling: ``open_hub`` owns the nursery every session actor runs in; leaving it cancels
them all. Only the hub's own task (``run``) starts tasks in it: a caller registers a new session
and queues it for that task. Each actor runs under ``_supervise``, which owns its registry entry
while it is crashed. ``attach`` sends one request (no retry loop: an actor stopping idle leaves
the registry before it stops receiving, a crashed one's queue goes to its successor) and streams
a device's replay in the caller's task, never the actor's.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

import trio

from dramaverse.actors.replay import stream_replay
from dramaverse.actors.session import (
    Attach,
    AttachResult,
    Detach,
    Device,
    Handover,
    Live,
    Message,
    SessionGone,
    UserSession,
    release,
)
from dramaverse.broker.base import Broker
from dramaverse.config import Settings
from dramaverse.domain.close_codes import CloseCode
from dramaverse.errors import StorageUnavailable
from dramaverse.storage.base import Storage

log = logging.getLogger(__name__)


CHECK_SECONDS = 5.0  # how often the hub compares every session's head with the log
RESTART_LIMIT = 5  # crashes of one user's session tolerated ...
RESTART_WINDOW_SECONDS = 60.0  # ... within this many seconds
RESTART_BACKOFF_SECONDS = 0.1  # the second restart in a window waits this, then doubling
RESTART_BACKOFF_MAX_SECONDS = 5.0
# Sessions registered and waiting for the hub's task to start them: a burst of first
# connections (a restart: every client reconnects) queues here; the task empties it without
# awaiting anything, so a full queue means a starved process (the device reconnects).
START_QUEUE = 4096


class SessionHub:
    def __init__(
        self,
        nursery: trio.Nursery,
        storage: Storage,
        broker: Broker,
        settings: Settings,
        *,
        restart_limit: int = RESTART_LIMIT,
        restart_window: float = RESTART_WINDOW_SECONDS,
    ) -> None:
        self._nursery = nursery
        self._storage = storage
        self._broker = broker
        self._settings = settings
        self._restart_limit = restart_limit
        self._restart_window = restart_window
        self._crashes: dict[int, deque[float]] = {}  # recent crash times per user
        self.sessions: dict[int, UserSession] = {}
        self._starts, self._start_requests = trio.open_memory_channel[UserSession](START_QUEUE)

    async def run(
        self, *, task_status: trio.TaskStatus[SessionHub] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The hub's own task: it alone starts tasks in the hub's nursery, one supervisor per
        registered session, until cancelled. ``start_soon``, not ``start``: a session's start
        reads the log, and one user's must not hold up the next; the requests already queued in
        the session's inbox are its callers' wait for it."""
        task_status.started(self)
        async for session in self._start_requests:
            self._nursery.start_soon(self._supervise, session)

    def _new_session(
        self, user_id: int, devices: list[Device] | None = None, start_delay: float = 0.0
    ) -> UserSession:
        return UserSession(
            user_id,
            self._storage,
            self._broker,
            grace=self._settings.session_grace_seconds,
            replay_limit=max(1, min(1000, self._settings.ws_outbox_size - 2)),
            on_exit=self._forget,
            devices=devices,
            start_delay=start_delay,
        )

    def _session(self, user_id: int) -> UserSession:
        session = self.sessions.get(user_id)
        if session is None:
            session = self._new_session(user_id)
            # Registered before it starts, so concurrent first connections share one actor;
            # queued for the hub's task (``run``) in the same step, so no caller can find a
            # registered session that will never start.
            try:
                self._starts.send_nowait(session)
            except trio.WouldBlock:
                raise SessionGone("too many sessions are starting; reconnect") from None
            self.sessions[user_id] = session
        return session

    def _forget(self, session: UserSession) -> None:
        if self.sessions.get(session.user_id) is session:
            del self.sessions[session.user_id]

    async def _supervise(
        self,
        session: UserSession,
        *,
        task_status: trio.TaskStatus[UserSession] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``session``; restart it with its devices when it crashes (module docstring).
        Reports started when the first actor does (a restarted one needs no one to wait)."""
        current: UserSession | None = session
        while current is not None:
            try:
                await current.run(task_status=task_status)
            except Exception as exc:
                task_status = trio.TASK_STATUS_IGNORED
                current = self._after_crash(current, exc)
            else:  # idle: it ended normally and left the registry itself
                crashes = self._crashes.get(session.user_id)
                if crashes and crashes[-1] <= trio.current_time() - self._restart_window:
                    del self._crashes[session.user_id]
                return

    def _after_crash(self, crashed: UserSession, exc: Exception) -> UserSession | None:
        """The crashed actor's successor, registered with its devices; None when giving up.

        Never awaits: no other task can see the user without a registered actor."""
        user_id = crashed.user_id
        now = trio.current_time()
        crashes = self._crashes.setdefault(user_id, deque())
        while crashes and crashes[0] <= now - self._restart_window:
            crashes.popleft()
        crashes.append(now)
        devices = [d for d in crashed.devices if not d.gone]
        giving_up = len(crashes) > self._restart_limit
        # Logged once per crash, with the user and what happens next.
        plain = isinstance(exc, StorageUnavailable)  # an outage, not a bug: no traceback
        log.error(
            "session actor of user %d crashed (%d time(s) in %.0f s)%s; %s %d device(s)",
            user_id,
            len(crashes),
            self._restart_window,
            f": {exc}" if plain else "",
            "giving up, closing its" if giving_up else "restarting it with its",
            len(devices),
            exc_info=None if plain else exc,
        )
        registered = self.sessions.get(user_id)
        if giving_up or (registered is not None and registered is not crashed):
            self._forget(crashed)
            release(crashed.leftovers)
            for device in devices:
                device.dropped = True  # in the actor's own task: its run just returned here
                device.evict(CloseCode.INTERNAL_ERROR, "session failed; reconnect")
            return None
        delay = 0.0
        if len(crashes) > 1:
            delay = min(
                RESTART_BACKOFF_MAX_SECONDS, RESTART_BACKOFF_SECONDS * 2 ** (len(crashes) - 2)
            )
        successor = self._new_session(user_id, devices, start_delay=delay)
        self.sessions[user_id] = successor
        for message in crashed.leftovers:
            if isinstance(message, Attach | Live | Detach):  # the log replaces the rest
                _requeue(successor, message)
        return successor

    async def attach(
        self, user_id: int, device: Device, resume: int | None, ready: Callable[[int], str]
    ) -> AttachResult:
        """Attach a device to its user's session, starting the actor if needed.

        With a ``resume`` the log still covers, the device's missed events are streamed here,
        in the caller's task and at the device's pace, before this returns (``stream_replay``);
        then the actor takes the device live. A device evicted meanwhile (slow) has been told
        so through its ``evict``.

        Error handling: ``SessionGone`` when the actor failed the request, or the log could not
        be read for the replay (the device must reconnect).
        """
        result = await self._attach(user_id, device, resume, ready)
        if result.replay:
            try:
                await self._replay(user_id, device)
            except StorageUnavailable as exc:
                raise SessionGone(f"the log of user {user_id} is unreadable: {exc}") from exc
        return result

    async def _replay(self, user_id: int, device: Device) -> None:
        patience = self._settings.ws_heartbeat_timeout
        while True:
            await stream_replay(self._storage, user_id, device, patience=patience)
            if device.gone:
                return
            outcome = await self._hand_over(user_id, device)
            if outcome is not Handover.BEHIND:
                return

    async def _hand_over(self, user_id: int, device: Device) -> Handover:
        """Ask the user's actor (a restarted one, if it crashed meanwhile) to take ``device``."""
        session = self.sessions.get(user_id)
        if session is None:
            raise SessionGone(f"the session of user {user_id} stopped during a replay")
        request = Live(device)
        await self._send(session, request)
        try:
            return await request.reply.wait()
        except SessionGone:  # dropped (not handed to a successor): closed for us
            return Handover.GONE

    async def _attach(
        self, user_id: int, device: Device, resume: int | None, ready: Callable[[int], str]
    ) -> AttachResult:
        """One attempt: a registered actor takes every request sent to it, or hands it to its
        successor (an actor stopping idle leaves the registry before it stops receiving; a
        crashed one's queued requests go to the actor restarted in its place)."""
        request = Attach(device, resume, ready)
        await self._send(self._session(user_id), request)
        return await request.reply.wait()  # SessionGone: the actor failed it

    @staticmethod
    async def _send(session: UserSession, message: Message) -> None:
        # Taken from the registry and sent with no checkpoint in between, so the inbox is
        # open unless it was full and the actor crashed while this waited for room.
        try:
            await session.inbox.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise SessionGone(f"the session of user {session.user_id} failed") from None

    async def run_checks(self, interval: float = CHECK_SECONDS) -> None:
        """Every ``interval``, one storage read for the heads of all sessions with devices;
        a session behind its log repairs (``UserSession.check``). Until cancelled.

        This is the safety net for events that were committed but never published (the broker
        catches its own losses with gap notices): one query per period for the whole process,
        not one per session (2,000 sessions checking themselves every 5 s cost 9 % of a core
        on SQLite)."""
        failing = False
        while True:
            await trio.sleep(interval)
            sessions = [s for s in self.sessions.values() if s.devices]
            if not sessions:
                continue
            try:
                heads = await self._storage.event_heads([s.user_id for s in sessions])
            except StorageUnavailable as exc:
                if not failing:
                    log.warning("session check: event log unreadable, retrying: %s", exc)
                failing = True
                continue
            except Exception:
                log.exception("session check failed; retrying next period")
                continue
            failing = False
            for session in sessions:
                session.check(heads.get(session.user_id, 0))

    def close(self) -> None:
        """Stop every session actor (their devices are being closed by the server anyway)."""
        self._nursery.cancel_scope.cancel()

    def detach(self, user_id: int, device: Device) -> None:
        """The device's connection ended (call it from the connection's task). Never blocks:
        the actor skips a closed device even when the ``Detach`` cannot be queued."""
        device.closed = True
        session = self.sessions.get(user_id)
        if session is not None:
            with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                session.inbox.send_nowait(Detach(device))


def _requeue(successor: UserSession, message: Message) -> None:
    """Hand a request the crashed actor never handled to its successor (an empty inbox as large
    as the crashed one's, so it fits)."""
    try:
        successor.inbox.send_nowait(message)
    except trio.WouldBlock:
        release([message])


@asynccontextmanager
async def open_hub(
    storage: Storage, broker: Broker, settings: Settings
) -> AsyncIterator[SessionHub]:
    async with trio.open_nursery() as nursery:
        hub = SessionHub(nursery, storage, broker, settings)
        await nursery.start(hub.run)
        nursery.start_soon(hub.run_checks)
        yield hub
        nursery.cancel_scope.cancel()


async def run_event_pruner(
    storage: Storage,
    settings: Settings,
    *,
    clock_ms: Callable[[], int],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Apply the event-log retention every ``event_prune_seconds``, until cancelled.

    The same pass drops expired player statuses (``PLAYER_STATUS_TTL_SECONDS``), room
    snapshots untouched for ``ROOM_SNAPSHOT_RETENTION_SECONDS`` and sign-in sessions that
    ended or expired ``SESSION_RETENTION_SECONDS`` ago.
    """
    task_status.started()
    while True:
        await trio.sleep(settings.event_prune_seconds)
        await _prune_watch_parties(storage, settings, clock_ms())  # never raises
        await _prune_sessions(storage, settings, clock_ms())  # never raises
        cutoff = clock_ms() - settings.event_retention_seconds * 1000
        try:
            removed = await storage.prune_events(settings.event_retention_count, cutoff)
        except Exception:
            log.exception("event pruning failed; retrying next period")
            continue
        if removed:
            log.info("pruned %d old events", removed)


async def _prune_watch_parties(storage: Storage, settings: Settings, now_ms: int) -> None:
    try:
        statuses = await storage.prune_player_statuses(
            now_ms - settings.player_status_ttl_seconds * 1000
        )
        rooms = await storage.prune_room_snapshots(
            now_ms - settings.room_snapshot_retention_seconds * 1000
        )
    except Exception:
        log.exception("player status or room snapshot pruning failed; retrying next period")
        return
    if statuses or rooms:
        log.info("pruned %d expired player statuses and %d stale room snapshots", statuses, rooms)


async def _prune_sessions(storage: Storage, settings: Settings, now_ms: int) -> None:
    # Never less than a token lifetime: an ended session must stay on record (and revoked at
    # every start) for as long as a token of it could be unexpired.
    keep = max(settings.session_retention_seconds, settings.jwt_ttl_seconds) * 1000
    try:
        removed = await storage.prune_sessions(max(0, now_ms - keep))
    except Exception:
        log.exception("session pruning failed; retrying next period")
        return
    if removed:
        log.info("pruned %d old sign-in sessions", removed)
