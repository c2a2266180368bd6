"""Composition root: opens everything in order inside one root nursery, and closes it backwards.

Order: the trio-asyncio loop (the only one in the process), storage (migrated), the broker, the
session hub, the watch-party rooms (restored from their snapshots under their leases, relayed to
and from other processes), the catalog keeper, the revocation core (revoked sign-in sessions
loaded) and the last-seen writer, the event-log pruner, the Socket.IO sessions
(and, in a worker of ``serve --workers N``, the router that relays other workers' sessions), then
Hypercorn serving the app.

Shutdown (SIGINT/SIGTERM or ``handle.stop()``): Hypercorn stops accepting, every WebSocket is
closed with 1001 (reconnect), requests in flight get ``shutdown_grace_seconds`` to finish, and
then the actors are cancelled.

A listening address that cannot be bound (a port in use, no permission) ends the start with a
:class:`DramaverseError` naming it, which the command line prints as one line.
"""

from __future__ import annotations

import gc
import logging
import signal
from dataclasses import dataclass
from functools import partial

import trio
import trio_asyncio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGIFramework

from dramaverse import collector
from dramaverse.actors.catalog import CatalogKeeper
from dramaverse.actors.hub import open_hub, run_event_pruner
from dramaverse.actors.room_cluster import open_room_cluster
from dramaverse.broker import open_broker
from dramaverse.cluster.worker import worker_app, worker_binds
from dramaverse.cluster.worker_routing import WorkerRouter
from dramaverse.config import Settings
from dramaverse.errors import DramaverseError, lone_error
from dramaverse.http.app import create_app
from dramaverse.http.fastpath import LibraryWriteFastPath
from dramaverse.http.state import AppState
from dramaverse.http.unread_body import CloseOnUnreadBody
from dramaverse.realtime.socketio import engine_server
from dramaverse.realtime.ws import PATH as NATIVE_PATH
from dramaverse.realtime.ws import NativeSocketEndpoint
from dramaverse.realtime.ws_rooms import room_host_lookup
from dramaverse.server import direct_ws, fence
from dramaverse.storage import open_storage

log = logging.getLogger(__name__)


@dataclass
class ServerHandle:
    """What a started server tells its starter: where it listens and how to stop it."""

    binds: list[str]
    state: AppState
    shutdown: trio.Event

    def stop(self) -> None:
        self.shutdown.set()


def hypercorn_config(settings: Settings) -> Config:
    fence.install()  # Hypercorn patched, or plain with one warning (dramaverse/server/)
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = worker_binds(settings) or [f"{host}:{settings.port}"]  # docs/scaling.md
    config.graceful_timeout = settings.shutdown_grace_seconds
    config.include_server_header = False
    config.websocket_max_message_size = settings.ws_max_message_bytes
    config.accesslog = logging.getLogger("dramaverse.access") if settings.access_log else None
    config.errorlog = logging.getLogger("hypercorn.error")
    if settings.ws_direct:  # WebSocket frames without Hypercorn's WebSocket layers (direct_ws.py)
        direct_ws.claim_paths(config, [NATIVE_PATH, settings.socket_io_path])
    return config


async def serve(
    settings: Settings,
    *,
    handle_signals: bool = False,
    tune_collector: bool = False,
    task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until shutdown is requested; report a ServerHandle once listening."""
    settings = settings.with_secret()
    shutdown = trio.Event()
    async with (
        trio_asyncio.open_loop(),
        open_storage(settings) as storage,
        open_broker(settings) as broker,
        trio.open_nursery() as nursery,
        open_hub(storage, broker, settings) as hub,
        open_room_cluster(
            storage, broker, settings, shared=bool(settings.redis_url), stop_recording=shutdown
        ) as rooms,
    ):
        keeper = CatalogKeeper(storage, settings.catalog_poll_seconds)
        await nursery.start(keeper.run)
        state = AppState.build(settings, storage, keeper, broker, hub, shutdown)
        # Revocations still in force are loaded before the server listens (docs/auth.md).
        await nursery.start(state.revoker.run)
        await nursery.start(
            partial(
                state.activity.run,
                storage,
                settings.session_touch_seconds,
                state.sockets.session_ids,
            )
        )
        state.rooms, state.room_snapshots = rooms.registry, rooms.writer  # restored
        state.room_cluster = rooms  # owned here by lease, or relayed (docs/watch-parties.md)
        shared_storage = storage if rooms.shared else None  # other processes' rooms: snapshots
        state.room_host_lookup = room_host_lookup(rooms.registry, shared_storage)
        await nursery.start(partial(run_event_pruner, storage, settings, clock_ms=state.clock_ms))
        app = create_app(state)
        await nursery.start(engine_server(app).run)  # Socket.IO sessions; closed on shutdown
        front: ASGIFramework = NativeSocketEndpoint(LibraryWriteFastPath(app, state), state)
        if settings.worker_id is not None:  # relay Socket.IO requests to their session's worker
            front = await nursery.start(WorkerRouter(front, settings, shutdown).run)
        if handle_signals:
            nursery.start_soon(_wait_for_signal, shutdown)
        async with trio.open_nursery() as http_nursery:
            config = hypercorn_config(settings)
            try:
                binds = await http_nursery.start(
                    partial(
                        hypercorn_serve,
                        worker_app(settings, CloseOnUnreadBody(front)),
                        config,
                        shutdown_trigger=shutdown.wait,
                    )
                )
            except (OSError, BaseExceptionGroup) as exc:
                error = lone_error(exc)  # before listening, an OSError is a bind that failed
                if not isinstance(error, OSError):
                    raise
                where = ", ".join(config.bind)
                reason = error.strerror or str(error)
                raise DramaverseError(f"Cannot listen on {where}: {reason}.") from None
            http_nursery.start_soon(_bound_drain, shutdown, http_nursery.cancel_scope, settings)
            log.info("Dramaverse listening on %s", ", ".join(binds))
            if tune_collector:  # the process's collector on a clock (collector.py)
                previous = collector.tune()
                if previous is not None:  # None: an interpreter it was not measured on
                    nursery.start_soon(_paced_collector, previous)
            task_status.started(ServerHandle(binds, state, shutdown))
        # Hypercorn has stopped accepting and drained: stop the actors now.
        nursery.cancel_scope.cancel()
        hub.close()
    log.info("Dramaverse stopped")


async def _paced_collector(previous: tuple[int, int, int]) -> None:
    try:
        await collector.pace()
    finally:
        gc.set_threshold(*previous)


async def _bound_drain(shutdown: trio.Event, scope: trio.CancelScope, settings: Settings) -> None:
    """Once shutdown starts, give Hypercorn its grace (plus a second) to drain, then cancel."""
    await shutdown.wait()
    scope.deadline = trio.current_time() + settings.shutdown_grace_seconds + 1


async def _wait_for_signal(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            shutdown.set()
            return
