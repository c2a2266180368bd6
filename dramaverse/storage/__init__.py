"""Persistence behind the :class:`~dramaverse.storage.base.Storage` protocol; all SQL lives here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from urllib.parse import urlsplit

from dramaverse.config import Settings
from dramaverse.storage.base import Storage


@asynccontextmanager
async def open_storage(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Storage]:
    """Open the backend named by ``settings.database_url``; migrations run first by default.

    ``postgres://`` and ``postgresql://`` URLs open a PostgreSQL pool of
    ``settings.database_pool_size`` connections; anything else is a ``sqlite:///`` file.
    """
    scheme = urlsplit(settings.database_url).scheme
    backend: AbstractAsyncContextManager[Storage]
    if scheme in ("postgres", "postgresql"):
        from dramaverse.storage.postgres import open_postgres

        backend = open_postgres(settings.database_url, settings.database_pool_size)
    else:
        from dramaverse.storage.sqlite import open_sqlite

        backend = open_sqlite(settings.sqlite_path)
    async with backend as storage:
        if migrate:
            await storage.migrate()
        yield storage


__all__ = ["Storage", "open_storage"]
