"""The session hub: get-or-start a UserSession actor per user, and let idle ones go.

Resource handling: ``open_hub`` owns the nursery every session actor runs in; leaving it
cancels them all. Session actors are temporary: a crashed one is logged, not restarted, and its
devices reconnect (their connections see the actor gone and close with 1011).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

import trio

from dramaverse.actors.session import Attach, AttachResult, Detach, Device, UserSession
from dramaverse.broker.base import Broker
from dramaverse.config import Settings
from dramaverse.errors import StorageUnavailable
from dramaverse.storage.base import Storage

log = logging.getLogger(__name__)


CHECK_SECONDS = 5.0  # how often the hub compares every session's head with the log


class SessionGone(Exception):
    """The user's session actor stopped before the request could be handled."""


class SessionHub:
    def __init__(
        self, nursery: trio.Nursery, storage: Storage, broker: Broker, settings: Settings
    ) -> None:
        self._nursery = nursery
        self._storage = storage
        self._broker = broker
        self._settings = settings
        self.sessions: dict[int, UserSession] = {}

    def _session(self, user_id: int) -> UserSession:
        session = self.sessions.get(user_id)
        if session is None:
            session = UserSession(
                user_id,
                self._storage,
                self._broker,
                grace=self._settings.session_grace_seconds,
                replay_limit=max(1, min(1000, self._settings.ws_outbox_size - 2)),
                on_exit=self._forget,
            )
            # Registered before it starts, so concurrent first connections share one actor.
            self.sessions[user_id] = session
            self._nursery.start_soon(self._supervise, session)
        return session

    def _forget(self, session: UserSession) -> None:
        if self.sessions.get(session.user_id) is session:
            del self.sessions[session.user_id]

    async def _supervise(self, session: UserSession) -> None:
        try:
            await session.run()
        except StorageUnavailable as exc:  # the database is down: its devices reconnect later
            log.warning("session actor of user %d stopped: %s", session.user_id, exc)
        except Exception:
            log.exception("session actor of user %d crashed", session.user_id)

    async def attach(
        self, user_id: int, device: Device, resume: int | None, ready: Callable[[int], str]
    ) -> AttachResult:
        """Attach a device to its user's session, starting the actor if needed."""
        for _ in range(3):  # an actor may be stopping right now; the next one is fresh
            session = self._session(user_id)
            request = Attach(device, resume, ready)
            try:
                await session.inbox.send(request)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._forget(session)
                continue
            await request.done.wait()
            if request.result is None:
                raise SessionGone(f"the session of user {user_id} failed")
            return request.result
        raise SessionGone(f"the session of user {user_id} could not be started")

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
        device.gone = True  # the actor skips gone devices even if the message is dropped
        session = self.sessions.get(user_id)
        if session is not None:
            with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                session.inbox.send_nowait(Detach(device))


@asynccontextmanager
async def open_hub(
    storage: Storage, broker: Broker, settings: Settings
) -> AsyncIterator[SessionHub]:
    async with trio.open_nursery() as nursery:
        hub = SessionHub(nursery, storage, broker, settings)
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

    The same pass drops expired player statuses (``PLAYER_STATUS_TTL_SECONDS``) and room
    snapshots untouched for ``ROOM_SNAPSHOT_RETENTION_SECONDS``.
    """
    task_status.started()
    while True:
        await trio.sleep(settings.event_prune_seconds)
        await _prune_watch_parties(storage, settings, clock_ms())  # never raises
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
