"""PostgreSQL test helpers: a fresh schema per test, an admin connection, a breakable proxy.

Every test gets its own schema ``t_<random>`` in the test database, selected through the URL
(``?search_path=...``: asyncpg sends unknown URL parameters as server settings). The same name is
the connections' ``application_name``, so a test can find its pool's server processes in
``pg_stat_activity``. The schema is dropped afterwards, even when the test fails.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import trio
import trio_asyncio

from tests.services import require_postgres


def schema_url(base: str, schema: str) -> str:
    """``base`` with its search_path and application_name set to ``schema``."""
    parts = urlsplit(base)
    query = urlencode({"search_path": schema, "application_name": schema})
    return urlunsplit(parts._replace(query=query))


async def admin_execute(url: str, sql: str) -> None:
    """Run ``sql`` on a short-lived connection (with a private trio-asyncio loop if needed)."""

    async def job() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    if trio_asyncio.current_loop.get() is not None:
        await trio_asyncio.aio_as_trio(job)()
        return
    async with trio_asyncio.open_loop() as loop:
        await trio_asyncio.aio_as_trio(job, loop=loop)()


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[tuple[str, str]]:
    """Create an empty schema; yield (its URL, its name); drop it afterwards."""
    base = require_postgres()
    name = f"t_{secrets.token_hex(6)}"
    await admin_execute(base, f'CREATE SCHEMA "{name}"')
    try:
        yield schema_url(base, name), name
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            await admin_execute(base, f'DROP SCHEMA "{name}" CASCADE')


def create_schema_sync() -> tuple[str, str]:
    """For synchronous tests (which may call ``trio.run`` themselves)."""
    base = require_postgres()
    name = f"t_{secrets.token_hex(6)}"
    trio.run(admin_execute, base, f'CREATE SCHEMA "{name}"')
    return schema_url(base, name), name


def drop_schema_sync(name: str) -> None:
    trio.run(admin_execute, require_postgres(), f'DROP SCHEMA "{name}" CASCADE')


class Admin:
    """One asyncpg connection driven from Trio; needs a current trio-asyncio loop."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str) -> AsyncIterator[Admin]:
        conn = await trio_asyncio.aio_as_trio(asyncpg.connect)(url)
        try:
            yield cls(conn)
        finally:
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(conn.close)()

    async def execute(self, sql: str, *args: Any) -> str:
        result: str = await trio_asyncio.aio_as_trio(self.conn.execute)(sql, *args)
        return result

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        rows: list[Any] = await trio_asyncio.aio_as_trio(self.conn.fetch)(sql, *args)
        return rows

    async def backends(self, application_name: str, *, waiting: bool = False) -> list[int]:
        """Server process ids of connections named ``application_name`` (waiting on a lock)."""
        sql = "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
        if waiting:
            sql += " AND wait_event_type = 'Lock'"
        return [row[0] for row in await self.fetch(sql, application_name)]

    async def wait_for_lock_waiter(self, application_name: str) -> int:
        """The pid of the first of our connections seen waiting on a lock (polls the server)."""
        while True:
            found = await self.backends(application_name, waiting=True)
            if found:
                return found[0]
            await trio.sleep(0.01)

    async def terminate(self, pids: list[int]) -> None:
        await self.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)


class Proxy:
    """A TCP proxy in front of PostgreSQL that a test can pull out and plug back in.

    ``stop()`` closes the listening socket and every proxied connection, which to a client looks
    like the server going away; ``run`` again on the same port looks like it coming back.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._scope: trio.CancelScope | None = None

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._relay, listeners)
                task_status.started(self.port)

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def _relay(self, client: trio.SocketStream) -> None:
        async with (
            client,
            await trio.open_tcp_stream(*self.target) as server,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, nursery.cancel_scope)

    @staticmethod
    async def _pump(
        source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            async for data in source:
                await sink.send_all(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()
