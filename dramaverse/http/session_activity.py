"""When each sign-in session was last seen, batched in memory and written now and then.

Every request and socket that presents a token with a session id notes it here
(:meth:`SessionActivity.note`: one clock read and one dictionary store, no I/O). Every
``SESSION_TOUCH_SECONDS`` :meth:`SessionActivity.run` writes what was noted, plus "now" for
every session with a live socket in this process, in one ``Storage.touch_sessions`` call per
10,000 sessions. So the request path never waits for a write, and a busy session costs one
row update per period, not one per request.

Bounds: at most ``MAX_TOUCH_BATCH`` sessions wait between two writes; past that, sessions not
already waiting are not noted until the next write (a last-seen time a period late, nothing
else). A write that fails is logged and its times are dropped (the next period brings newer
ones). :meth:`pending` lets ``GET /api/user/sessions`` show times not written yet.

Resource handling: ``run`` owns no resources but the pending table; when cancelled (shutdown)
it writes what is pending, shielded and bounded by ``FINAL_WRITE_SECONDS``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import trio

from dramaverse.http.auth import AuthUser
from dramaverse.storage.accounts import MAX_TOUCH_BATCH
from dramaverse.storage.base import Storage

log = logging.getLogger(__name__)

FINAL_WRITE_SECONDS = 2.0


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class SessionActivity:
    def __init__(
        self, clock_ms: Callable[[], int] = wall_clock_ms, limit: int = MAX_TOUCH_BATCH
    ) -> None:
        self._clock_ms = clock_ms
        self._limit = limit
        self._pending: dict[str, int] = {}
        self.written = 0  # sessions written so far (a counter for tests and metrics)

    def note(self, user: AuthUser) -> None:
        """The request path's part: remember that the user's session was seen now."""
        sid = user.session_id
        if sid is None:
            return
        pending = self._pending
        if sid in pending or len(pending) < self._limit:
            pending[sid] = self._clock_ms()

    def pending(self, session_id: str) -> int | None:
        """The last-seen time noted for ``session_id`` and not written yet."""
        return self._pending.get(session_id)

    async def flush(self, storage: Storage, live: Iterable[str] = ()) -> int:
        """Write what is pending, and ``live`` sessions as seen now; return how many."""
        now = self._clock_ms()
        batch, self._pending = self._pending, {}
        for sid in live:
            batch[sid] = now
        items = list(batch.items())
        for start in range(0, len(items), MAX_TOUCH_BATCH):
            chunk = dict(items[start : start + MAX_TOUCH_BATCH])
            try:
                await storage.touch_sessions(chunk)
            except Exception as exc:  # an outage: the next period writes newer times
                log.warning("could not write %d last-seen times: %s", len(chunk), exc)
                return 0
        self.written += len(items)
        return len(items)

    async def run(
        self,
        storage: Storage,
        interval: float,
        live: Callable[[], Iterable[str]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write every ``interval`` seconds until cancelled, then once more (bounded)."""
        task_status.started()
        try:
            while True:
                await trio.sleep(interval)
                await self.flush(storage, live())
        finally:
            with trio.move_on_after(FINAL_WRITE_SECONDS) as final:
                final.shield = True
                await self.flush(storage)
