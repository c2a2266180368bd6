"""The Broker protocol: topics per audience (``user:<id>``, later ``room:<code>``...), and leases.

Delivery is best effort by design: a subscriber that cannot keep up misses messages rather than
slowing the publisher, and a broker that loses its connection to Redis drops what it could not
send. Correctness never rests on the broker: user events are in the durable log, and session
actors detect gaps by sequence number and fill them from storage. A broker that knows it may have
lost messages says so through the subscription's ``on_gap`` callback, so repair can start at once.

Leases give one process the ownership of a named thing (a watch-party room) for as long as it
keeps renewing: see :class:`dramaverse.broker.lease.Lease`.

Backends: ``memory.py`` (one process, the default) and ``redis.py`` (many processes). Both pass
``tests/test_broker_contract.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

from dramaverse.errors import ServiceUnavailable

if TYPE_CHECKING:
    from dramaverse.broker.lease import Lease

Deliver = Callable[[bytes], None]
GapNotice = Callable[[], None]
Health = dict[str, str | int | float]


class BrokerUnavailable(ServiceUnavailable):
    """The broker cannot answer right now (Redis unreachable); a lease cannot be decided."""


class Broker(Protocol):
    async def publish(self, topic: str, message: bytes) -> None:
        """Send ``message`` to every current subscriber of ``topic``, in any process.

        Never raises for an unreachable backend and never waits for one: subscribers in this
        process get the message before ``publish`` returns; other processes get it when the
        backend is reachable, and otherwise it is dropped (and counted in ``health()``).
        """
        ...

    def subscribe(
        self, topic: str, deliver: Deliver, *, on_gap: GapNotice | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Call ``deliver(message)`` for each message on ``topic`` while the context is open.

        ``deliver`` is called synchronously from the broker's task and must not block: hand the
        message to a bounded channel with ``send_nowait`` and treat overflow as a gap.
        ``on_gap()`` (same rules) is called when messages on the topic may have been missed, for
        example once the subscription is active again after a lost backend connection.

        Entering the context returns once the subscription is active everywhere (or the backend
        is unreachable, in which case ``on_gap`` follows when it is active again), so a message
        published after that point, from any process, is delivered.
        """
        ...

    async def flush(self) -> None:
        """Wait until what was published and (un)subscribed so far has left this process."""
        ...

    async def count_in_window(self, key: str, window_ms: int) -> tuple[int, int]:
        """Count one more hit on ``key`` in a fixed window shared by every process.

        Returns (hits so far in the window, milliseconds until it resets). The window starts at
        the first hit. Raises BrokerUnavailable when the backend is unreachable.
        """
        ...

    async def uncount_in_window(self, key: str) -> None:
        """Take back one hit counted on ``key`` (an attempt that turned out not to count, like
        a right password). Nothing happens once the window has ended or at zero; the window's
        end does not move. Raises BrokerUnavailable when the backend is unreachable.
        """
        ...

    async def acquire_lease(self, name: str, ttl_ms: int, *, renew: bool = True) -> Lease | None:
        """Take the lease ``name`` for ``ttl_ms`` milliseconds, or return None if it is held.

        With ``renew`` the broker extends the lease in the background (about every third of the
        ttl) until it is released or lost; without it the lease simply expires unless extended.
        Raises :class:`BrokerUnavailable` when the backend cannot decide.
        """
        ...

    def health(self) -> Health:
        """``{"status": "ok" | "degraded", ...}``: a small JSON-ready dict for /api/health."""
        ...
