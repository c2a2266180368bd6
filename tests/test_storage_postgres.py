"""What is specific to the PostgreSQL backend: configuration, concurrent migrations, failures.

The shared behaviour is in ``test_storage_contract.py``. Here: outages (a server that is not
there, one that goes away behind a proxy and comes back, connections killed with
``pg_terminate_backend``, an exhausted pool) always surface as StorageUnavailable and the pool
recovers by itself; and the whole server and the command line run on PostgreSQL.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio
import trio_asyncio

from dramaverse import cli
from dramaverse.config import load_settings
from dramaverse.domain.library import SaveEpisodeReview, SetFavorite, SetStatus
from dramaverse.errors import BadRequest, ConfigError, StorageUnavailable
from dramaverse.storage import open_storage
from dramaverse.storage.postgres import (
    PostgresStorage,
    describe_url,
    migration_files,
    open_postgres,
)
from tests.conftest import make_settings, running_server, sample_records
from tests.postgres_tools import (
    Admin,
    Proxy,
    create_schema_sync,
    drop_schema_sync,
    fresh_schema,
)
from tests.services import require_postgres

ALL_MIGRATIONS = [name for _, name, _ in migration_files()]


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def with_port(url: str, port: int) -> str:
    """``url`` pointed at 127.0.0.1:``port``, same user, database and parameters."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


async def migrated(storage: PostgresStorage) -> int:
    await storage.migrate()
    await storage.import_dramas(sample_records())
    return await storage.create_user("alice", "hash")


# -- configuration ---------------------------------------------------------------------------


def test_postgres_urls_and_pool_size_are_accepted() -> None:
    settings = load_settings({"DATABASE_URL": "postgresql://u:pw@db:5432/app"}, dotenv_path=None)
    assert (settings.database_url, settings.database_pool_size) == (
        "postgresql://u:pw@db:5432/app",
        10,
    )
    short = load_settings(
        {"DATABASE_URL": "postgres://db/app", "DATABASE_POOL_SIZE": "25"}, dotenv_path=None
    )
    assert (short.database_url, short.database_pool_size) == ("postgres://db/app", 25)


def test_bad_postgres_url_does_not_echo_the_password() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL") as info:
        load_settings({"DATABASE_URL": "postgresql://u:hunter2@db:x/app"}, dotenv_path=None)
    assert "hunter2" not in str(info.value)


# -- migrations ------------------------------------------------------------------------------


async def test_concurrent_migrations_apply_each_migration_once() -> None:
    # Separate pools are separate sessions, as separate worker processes would be.
    async with fresh_schema() as (url, _name), trio_asyncio.open_loop():
        results: list[list[str]] = []

        async def migrate() -> None:
            async with open_postgres(url, 1) as storage:
                results.append(await storage.migrate())

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(migrate)
        assert sorted(name for applied in results for name in applied) == ALL_MIGRATIONS
        async with open_postgres(url, 1) as storage:
            assert await storage.applied_migrations() == ALL_MIGRATIONS
            assert await storage.migrate() == []


async def test_unmigrated_schema_is_a_clear_error() -> None:
    async with fresh_schema() as (url, _name), open_postgres(url, 1) as storage:
        with pytest.raises(StorageUnavailable, match="dramaverse migrate"):
            await storage.count_dramas()


# -- values PostgreSQL cannot store ----------------------------------------------------------


async def test_nul_characters_are_bad_requests() -> None:
    async with fresh_schema() as (url, _name), open_postgres(url, 2) as storage:
        user = await migrated(storage)
        drama = sample_records()[0]["url"]
        with pytest.raises(BadRequest, match="NUL"):
            await storage.save_episode_review(
                user, SaveEpisodeReview(drama, 1, "a\x00b", 0, False), 1
            )
        with pytest.raises(BadRequest, match="NUL"):
            await storage.create_user("bad\x00name", "hash")
        with pytest.raises(BadRequest, match="Unicode"):
            await storage.set_status(user, SetStatus(drama, "\ud800", 1))
        assert await storage.event_head(user) == 0
        assert await storage.get_user_by_username("alice") is not None


# -- failures and recovery -------------------------------------------------------------------


