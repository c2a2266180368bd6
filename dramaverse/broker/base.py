"""The Broker protocol: topics per audience (``user:<id>``, later ``room:<code>``...).

Delivery is best effort by design: a subscriber that cannot keep up misses messages rather than
slowing the publisher. Correctness never rests on the broker: user events are in the durable
log, and session actors detect gaps by sequence number and fill them from storage.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

Deliver = Callable[[bytes], None]


class Broker(Protocol):
    async def publish(self, topic: str, message: bytes) -> None:
        """Send ``message`` to every current subscriber of ``topic``, in any process."""
        ...

    def subscribe(self, topic: str, deliver: Deliver) -> AbstractAsyncContextManager[None]:
        """Call ``deliver(message)`` for each message on ``topic`` while the context is open.

        ``deliver`` is called synchronously from the broker's task and must not block: hand the
        message to a bounded channel with ``send_nowait`` and treat overflow as a gap.
        """
        ...
