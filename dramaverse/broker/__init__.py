"""Publish/subscribe and leases between actors and processes: in-process, or Redis at scale."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dramaverse.broker.base import Broker, BrokerUnavailable
from dramaverse.broker.lease import Lease
from dramaverse.config import Settings


@asynccontextmanager
async def open_broker(settings: Settings) -> AsyncIterator[Broker]:
    """Redis when ``settings.redis_url`` is set (inside the process's trio-asyncio loop), else
    the in-process broker."""
    if settings.redis_url:
        from dramaverse.broker.redis import open_redis_broker

        async with open_redis_broker(
            settings.redis_url,
            prefix=settings.redis_prefix,
            reconnect_max=settings.redis_reconnect_max_seconds,
        ) as broker:
            yield broker
    else:
        from dramaverse.broker.memory import MemoryBroker

        yield MemoryBroker()


__all__ = ["Broker", "BrokerUnavailable", "Lease", "open_broker"]
