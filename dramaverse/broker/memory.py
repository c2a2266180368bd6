"""The in-process broker: a dict of topics to subscriber callbacks. No I/O, no Redis needed.

Leases live in a dict too. The holder is in this very process, so a renewing lease cannot miss a
renewal: it is held until released (or broken with :meth:`MemoryBroker.break_lease`), with no
background task. A lease taken with ``renew=False`` expires ``ttl_ms`` after it was taken or
last extended, measured on the Trio clock.

The memory broker never loses a message it was given, so it never calls ``on_gap``, and its
health is always ok.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from dramaverse.broker.base import Deliver, GapNotice, Health
from dramaverse.broker.lease import Lease, check_lease_request

MAX_WINDOWS = 100_000  # counters kept; expired ones are dropped when the table is full

log = logging.getLogger(__name__)
HEALTH_OK: Health = {"status": "ok", "backend": "memory"}


@dataclass(eq=False, slots=True)
class _Held:
    lease: Lease
    expires_at: float | None  # None: renewing, held until released


class MemoryBroker:
    def __init__(self) -> None:
        self._topics: dict[str, list[Deliver]] = {}
        self._leases: dict[str, _Held] = {}
        self._windows: dict[str, tuple[int, float]] = {}  # key -> (hits, window end)

    async def publish(self, topic: str, message: bytes) -> None:
        # Iterate over a copy: a callback may (indirectly) unsubscribe.
        for deliver in tuple(self._topics.get(topic, ())):
            try:
                deliver(message)
            except Exception:  # one broken subscriber must not stop the others
                log.exception("subscriber of %s failed", topic)

    @asynccontextmanager
    async def subscribe(
        self, topic: str, deliver: Deliver, *, on_gap: GapNotice | None = None
    ) -> AsyncIterator[None]:
        self._topics.setdefault(topic, []).append(deliver)
        try:
            yield
        finally:
            subscribers = self._topics.get(topic, [])
            subscribers.remove(deliver)
            if not subscribers:
                del self._topics[topic]

    def subscriber_count(self, topic: str) -> int:
        return len(self._topics.get(topic, ()))

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()

    def health(self) -> Health:
        return dict(HEALTH_OK)

    # -- leases -------------------------------------------------------------------------------

    def _current(self, name: str) -> _Held | None:
        held = self._leases.get(name)
        if held is None:
            return None
        expired = held.expires_at is not None and held.expires_at <= trio.current_time()
        if expired or not held.lease.held:
            del self._leases[name]
            if expired:
                held.lease.lost.set()
            return None
        return held

    async def count_in_window(self, key: str, window_ms: int) -> tuple[int, int]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        hits, ends = self._windows.get(key, (0, 0.0))
        if ends <= now:
            if len(self._windows) >= MAX_WINDOWS:
                self._windows = {k: v for k, v in self._windows.items() if v[1] > now}
            hits, ends = 0, now + window_ms / 1000
        hits += 1
        self._windows[key] = (hits, ends)
        return hits, max(0, int((ends - now) * 1000))

    async def uncount_in_window(self, key: str) -> None:
        await trio.lowlevel.checkpoint()
        hits, ends = self._windows.get(key, (0, 0.0))
        if hits > 0 and ends > trio.current_time():
            self._windows[key] = (hits - 1, ends)

    async def acquire_lease(self, name: str, ttl_ms: int, *, renew: bool = True) -> Lease | None:
        check_lease_request(name, ttl_ms)
        await trio.lowlevel.checkpoint()
        if self._current(name) is not None:
            return None
        lease = Lease(name, secrets.token_hex(16), ttl_ms, self)
        expires_at = None if renew else trio.current_time() + ttl_ms / 1000
        self._leases[name] = _Held(lease, expires_at)
        return lease

    async def extend_lease(self, lease: Lease) -> bool:
        await trio.lowlevel.checkpoint()
        held = self._current(lease.name)
        if held is None or held.lease.token != lease.token:
            return False
        if held.expires_at is not None:
            held.expires_at = trio.current_time() + lease.ttl_ms / 1000
        return True

    async def release_lease(self, lease: Lease) -> None:
        await trio.lowlevel.checkpoint()
        held = self._leases.get(lease.name)
        if held is not None and held.lease.token == lease.token:
            del self._leases[lease.name]

    def break_lease(self, name: str) -> bool:
        """Take the lease away from its holder (an operator's last resort); True if one was held.

        The holder's ``lost`` event is set at once: in one process there is nothing to wait for.
        """
        held = self._leases.pop(name, None)
        if held is None:
            return False
        held.lease.lost.set()
        return True
