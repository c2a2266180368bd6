"""Publish/subscribe between actors and processes: in-process now, Redis when scaled out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dramaverse.broker.base import Broker
from dramaverse.config import Settings


@asynccontextmanager
async def open_broker(settings: Settings) -> AsyncIterator[Broker]:
    """The in-process broker (the only backend so far; Redis arrives with scale-out)."""
    from dramaverse.broker.memory import MemoryBroker

    yield MemoryBroker()


__all__ = ["Broker", "open_broker"]