async def test_unreachable_server_is_a_clear_error_at_open(tmp_path: Path) -> None:
    port = closed_port()
    url = f"postgresql://dv:hunter2@127.0.0.1:{port}/test"
    with pytest.raises(StorageUnavailable) as info:
        async with open_storage(make_settings(tmp_path, database_url=url)):
            pytest.fail("opened a storage with no server behind it")
    message = info.value.message
    assert message.startswith(f"Cannot connect to PostgreSQL at 127.0.0.1:{port}/test: ")
    assert "hunter2" not in message
    assert "\n" not in message


async def test_unknown_database_is_a_clear_error_at_open() -> None:
    url = urlunsplit(urlsplit(require_postgres())._replace(path="/no_such_database_here"))
    with pytest.raises(StorageUnavailable, match='database "no_such_database_here" does not exist'):
        async with open_postgres(url, 1):
            pass


async def test_outage_gives_503_and_the_pool_recovers_by_itself() -> None:
    target = urlsplit(require_postgres())
    async with (
        fresh_schema() as (url, _name),
        trio_asyncio.open_loop(),
        trio.open_nursery() as nursery,
    ):
        proxy = Proxy(target.hostname or "127.0.0.1", target.port or 5432)
        port = await nursery.start(proxy.run)
        async with open_postgres(with_port(url, port), 3) as storage:
            user = await migrated(storage)
            drama = sample_records()[0]["url"]
            await storage.set_favorite(user, SetFavorite(drama, True))

            proxy.stop()  # the server "goes away": connections dropped, new ones refused
            for _ in range(3):
                with trio.fail_after(30), pytest.raises(StorageUnavailable) as info:
                    await storage.get_library(user)
                assert f"PostgreSQL at {describe_url(with_port(url, port))}" in info.value.message
            with pytest.raises(StorageUnavailable):
                await storage.set_favorite(user, SetFavorite(drama, False))

            await nursery.start(proxy.run)  # back on the same port
            library = await storage.get_library(user)
            assert library is not None
            assert library.favorites == [drama]
            result = await storage.set_favorite(user, SetFavorite(drama, False))
            assert result.event is not None
            assert result.event.seq == 2  # the failed write took no number
        nursery.cancel_scope.cancel()


async def test_killed_connection_fails_the_operation_and_the_next_one_succeeds() -> None:
    async with (
        fresh_schema() as (url, name),
        trio_asyncio.open_loop(),
        open_postgres(url, 2) as storage,
        Admin.connect(require_postgres()) as admin,
    ):
        user = await migrated(storage)
        drama = sample_records()[0]["url"]
        await storage.set_favorite(user, SetFavorite(drama, True))
        # Hold the user's head row so the next write waits on it, then kill that write's
        # server process while it waits: the write is mid-transaction when it loses the server.
        await admin.execute("BEGIN")
        await admin.execute(
            f'SELECT 1 FROM "{name}".user_event_heads WHERE user_id = $1 FOR UPDATE', user
        )
        failures: list[StorageUnavailable] = []

        async def write() -> None:
            try:
                await storage.set_status(user, SetStatus(drama, "Watching", 1))
            except StorageUnavailable as exc:
                failures.append(exc)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                await admin.terminate([await admin.wait_for_lock_waiter(name)])
        await admin.execute("ROLLBACK")
        assert len(failures) == 1
        assert "is unavailable" in failures[0].message

        recovered = await storage.set_status(user, SetStatus(drama, "Watching", 1))
        assert recovered.event is not None
        assert recovered.event.seq == 2  # the killed write's number was given back
        library = await storage.get_library(user)
        assert library is not None
        assert library.statuses == {drama: {"status": "Watching", "currentEpisode": 1}}


async def test_idle_connections_killed_by_the_server_are_replaced() -> None:
    async with (
        fresh_schema() as (url, name),
        trio_asyncio.open_loop(),
        open_postgres(url, 4) as storage,
        Admin.connect(require_postgres()) as admin,
    ):
        user = await migrated(storage)
        async with trio.open_nursery() as nursery:  # open several pooled connections
            for _ in range(8):
                nursery.start_soon(storage.get_library, user)
        pids = await admin.backends(name)
        assert pids
        await admin.terminate(pids)
        outcomes: list[bool | None] = []
        for _ in range(4):
            try:
                outcomes.append(await storage.user_exists(user))
            except StorageUnavailable:
                outcomes.append(None)
        # At most the first operation notices the loss; after it every connection is new.
        assert outcomes[1:] == [True, True, True]
        assert not set(await admin.backends(name)) & set(pids)


