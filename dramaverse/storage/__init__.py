"""Persistence behind the :class:`~dramaverse.storage.base.Storage` protocol; all SQL lives here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dramaverse.config import Settings
from dramaverse.storage.base import Storage


@asynccontextmanager
async def open_storage(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Storage]:
    """Open the backend named by ``settings.database_url``; migrations run first by default."""
    from dramaverse.storage.sqlite import open_sqlite

    async with open_sqlite(settings.sqlite_path) as storage:
        if migrate:
            await storage.migrate()
        yield storage


__all__ = ["Storage", "open_storage"]
