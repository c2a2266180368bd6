"""The in-process broker: a dict of topics to subscriber callbacks. No I/O, no Redis needed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dramaverse.broker.base import Deliver

log = logging.getLogger(__name__)


class MemoryBroker:
    def __init__(self) -> None:
        self._topics: dict[str, list[Deliver]] = {}

    async def publish(self, topic: str, message: bytes) -> None:
        # Iterate over a copy: a callback may (indirectly) unsubscribe.
        for deliver in tuple(self._topics.get(topic, ())):
            try:
                deliver(message)
            except Exception:  # one broken subscriber must not stop the others
                log.exception("subscriber of %s failed", topic)

    @asynccontextmanager
    async def subscribe(self, topic: str, deliver: Deliver) -> AsyncIterator[None]:
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