async def test_exhausted_pool_is_503_and_not_a_hang() -> None:
    async with (
        fresh_schema() as (url, name),
        trio_asyncio.open_loop(),
        open_postgres(url, 1, acquire_timeout=0.2) as storage,
        Admin.connect(require_postgres()) as admin,
    ):
        user = await migrated(storage)
        drama = sample_records()[0]["url"]
        await storage.set_favorite(user, SetFavorite(drama, True))
        await admin.execute("BEGIN")
        await admin.execute(
            f'SELECT 1 FROM "{name}".user_event_heads WHERE user_id = $1 FOR UPDATE', user
        )
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(storage.set_favorite, user, SetFavorite(drama, False))
                await admin.wait_for_lock_waiter(name)  # the only connection is now busy
                with pytest.raises(StorageUnavailable, match="All 1 connections"):
                    await storage.user_exists(user)
                await admin.execute("ROLLBACK")  # the waiting write goes through
        assert await storage.event_head(user) == 2


async def test_closed_storage_refuses_with_503() -> None:
    async with fresh_schema() as (url, _name):
        async with open_postgres(url, 1) as storage:
            await storage.migrate()
        with pytest.raises(StorageUnavailable, match="closed"):
            await storage.count_dramas()


# -- the whole server and the command line on PostgreSQL --------------------------------------


async def test_server_runs_on_postgres(tmp_path: Path) -> None:
    async with fresh_schema() as (url, _name):
        settings = make_settings(tmp_path, database_url=url, database_pool_size=4)
        async with running_server(settings) as server:
            registered = await server.register("alice", "secret-pw")
            login = await server.client.post(
                "/api/auth/login", json={"username": "alice", "password": "secret-pw"}
            )
            assert login.status_code == 200, login.text
            token = login.json()["token"]
            drama = sample_records()[0]["url"]
            favorite = await server.post_as(
                token, "/api/user/favorites", {"dramaUrl": drama, "isFavorite": True}
            )
            assert (favorite.status_code, favorite.json()) == (200, {"success": True})
            saved = await server.post_as(
                token,
                "/api/user/reviews/episodes",
                {"dramaUrl": drama, "episodeNumber": 1, "text": "hi", "clientUpdatedAt": 0},
            )
            assert saved.status_code == 200, saved.text
            stale = await server.post_as(
                token,
                "/api/user/reviews/episodes",
                {"dramaUrl": drama, "episodeNumber": 1, "text": "old", "clientUpdatedAt": 0},
            )
            assert stale.status_code == 409
            assert stale.json()["serverVersion"]["text"] == "hi"
            data = await server.get_as(registered, "/api/user/data")
            assert data.status_code == 200
            body = data.json()
            assert body["user"] == {"username": "alice"}
            assert body["data"]["favorites"] == [drama]
            assert body["data"]["episodeReviews"][drama]["1"]["text"] == "hi"
            catalog = await server.client.get("/api/dramas", params={"limit": 5})
            assert catalog.json()["totalItems"] == 14


def test_cli_migrate_and_seed_on_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, name = create_schema_sync()
    try:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("DRAMAVERSE_DATA_DIR", str(tmp_path))
        assert cli.main(["migrate"]) == 0
        assert capsys.readouterr().out.startswith(f"applied {len(ALL_MIGRATIONS)} migration(s)")
        assert cli.main(["migrate"]) == 0
        assert capsys.readouterr().out.strip() == "up to date"
        assert cli.main(["seed", "--sample"]) == 0
        assert capsys.readouterr().out.startswith("imported 14 dramas: 14 new, 0 updated")
        assert cli.main(["seed", "--sample", "--if-empty"]) == 0
        assert "nothing imported" in capsys.readouterr().out
        assert not (tmp_path / "dramaverse.db").exists()
    finally:
        drop_schema_sync(name)


def test_cli_reports_an_unreachable_server_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://dv:hunter2@127.0.0.1:{closed_port()}/x")
    assert cli.main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dramaverse: error: Cannot connect to PostgreSQL at 127.0.0.1:")
    assert err.count("\n") == 1
    assert "hunter2" not in err
