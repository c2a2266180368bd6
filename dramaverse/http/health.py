"""``GET /api/health``: this process, its database, its broker and its sibling workers.

The answer, from worst to best:

* **503** ``{"status":"unavailable","storage":{...}}``: the database cannot be reached (every
  request that needs it would fail; a load balancer should route away);
* **200** ``{"status":"degraded", ...}``: this process serves, but Redis is unreachable
  (``"broker"``, docs/redis.md) or, with ``serve --workers N``, a sibling worker is in a crash
  loop (``"workers": {"crashLooping": [...]}``, from the supervisor's status file,
  ``worker_status.py``);
* **200** ``{"status":"ok"}``: everything answers (the frontend's contract).

Cheap on purpose: load balancers and the catalog benchmark call it thousands of times a
second. The database is probed (one small query, bounded by ``PROBE_TIMEOUT``) at most once per
``PROBE_EVERY`` seconds, by one request at a time; every other request reuses the last result.
The broker's health is in memory; the status file is read at most once a second.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from dramaverse.errors import StorageUnavailable
from dramaverse.http.state import AppState
from dramaverse.storage.base import Storage
from dramaverse.worker_status import StatusReader, status_path

log = logging.getLogger(__name__)

PROBE_EVERY = 1.0
PROBE_TIMEOUT = 2.0


class StorageProbe:
    """The database's reachability, known at most ``every`` seconds late."""

    def __init__(
        self, storage: Storage, *, every: float = PROBE_EVERY, timeout: float = PROBE_TIMEOUT
    ) -> None:
        self._storage = storage
        self._every = every
        self._timeout = timeout
        self._next_probe = float("-inf")
        self._probing = False
        self.problem: str | None = None  # None while the database answers

    async def check(self) -> str | None:
        """The last known problem (None: reachable), probing first when it is time."""
        if self._probing or trio.current_time() < self._next_probe:
            return self.problem
        self._probing = True
        try:
            with trio.move_on_after(self._timeout) as probe:
                await self._storage.catalog_revision()
            if probe.cancelled_caught:
                self._report(f"the database did not answer within {self._timeout:g} s")
            else:
                self._report(None)
        except StorageUnavailable as exc:
            self._report(exc.message)
        finally:
            self._probing = False
            self._next_probe = trio.current_time() + self._every
        return self.problem

    def _report(self, problem: str | None) -> None:
        if problem != self.problem:
            if problem is None:
                log.info("health: the database answers again")
            else:
                log.warning("health: %s", problem)
        self.problem = problem


class HealthCheck:
    """Builds the answer of ``/api/health``: (status code, body), or None for the plain ok."""

    def __init__(self, state: AppState) -> None:
        self._state = state
        self._storage = StorageProbe(state.storage)
        settings = state.settings
        self._workers = None if settings.worker_id is None else StatusReader(status_path(settings))

    async def answer(self) -> tuple[int, dict[str, Any]] | None:
        problem = await self._storage.check()
        broker = self._state.broker.health()
        loops = [] if self._workers is None else self._workers.crash_loops()
        if problem is None and broker["status"] == "ok" and not loops:
            return None
        body: dict[str, Any] = {"status": "degraded"}
        status = 200
        if problem is not None:
            body["status"] = "unavailable"
            body["storage"] = {"status": "unavailable", "error": problem}
            status = 503
        if broker["status"] != "ok":
            body["broker"] = broker
        if loops:
            body["workers"] = {"crashLooping": loops}
        return status, body
