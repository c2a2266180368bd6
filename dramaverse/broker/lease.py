"""Leases: one holder of a name at a time, for as long as it keeps renewing.

A lease is a key holding a random token with an expiry. Whoever set the token holds it; only the
holder's token can extend or delete it, so a process that lost the lease (it expired while the
process was stalled, or an operator broke it) can never take it back from the next holder by
accident. The watch-party room actor is the first user: the process holding ``room:<code>`` runs
the room, and when that process dies another one takes the expired lease.

:class:`Lease` is shared by the backends; each backend supplies the two primitives of
:class:`LeaseStore` (extend-if-mine and delete-if-mine) and decides where renewal runs.

Resource handling: a renewing lease's background task lives in its broker's nursery and stops on
:meth:`Lease.release`, when the lease is lost, or when the broker closes (which also sets
``lost``). ``async with lease:`` releases on exit.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Protocol

import trio

from dramaverse.broker.base import BrokerUnavailable

log = logging.getLogger(__name__)

MIN_TTL_MS = 10
MAX_TTL_MS = 24 * 3600 * 1000
MAX_NAME_LENGTH = 200
RELEASE_TIMEOUT = 2.0


def check_lease_request(name: str, ttl_ms: int) -> None:
    """Reject a malformed lease request with a ValueError that says what is wrong."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"lease name must be 1 to {MAX_NAME_LENGTH} characters (got {name!r})")
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int):
        raise ValueError(f"lease ttl_ms must be an integer (got {ttl_ms!r})")
    if not MIN_TTL_MS <= ttl_ms <= MAX_TTL_MS:
        raise ValueError(f"lease ttl_ms must be from {MIN_TTL_MS} to {MAX_TTL_MS} (got {ttl_ms})")


class LeaseStore(Protocol):
    async def extend_lease(self, lease: Lease) -> bool:
        """Reset the lease's expiry if the key still holds its token; False if it does not.

        Raises :class:`BrokerUnavailable` when the store cannot tell.
        """
        ...

    async def release_lease(self, lease: Lease) -> None:
        """Delete the key if it still holds the lease's token (compare-and-delete)."""
        ...


class Lease:
    """A held lease. ``lost`` is set once this process can no longer be sure it holds it."""

    def __init__(self, name: str, token: str, ttl_ms: int, store: LeaseStore) -> None:
        self.name = name
        self.token = token
        self.ttl_ms = ttl_ms
        self.lost = trio.Event()
        self.released = False
        self._store = store
        self._renewal = trio.CancelScope()

    def __repr__(self) -> str:
        state = "released" if self.released else "lost" if self.lost.is_set() else "held"
        return f"<Lease {self.name!r} {state}>"

    @property
    def held(self) -> bool:
        return not (self.released or self.lost.is_set())

    async def extend(self) -> bool:
        """Extend the lease by ``ttl_ms`` now; False (and ``lost`` set) if it is no longer ours.

        Raises :class:`BrokerUnavailable` when the store cannot tell (the lease may still expire).
        """
        if not self.held:
            return False
        if await self._store.extend_lease(self):
            return True
        self.lost.set()
        return False

    async def release(self) -> None:
        """Stop renewing and delete the key if it is still ours; safe to call more than once.

        If the store is unreachable the key is left to expire by itself.
        """
        if self.released:
            return
        self.released = True
        self._renewal.cancel()
        if self.lost.is_set():
            return
        try:
            await self._store.release_lease(self)
        except BrokerUnavailable:
            log.warning("lease %r: store unreachable, leaving the key to expire", self.name)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with trio.move_on_after(RELEASE_TIMEOUT, shield=True):
            await self.release()

    async def keep_renewed(self) -> None:
        """Extend about every ``ttl/3`` until released; set ``lost`` when that is no longer sure.

        The lease is lost when the store answers that the key holds another token (or none), or
        when the deadline of the last successful extension passes without a new one (the store
        was unreachable: another process may have taken the key after it expired). The deadline
        counts from the moment an extension was *sent*, so it never outlives the real key.
        """
        ttl = self.ttl_ms / 1000
        interval = ttl / 3
        now = trio.current_time()
        deadline = now + ttl
        next_at = now + interval
        with self._renewal:
            while self.held:
                await trio.sleep_until(next_at)
                sent_at = trio.current_time()
                if sent_at >= deadline:
                    break
                held: bool | None = None
                with trio.move_on_at(deadline):
                    try:
                        held = await self._store.extend_lease(self)
                    except BrokerUnavailable:
                        held = None
                if held is None:
                    # Try again soon, but never past the deadline.
                    next_at = min(deadline, sent_at + max(interval / 4, 0.005))
                    continue
                if not held:
                    break
                deadline = sent_at + ttl
                next_at = sent_at + interval
            if not self.released:
                log.warning("lease %r lost", self.name)
                self.lost.set()
