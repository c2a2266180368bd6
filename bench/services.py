"""PostgreSQL, Redis and worker options shared by the benchmarks' servers.

``--database-url postgresql://...`` runs the server on PostgreSQL: every server a benchmark
starts gets a fresh schema ``bench_<random>`` in that database (selected with
``?search_path=``), dropped when the server has stopped. ``--redis-url redis://...`` gives it
Redis with a fresh ``REDIS_PREFIX``, so runs never see each other's channels. ``--workers N``
starts ``dramaverse serve --workers N`` (N > 1 needs both; the benchmark then waits until every
worker answers ``/api/health``, telling them apart by ``X-Dramaverse-Worker``).

The document records ``backends`` (``workers``, ``database``, ``broker``), never the URLs:
they may hold passwords.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import trio

from bench.loadgen import ProtocolError, http_get

WORKERS_DEADLINE_S = 120.0


class BackendError(Exception):
    """A backend the benchmark was pointed at cannot be used."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers", type=int, default=1, help="server worker processes (>1 needs both URLs)"
    )
    parser.add_argument(
        "--database-url",
        help="PostgreSQL to run on (each server gets a fresh schema, dropped afterwards)",
    )
    parser.add_argument("--redis-url", help="Redis to run on (each server gets a fresh prefix)")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.workers > 1 and not (args.database_url and args.redis_url):
        parser.error("--workers > 1 needs --database-url (PostgreSQL) and --redis-url")
    if args.database_url and urlsplit(args.database_url).scheme not in ("postgres", "postgresql"):
        parser.error("--database-url must be a postgresql:// URL")
    if args.redis_url and urlsplit(args.redis_url).scheme not in ("redis", "rediss", "unix"):
        parser.error("--redis-url must be a redis://, rediss:// or unix:// URL")


def describe(workers: int, database_url: str | None, redis_url: str | None) -> dict[str, Any]:
    return {
        "workers": workers,
        "database": "postgresql" if database_url else "sqlite",
        "broker": "redis" if redis_url else "memory",
    }


def serve_arguments(workers: int) -> list[str]:
    return ["--workers", str(workers)] if workers > 1 else []


def schema_url(base: str, schema: str) -> str:
    """``base`` with ``search_path`` (and ``application_name``) set to ``schema``."""
    parts = urlsplit(base)
    query = dict(parse_qsl(parts.query))
    query.update(search_path=schema, application_name=schema)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _execute(url: str, sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@contextmanager
def server_backends(database_url: str | None, redis_url: str | None) -> Iterator[dict[str, str]]:
    """The server's environment for these backends; the fresh schema is dropped on exit."""
    env: dict[str, str] = {}
    schema = None
    if database_url:
        schema = f"bench_{secrets.token_hex(6)}"
        try:
            _execute(database_url, f'CREATE SCHEMA "{schema}"')
        except Exception as exc:  # asyncpg's and the OS's errors alike: one line
            host = urlsplit(database_url).hostname
            raise BackendError(
                f"cannot create a schema on PostgreSQL at {host}: {type(exc).__name__}: {exc}"
            ) from None
        env["DATABASE_URL"] = schema_url(database_url, schema)
    if redis_url:
        env["REDIS_URL"] = redis_url
        env["REDIS_PREFIX"] = f"bench:{secrets.token_hex(6)}:"
    try:
        yield env
    finally:
        if database_url and schema:
            _execute(database_url, f'DROP SCHEMA "{schema}" CASCADE')


async def wait_all_workers(host: str, port: int, workers: int) -> float:
    """Until ``workers`` different workers have answered ``/api/health``; the seconds waited."""
    t0 = time.perf_counter()
    seen: set[bytes] = set()
    with trio.move_on_after(WORKERS_DEADLINE_S):
        while len(seen) < workers:
            try:
                response = await http_get(host, port, "/api/health", time_limit=5.0)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, ProtocolError):
                await trio.sleep(0.1)
                continue
            worker = response.headers.get(b"x-dramaverse-worker")
            if response.status == 200 and worker is not None:
                seen.add(worker)
            else:
                await trio.sleep(0.1)
        return time.perf_counter() - t0
    raise BackendError(f"only {len(seen)} of {workers} workers answered within the deadline")
