"""The revocation core: every process refuses a revoked token and closes its sockets at once.

A route that ends sessions or moves a cut-off commits it to storage first, then calls
:meth:`Revoker.publish`: the revocation is applied in this process (the token is refused from
the next request on) and sent on the broker topic :data:`~dramaverse.http.revocations.TOPIC`.
Every process, this one included, applies what it hears on that topic: the
:class:`~dramaverse.http.revocations.RevocationList` that every token check consults is
updated, and the sockets of this process whose token is now refused are closed
(:class:`~dramaverse.http.live_sockets.LiveSockets`: native WebSockets with 4100, Socket.IO
sockets with a server disconnect). Delivery takes one broker hop: with Redis a fraction of a
millisecond to a few milliseconds between processes, well within the second the issue allows.

The broker is best effort, so storage stays the source of truth. :meth:`Revoker.run` loads
every revocation still in force at start (before the server listens), and again every
``REVOCATION_REFRESH_SECONDS`` and whenever the broker reports a gap (a Redis reconnection),
then closes any socket a lost message left open. Nothing on the request path waits for any of
this: a check is two dictionary lookups.

Error handling: a refresh that fails (the database is down) is logged and retried at the next
period; the broker's callback never raises (a malformed message is logged and ignored).

Resource handling: ``run`` owns the broker subscription, opened before the first load so no
revocation published meanwhile is missed, and closed when it is cancelled.
"""

from __future__ import annotations

import logging

import trio

from dramaverse.broker.base import Broker
from dramaverse.http.live_sockets import LiveSockets
from dramaverse.http.revocations import TOPIC, Kind, Revocation, RevocationList
from dramaverse.storage.base import Storage

log = logging.getLogger(__name__)


class Revoker:
    def __init__(
        self,
        revocations: RevocationList,
        sockets: LiveSockets,
        storage: Storage,
        broker: Broker,
        refresh_seconds: float,
    ) -> None:
        self.revocations = revocations
        self.sockets = sockets
        self._storage = storage
        self._broker = broker
        self._refresh_seconds = refresh_seconds
        self._gap = trio.Event()
        self.heard = 0  # revocation messages applied (a counter for tests and metrics)
        self.refreshes = 0

    # -- publishing (routes) --------------------------------------------------------------

    async def publish(self, revocation: Revocation) -> None:
        """Apply ``revocation`` here, now, and tell every other process. Call it after the
        storage change it announces has committed."""
        self.apply(revocation)
        await self._broker.publish(TOPIC, revocation.encode())

    async def end_sessions(self, user_id: int, session_ids: list[str], at: int) -> None:
        if session_ids:  # at most MAX_TOUCH_BATCH per message: a user has few sessions
            for start in range(0, len(session_ids), 1000):
                chunk = tuple(session_ids[start : start + 1000])
                await self.publish(Revocation(Kind.ENDED, user_id, at, chunk))

    async def cut_off(self, user_id: int, at: int) -> None:
        await self.publish(Revocation(Kind.CUTOFF, user_id, at))

    async def user_removed(self, user_id: int, at: int) -> None:
        await self.publish(Revocation(Kind.REMOVED, user_id, at))

    # -- applying (every process) ---------------------------------------------------------

    def apply(self, revocation: Revocation) -> int:
        """Update the tables and close the sockets this revocation refuses; how many."""
        self.revocations.apply(revocation)
        if revocation.kind is Kind.ENDED:
            return self.sockets.close_sessions(revocation.session_ids)
        return self.sockets.close_refused(revocation.user_id, self.revocations.refuses)

    def _on_message(self, raw: bytes) -> None:
        revocation = Revocation.decode(raw)
        if revocation is not None:
            self.heard += 1
            self.apply(revocation)

    def _on_gap(self) -> None:
        self._gap.set()

    async def refresh(self) -> int:
        """Load what storage holds, drop what expired, close what is refused; sockets closed."""
        snapshot = await self._storage.load_revocations(self.revocations.since())
        self.revocations.merge(snapshot)
        self.revocations.prune()
        self.refreshes += 1
        return self.sockets.sweep(self.revocations.refuses)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, load, report started; then refresh every period or after a gap."""
        async with self._broker.subscribe(TOPIC, self._on_message, on_gap=self._on_gap):
            await self.refresh()  # a failure here fails the start: storage was just opened
            task_status.started()
            failing = False
            while True:
                with trio.move_on_after(self._refresh_seconds):
                    await self._gap.wait()
                self._gap = trio.Event()
                try:
                    closed = await self.refresh()
                except Exception as exc:
                    if not failing:
                        log.warning("revocations could not be refreshed, retrying: %s", exc)
                    failing = True
                    continue
                failing = False
                if closed:
                    log.info("closed %d socket(s) whose revocation a lost message missed", closed)
